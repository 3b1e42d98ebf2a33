"""The jmp-train command line: finetune (YAML + overrides, resume), evaluate, pretrain hook."""
import csv
import dataclasses
import json
import os
import sys
import types

import ase.io
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from jmp_ase import __version__
from models import emt_clusters
from jmp_ase.training.cli import main
from jmp_ase.training.pretrain_config import PretrainConfig


def write_clusters(path, n, seed):
    ase.io.write(path, emt_clusters(n, seed, gap=False), format="extxyz")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, reference_dir):
    """A 1-epoch fine-tuning run through the CLI (YAML file + overriding options)."""
    root = tmp_path_factory.mktemp("cli")
    write_clusters(root / "train.extxyz", 10, 0)
    write_clusters(root / "val.extxyz", 4, 1)
    config = {
        "pretrained": "jmp-mini", "train": "overridden.extxyz", "val": str(root / "val.extxyz"),
        "targets": ["energy", "forces"], "cutoff": 4.0, "max_neighbors": 8, "max_epochs": 5, "batch_size": 5,
        "lr": "2e-3", "warmup_epochs": 0.5, "cosine_epochs": 2, "ema_decay": 0.5, "accelerator": "cpu",
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, [
        "finetune", str(root / "config.yaml"), "--pretrained", str(reference_dir / "jmp-tiny-pretrain.ckpt"),
        "--ema", "--train", str(root / "train.extxyz"), "--max-epochs", "1", "--out", str(root / "run"),
        "--seed", "3", "--no-progress",
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root, result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_finetune_command(run_dir):
    root, output = run_dir
    assert "best epoch: 0" in output and "meV/Å" in output
    assert "; 1 CPU thread per process;" in output  # the start-up line: --threads defaults to 1
    assert "structures/s per process" in output and "waiting for data" in output
    header = open(root / "run" / "steps.csv").readline().strip().split(",")
    assert header == ["step", "epoch", "batch", "loss", "lr", "structures", "data_s", "step_s"]
    for name in ("model.ckpt", "last.ckpt", "metrics.csv"):
        assert (root / "run" / name).is_file()
    assert len(list(csv.DictReader(open(root / "run" / "metrics.csv")))) == 1
    units = json.loads((root / "run" / "metrics_units.json").read_text())
    header = open(root / "run" / "metrics.csv").readline().strip().split(",")
    assert list(units) == header  # a unit for every column
    assert units["val_forces_mae"] == "eV/Å" and units["train_energy_rmse"] == "eV" and units["epoch"] == "count"
    assert units["val_loss"].startswith("dimensionless")


def test_finetune_refuses_existing_run_and_resumes(run_dir, reference_dir):
    root, _ = run_dir
    parent = str(reference_dir / "jmp-tiny-pretrain.ckpt")
    args = ["finetune", str(root / "config.yaml"), "--pretrained", parent, "--ema", "--seed", "3",
            "--train", str(root / "train.extxyz"), "--out", str(root / "run"), "--no-progress"]
    before = (root / "run" / "model.ckpt").read_bytes()
    result = CliRunner().invoke(main, args + ["--max-epochs", "2"])
    assert result.exit_code == 1 and "already holds a run" in result.output and "Traceback" not in result.output
    # a parent inside --out would be overwritten by the run's best model: refused, even to resume
    as_parent = [a if a != parent else str(root / "run" / "model.ckpt") for a in args]
    result = CliRunner().invoke(main, as_parent + ["--max-epochs", "2", "--resume"])
    assert result.exit_code == 1 and "holds the parent model" in result.output
    assert (root / "run" / "model.ckpt").read_bytes() == before
    result = CliRunner().invoke(main, args + ["--max-epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = list(csv.DictReader(open(root / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    steps = list(csv.DictReader(open(root / "run" / "steps.csv")))
    assert [int(r["step"]) for r in steps] == list(range(4))  # 10 structures, batches of 5, 2 epochs


def test_finetune_clear_errors(tmp_path):
    result = CliRunner().invoke(main, ["finetune", "--scratch", "--train", str(tmp_path / "missing.extxyz"),
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "missing.extxyz" in result.output
    result = CliRunner().invoke(main, ["finetune", "--train", "x.extxyz"])
    assert result.exit_code != 0 and "parent model" in result.output


def test_evaluate_writes_csv_and_plot(run_dir, tmp_path):
    root, _ = run_dir
    result = CliRunner().invoke(main, ["evaluate", str(root / "run" / "model.ckpt"), str(root / "val.extxyz"),
                                       "--out", str(tmp_path / "eval"), "--threads", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "jmp-train evaluate: 1 CPU thread per process" in result.output
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["units"] == {"energy_mae": "eV", "energy_rmse": "eV", "forces_mae": "eV/Å", "forces_rmse": "eV/Å",
                                "loss": "mixed: the sum of each target's mean error in its own unit"}
    assert "energy: MAE" in result.output and "meV" in result.output and "forces: MAE" in result.output
    rows = list(csv.DictReader(open(tmp_path / "eval" / "predictions.csv")))
    assert len(rows) == 4
    assert set(rows[0]) == {"structure", "natoms", "energy_label", "energy_pred", "forces_mae"}
    labels = [a.get_potential_energy() for a in ase.io.read(root / "val.extxyz", ":")]
    np.testing.assert_allclose([float(r["energy_label"]) for r in rows], labels, rtol=1e-6)
    assert (tmp_path / "eval" / "parity.png").stat().st_size > 1000
    result = CliRunner().invoke(main, ["evaluate", str(root / "run" / "model.ckpt"), str(root / "val.extxyz"),
                                       "--targets", "gap", "--out", str(tmp_path / "e2")])
    assert result.exit_code != 0 and "no label 'gap'" in result.output


def test_metric_units():
    from jmp_ase.training.metric_units import axis_label, metric_unit

    assert metric_unit("val/mols/forces_mae") == "eV/Å" and metric_unit("stress_rmse") == "eV/Å³"
    assert metric_unit("test_gap_mae", {"gap": "eV"}) == "eV" and metric_unit("val_gap_mae") == "the label's unit"
    assert metric_unit("train/slabs/force_loss").startswith("dimensionless")
    assert axis_label("predicted", "forces") == "predicted forces (eV/Å)"
    with pytest.raises(ValueError, match="no unit known for the metric 'wall'"):
        metric_unit("wall")


def test_threads_default_to_one_and_are_set_before_the_work(tmp_path, monkeypatch):
    import torch

    from jmp_ase.training.threads import use_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert use_threads(None) == 1 and torch.get_num_threads() == 1
        assert use_threads(2) == 2 and torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == "2"  # inherited by DDP and DataLoader worker processes
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert use_threads(None) == 3 and torch.get_num_threads() == 3  # what the user exported
    finally:
        torch.set_num_threads(before)
    for command in (["finetune", "--scratch", "--train", "x.extxyz"], ["pretrain", __file__],
                    ["evaluate", "jmp-mini", __file__]):
        result = CliRunner().invoke(main, command + ["--threads", "0"])
        assert result.exit_code == 1 and "Error: --threads must be at least 1, got 0" in result.output, command


def test_pretrain_hook_calls_run_pretrain(tmp_path, monkeypatch):
    seen = {}
    fake = types.ModuleType("jmp_ase.training.pretrain")
    def fake_run(config, resume=None):
        seen.update(config=config, resume=resume)
        return "pretrain.ckpt"

    fake.run_pretrain = fake_run
    monkeypatch.setitem(sys.modules, "jmp_ase.training.pretrain", fake)
    write_clusters(tmp_path / "a.extxyz", 3, 0)
    config = {"out_dir": str(tmp_path / "out"), "data": {"datasets": [{"name": "a", "train": str(tmp_path / "a.extxyz")}]},
              "trainer": {"max_epochs": 2}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["pretrain", str(tmp_path / "p.yaml")])
    assert result.exit_code == 0, result.output
    assert seen == {"config": PretrainConfig.from_dict(config), "resume": None}
    assert "wrote pretrain.ckpt" in result.output
    result = CliRunner().invoke(main, ["pretrain", str(tmp_path / "p.yaml"), "--resume"])
    assert result.exit_code == 0 and seen["resume"] is True
    result = CliRunner().invoke(main, ["pretrain", str(tmp_path / "p.yaml"), "--devices", "2", "--strategy", "ddp",
                                       "--num-nodes", "3", "--checkpoint-every", "50"])
    assert result.exit_code == 0, result.output
    trainer = PretrainConfig.from_dict(config).trainer
    assert seen["config"].trainer == dataclasses.replace(trainer, devices=2, strategy="ddp", num_nodes=3,
                                                         checkpoint_every_n_steps=50)
    result = CliRunner().invoke(main, ["pretrain", str(tmp_path / "p.yaml"), "--num-nodes", "0"])
    assert result.exit_code == 1 and "Error: --num-nodes must be positive" in result.output


def test_pretrain_refuses_bad_input_before_training(tmp_path, monkeypatch):
    fake = types.ModuleType("jmp_ase.training.pretrain")
    fake.run_pretrain = lambda config, resume=None: pytest.fail("run_pretrain reached")
    monkeypatch.setitem(sys.modules, "jmp_ase.training.pretrain", fake)
    write_clusters(tmp_path / "a.extxyz", 3, 0)
    out = tmp_path / "out"
    config = {"out_dir": str(out), "data": {"datasets": [{"name": "a", "train": str(tmp_path / "a.extxyz")},
                                                          {"name": "b", "train": str(tmp_path / "b.extxyz")}]},
              "trainer": {"max_steps": 1}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["pretrain", str(tmp_path / "p.yaml")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "'b'" in result.output
    assert "b.extxyz" in result.output
    config["data"]["datasets"].pop()
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    out.mkdir()
    (out / "pretrain.ckpt").write_bytes(b"x")
    result = CliRunner().invoke(main, ["pretrain", str(tmp_path / "p.yaml")])
    assert result.exit_code == 1 and "already holds a run (pretrain.ckpt)" in result.output
    assert (out / "pretrain.ckpt").read_bytes() == b"x"


def test_info_refuses_weights_that_do_not_fit(run_dir, tmp_path):
    import torch

    from jmp_ase.io.model_file import checksum

    root, _ = run_dir
    content = torch.load(root / "run" / "model.ckpt", map_location="cpu", weights_only=True)
    key = "embedding.atom_embedding.weight"
    content["state_dict"][key] = content["state_dict"][key][:, :-1].clone()
    content["checksum"] = checksum(content["config"], content["state_dict"])
    torch.save(content, tmp_path / "bad.ckpt")
    result = CliRunner().invoke(main, ["info", str(tmp_path / "bad.ckpt")])
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    assert "Traceback" not in result.output
    good = CliRunner().invoke(main, ["info", str(root / "run" / "model.ckpt")])
    assert good.exit_code == 0 and '"best_epoch"' in good.output


def test_info_reads_the_model_file_once(monkeypatch):
    import torch

    reads = []
    real = torch.load

    def counting(*args, **kwargs):
        reads.append(args[0] if args else kwargs.get("f"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    for name, expected in (("jmp-mini", "head "), ("jmp-mini-aspirin", "model: cutoff")):
        reads.clear()
        result = CliRunner().invoke(main, ["info", name])
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert expected in result.output and len(reads) == 1, (name, reads)


def test_evaluate_refuses_elements_the_model_never_saw(tmp_path):
    """jmp-mini-aspirin knows H, C, O: a labelled Cu cell is refused, as the calculator refuses it."""
    from ase.build import bulk, molecule
    from ase.calculators.emt import EMT

    frames = []
    for atoms in (molecule("CH4"), bulk("Cu", cubic=True)):
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    ase.io.write(tmp_path / "mixed.extxyz", frames)
    args = ["evaluate", "jmp-mini-aspirin", str(tmp_path / "mixed.extxyz"), "--out", str(tmp_path / "eval")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Cu in structures [1]" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "eval").exists()
    result = CliRunner().invoke(main, args + ["--allow-unknown-elements"])
    assert result.exit_code == 0, result.output


def test_finetune_lean_memory_gives_the_same_losses(run_dir, reference_dir):
    """--memory lean (chunked, recomputed interactions) trains as the default run does: the same
    per-step losses to float32 round-off, and the setting is not saved in the model file."""
    root, _ = run_dir
    result = CliRunner().invoke(main, [
        "finetune", str(root / "config.yaml"), "--pretrained", str(reference_dir / "jmp-tiny-pretrain.ckpt"),
        "--ema", "--train", str(root / "train.extxyz"), "--max-epochs", "1", "--out", str(root / "lean"),
        "--seed", "3", "--no-progress", "--memory", "lean",
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "memory lean" in result.output
    fast = [float(r["loss"]) for r in csv.DictReader(open(root / "run" / "steps.csv"))]
    lean = [float(r["loss"]) for r in csv.DictReader(open(root / "lean" / "steps.csv"))]
    assert len(lean) == 2 and len(fast) >= 2  # (another test may have resumed the default run further)
    np.testing.assert_allclose(lean, fast[:2], rtol=1e-4)
    from jmp_ase.io.model_file import load_model

    assert load_model(root / "lean" / "model.ckpt").memory == "auto"
    bad = CliRunner().invoke(main, ["finetune", str(root / "config.yaml"), "--memory", "tiny"])
    assert bad.exit_code == 2 and "--memory" in bad.output


def test_evaluate_and_the_calculator_share_one_evaluator(tmp_path):
    """jmp-train evaluate (model on graph batches) and labelled_errors (JMPCalculator) report the same errors."""
    import json
    from pathlib import Path

    from jmp_ase.calculators.calculator import JMPCalculator
    from jmp_ase.calculators.evaluation import labelled_errors
    from jmp_ase.io.model_file import model_provenance

    data = Path(__file__).parent / "data" / "shipped" / model_provenance("jmp-mini-aspirin")["test_slice"]["file"]
    result = CliRunner().invoke(main, ["evaluate", "jmp-mini-aspirin", str(data), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    written = json.loads((tmp_path / "metrics.json").read_text())
    found = labelled_errors(JMPCalculator("jmp-mini-aspirin"), ase.io.read(data, ":"))
    assert written["structures"] == found["structures"] == 20
    for key in ("energy_mae", "forces_mae"):  # training batches hold labels in float32: ~1e-4 eV of ~1e3 eV
        assert written[key] == pytest.approx(found[key], rel=1e-3), key
