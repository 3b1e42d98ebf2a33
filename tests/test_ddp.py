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
