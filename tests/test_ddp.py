"""Pre-training with Lightning's DDP: two CPU processes (gloo) on a micro model."""
from __future__ import annotations

import re
import subprocess

import pytest
import torch
import yaml

from jmp_ase.io.pretrained import load_jmp_pretrained
from test_pretrain import PYTHON, REPO, pretrain_config, subprocess_env, write_datasets

# Failures that mean "gloo cannot run here", not "the code is wrong".
_NO_GLOO = re.compile(r"Gloo connectFullMesh failed|gloo.*(?:interface|address|device)|getaddrinfo|"
                      r"no usable network interface|DistNetworkError|Address family not supported", re.I)


def test_ddp_two_processes(tmp_path):
    data = write_datasets(tmp_path)
    cfg = pretrain_config(data, tmp_path / "run", val=True, max_steps=6, devices=2, strategy="ddp",
                          checkpoint_every_n_steps=3, val_every_n_steps=3)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([PYTHON, "-m", "jmp_ase.training.pretrain", str(path)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=170)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 and _NO_GLOO.search(log):
        pytest.skip(f"gloo DDP cannot start in this sandbox: {_NO_GLOO.search(log).group(0)}")
    assert proc.returncode == 0, log[-4000:]
    assert "MEMBER: 2/2" in log and "distributed_backend=gloo" in log
    content = torch.load(tmp_path / "run" / "pretrain.ckpt", map_location="cpu", weights_only=True)
    assert content["global_step"] == 6
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val/mols/forces_mae" in header and "train/slabs/force_loss" in header  # validation synced over ranks
    model, names = load_jmp_pretrained(tmp_path / "run" / "pretrain.ckpt", ema=True)
    assert names == ["slabs", "mols"]
    # 36 items per epoch shared by 2 ranks in batches of 4: 5 batches per rank and epoch, so after
    # 6 steps the data position is epoch 1, batch 1 (one process alone would be at epoch 0, batch 6)
    last = torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "start_batch": 1, "seed": 0}]


def test_ddp_finetuning_two_processes(tmp_path, reference_dir):
    """Two gloo processes fine-tune to the end (parameters outside the loss, such as the
    backbone's force branch under an energy head, are frozen, not handed to DDP); the saved
    model's errors on the validation set are the logged ones (every structure counted once)."""
    import ase.io
    import csv

    from jmp_ase.io.model_file import load_model
    from jmp_ase.training.data import DatasetSpec
    from jmp_ase.training.finetune import predict_dataset
    from models import emt_clusters

    ase.io.write(tmp_path / "train.extxyz", emt_clusters(8, 0, gap=False), format="extxyz")
    ase.io.write(tmp_path / "val.extxyz", emt_clusters(5, 1, gap=False), format="extxyz")  # 3 + 2 per rank
    out = tmp_path / "run"
    args = ["finetune", "--pretrained", str(reference_dir / "jmp-tiny-pretrain.ckpt"), "--ema",
            "--train", str(tmp_path / "train.extxyz"), "--val", str(tmp_path / "val.extxyz"), "--cutoff", "4",
            "--max-neighbors", "8", "--max-epochs", "2", "--batch-size", "2", "--lr", "2e-3",
            "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--out", str(out), "--no-progress"]
    proc = subprocess.run([PYTHON, "-m", "jmp_ase.training.cli", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 and _NO_GLOO.search(log):
        pytest.skip(f"gloo DDP cannot start in this sandbox: {_NO_GLOO.search(log).group(0)}")
    assert proc.returncode == 0, log[-4000:]
    assert "MEMBER: 2/2" in log and "distributed_backend=gloo" in log
    assert "parameter tensors outside the loss frozen" in log and log.count("best epoch:") == 1
    # 8 structures over 2 ranks in batches of 2: 2 steps per epoch
    steps = list(csv.DictReader(open(out / "steps.csv")))
    assert [int(r["step"]) for r in steps] == [0, 1, 2, 3]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    best = min(rows, key=lambda r: float(r["val_loss"]))
    model = load_model(out / "model.ckpt")
    assert model.model_config.provenance["best_epoch"] == int(best["epoch"])
    cfg = model.model_config
    val = DatasetSpec.for_model(str(tmp_path / "val.extxyz"), ["energy", "forces"],
                                model.graph_settings).build(cfg.backbone.qint_tags)
    metrics = predict_dataset(model, val, 16, targets=["energy", "forces"]).metrics({}, {})
    for key in ("energy_mae", "forces_mae", "forces_rmse"):
        assert metrics[key] == pytest.approx(float(best[f"val_{key}"]), rel=1e-4), key
