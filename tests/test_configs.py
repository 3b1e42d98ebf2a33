"""The typed configs of jmp-train (fine-tuning and pre-training): one loader, one coercion."""
import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

import jmp_ase.training.pretrain_config as pretrain_config
from jmp_ase.training.finetune_config import FinetuneConfig
from jmp_ase.training.pretrain_config import PretrainConfig

DATASET = {"name": "a", "train": "a.extxyz"}


def pretraining(**values):
    return PretrainConfig.from_dict({"data": {"datasets": [DATASET]}, "trainer": {"max_steps": 3}, **values})


def test_yaml_numbers_without_a_dot_become_numbers(tmp_path):
    # YAML 1.1 reads 1e-1 and 2e3 as strings
    (tmp_path / "p.yaml").write_text("data: {datasets: [{name: a, train: a.extxyz, cutoff: 6}]}\n"
                                     "optim: {lr: 1e-1, warmup_steps: 2e3}\ntrainer: {max_steps: '10'}\n")
    assert isinstance(yaml.safe_load((tmp_path / "p.yaml").read_text())["optim"]["lr"], str)
    config = PretrainConfig.from_yaml(tmp_path / "p.yaml")
    assert config.optim.lr == 0.1 and type(config.optim.lr) is float
    assert config.optim.warmup_steps == 2000 and type(config.optim.warmup_steps) is int
    assert config.trainer.max_steps == 10 and config.data.datasets[0].cutoff == 6.0
    assert type(config.data.datasets[0].cutoff) is float
    (tmp_path / "f.yaml").write_text("train: t.extxyz\nscratch: true\nlr: 1e-1\nmax_epochs: '3'\n")
    finetune = FinetuneConfig.from_yaml(tmp_path / "f.yaml")
    assert finetune.lr == 0.1 and type(finetune.lr) is float and finetune.max_epochs == 3


def test_bad_values_and_unknown_keys_are_named():
    with pytest.raises(ValueError, match="setting optim.lr must be a number, got 'fast'"):
        pretraining(optim={"lr": "fast"})
    with pytest.raises(ValueError, match="setting trainer.max_steps must be a whole number, got 2.5"):
        pretraining(trainer={"max_steps": 2.5})
    with pytest.raises(ValueError, match="setting trainer.progress_bar must be true or false"):
        pretraining(trainer={"max_steps": 3, "progress_bar": "maybe"})
    with pytest.raises(ValueError, match="unknown pre-training setting 'max_steps'"):
        pretraining(max_steps=3)
    with pytest.raises(ValueError, match=r"unknown pre-training setting data.datasets\[0\].'cutof'"):
        PretrainConfig.from_dict({"data": {"datasets": [{**DATASET, "cutof": 5}]}, "trainer": {"max_steps": 1}})
    with pytest.raises(ValueError, match="data.datasets is empty"):
        PretrainConfig.from_dict({"trainer": {"max_steps": 1}})
    with pytest.raises(ValueError, match="set trainer.max_steps or trainer.max_epochs"):
        PretrainConfig.from_dict({"data": {"datasets": [DATASET]}})
    with pytest.raises(ValueError, match="setting lr must be a number, got 'fast'"):
        FinetuneConfig.from_dict({"train": "t.extxyz", "scratch": True, "lr": "fast"})
    with pytest.raises(ValueError, match="unknown fine-tuning setting 'learning_rate'"):
        FinetuneConfig.from_dict({"learning_rate": 1.0})


def test_sections_can_be_turned_off_and_optim_is_a_plain_dict():
    config = pretraining(ema=None, scale_fit=None)
    assert config.ema is None and config.scale_fit is None
    assert dataclasses.asdict(config.optim) == {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1,
                                                "warmup_steps": 2000, "warmup_start_lr_factor": 0.2,
                                                "min_lr_factor": 0.1, "gradient_clip": 1.0}


def test_every_pretraining_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(pretrain_config))
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert {c.name for c in classes} >= {"PretrainConfig", "DatasetConfig", "TrainerSettings"}
    for cls in classes:
        body = cls.body
        for k, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                following = body[k + 1] if k + 1 < len(body) else None
                documented = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) \
                    and isinstance(following.value.value, str) and following.value.value.strip()
                assert documented, f"{cls.name}.{node.target.id} has no docstring"


def test_shipped_configs_load():
    root = Path(__file__).parents[1]
    PretrainConfig.from_yaml(root / "benchmarks" / "mini_jmp" / "pretrain.yaml")
    example = FinetuneConfig.from_yaml(root / "configs" / "finetune-aspirin.yaml")
    assert example.loss == "mse" and example.max_neighbors is None
