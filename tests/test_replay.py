"""Multi-head replay (issue 15): fine-tuning keeps training the parent's pre-training heads on
their own data. The replay path must be the parent's own model (same energies and direct
forces as its calculator on that head), the heads must train but stay out of the model file,
and bad settings must be refused before any work."""
from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.io.model_file import load_model, resolve_model_path
from jmp_ase.io.pretrained import load_jmp_pretrained
from jmp_ase.training.cli import main
from jmp_ase.training.finetune import run_finetune
from jmp_ase.training.finetune_config import FinetuneConfig
from jmp_ase.training.parent import PretrainingHeads
from jmp_ase.training.replay import Replay
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from models import emt_clusters, methanol, water


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay")
    ase.io.write(folder / "pretrain.extxyz", emt_clusters(6, 1, gap=False), format="extxyz")
    ase.io.write(folder / "molecules.extxyz", emt_molecules(5), format="extxyz")
    ase.io.write(folder / "train.extxyz", emt_clusters(8, 2), format="extxyz")
    ase.io.write(folder / "val.extxyz", emt_clusters(4, 3), format="extxyz")
    return folder


def emt_molecules(n: int) -> list:
    """Rattled methanol and water labelled with EMT (H, C, O: elements of the molecules head)."""
    rng = np.random.default_rng(4)
    out = []
    for k in range(n):
        atoms = (methanol() if k % 2 else water())
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        out.append(atoms)
    return out


def test_replay_predicts_what_the_parents_heads_predict(data):
    """Through the parent's own backbone, every structure of a mixed replay batch gets the
    de-normalised energy and forces of the parent's calculator on its own data set's head (same
    graphs, heads and normalisation), the second head included."""
    path = resolve_model_path("jmp-mini")
    files = {"molecules-gfn2": data / "molecules.extxyz", "catalysis-emt": data / "pretrain.extxyz"}
    parent, _ = load_jmp_pretrained(path)
    replay = Replay(PretrainingHeads(parent.output, parent.task_info), {k: str(v) for k, v in files.items()}, (1, 2),
                    batch_size=11)
    with torch.no_grad():
        batch, energy, forces, targets = replay.predict(parent.eval())
    calcs = {name: JMPCalculator.from_jmp_checkpoint("jmp-mini", head=name, tags=tags, dtype="float32")
             for name, tags in (("catalysis-emt", "oc20"), ("molecules-gfn2", "ignore"))}
    frames = {name: ase.io.read(f, ":") for name, f in files.items()}
    infos = {t["name"]: t for t in replay.task_info}
    assert {name for name, _, _ in targets["ids"]} == set(files)
    start = 0
    for k, (name, index, _) in enumerate(targets["ids"]):
        info = infos[name]
        atoms = frames[name][index].copy()
        atoms.calc = calcs[name]
        refs = sum(info["element_references"][int(z)] for z in atoms.numbers)
        assert float(energy[k]) * info["energy_std"] + refs == pytest.approx(atoms.get_potential_energy(), abs=2e-4)
        n = len(atoms)
        np.testing.assert_allclose(forces[start:start + n].numpy() * info["force_rms"], atoms.get_forces(), atol=2e-4)
        start += n


def test_replay_trains_the_heads_but_leaves_them_out_of_the_model_file(data, tmp_path):
    out = tmp_path / "run"
    summary = run_finetune(dict(pretrained="jmp-mini", train=str(data / "train.extxyz"), val=str(data / "val.extxyz"),
                                targets=["gap"], out=str(out), max_epochs=2, batch_size=4, lr=1e-3, progress=False,
                                replay={"catalysis-emt": str(data / "pretrain.extxyz")}, replay_weight=0.5))
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    replay_losses = [float(r.split(",")[header.index("train_replay_loss")]) for r in rows[1:]]
    assert len(replay_losses) == 2 and all(np.isfinite(replay_losses))
    assert "pre-training loss" in json.loads((out / "metrics_units.json").read_text())["train_replay_loss"]
    model = load_model(summary["model"])
    assert not any(k.startswith("replay") or "out_energy" in k for k in model.state_dict())
    assert model.model_config.provenance["replay"]["weight"] == 0.5
    state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    parent, _ = load_jmp_pretrained(resolve_model_path("jmp-mini"))
    name = next(k for k in state if k.startswith("replay.heads.out_energy.0."))
    original = parent.state_dict()["output." + name.removeprefix("replay.heads.")]
    assert not torch.equal(state[name], original)  # the replayed head trained
    untouched = next(k for k in state if k.startswith("replay.heads.out_energy.1."))
    assert torch.equal(state[untouched], parent.state_dict()["output." + untouched.removeprefix("replay.heads.")])


