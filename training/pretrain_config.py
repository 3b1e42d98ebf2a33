"""Settings of a pre-training run (:class:`PretrainConfig`, the YAML file of ``jmp-train
pretrain``; see ``benchmarks/mini_jmp/pretrain.yaml``), importable without torch or Lightning so
that bad settings are refused within a second. Loading and type coercion are shared with
fine-tuning (:mod:`jmp_ase.training.config_io`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from jmp_ase.training.config_io import build, read_yaml_mapping

TAG_RULES = ("ignore", "oc20")


@dataclass
class DatasetConfig:
    """One entry of ``data.datasets``: a data set with its own graph settings and loss weights."""

    name: str = ""
    """Name of the data set (its head in ``pretrain.ckpt``); required."""
    train: str | list | None = None
    """Training structures: a file (.extxyz/.xyz, ASE .db, .lmdb) or a list of files; required.
    extxyz and LMDB are read frame by frame; an ASE database is read into memory."""
    val: str | list | None = None
    """Validation structures (none: no validation of this data set)."""
    train_index: str | int = ":"
    """Which training structures, as an ASE index (``":1000"``, ``"::2"``)."""
    val_index: str | int = ":"
    """Which validation structures, as an ASE index."""
    format: str | None = None
    """File format (default: from the file name)."""
    cutoff: float = 12.0
    """Graph cutoff in Å."""
    max_neighbors: int = 30
    """Neighbours per atom."""
    tags: str = "ignore"
    """``ignore`` (every atom tag 2) or ``oc20`` (the data's OC20 tags decide the quadruplet graph)."""
    energy_loss_scale: float = 1.0
    """Weight of the energy loss (JMP's λ_E)."""
    force_loss_scale: float | None = None
    """Weight of the force loss (JMP's λ_F); None: the data set's mean number of atoms."""

    def _check(self, where: str) -> None:
        if not self.name or not self.train:
            raise ValueError(f"{where} needs a 'name' and a 'train' path, got {dataclasses.asdict(self)}")
        if self.tags not in TAG_RULES:
            raise ValueError(f"{where}.tags must be one of {list(TAG_RULES)}, got {self.tags!r}")
        if not self.cutoff > 0 or self.max_neighbors < 1:
            raise ValueError(f"{where}: cutoff must be positive and max_neighbors at least 1")


@dataclass
class ModelSettings:
    """The network: backbone, heads, dropout."""

    backbone: str | dict = "jmp-s"
    """A named backbone (``jmp-s``, ``jmp-l``, ``tiny``) or a mapping of BackboneConfig fields."""
    num_mlps: int = 5
    """Residual MLP layers of each energy and force head."""
    dropout: float | None = None
    """Dropout of the backbone's interaction blocks (None: none)."""
    edge_dropout: float | None = 0.1
    """Probability of dropping each edge of the radius graph in training (None or 0: none)."""


@dataclass
class DataSettings:
    """The data sets and how batches are drawn from them."""

    datasets: list[DatasetConfig] = field(default_factory=list)
    """The data sets (at least one)."""
    temperature: float = 2.0
    """Temperature of the sampling: data set k is drawn with probability ∝ size_k^(1/T)."""
    batch_size: int = 8
    """Structures per batch and process."""
    val_batch_size: int | None = None
    """Structures per validation batch (None: batch_size)."""
    num_workers: int = 0
    """DataLoader worker processes (they read structures and build graphs)."""
    streaming: bool = False
    """True: keep nothing per structure but its atom count (data larger than memory): every
    access reads the structure from its extxyz/LMDB file and builds its graphs again. False:
    each process keeps a structure's graphs after first building them. Either way the files
    are read frame by frame and the statistics come from one pass that keeps no labels."""


@dataclass
class OptimSettings:
    """AdamW and the warmup + cosine learning-rate schedule (stored in ``pretrain.ckpt``)."""

    lr: float = 3.0e-4
    """Peak learning rate."""
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    """AdamW's betas."""
    eps: float = 1.0e-8
    """AdamW's epsilon."""
    weight_decay: float = 0.1
    """AdamW's decoupled weight decay."""
    warmup_steps: int = 2000
    """Optimiser steps of linear warmup."""
    warmup_start_lr_factor: float = 0.2
    """Learning rate at step 0, as a fraction of lr."""
    min_lr_factor: float = 0.1
    """Learning rate at the end of the cosine decay, as a fraction of lr."""
    gradient_clip: float | None = 1.0
    """Clip the gradient norm to this (None: no clipping)."""


@dataclass
class EmaSettings:
    """Exponential moving average of the weights (``ema: null`` turns it off)."""

    decay: float = 0.99
    """Weight of the old average at each update."""
    every_n_steps: int = 1
    """Update the average every this many optimiser steps."""


@dataclass
class ScaleFitSettings:
    """Fitting the backbone's scale factors before training (``scale_fit: null`` turns it off)."""

    enabled: bool = True
    """Fit them (not when resuming)."""
    num_batches: int = 16
    """Training batches to fit them on."""


@dataclass
class TrainerSettings:
    """How long, on what and how often (Lightning's Trainer)."""

    max_steps: int | None = None
    """Optimiser steps to train (this or max_epochs is required)."""
    max_epochs: int | None = None
    """Epochs to train."""
    accelerator: str = "auto"
    """cpu, gpu or auto."""
    devices: int | str = 1
    """Devices per node (a number or ``auto``)."""
    num_nodes: int = 1
    """Nodes (several: one process per device on each)."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ddp_spawn, ..."""
    precision: str | int = "32-true"
    """Lightning precision: 32-true, bf16-mixed, 16-mixed, ..."""
    accumulate_grad_batches: int = 1
    """Batches whose gradients make one optimiser step."""
    checkpoint_every_n_steps: int = 100
    """Write ``last.ckpt`` every this many optimiser steps (and at the end)."""
    val_every_n_steps: int | None = None
    """Validate every this many steps (None: after every epoch)."""
    limit_val_batches: int | float = 1.0
    """Validation batches per validation: a count (int) or a fraction (float)."""
    log_every_n_steps: int = 10
    """Write a ``metrics.csv`` row every this many steps."""
    progress_bar: bool = False
    """Show Lightning's progress bar."""


@dataclass
class PretrainConfig:
    """All settings of a pre-training run (the YAML file's keys)."""

    out_dir: str = "runs/pretrain"
    """Output folder: last.ckpt, pretrain.ckpt, metrics.csv."""
    seed: int = 0
    """Seed of weights, sampling and edge dropout."""
    resume: bool = False
    """Continue from out_dir/last.ckpt (``--resume`` does the same)."""
    model: ModelSettings = field(default_factory=ModelSettings)
    """The network."""
    data: DataSettings = field(default_factory=DataSettings)
    """The data sets and batches."""
    optim: OptimSettings = field(default_factory=OptimSettings)
    """Optimiser and learning-rate schedule."""
    ema: EmaSettings | None = field(default_factory=EmaSettings)
    """EMA of the weights (null: none)."""
    scale_fit: ScaleFitSettings | None = field(default_factory=ScaleFitSettings)
    """Scale-factor fitting (null: none)."""
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    """Length, devices and intervals."""

    @classmethod
    def from_dict(cls, values: dict) -> "PretrainConfig":
        """The config of a mapping of settings (types coerced, unknown keys refused by name), checked."""
        config = build(cls, values, "pre-training")
        config._check()
        return config

    @classmethod
    def from_yaml(cls, path, **trainer) -> "PretrainConfig":
        """The YAML file's settings with the ``trainer`` settings that are not None replaced."""
        values = read_yaml_mapping(path, "pre-training")
        trainer = {k: v for k, v in trainer.items() if v is not None}
        if trainer:
            given = values.get("trainer") or {}
            if not isinstance(given, dict):
                raise ValueError(f"{path}: trainer must be a mapping of settings")
            values["trainer"] = {**given, **trainer}
        return cls.from_dict(values)

    def _check(self) -> None:
        if not self.data.datasets:
            raise ValueError("data.datasets is empty: pre-training needs at least one data set")
        for k, d in enumerate(self.data.datasets):
            d._check(f"data.datasets[{k}]" + (f" ({d.name!r})" if d.name else ""))
        t = self.trainer
        if not (t.max_steps or t.max_epochs):
            raise ValueError("set trainer.max_steps or trainer.max_epochs")
        if t.num_nodes < 1:
            raise ValueError(f"--num-nodes must be positive, got {t.num_nodes}")
        if t.checkpoint_every_n_steps < 0:
            raise ValueError(f"--checkpoint-every must be positive, got {t.checkpoint_every_n_steps}")
        if self.data.batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {self.data.batch_size}")
