"""Physics of a fine-tuned model through the calculator: derivatives, symmetries, MD.

All in float64 on a tiny random model with a smooth energy (see ``tests/models.py``).
"""
import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet

from jmp_ase.calculators.calculator import JMPCalculator
from models import methanol, tiny_model, triclinic_crystal


@pytest.fixture(scope="module")
def calc():
    return JMPCalculator(tiny_model(seed=1, energy_scale=1.0), dtype="float64")


def energies(calc, structures):
    return np.array([r["energy"] for r in calc.predict(structures, batch_size=64)])


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("make", [methanol, triclinic_crystal], ids=["molecule", "crystal"])
def test_forces_are_minus_energy_gradient(calc, make):
    atoms = make()
    moved = range(len(atoms))
    h = 1e-4
    displaced = []
    for i in moved:
        for d in range(3):
            for sign in (1, -1):
                a = atoms.copy()
                a.positions[i, d] += sign * h
                displaced.append(a)
    e = energies(calc, displaced).reshape(len(moved), 3, 2)
    numeric = -(e[..., 0] - e[..., 1]) / (2 * h)
    forces = calc.predict([atoms])[0]["forces"][list(moved)]
    assert np.abs(forces).max() > 1e-3  # a non-trivial test
    np.testing.assert_allclose(forces, numeric, atol=1e-7 + 1e-5 * np.abs(forces).max())


def strained(atoms, eps: np.ndarray):
    a = atoms.copy()
    a.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return a


def test_stress_is_strain_derivative(calc):
    atoms = triclinic_crystal(seed=3)
    h = 1e-5
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    displaced = []
    for i, j in pairs:
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] = eps[j, i] = sign * h / (2 if i != j else 1)
            displaced.append(strained(atoms, eps))
    e = energies(calc, displaced).reshape(6, 2)
    # d E / d eps_ij for a symmetric strain (eps_ij = eps_ji = h/2 counts both entries).
    numeric = (e[:, 0] - e[:, 1]) / (2 * h) / atoms.get_volume()
    atoms.calc = calc
    stress = atoms.get_stress()
    assert np.abs(stress).max() > 1e-5
    np.testing.assert_allclose(stress, numeric, atol=1e-9 + 1e-5 * np.abs(stress).max())


def test_rotation_translation_permutation_invariance(calc):
    for atoms in (methanol(), triclinic_crystal(seed=4)):
        ref = calc.predict([atoms])[0]
        rot = random_rotation(7)
        moved = atoms.copy()
        moved.positions = atoms.positions @ rot.T + [0.3, -1.2, 2.5]
        if atoms.pbc.all():
            moved.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
        perm = np.random.default_rng(2).permutation(len(atoms))
        out = calc.predict([moved, atoms[perm]])
        for res, forces in ((out[0], ref["forces"] @ rot.T), (out[1], ref["forces"][perm])):
            assert res["energy"] == pytest.approx(ref["energy"], abs=1e-10)
            np.testing.assert_allclose(res["forces"], forces, atol=1e-10)
        if atoms.pbc.all():
            sigma = _voigt_to_3x3(ref["stress"])
            np.testing.assert_allclose(_voigt_to_3x3(out[0]["stress"]), rot @ sigma @ rot.T, atol=1e-10)
            np.testing.assert_allclose(out[1]["stress"], ref["stress"], atol=1e-10)


def _voigt_to_3x3(s):
    xx, yy, zz, yz, xz, xy = s
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def test_supercell_is_extensive(calc):
    """No neighbour shell is cut (max_neighbors 100, cutoff 4 Å), so supercells are exact."""
    atoms = triclinic_crystal(seed=5)
    reps = (2, 1, 2)
    cell_res, super_res = calc.predict([atoms, atoms * reps])
    n = int(np.prod(reps))
    assert super_res["energy"] == pytest.approx(n * cell_res["energy"], rel=1e-11)
    np.testing.assert_allclose(super_res["forces"], np.tile(cell_res["forces"], (n, 1)), atol=1e-10)
    np.testing.assert_allclose(super_res["stress"], cell_res["stress"], atol=1e-11)


def test_nve_conserves_energy(calc):
    atoms = methanol()
    atoms.calc = calc
    rng = np.random.default_rng(0)
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(atoms.get_masses()[:, None] * units.kB * 600)
    atoms.set_momenta(momenta - momenta.sum(0) / len(atoms))
    total, potential = [], []

    def record():
        total.append(atoms.get_total_energy())
        potential.append(atoms.get_potential_energy())

    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.attach(record, interval=1)
    dyn.run(60)
    total, potential = np.array(total), np.array(potential)
    swing = potential.max() - potential.min()
    assert swing > 1e-2  # the molecule really moves on the energy surface
    assert np.abs(total - total[0]).max() < 0.02 * swing
