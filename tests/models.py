"""Test helpers: small randomly initialised fine-tuned models and structures.

A fresh model has unfitted scale factors (identity), which is fine for tests. The
radial basis cutoff is set to the graph cutoff so that the energy goes smoothly to
zero as edges leave the graph (finite differences and MD conservation need this),
and ``max_neighbors`` is large so that no neighbour shell is ever cut.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from jmp_ase.nn.config import tiny
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.nn.model import FineTunedModel, ModelConfig

ELEMENTS = [1, 6, 7, 8, 11, 14, 17]


def tiny_model(seed: int = 0, heads: list[HeadSpec] | None = None, cutoff: float = 4.0,
               max_neighbors: int = 100, elements: list[int] | None = None,
               energy_scale: float = 0.1) -> FineTunedModel:
    """A tiny random FineTunedModel (eval mode, float32) with a smooth energy.

    ``energy_scale`` scales the raw energy head (eV per atom) to keep random forces mild.
    """
    torch.manual_seed(seed)
    backbone = dataclasses.replace(tiny(), absolute_rbf_cutoff=float(cutoff))
    if heads is None:
        heads = [HeadSpec("energy", scale=energy_scale, shift=-1.0, element_references={1: -0.5, 8: -2.0})]
    config = ModelConfig(
        backbone=backbone, heads=heads, cutoff=cutoff, max_neighbors=max_neighbors,
        elements=list(ELEMENTS if elements is None else elements),
        provenance={"parent": "random init (tests)", "data": "none", "seed": seed},
    )
    return FineTunedModel(config).eval()


def water() -> Atoms:
    """An H2O molecule (no cell, pbc False)."""
    return Atoms("OH2", positions=[[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]])


def methanol() -> Atoms:
    """A slightly distorted CH3OH molecule (6 atoms, no symmetry)."""
    pos = [[-0.047, 0.664, 0.0], [-0.047, -0.758, 0.0], [-1.086, 0.975, 0.0],
           [0.437, 1.08, 0.89], [0.437, 1.09, -0.88], [0.861, -1.08, 0.02]]
    return Atoms("COHHHH", positions=pos)


def triclinic_crystal(seed: int = 0, rattle: float = 0.05) -> Atoms:
    """A low-symmetry 4-atom triclinic cell (Na, Cl, Si, O), 3-D periodic, rattled."""
    cell = [[4.7, 0.0, 0.0], [0.8, 4.5, 0.0], [0.46, -0.58, 4.95]]
    frac = [[0.02, 0.03, 0.01], [0.48, 0.51, 0.47], [0.23, 0.71, 0.29], [0.74, 0.22, 0.78]]
    atoms = Atoms("NaClSiO", scaled_positions=frac, cell=cell, pbc=True)
    if rattle:
        atoms.positions += np.random.default_rng(seed).normal(scale=rattle, size=(len(atoms), 3))
    return atoms


def emt_clusters(n: int, seed: int, gap: bool = True) -> list[Atoms]:
    """Cu/Pt clusters of 3-4 atoms labelled with EMT, with a made-up graph-level 'gap'."""
    rng = np.random.default_rng(seed)
    grid = np.array([[0, 0, 0], [2.4, 0, 0], [0, 2.4, 0], [0, 0, 2.4]], dtype=float)
    out = []
    for k in range(n):
        nat = 3 + k % 2
        atoms = Atoms(rng.choice(["Cu", "Pt"], nat), positions=grid[:nat] + rng.normal(scale=0.12, size=(nat, 3)))
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        if gap:
            atoms.info["gap"] = 1.0 + 0.3 * nat + 0.1 * rng.normal()
        out.append(atoms)
    return out
