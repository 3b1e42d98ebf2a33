"""Guards against silent blow-ups: fine-tuning stops on exploding force errors, the calculator
warns about unphysical forces, and untagged slab data with fixed (ideal) layers trains."""
from __future__ import annotations

import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from jmp_ase import JMPCalculator
from jmp_ase.calculators.calculator import FORCE_WARNING
from jmp_ase.training.data import StructureDataset, collate
from jmp_ase.training.finetune import run_finetune
from jmp_ase.training.losses import check_force_errors
from models import tiny_model


def emt_slab_frames(n: int, seed: int = 0) -> list[Atoms]:
    """O on Cu(111), no tags (ASE's layer numbers removed), bottom layer fixed at its lattice
    sites, the rest rattled: ordinary slab data as a user has it, labelled by EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
        bottom = np.flatnonzero(slab.get_tags() == 3)
        add_adsorbate(slab, "O", 1.2, "fcc")
        slab.set_tags(0)
        moving = np.setdiff1d(np.arange(len(slab)), bottom)
        slab.positions[moving] += rng.normal(scale=0.08, size=(len(moving), 3))
        slab.set_constraint(FixAtoms(indices=bottom))
        slab.calc = EMT()
        energy, forces = slab.get_potential_energy(), slab.get_forces(apply_constraint=False)
        slab.calc = SinglePointCalculator(slab, energy=energy, forces=forces)
        frames.append(slab)
    return frames


def test_force_error_guard_names_the_structures(tmp_path):
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, emt_slab_frames(3), format="extxyz")
    dataset = StructureDataset(ase.io.read(path, ":"), ["energy", "forces"], tiny_model().graph_settings,
                               locations=[(str(path), k) for k in range(3)])
    batch, targets = collate([dataset[k] for k in range(3)])
    preds = {"forces": targets["forces"].clone()}
    check_force_errors(preds, targets, batch, limit=1.0)  # exact predictions pass
    preds["forces"][batch.atom_batch == 2] += 40.0
    with pytest.raises(FloatingPointError, match=r"frames\.extxyz: structure 2 \(69\.\d+ eV/Å\)"):
        check_force_errors(preds, targets, batch, limit=1.0)
    preds["forces"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="structure 0 .*structure 2"):
        check_force_errors(preds, targets, batch, limit=1.0)


def test_untagged_slab_frames_with_fixed_layers_fine_tune_normally(tmp_path):
    """Before the dihedral fix: test force MAE 850,652 meV/Å from such data (exit code 0)."""
    for name, frames in (("train", emt_slab_frames(12, 0)), ("val", emt_slab_frames(4, 1))):
        ase.io.write(tmp_path / f"{name}.extxyz", frames, format="extxyz")
    summary = run_finetune({
        "pretrained": "jmp-mini", "train": str(tmp_path / "train.extxyz"), "val": str(tmp_path / "val.extxyz"),
        "test": str(tmp_path / "val.extxyz"), "cutoff": 5.0, "max_neighbors": 16, "max_epochs": 3,
        "batch_size": 4, "lr": 1e-3, "warmup_epochs": 0.5, "cosine_epochs": 3, "loss_weights": {"energy": 1, "forces": 10},
        "out": str(tmp_path / "run"), "progress": False, "accelerator": "cpu",
    })
    labels = np.concatenate([a.get_forces() for a in ase.io.read(tmp_path / "val.extxyz", ":")])
    label_mae = np.abs(labels).mean()  # the error of predicting zero force
    assert summary["test"]["forces_mae"] < label_mae
    assert np.isfinite(summary["test"]["energy_mae"])


def test_calculator_warns_once_about_unphysical_forces():
    wild = tiny_model(elements=[1, 8], energy_scale=1e5)
    water = Atoms("OH2", positions=[[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]])
    calc = JMPCalculator(wild)
    water.calc = calc
    with pytest.warns(RuntimeWarning, match=rf"forces above {FORCE_WARNING:g} eV/Å .* at atoms \d"):
        water.get_forces()
    water.positions[0, 0] += 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        water.get_forces()  # once per calculator
        crowded = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.2]])  # a close contact: large forces are real
        crowded.calc = JMPCalculator(wild)
        assert np.abs(crowded.get_forces()).max() > FORCE_WARNING
        mild = JMPCalculator(tiny_model(elements=[1, 8]))
        water.calc = mild
        water.get_forces()
    torch.set_num_threads(1)
