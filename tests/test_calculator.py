"""JMPCalculator on fine-tuned models: inputs of every shape, caching, batching, bad input."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from jmp_ase.calculators.calculator import JMPCalculator, StressUnavailableError
from jmp_ase.io.model_file import save_model
from jmp_ase.nn.heads import HeadSpec
from models import methanol, tiny_model, triclinic_crystal, water


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


@pytest.fixture(scope="module")
def calc64(model):
    return JMPCalculator(model, dtype="float64")


class CountingCalculator(JMPCalculator):
    """Counts model passes."""

    passes = 0

    def _predict_chunk(self, atoms_list, **options):
        self.passes += 1
        return super()._predict_chunk(atoms_list, **options)


def slab():
    return Atoms("NaClNaCl", positions=[[0, 0, 5], [1.6, 1.5, 5.1], [0.1, 1.7, 6.9], [1.5, 0.2, 7.0]],
                 cell=[[3.2, 0, 0], [0.3, 3.3, 0], [0, 0, 15]], pbc=[True, True, False])


STRUCTURES = {
    "one-atom": Atoms("O", positions=[[0.0, 0.0, 0.0]]),
    "two-atoms": Atoms("OH", positions=[[0.0, 0.0, 0.0], [0.0, 0.2, 0.95]]),
    "three-atoms": water(),
    "molecule-in-cell": Atoms("OH", positions=[[1, 1, 1], [1, 1, 2]], cell=[5, 5, 5], pbc=False),
    "slab": slab(),
    "wire": Atoms("NaCl", positions=[[0, 0, 0], [1.5, 0.4, 1.2]], cell=[3.1, 10, 10], pbc=[True, False, False]),
    "one-atom-crystal": Atoms("Na", positions=[[0, 0, 0]], cell=[[3.0, 0, 0], [1.0, 3.1, 0], [0.5, 0.4, 2.9]],
                              pbc=True),
    "sparse-crystal": Atoms("Na", positions=[[0, 0, 0]], cell=[9.0, 9.0, 9.0], pbc=True),
    "triclinic": triclinic_crystal(),
}


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_every_kind_of_structure(calc64, name):
    atoms = STRUCTURES[name].copy()
    atoms.calc = calc64
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert np.isfinite(energy) and forces.shape == (len(atoms), 3) and np.all(np.isfinite(forces))
    assert atoms.get_potential_energies().sum() == pytest.approx(energy, rel=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == energy
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-10)
    if atoms.pbc.all():
        stress = atoms.get_stress()
        assert stress.shape == (6,) and np.all(np.isfinite(stress))
    else:
        assert "stress" not in calc64.results


def test_isolated_atom_feels_no_force(calc64):
    atoms = Atoms("OHHO", positions=[[0, 0, 0], [0, 0.2, 0.96], [0.9, 0, -0.3], [12.0, 0, 0]])
    atoms.calc = calc64
    forces = atoms.get_forces()
    assert np.all(forces[3] == 0.0) and np.abs(forces[:3]).max() > 0
    alone = Atoms("O", positions=[[12.0, 0, 0]])
    assert atoms.get_potential_energies()[3] == pytest.approx(calc64.predict([alone])[0]["energy"], abs=1e-12)


def test_one_pass_serves_energy_forces_and_stress(model):
    calc = CountingCalculator(model)
    atoms = triclinic_crystal()
    atoms.calc = calc
    atoms.get_forces()
    atoms.get_stress()
    atoms.get_potential_energy()
    atoms.get_potential_energies()
    assert calc.passes == 1
    atoms.positions[0, 0] += 0.01
    atoms.get_stress()
    atoms.set_tags([0, 1, 1, 1])
    atoms.get_forces()
    assert calc.passes == 3


def test_stress_without_3d_cell_is_a_clear_error_and_keeps_results(model):
    calc = CountingCalculator(model)
    atoms = slab()
    atoms.calc = calc
    forces = atoms.get_forces()
    for error in (StressUnavailableError, PropertyNotImplementedError, ValueError):
        with pytest.raises(error, match=r"periodic in all three directions.*pbc=\[True, True, False\]"):
            atoms.get_stress()
    np.testing.assert_array_equal(atoms.get_forces(), forces)
    assert calc.passes == 1
    with pytest.raises(StressUnavailableError, match="structure 1: stress"):
        calc.predict([triclinic_crystal(), methanol()], properties=["stress"])


def test_batch_equals_one_by_one(model):
    structures = [methanol(), triclinic_crystal(), water(), slab(), STRUCTURES["one-atom"]]
    for dtype, tol in (("float64", 1e-12), ("float32", 2e-5)):
        calc = JMPCalculator(model, dtype=dtype)
        together = calc.predict(structures, batch_size=3)
        for atoms, res in zip(structures, together):
            alone = calc.predict([atoms])[0]
            assert sorted(res) == sorted(alone)
            for key, value in alone.items():
                np.testing.assert_allclose(res[key], value, rtol=tol, atol=tol, err_msg=key)


def test_float32_agrees_with_float64(model):
    structures = [methanol(), triclinic_crystal()]
    r32 = JMPCalculator(model, dtype="float32").predict(structures)
    r64 = JMPCalculator(model, dtype="float64").predict(structures)
    for a, b in zip(r32, r64):
        assert a["energy"] == pytest.approx(b["energy"], rel=1e-5)
        np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-5 * np.abs(b["forces"]).max())
    np.testing.assert_allclose(r32[1]["stress"], r64[1]["stress"], atol=5e-5 * np.abs(r64[1]["stress"]).max())


def test_callers_model_is_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    JMPCalculator(model, dtype="float64")
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scalar_heads_appear_in_results():
    heads = [HeadSpec("energy"), HeadSpec("gap", "scalar", "mean", scale=2.0, shift=1.0, units="eV"),
             HeadSpec("charge", "scalar", "sum", units="e")]
    calc = JMPCalculator(tiny_model(seed=3, heads=heads), dtype="float64")
    atoms = methanol()
    atoms.calc = calc
    atoms.get_potential_energy()
    assert isinstance(calc.results["gap"], float) and isinstance(calc.results["charge"], float)
    assert calc.get_property("gap", atoms) == calc.results["gap"]
    assert set(calc.implemented_properties) >= {"energy", "forces", "stress", "gap", "charge"}
    with pytest.raises(PropertyNotImplementedError, match="'dipole' is not predicted by this model"):
        calc.get_property("dipole", atoms)


def test_direct_force_model_has_no_stress():
    heads = [HeadSpec("energy"), HeadSpec("forces", "direct_forces", units="eV/Å")]
    calc = JMPCalculator(tiny_model(seed=4, heads=heads))
    atoms = triclinic_crystal()
    atoms.calc = calc
    assert atoms.get_forces().shape == (4, 3)
    with pytest.raises(PropertyNotImplementedError, match="'stress' is not predicted"):
        atoms.get_stress()


def test_model_given_as_path(tmp_path, model):
    save_model(model, tmp_path / "m.ckpt")
    atoms = methanol()
    direct = JMPCalculator(model).predict([atoms])[0]
    loaded = JMPCalculator(tmp_path / "m.ckpt").predict([atoms])[0]
    assert loaded["energy"] == direct["energy"]
    with pytest.raises(FileNotFoundError, match="no shipped model of that name"):
        JMPCalculator("no-such-model")


def test_unknown_element_names_it_and_lists_known_ones(calc64):
    atoms = Atoms("CUO", positions=[[0, 0, 0], [2.0, 0, 0], [0, 1.5, 0]])
    atoms.calc = calc64
    with pytest.raises(ValueError, match=r"U \(Z=92\) at atoms \[1\].*knows only H, C, N, O, Na, Si, Cl"):
        atoms.get_potential_energy()
    lenient = JMPCalculator(tiny_model(seed=2), dtype="float64", check_elements=False)
    assert np.isfinite(lenient.predict([atoms])[0]["energy"])


def test_bad_positions_fail_and_calculator_recovers(calc64):
    atoms = methanol()
    atoms.positions[1, 1] = np.nan
    atoms.calc = calc64
    with pytest.raises(ValueError, match=r"non-finite.*atoms 1 \(O\)"):
        atoms.get_forces()
    atoms.positions[1] = atoms.positions[0] + [0.03, 0, 0]
    with pytest.raises(ValueError, match=r"atoms 0 \(C\) and 1 \(O\)"):
        atoms.get_forces()
    with pytest.raises(ValueError, match=r"structure 1: .*atoms 0 \(C\) and 1 \(O\)"):
        calc64.predict([methanol(), atoms])
    good = methanol()
    good.calc = calc64
    assert np.isfinite(good.get_potential_energy())
