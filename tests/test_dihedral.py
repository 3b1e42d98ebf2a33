"""Collinear atoms and the quadruplet dihedral (perfect crystals, ideal slabs, planar and
linear molecules: where users start).

JMP's dihedral is undefined where three atoms are collinear. jmp-ase (1) defines its
gradient there, so the published function gets finite forces at exact symmetry, and (2)
offers ``smooth_dihedral``, a basis under which energy and forces are continuous.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from jmp_ase import JMPCalculator
from jmp_ase.nn.bases import SphericalBasisLayer, dihedral_angle, legendre_basis
from jmp_ase.io.model_file import load_model, save_model
from jmp_ase.nn.model import FineTunedModel
from models import tiny_model

ELEMENTS = [1, 6, 8, 29]
CKPT = "jmp-tiny-pretrain.ckpt"


def model(smooth: bool, max_neighbors: int = 100, damping: float = 0.0) -> FineTunedModel:
    net = tiny_model(seed=3, cutoff=4.0, max_neighbors=max_neighbors, elements=ELEMENTS, energy_scale=1.0)
    if smooth:
        backbone = dataclasses.replace(net.config, smooth_dihedral=True, dihedral_damping=damping)
        config = dataclasses.replace(net.model_config, backbone=backbone)
        smooth_net = FineTunedModel(config)
        smooth_net.load_state_dict(net.state_dict())
        net = smooth_net.eval()
    return net


def copper() -> Atoms:
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)


def acetylene() -> Atoms:
    """H-C-C-H on one line: every triplet is collinear."""
    return Atoms("HCCH", positions=[[0, 0, -1.66], [0, 0, -0.60], [0, 0, 0.60], [0, 0, 1.66]])


def max_force(calc, atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return float(np.abs(atoms.get_forces()).max())


def energy(calc, atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return float(atoms.get_potential_energy())


def rattled(atoms, amplitude, seed=1):
    atoms = atoms.copy()
    atoms.rattle(amplitude, seed=seed)
    return atoms


# ----------------------------------------------------------------------- the published function
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("build", [copper, acetylene, lambda: molecule("C6H6"),
                                   lambda: fcc111("Cu", (2, 2, 3), vacuum=6.0)],
                         ids=["fcc-Cu", "acetylene", "benzene", "Cu111"])
def test_jmp_dihedral_gives_finite_forces_at_exact_symmetry(build, dtype):
    """Exact symmetry: forces of the size the same model gives a 0.05 Å rattle, not 1e3-1e9x."""
    calc = JMPCalculator(model(smooth=False), dtype=dtype)
    atoms = build()
    typical = max_force(calc, rattled(atoms, 0.05))
    assert max_force(calc, atoms) < 3 * typical


def test_dihedral_angle_is_pi_half_without_gradient_where_a_normal_vanishes():
    n1 = torch.tensor([[0.0, 0.0, 0.0], [1e-12, 0.0, 0.0], [0.3, 0.4, 0.0]], dtype=torch.float64, requires_grad=True)
    n2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    angle = dihedral_angle(n1, n2)
    assert torch.allclose(angle[:2], torch.full((2,), np.pi / 2, dtype=torch.float64))
    expected = np.arccos(0.4 / 0.5)
    assert float(angle[2].detach()) == pytest.approx(expected, rel=1e-12)
    angle.sum().backward()
    assert torch.all(n1.grad[:2] == 0) and torch.all(n2.grad[:2] == 0)
    assert torch.all(torch.isfinite(n1.grad)) and n1.grad[2].abs().sum() > 0


# ----------------------------------------------------------------------- the smooth basis
def random_angles(n: int, seed: int):
    """Two (n, 3) triplet normals of random directions and lengths in [0, 1) and (n,) cosines."""
    gen = torch.Generator().manual_seed(seed)
    n1, n2 = (torch.randn(n, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    n1 = n1 / n1.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    n2 = n2 / n2.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    return n1, n2, torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1


def radial(d):
    """Stands in for the radial basis: only the angular part is compared."""
    return d[:, None]


def test_smooth_basis_is_the_damped_legendre_basis():
    """Away from collinearity: Y_m(cos φ) (sin θ_cab sin θ_abd)^m, the m = 0 terms unchanged."""
    n1, n2, cos_angle = random_angles(50, seed=0)
    _, smooth = SphericalBasisLayer(5, radial, smooth=True)(torch.ones(1), cos_angle, n1, n2)
    _, plain = SphericalBasisLayer(5, radial, smooth=False)(torch.ones(1), cos_angle, n1, n2)
    damping = (n1.norm(dim=1) * n2.norm(dim=1))[:, None] ** torch.arange(5, dtype=torch.float64)
    expected = (plain.reshape(50, 5, 5) * damping[:, None, :]).reshape(50, 25)
    assert torch.allclose(smooth, expected, atol=1e-12)
    assert torch.allclose(legendre_basis(cos_angle, 5), legendre_basis(cos_angle, 5, torch.ones(50, dtype=torch.float64)))


def test_damped_basis_is_jmps_basis_away_from_collinearity():
    """With ε the m-th dihedral term is weighted by (s1 s2 / sqrt((s1² + ε²)(s2² + ε²)))^m, s = |n|:
    about JMP's basis where both triplets are bent well beyond ε, zero where a normal vanishes."""
    n1, n2, cos_angle = random_angles(40, seed=1)
    eps = 0.15
    damped = SphericalBasisLayer(5, radial, smooth=True, damping=eps).angular(cos_angle, n1, n2)
    plain = SphericalBasisLayer(5, radial, smooth=False).angular(cos_angle, n1, n2)
    s1, s2 = n1.norm(dim=1), n2.norm(dim=1)
    weight = (s1 * s2 / ((s1**2 + eps**2) * (s2**2 + eps**2)).sqrt())[:, None] ** torch.arange(5, dtype=torch.float64)
    assert torch.allclose(damped, (plain.reshape(40, 5, 5) * weight[:, None, :]).reshape(40, 25), atol=1e-12)
    # bent well beyond ε: much closer to JMP's values than the sin-damped basis
    sin_damped = SphericalBasisLayer(5, radial, smooth=True).angular(cos_angle, n1, n2)
    far = (s1 > 0.5) & (s2 > 0.5)
    assert far.sum() >= 5
    assert (damped - plain)[far].abs().max() < 0.3 * (sin_damped - plain)[far].abs().max()
    # a vanished normal keeps only the m = 0 terms, as the undamped smooth basis does
    zero = torch.zeros(1, 3, dtype=torch.float64)
    at_zero = SphericalBasisLayer(5, radial, smooth=True, damping=eps).angular(cos_angle[:1], zero, n2[:1])
    assert torch.allclose(at_zero.reshape(5, 5)[:, 1:], torch.zeros(5, 4, dtype=torch.float64))