@pytest.mark.parametrize("settings, message", [
    (dict(replay={"no-such-head": "PRETRAIN"}), "pre-training heads are"),
    (dict(replay={"catalysis-emt": "missing.extxyz"}), "replay data of head 'catalysis-emt'"),
    (dict(replay={"catalysis-emt": "x.extxyz"}, scratch=True), "needs a pre-trained parent"),
    (dict(replay={"catalysis-emt": "PRETRAIN"}, pretrained="jmp-mini-aspirin"), "has no pre-training heads"),
    (dict(replay={"catalysis-emt": "x.extxyz"}, replay_weight=0.0), "replay_weight must be positive"),
    (dict(replay=["catalysis-emt"]), "replay must map"),
])
def test_bad_replay_settings_are_refused(data, tmp_path, settings, message):
    base = dict(pretrained="jmp-mini", train=str(data / "train.extxyz"), val=str(data / "val.extxyz"), targets=["gap"],
                out=str(tmp_path / "run"), max_epochs=1, progress=False)
    if "replay" in settings and isinstance(settings["replay"], dict):
        settings["replay"] = {k: str(data / "pretrain.extxyz") if v == "PRETRAIN" else str(tmp_path / v)
                              for k, v in settings["replay"].items()}
    with pytest.raises(ValueError, match=message):
        config = FinetuneConfig.from_dict({**base, **settings})
        run_finetune(config)


@pytest.mark.parametrize("value, message", [
    ("catalysis-emt", "expected HEAD=FILE"),
    ("no-such-head=PRETRAIN", "pre-training heads are"),
])
def test_replay_option_of_the_command_line(data, tmp_path, value, message):
    value = value.replace("PRETRAIN", str(data / "pretrain.extxyz"))
    result = CliRunner().invoke(main, ["finetune", "--pretrained", "jmp-mini", "--train", str(data / "train.extxyz"),
                                       "--val", str(data / "val.extxyz"), "--targets", "gap", "--max-epochs", "1",
                                       "--out", str(tmp_path / "run"), "--no-progress", "--replay", value])
    assert result.exit_code != 0 and message in result.output


def test_the_replay_stream_goes_on_where_it_stopped(data):
    """restart(n) (a resumed run) gives the stream's batches from the (n+1)-th on, across the
    sampler's epochs, not its first ones again."""
    parent, _ = load_jmp_pretrained(resolve_model_path("jmp-mini"))
    files = {"molecules-gfn2": str(data / "molecules.extxyz"), "catalysis-emt": str(data / "pretrain.extxyz")}
    replay = Replay(PretrainingHeads(parent.output, parent.task_info), files, (1, 2), batch_size=4, seed=3)
    stream = replay.batches()
    first = [targets["ids"] for _, targets in (next(stream) for _ in range(7))]
    assert first[0] != first[3] or first[1] != first[4]  # more than one epoch of 3 batches, reshuffled
    replay.restart(4)
    stream = replay.batches()
    assert [targets["ids"] for _, targets in (next(stream) for _ in range(3))] == first[4:]


def test_a_run_with_replay_resumes(data, tmp_path):
    """The replayed heads and their EMA are part of last.ckpt: a resumed run continues with them,
    and with the replay stream where it stopped (one replay batch per step)."""
    settings = dict(pretrained="jmp-mini", train=str(data / "train.extxyz"), val=str(data / "val.extxyz"),
                    targets=["gap"], out=str(tmp_path / "run"), batch_size=4, lr=1e-3, progress=False,
                    replay={"catalysis-emt": str(data / "pretrain.extxyz")})
    run_finetune(dict(settings, max_epochs=1))
    checkpoint = torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=False)
    first = checkpoint["state_dict"]
    assert checkpoint["finetune_state"]["replay_batches"] == 2  # 8 structures in batches of 4
    run_finetune(dict(settings, max_epochs=2, resume=True))
    assert torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu",
                      weights_only=False)["finetune_state"]["replay_batches"] == 4
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "train_replay_loss" in rows[0]
    second = torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    name = next(k for k in first if k.startswith("replay.heads.out_energy.0."))
    assert not torch.equal(first[name], second[name])  # the heads kept training after the resume
