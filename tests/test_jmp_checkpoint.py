"""Tests of jmp_ase.io.jmp_checkpoint: safe reading of original JMP checkpoints."""
from __future__ import annotations

import importlib.abc
import json
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from jmp_ase.nn.config import BackboneConfig, jmp_l, jmp_s, tiny
from jmp_ase.io.jmp_checkpoint import (
    ForeignObject,
    UnsafeCheckpointError,
    ema_keys,
    infer_backbone_config,
    read_jmp_checkpoint,
    safe_load,
)

CKPT = "jmp-tiny-pretrain.ckpt"


class _RefuseJMP(importlib.abc.MetaPathFinder):
    """Import hook that makes any ``jmp`` package unimportable."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "jmp" or fullname.startswith("jmp."):
            raise ImportError(f"test forbids importing {fullname}")
        return None


@pytest.fixture
def no_jmp(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_RefuseJMP(), *sys.meta_path])
    for name in list(sys.modules):
        if name == "jmp" or name.startswith("jmp."):
            monkeypatch.delitem(sys.modules, name)
    yield


def _raw_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return dict(safe_load(path)["state_dict"])


# ---------------------------------------------------------------------------
# Reading without the original package
# ---------------------------------------------------------------------------
def test_reads_fixture_without_jmp(reference_dir, no_jmp):
    with pytest.raises(ImportError):
        __import__("jmp")
    before = set(sys.modules)
    ckpt = read_jmp_checkpoint(reference_dir / CKPT)
    new = set(sys.modules) - before
    assert "jmp" not in sys.modules
    assert not any(m == "jmp" or m.startswith("jmp.") for m in new)
    assert ckpt.atom_embedding.shape == (120, 32)
    assert ckpt.source == str(reference_dir / CKPT)
    assert ckpt.ema is False
    assert all(not k.startswith("backbone.") for k in ckpt.backbone)
    assert "bases.radial_basis.rbf.offset" in ckpt.backbone
    # hyper_parameters come back as an inert placeholder of JMP's config class
    hparams = safe_load(reference_dir / CKPT)["hyper_parameters"]["hparams"]
    assert isinstance(hparams, ForeignObject)
    assert (hparams.foreign_module, hparams.foreign_name) == (
        "jmp.tasks.pretrain.module",
        "PretrainConfig",
    )
    assert "jmp" not in sys.modules


def test_plain_weights_only_load_fails(reference_dir):
    """Why the reader exists: torch's safe loader refuses JMP's pickled config class."""
    with pytest.raises(pickle.UnpicklingError):
        torch.load(reference_dir / CKPT, map_location="cpu", weights_only=True)


def test_task_names(reference_dir):
    assert read_jmp_checkpoint(reference_dir / CKPT).task_names == ["task0", "task1"]


def test_heads(reference_dir):
    ckpt = read_jmp_checkpoint(reference_dir / CKPT)
    assert ckpt.num_tasks == 2
    assert len(ckpt.energy_heads) == 2 and len(ckpt.force_heads) == 2
    for heads, d in ((ckpt.energy_heads, 32), (ckpt.force_heads, 48)):
        for head in heads:
            assert {k: tuple(v.shape) for k, v in head.items()} == {
                "0.weight": (d, d),
                "0.bias": (d,),
                "2.weight": (1, d),
            }
    sd = _raw_state_dict(reference_dir / CKPT)
    assert torch.equal(ckpt.force_heads[1]["0.bias"], sd["output.out_forces.1.0.bias"])
    assert torch.equal(ckpt.energy_heads[0]["2.weight"], sd["output.out_energy.0.2.weight"])


# ---------------------------------------------------------------------------
# Malicious pickles
# ---------------------------------------------------------------------------
class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("legacy", [False, True])
def test_os_system_is_rejected(tmp_path, legacy):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {
        "state_dict": {"backbone.x": torch.zeros(2)},
        "hyper_parameters": {"x": _Evil(os.system, f"echo pwned > {target}")},
    }
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        read_jmp_checkpoint(path)
    assert not target.exists()


def test_builtin_eval_is_rejected(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    code = f"open({str(target)!r}, 'w').write('x')"
    torch.save({"backbone.x": torch.zeros(1), "evil": _Evil(eval, code)}, path)
    with pytest.raises(UnsafeCheckpointError, match="eval"):
        safe_load(path)
    assert not target.exists()


def test_foreign_function_becomes_inert_placeholder(tmp_path, monkeypatch):
    """A global of a module that is not loaded is never imported nor called."""
    target = tmp_path / "called"
    fake = types.ModuleType("fake_foreign_pkg_xyz")

    def run(arg):
        target.write_text(arg)

    run.__module__ = fake.__name__
    run.__qualname__ = "run"
    fake.run = run
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"backbone.x": torch.ones(3)}, "hp": _Evil(run, "hello")}, path)
    monkeypatch.delitem(sys.modules, fake.__name__)

    loaded = safe_load(path)
    assert fake.__name__ not in sys.modules
    assert not target.exists()
    placeholder = loaded["hp"]
    assert isinstance(placeholder, ForeignObject)
    assert placeholder.foreign_args == ("hello",)
    assert torch.equal(loaded["state_dict"]["backbone.x"], torch.ones(3))


# ---------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------
def test_ema_rule(reference_dir):
    raw = safe_load(reference_dir / CKPT)
    sd = raw["state_dict"]
    ema = raw["optimizer_states"][0]["ema"]
    tracked = ema_keys(sd)
    assert len(tracked) == len(ema) == 163
    skipped = [k for k in sd if k not in set(tracked)]
    assert len(skipped) == len(sd) - 163
    assert all(
        k.endswith(("rbf.offset", "rbf.temps", "scale_factor")) or ".seq_energy_pre." in k
        for k in skipped
    )
    assert sum(k.endswith("scale_factor") for k in skipped) > 0

    ckpt = read_jmp_checkpoint(reference_dir / CKPT, ema=True)
    assert ckpt.ema is True
    merged = {"embedding.atom_embedding.weight": ckpt.atom_embedding}
    merged.update({"backbone." + k: v for k, v in ckpt.backbone.items()})
    for kind, heads in (("out_energy", ckpt.energy_heads), ("out_forces", ckpt.force_heads)):
        for i, head in enumerate(heads):
            merged.update({f"output.{kind}.{i}.{k}": v for k, v in head.items()})
    assert set(merged) == set(sd)
    for key, tensor in zip(tracked, ema):
        assert torch.equal(merged[key], tensor), key
    for key in skipped:
        if ".seq_energy_pre." in key:  # alias of layers: takes the EMA of its twin
            assert torch.equal(merged[key], merged[key.replace(".seq_energy_pre.", ".layers.")]), key
        else:
            assert torch.equal(merged[key], sd[key]), key
    # the EMA really differs from the raw weights (otherwise the test proves nothing)
    changed = [k for k in tracked if not torch.equal(merged[k], sd[k])]
    assert len(changed) > 100


def test_ema_missing_raises(reference_dir, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(_raw_state_dict(reference_dir / CKPT), path)
    read_jmp_checkpoint(path)  # fine without EMA
    with pytest.raises(ValueError, match="EMA"):
        read_jmp_checkpoint(path, ema=True)


def test_ema_length_mismatch_raises(reference_dir, tmp_path):
    raw = safe_load(reference_dir / CKPT)
    path = tmp_path / "short-ema.ckpt"
    torch.save(
        {
            "state_dict": raw["state_dict"],
            "optimizer_states": [{"ema": tuple(raw["optimizer_states"][0]["ema"])[:-1]}],
        },
        path,
    )
    with pytest.raises(ValueError, match=r"162 tensors .* 163"):
        read_jmp_checkpoint(path, ema=True)


# ---------------------------------------------------------------------------
# Other layouts and broken files
# ---------------------------------------------------------------------------
def test_bare_state_dict_and_state_dict_only(reference_dir, tmp_path):
    sd = _raw_state_dict(reference_dir / CKPT)
    reference = read_jmp_checkpoint(reference_dir / CKPT)
    for name, obj in (("bare.pt", sd), ("wrapped.pt", {"state_dict": sd})):
        torch.save(obj, tmp_path / name)
        ckpt = read_jmp_checkpoint(tmp_path / name)
        assert ckpt.task_names is None
        assert len(ckpt.energy_heads) == 2
        assert torch.equal(ckpt.atom_embedding, reference.atom_embedding)
        assert ckpt.backbone.keys() == reference.backbone.keys()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match="notes.txt"):
        read_jmp_checkpoint(path)


def test_missing_backbone(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"model.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match=r"other\.pt.*backbone"):
        read_jmp_checkpoint(path)


# ---------------------------------------------------------------------------
# Backbone configuration from shapes
# ---------------------------------------------------------------------------
def _meta_state(tsv: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for line in tsv.read_text().splitlines():
        if not line.strip():
            continue
        key, _, shape = line.partition("\t")
        dims = tuple(int(s) for s in shape.split(",") if s.strip())
        state[key] = torch.empty(dims, device="meta")
    embedding = state.pop("embedding.atom_embedding.weight")
    return state, embedding


def test_infer_tiny(reference_dir):
    ckpt = read_jmp_checkpoint(reference_dir / CKPT)
    assert infer_backbone_config(ckpt.backbone, ckpt.atom_embedding) == tiny()
    meta = json.loads((reference_dir / "meta.json").read_text())
    assert ckpt.backbone_config() == BackboneConfig.from_jmp(meta["backbone_config"])


@pytest.mark.parametrize("name, expected", [("jmp-s", jmp_s), ("jmp-l", jmp_l)])
def test_infer_published_sizes(reference_dir, name, expected):
    state, embedding = _meta_state(reference_dir / f"{name}-state-dict.tsv")
    config = infer_backbone_config(state, embedding)
    assert config == expected()
    jmp_config = json.loads((reference_dir / f"{name}-config.json").read_text())
    assert config == BackboneConfig.from_jmp(jmp_config)
    # keys without the "backbone." prefix work the same
    stripped = {k[len("backbone."):]: v for k, v in state.items()}
    assert infer_backbone_config(stripped, embedding) == expected()


def test_infer_rejects_partial_variant(reference_dir):
    state, embedding = _meta_state(reference_dir / "jmp-s-state-dict.tsv")
    state = {k: v for k, v in state.items() if ".quad_interaction." not in k}
    with pytest.raises(ValueError, match="quad_interaction"):
        infer_backbone_config(state, embedding)
