"""Pre-training and fine-tuning runs killed with SIGKILL mid-epoch resume with no lost or repeated step."""
from __future__ import annotations

import csv
import signal
import subprocess
import time

import pytest
import torch
import yaml

from test_pretrain import PYTHON, REPO, pretrain_config, subprocess_env, write_datasets

MAX_STEPS = 12
EVERY = 4  # checkpoints at steps 4 (mid-epoch), 8 (end of the first epoch: 29 items, 8 batches of 4) and 12


def _config(data, out):
    cfg = pretrain_config(data, out, max_steps=MAX_STEPS, checkpoint_every_n_steps=EVERY)
    cfg["data"]["num_workers"] = 1  # prefetching worker: the resume position must not count its batches
    return cfg


def _launch(cfg_path, *args):
    return subprocess.Popen([PYTHON, "-m", "jmp_ase.training.pretrain", str(cfg_path), *args], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_after_checkpoint(proc, last, min_step):
    """SIGKILL ``proc`` as soon as ``last`` holds a checkpoint of step >= ``min_step``; its step."""
    deadline, step = time.time() + 150, None
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            if step >= min_step:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-training:\n{out[-3000:]}"
    return step


def _rows(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return {int(r["step"]): float(r["train/loss"]) for r in rows}, [int(r["step"]) for r in rows]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    data = write_datasets(tmp_path, n_slabs=10, n_mols=16)
    cfgs = {}
    for name in ("straight", "killed"):
        cfgs[name] = tmp_path / f"{name}.yaml"
        cfgs[name].write_text(yaml.safe_dump(_config(data, tmp_path / name)))
    straight = _launch(cfgs["straight"])
    last = tmp_path / "killed" / "last.ckpt"
    # killed twice: after the mid-epoch checkpoint, then after the end-of-epoch one
    assert _kill_after_checkpoint(_launch(cfgs["killed"]), last, EVERY) == EVERY
    assert _kill_after_checkpoint(_launch(cfgs["killed"], "--resume"), last, 2 * EVERY) == 2 * EVERY
    assert not (tmp_path / "killed" / "pretrain.ckpt").exists()

    resumed = _launch(cfgs["killed"], "--resume")
    out_resumed = resumed.communicate(timeout=150)[0]
    assert resumed.returncode == 0, out_resumed[-3000:]
    out_straight = straight.communicate(timeout=150)[0]
    assert straight.returncode == 0, out_straight[-3000:]

    a = torch.load(tmp_path / "straight" / "pretrain.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "killed" / "pretrain.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], rtol=1e-5, atol=1e-7), key
    for x, y in zip(a["optimizer_states"][0]["ema"], b["optimizer_states"][0]["ema"]):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-7)
    # the same batches in the same order: per-step losses agree, every step logged exactly once
    loss_a, steps_a = _rows(tmp_path / "straight" / "metrics.csv")
    loss_b, steps_b = _rows(tmp_path / "killed" / "metrics.csv")
    assert steps_a == steps_b == list(range(MAX_STEPS))
    for step in range(MAX_STEPS):
        assert abs(loss_a[step] - loss_b[step]) <= 1e-5 * max(1.0, abs(loss_a[step])), step


# ----------------------------------------------------------------------------- fine-tuning
FT_STEPS = 12  # 12 structures in batches of 2: 6 steps per epoch, 2 epochs


def _finetune_args(root, reference_dir, out):
    return ["finetune", "--pretrained", str(reference_dir / "jmp-tiny-pretrain.ckpt"), "--ema",
            "--train", str(root / "train.extxyz"), "--val", str(root / "val.extxyz"), "--cutoff", "4",
            "--max-neighbors", "8", "--max-epochs", "2", "--batch-size", "2", "--lr", "2e-3", "--accelerator",
            "cpu", "--checkpoint-every", "2", "--num-workers", "1", "--out", str(out), "--no-progress"]


def _launch_finetune(args):
    return subprocess.Popen([PYTHON, "-m", "jmp_ase.training.cli", *args], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_finetune_resume_after_sigkill_matches_uninterrupted_run(tmp_path, reference_dir):
    import ase.io

    from models import emt_clusters

    ase.io.write(tmp_path / "train.extxyz", emt_clusters(12, 0, gap=False), format="extxyz")
    ase.io.write(tmp_path / "val.extxyz", emt_clusters(3, 1, gap=False), format="extxyz")
    straight = _launch_finetune(_finetune_args(tmp_path, reference_dir, tmp_path / "straight"))
    killed = _finetune_args(tmp_path, reference_dir, tmp_path / "killed")
    last = tmp_path / "killed" / "last.ckpt"
    # killed in the middle of the first epoch (checkpoint at step 2 or 4 of 6)
    step = _kill_after_checkpoint(_launch_finetune(killed), last, 2)
    assert step < 6, step
    assert not (tmp_path / "killed" / "metrics.csv").exists()
    resumed = _launch_finetune(killed + ["--resume"])
    out_resumed = resumed.communicate(timeout=200)[0]
    assert resumed.returncode == 0, out_resumed[-3000:]
    out_straight = straight.communicate(timeout=200)[0]
    assert straight.returncode == 0, out_straight[-3000:]

    a = torch.load(tmp_path / "straight" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == FT_STEPS
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], rtol=1e-5, atol=1e-7), key
    assert len(a["optimizer_states"][0]["ema"]) == len(b["optimizer_states"][0]["ema"]) > 0
    for x, y in zip(a["optimizer_states"][0]["ema"], b["optimizer_states"][0]["ema"]):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-7)
    # the same batches in the same order: per-step losses agree, every step logged exactly once
    steps_a, steps_b = _csv(tmp_path / "straight" / "steps.csv"), _csv(tmp_path / "killed" / "steps.csv")
    assert [int(r["step"]) for r in steps_a] == [int(r["step"]) for r in steps_b] == list(range(FT_STEPS))
    for ra, rb in zip(steps_a, steps_b):
        assert abs(float(ra["loss"]) - float(rb["loss"])) <= 1e-5 * max(1.0, abs(float(ra["loss"]))), ra["step"]
        assert ra["batch"] == rb["batch"] and ra["lr"] == rb["lr"]
    rows_a, rows_b = _csv(tmp_path / "straight" / "metrics.csv"), _csv(tmp_path / "killed" / "metrics.csv")
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b] == ["0", "1"]
    for ra, rb in zip(rows_a, rows_b):  # epoch metrics include the steps before the kill
        for key in ("train_loss", "train_forces_mae", "val_loss", "val_energy_mae"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5), key
    ma = torch.load(tmp_path / "straight" / "model.ckpt", map_location="cpu", weights_only=True)
    mb = torch.load(tmp_path / "killed" / "model.ckpt", map_location="cpu", weights_only=True)
    for key, value in ma["state_dict"].items():
        assert torch.allclose(value, mb["state_dict"][key], rtol=1e-5, atol=1e-7), key