def bent(theta: float) -> Atoms:
    """A 4-atom chain whose first triplet is bent by ``theta`` (rad) out of line, in a plane
    30° from the last triplet's: the dihedral is 60° on one side of θ = 0 and 120° on the other."""
    atoms = acetylene()
    side = np.array([np.sin(np.pi / 6), np.cos(np.pi / 6), 0.0])
    atoms.positions[0] = 1.06 * np.sin(theta) * side + [0.0, 0.0, -0.60 - 1.06 * np.cos(theta)]
    atoms.positions[3] = [0.0, 0.3, 1.64]  # the last triplet is bent: the dihedral is defined beside θ = 0
    return atoms


@pytest.mark.parametrize("damping", [0.0, 0.15])
def test_smooth_energy_is_continuous_through_collinearity_and_jmp_is_not(damping):
    def jump(calc, t):
        """Largest energy change between the collinear chain and the chain bent by ±t rad."""
        e0 = energy(calc, bent(0.0))
        return max(abs(energy(calc, bent(s * t)) - e0) for s in (1, -1))

    smooth = JMPCalculator(model(smooth=True, damping=damping), dtype="float64")
    plain = JMPCalculator(model(smooth=False), dtype="float64")
    # continuous: the change vanishes with the bend
    assert jump(smooth, 1e-7) < 0.05 * jump(smooth, 1e-5)
    # the published function jumps: the change does not shrink with the bend
    assert jump(plain, 1e-7) > 0.5 * jump(plain, 1e-5) > 0
    assert jump(plain, 1e-7) > 100 * jump(smooth, 1e-7)


