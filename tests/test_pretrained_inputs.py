"""Original-checkpoint calculator on inputs the original JMP code cannot handle, and bad input."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from jmp_ase.calculators.calculator import JMPCalculator

CKPT = "jmp-tiny-pretrain.ckpt"


@pytest.fixture(scope="module")
def calc(reference_dir):
    return JMPCalculator.from_jmp_checkpoint(reference_dir / CKPT, head=0, cutoff=6.0, max_neighbors=30)


def energy_and_forces(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


@pytest.mark.parametrize("symbols", ["H", "H2", "H2O"])
def test_small_molecules_without_quadruplets(calc, symbols):
    """JMP crashes without quadruplets (3 atoms); we return finite numbers."""
    energy, forces = energy_and_forces(calc, molecule(symbols))
    assert np.isfinite(energy) and np.all(np.isfinite(forces))
    assert forces.shape == (len(molecule(symbols)), 3)


def ethanol():
    return molecule("CH3CH2OH")


def rattled_rocksalt():
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64) * (2, 1, 1)
    atoms.rattle(0.02, seed=1)
    return atoms


@pytest.mark.parametrize("build", [ethanol, rattled_rocksalt], ids=["molecule", "periodic"])
def test_float64_matches_float32(reference_dir, build):
    """The original's periodic graph code refuses float64; ours agrees with float32."""
    atoms = build()
    results = {}
    for dtype in ("float32", "float64"):
        c = JMPCalculator.from_jmp_checkpoint(reference_dir / CKPT, cutoff=6.0, dtype=dtype)
        results[dtype] = energy_and_forces(c, atoms)
    assert results["float64"][0] == pytest.approx(results["float32"][0], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(results["float64"][1], results["float32"][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "numbers,match",
    [([1, 0, 8], r"atoms 1 \(Z=0\)"), ([1, 6, 121], r"atoms 2 \(Z=121\)")],
)
def test_unknown_element(calc, numbers, match):
    atoms = Atoms(numbers=numbers, positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.2, 0]])
    with pytest.raises(ValueError, match=match):
        energy_and_forces(calc, atoms)


def test_nan_positions_and_cell(calc):
    atoms = molecule("H2O")
    atoms.positions[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"atoms 1 \(H\)"):
        energy_and_forces(calc, atoms)
    crystal = Atoms("Cu", cell=[[2.5, 0, 0], [0, 2.5, 0], [0, 0, np.inf]], pbc=True)
    with pytest.raises(ValueError, match="cell"):
        energy_and_forces(calc, crystal)


def test_overlapping_atoms(calc):
    atoms = molecule("H2O")
    atoms.positions[2] = atoms.positions[0] + [0.05, 0, 0]
    with pytest.raises(ValueError, match=r"atoms 0 \(O\) and 2 \(H\)"):
        energy_and_forces(calc, atoms)


def test_unknown_head_name(reference_dir):
    with pytest.raises(ValueError, match="no pre-training head named 'oc20'"):
        JMPCalculator.from_jmp_checkpoint(reference_dir / CKPT, head="oc20")


def test_config_mismatch_is_explained(reference_dir):
    with pytest.raises(ValueError, match="does not fit backbone config"):
        JMPCalculator.from_jmp_checkpoint(reference_dir / CKPT, config="jmp-s")
