"""Starting the fine-tuning energy head from a pre-training head (issue 15): the new model's
energies before any training are that head's energies plus a fitted per-element offset."""
from __future__ import annotations

import ase.io
import pytest

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.training.finetune import FinetuneConfig, build_model, make_datasets
from jmp_ase.training.finetune import _graph
from jmp_ase.training.parent import parent_of
from models import emt_clusters


def _build(tmp_path, **extra):
    frames = emt_clusters(12, 0, gap=False)
    tmp_path.mkdir(parents=True, exist_ok=True)
    ase.io.write(tmp_path / "train.extxyz", frames, format="extxyz")
    config = FinetuneConfig.from_dict(dict(pretrained="jmp-mini", train=str(tmp_path / "train.extxyz"),
                                           targets=["energy"], out=str(tmp_path / "run"), **extra))
    parent = parent_of(config)
    _, settings, _ = _graph(config, parent)
    model, info = build_model(config, make_datasets(config, settings)["train"], parent)
    return frames, model, info


def energy(calc, atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return float(atoms.get_potential_energy())


def test_energy_head_starts_at_the_pretraining_heads_energies(tmp_path):
    frames, model, info = _build(tmp_path, init_energy_head="catalysis-emt")
    start = info["energy_head_start"]
    assert start["offset_energy_mae"] <= start["zero_shot_energy_mae"]
    pretrained = JMPCalculator.from_jmp_checkpoint("jmp-mini", head="catalysis-emt", tags="ignore",
                                                   neighbor_order="canonical", dtype="float64")
    new = JMPCalculator(model.eval(), dtype="float64")
    for atoms in frames[:5]:
        offset = sum(start["offsets"][int(z)] for z in atoms.numbers)
        assert energy(new, atoms) == pytest.approx(energy(pretrained, atoms) + offset, abs=1e-6)


def test_unknown_pretraining_head_is_refused(tmp_path):
    with pytest.raises(ValueError, match="pre-training heads are"):
        _build(tmp_path, init_energy_head="no-such-head")
