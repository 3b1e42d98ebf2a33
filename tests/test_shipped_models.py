"""The models shipped in jmp_ase/models/ (used by md_examples/ by default) load and predict.

Fast (tiny backbones, structures of a few atoms) and independent of the mini-JMP data: the
expected element lists below are those of the training data (see jmp_ase/models/README.md).
"""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms

from jmp_ase.calculator import JMPCalculator
from jmp_ase.checkpoint import MODELS_DIR, load_model, shipped_models


def acetic_acid() -> Atoms:
    return molecule("CH3COOH")  # H, C, O only: the aspirin model's elements


def cu_slab_with_o() -> Atoms:
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    layer = slab.get_tags()  # 1 (top) .. 3 (bottom)
    add_adsorbate(slab, Atoms("O"), 1.2, position="fcc")
    tags = np.full(len(slab), 2)
    tags[: len(layer)] = np.where(layer == 1, 1, 0)
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(indices=np.flatnonzero(layer == 3)))
    return slab


# name -> (structure of the domain, atomic numbers of the training data)
SHIPPED = {
    "jmp-mini-aspirin": (acetic_acid, [1, 6, 8]),  # aspirin-gfn1: H C O
    # catalysis-emt: H C N O Al Ni Cu Pd Ag Pt Au
    "jmp-mini-catalysis": (cu_slab_with_o, [1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79]),
}


def test_shipped_names():
    assert set(SHIPPED) <= set(shipped_models())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_file_small(name):
    assert (MODELS_DIR / f"{name}.ckpt").stat().st_size < 3 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_loads_by_name_with_provenance(name):
    model = load_model(name)
    provenance = model.model_config.provenance
    assert "status" in provenance and "interim" in provenance["status"]
    for key in ("train_data", "n_train_structures", "epochs", "test_energy_mae_meV", "test_forces_mae_meV_per_A"):
        assert key in provenance, key
    assert sorted(model.model_config.elements) == SHIPPED[name][1]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_predicts_finite(name):
    atoms = SHIPPED[name][0]()
    assert set(atoms.numbers) <= set(SHIPPED[name][1])
    atoms.calc = JMPCalculator(name)
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert np.isfinite(energy)
    assert forces.shape == (len(atoms), 3) and np.isfinite(forces).all()