@pytest.mark.parametrize("damping", [0.0, 0.15])
def test_smooth_forces_stay_bounded_near_symmetry_and_match_finite_differences(damping):
    """Perfect Cu (no neighbour truncation): |F| at a 1e-6 Å rattle stays at its size at exact
    symmetry, and -dE/dr agrees with central differences 1e-3 Å from collinearity."""
    smooth = JMPCalculator(model(smooth=True, damping=damping), dtype="float64")
    plain = JMPCalculator(model(smooth=False), dtype="float64")
    cu = copper()
    exact = max(max_force(smooth, cu), 1e-8)
    scale = max_force(smooth, rattled(cu, 0.05))
    assert max_force(smooth, rattled(cu, 1e-6)) < exact + 1e-3 * scale
    assert max_force(plain, rattled(cu, 1e-6)) > 10 * scale  # the published function diverges here

    atoms = rattled(cu, 1e-3, seed=2)
    atoms.calc = smooth
    forces = atoms.get_forces()
    h = 1e-5
    for i, k in [(0, 0), (5, 1), (17, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        numeric = -(energy(smooth, plus) - energy(smooth, minus)) / (2 * h)
        assert numeric == pytest.approx(forces[i, k], abs=1e-6 * scale + 1e-9)


def test_smooth_setting_round_trips_through_the_model_file(tmp_path):
    net = model(smooth=True, damping=0.15)
    save_model(net, tmp_path / "m.ckpt")
    loaded = load_model(tmp_path / "m.ckpt")
    assert loaded.config.smooth_dihedral is True
    assert loaded.config.dihedral_damping == 0.15
    atoms = rattled(copper(), 0.05)
    assert energy(JMPCalculator(loaded, dtype="float64"), atoms) == pytest.approx(
        energy(JMPCalculator(net, dtype="float64"), atoms), abs=1e-9)


# ----------------------------------------------------------------------- pre-training heads
def test_conservative_pretraining_head_forces_stress_and_smooth_option(reference_dir):
    path = reference_dir / CKPT
    atoms = rattled(copper(), 0.05)
    atoms.set_cell(atoms.cell * 0.98, scale_atoms=True)
    calc = JMPCalculator.from_jmp_checkpoint(path, head=0, cutoff=6.0, max_neighbors=30,
                                             forces="conservative", dtype="float64")
    assert "stress" in calc.implemented_properties
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    h = 1e-5
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[3, 1] += h
    minus.positions[3, 1] -= h
    assert -(energy(calc, plus) - energy(calc, minus)) / (2 * h) == pytest.approx(forces[3, 1], rel=1e-5, abs=1e-8)
    strain = np.eye(3)
    strain[0, 0] += h
    grown = atoms.copy()
    grown.set_cell(atoms.cell @ strain, scale_atoms=True)
    strain[0, 0] -= 2 * h
    shrunk = atoms.copy()
    shrunk.set_cell(atoms.cell @ strain, scale_atoms=True)
    numeric = (energy(calc, grown) - energy(calc, shrunk)) / (2 * h) / atoms.get_volume()
    assert numeric == pytest.approx(stress[0], rel=1e-5, abs=1e-9)

    direct = JMPCalculator.from_jmp_checkpoint(path, head=0, cutoff=6.0, max_neighbors=30, dtype="float64")
    assert "stress" not in direct.implemented_properties
    assert energy(direct, atoms) == pytest.approx(energy(calc, atoms), rel=1e-12)
    smooth = JMPCalculator.from_jmp_checkpoint(path, head=0, cutoff=6.0, max_neighbors=30,
                                               forces="conservative", smooth_dihedral=True, dtype="float64")
    assert smooth.predictor.model.config.smooth_dihedral
    assert energy(smooth, atoms) != energy(calc, atoms)  # another function of the same weights
    with pytest.raises(ValueError, match="forces must be one of"):
        JMPCalculator.from_jmp_checkpoint(path, head=0, forces="gradient")
