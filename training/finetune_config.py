"""Settings of a fine-tuning run (:class:`FinetuneConfig`), importable without torch or Lightning
so that ``jmp-train finetune`` can refuse bad settings within a second."""
from __future__ import annotations

from dataclasses import dataclass, field

from jmp_ase.nn.config import DEFAULT_DIHEDRAL_DAMPING
from jmp_ase.training.config_io import build, read_yaml_mapping

# Graph settings a fine-tuning run takes from its parent unless given: the model owns them.
GRAPH_SETTINGS = ("cutoff", "max_neighbors", "tags", "qint_tags")
#: max_neighbors value: the smallest limit under which no training structure loses a neighbour
UNTRUNCATED = "untruncated"
TAG_RULES = ("ignore", "oc20")
#: FinetuneConfig.unseen_embeddings (applied in unseen_elements.py)
UNSEEN_EMBEDDINGS = ("random", "similar")
#: fine-tuning losses (FinetuneConfig.loss; computed in losses.py)
LOSS_KINDS = ("mae", "mse")


@dataclass
class FinetuneConfig:
    """All settings of a fine-tuning run (the YAML file's keys; see configs/finetune-aspirin.yaml)."""

    pretrained: str | None = None  # original JMP checkpoint, pretrain.ckpt, jmp-ase model file or shipped name
    ema: bool = False  # use the parent checkpoint's EMA weights
    scratch: bool = False  # same architecture, random weights
    backbone: str | dict | None = None  # architecture for scratch without a parent ("jmp-s", "tiny", dict)
    train: str | list | None = None
    val: str | list | None = None  # None: val_fraction of train, split with seed
    test: str | list | None = None
    format: str | None = None
    streaming: bool = False
    val_fraction: float = 0.1
    targets: list = field(default_factory=lambda: ["energy", "forces"])
    reductions: dict = field(default_factory=dict)  # graph target -> sum | mean | max (default mean)
    units: dict = field(default_factory=dict)  # graph target -> unit name, for reports
    direct_forces: bool = False
    committee: int = 1  # energy MLPs on one backbone pass, each trained on the labels: energy_std, forces_std
    fit_references: bool = True
    # element (symbol or Z) -> energy in eV of that element's isolated atom at the labels' level of
    # theory; given, it replaces the fitted references and must cover every training element
    element_references: dict | None = None
    # an atom without neighbours gets exactly its element reference (ModelConfig.isolated_atom_references):
    # pulled apart, a structure ends at the sum of its references; physical with element_references
    isolated_atom_references: bool = False
    # Graph settings: None takes the parent's (a jmp-ase model file or pretrain.ckpt states them;
    # an original JMP checkpoint does not: then 12 Å (at most the radial basis), 30, ignore, (1, 2)).
    cutoff: float | None = None
    max_neighbors: int | str | None = None  # or "untruncated": enough that no training structure is truncated
    tags: str | None = None  # "ignore": every atom tag 2 (JMP's fine-tuning convention); "oc20": 0/1/2 from the data
    qint_tags: list | None = None  # tags of the atoms in the quadruplet graph (the backbone's setting)
    smooth_dihedral: bool | None = None  # smooth quadruplet basis; None: on with conservative forces
    dihedral_damping: float = DEFAULT_DIHEDRAL_DAMPING  # ε of the smooth basis (BackboneConfig.dihedral_damping)
    init_energy_head: str | None = None  # start the energy head from this pre-training head of the parent (head_init.py)
    # embedding rows of training elements the parent never saw: "similar" copies the row of the nearest seen
    # element on the periodic table (unseen_elements.py), "random" keeps the untrained rows (JMP)
    unseen_embeddings: str = "similar"
    # multi-head replay (replay.py): pre-training head name -> training file(s) of its data set; each step
    # adds replay_weight x the pre-training loss of one batch of those data through the parent's own heads
    replay: dict | None = None
    replay_weight: float = 0.1
    replay_batch_size: int | None = None  # structures per replay batch; None: batch_size
    force_error_limit: float = 100.0  # stop when a structure's force error exceeds this many force-label RMS
    loss_weights: dict = field(default_factory=lambda: {"energy": 1.0, "forces": 100.0, "stress": 1.0})
    # "mae": JMP's absolute errors (force: error norm per atom); "mse": their squares over σ², as MACE
    # (weighs rare structures far from the bulk of the data, e.g. high-energy ones, more); val_loss stays MAE
    loss: str = "mae"
    # the last N of max_epochs form an energy-refinement stage (as MACE's stage two): loss weights
    # final_loss_weights, a constant rate lr * final_lr_factor, and the saved model is the best of that stage
    final_epochs: int = 0
    final_loss_weights: dict = field(default_factory=dict)  # the final stage's weights; {}: loss_weights, energy x10
    final_lr_factor: float = 0.1  # the final stage's rate as a fraction of lr (times each layer's LLRD scale)
    # linear-probe start (LP-FT): for the first N epochs only the new heads train (the parent's layers at
    # rate 0), then the parent's layers start their own warmup and cosine, ending with the heads'
    head_epochs: int = 0
    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    llrd_decay: float = 0.8
    warmup_epochs: float = 5
    cosine_epochs: float = 32
    warmup_start_factor: float = 0.1
    min_lr_factor: float = 0.1
    rlp_factor: float = 0.8
    rlp_patience: int = 3
    min_lr: float = 1e-8  # training stops when every rate is below this
    early_stopping_patience: int = 50
    early_stopping_min_delta: float = 1e-8
    scale_fit_batches: int = 8  # scratch only: fit the ScaleFactors on this many training batches (0: off)
    ema_decay: float = 0.99
    max_epochs: int = 100
    batch_size: int = 4
    eval_batch_size: int | None = None
    num_workers: int = 0  # DataLoader worker processes (they read structures and build graphs)
    grad_clip: float | None = 1.0  # by value, as JMP
    seed: int = 0
    out: str = "runs/finetune"
    resume: bool = False
    checkpoint_every: int | None = None  # last.ckpt every N optimiser steps; None: every checkpoint_minutes
    checkpoint_minutes: float = 10.0
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    progress: bool = True
    memory: str = "auto"  # "auto" | "fast" | "lean": lean chunks and recomputes the interactions (same numbers, less memory, slower)

    @classmethod
    def from_dict(cls, values: dict) -> "FinetuneConfig":
        """The config of a mapping of settings (types coerced, unknown keys refused), checked."""
        if isinstance(values, dict):  # null means the default, except where None is a choice
            values = {k: v for k, v in values.items() if v is not None or k in ("val", "test", "pretrained")}
        config = build(cls, values, "fine-tuning")
        config._check()
        return config

    def _check(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        if not self.targets:
            raise ValueError("no targets given")
        if self.direct_forces and "stress" in self.targets:
            raise ValueError("a model with direct forces has no stress: drop 'stress' or direct_forces")
        if self.train is None:
            raise ValueError("no training data given (train: FILE)")
        if self.pretrained is None and not self.scratch:
            raise ValueError("give a parent model (pretrained: PATH) or train from scratch (scratch: true)")
        positive = {"max_epochs": "--max-epochs", "batch_size": "--batch-size", "num_nodes": "--num-nodes"}
        for name, option in positive.items():
            if int(getattr(self, name)) < 1:
                hint = " (0 epochs would write no model; use `jmp-train evaluate` to test a parent)" \
                    if name == "max_epochs" else ""
                raise ValueError(f"{option} must be at least 1, got {getattr(self, name)}{hint}")
        if not 0 <= int(self.final_epochs) < int(self.max_epochs):
            raise ValueError(f"--final-epochs must be at least 0 and below --max-epochs ({self.max_epochs}), "
                             f"got {self.final_epochs}")
        # after the cosine the rates only follow the plateau rule: layers still waiting then would never start
        head_limit = min(float(self.cosine_epochs), int(self.max_epochs) - int(self.final_epochs))
        if not 0 <= int(self.head_epochs) < head_limit:
            raise ValueError(f"head_epochs must be at least 0 and below {head_limit:g}, the epochs of the cosine "
                             f"(cosine_epochs, at most max_epochs - final_epochs), got {self.head_epochs}")
        if int(self.head_epochs) and (self.scratch or not self.pretrained):
            raise ValueError("head_epochs trains the new heads on the parent's features first: it needs a pre-trained "
                             "parent (pretrained: PATH, not scratch)")
        if not float(self.final_lr_factor) > 0:
            raise ValueError(f"final_lr_factor must be positive, got {self.final_lr_factor}")
        if int(self.committee) < 1 or (int(self.committee) > 1 and self.direct_forces):
            raise ValueError(f"--committee must be at least 1 (and 1 with direct_forces), got {self.committee}")
        if self.replay is not None:
            if not isinstance(self.replay, dict) or not self.replay:
                raise ValueError(f"replay must map pre-training head names to their training data, got {self.replay!r}")
            if self.scratch or not self.pretrained:
                raise ValueError("replay trains the parent's pre-training heads: it needs a pre-trained parent "
                                 "(pretrained: PATH, not scratch)")
            if not float(self.replay_weight) > 0:
                raise ValueError(f"replay_weight must be positive, got {self.replay_weight}")
            if self.replay_batch_size is not None and int(self.replay_batch_size) < 1:
                raise ValueError(f"replay_batch_size must be at least 1, got {self.replay_batch_size}")
        if self.unseen_embeddings not in UNSEEN_EMBEDDINGS:
            raise ValueError(f"--unseen-embeddings must be one of {UNSEEN_EMBEDDINGS}, got {self.unseen_embeddings!r}")
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"--loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        if self.element_references is not None:
            self.element_references = parse_element_references(self.element_references)
        if self.isolated_atom_references and not {"energy", "forces", "stress"} & set(self.targets):
            raise ValueError("--isolated-atom-references needs an energy head (energy, forces or stress targets)")
        if self.eval_batch_size is not None and int(self.eval_batch_size) < 1:
            raise ValueError(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")
        if not float(self.lr) > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if int(self.num_workers) < 0:
            raise ValueError(f"--num-workers must be 0 or more, got {self.num_workers}")
        if self.checkpoint_every is not None and int(self.checkpoint_every) < 1:
            raise ValueError(f"--checkpoint-every must be at least 1 step, got {self.checkpoint_every}")
        if not float(self.checkpoint_minutes) > 0:
            raise ValueError(f"checkpoint_minutes must be positive, got {self.checkpoint_minutes}")
        if self.cutoff is not None and not float(self.cutoff) > 0:
            raise ValueError(f"--cutoff must be positive (Å), got {self.cutoff}")
        if isinstance(self.max_neighbors, str) and self.max_neighbors.strip().isdigit():
            self.max_neighbors = int(self.max_neighbors)
        if isinstance(self.max_neighbors, str) and self.max_neighbors != UNTRUNCATED:
            raise ValueError(f"--max-neighbors must be a number or {UNTRUNCATED!r}, got {self.max_neighbors!r}")
        if isinstance(self.max_neighbors, (int, float)) and int(self.max_neighbors) < 1:
            raise ValueError(f"--max-neighbors must be at least 1, got {self.max_neighbors}")
        if self.tags is not None and self.tags not in TAG_RULES:
            raise ValueError(f"--tags must be one of {list(TAG_RULES)}, got {self.tags!r}")
        if self.qint_tags is not None:
            self.qint_tags = parse_qint_tags(self.qint_tags)
        if self.memory not in ("auto", "fast", "lean"):
            raise ValueError(f"--memory must be auto, fast or lean, got {self.memory!r}")
        if not 0 < float(self.val_fraction) < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")

    @classmethod
    def from_yaml(cls, path, **overrides) -> "FinetuneConfig":
        """The YAML file's settings (none without ``path``) with the ``overrides`` that are not None."""
        values = read_yaml_mapping(path, "fine-tuning") if path else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def stage_loss_weights(self, final: bool) -> dict[str, float]:
        """Loss weight of each target in the main stage or (``final``) the energy-refinement stage."""
        weights = {t: float(self.loss_weights.get(t, 1.0)) for t in self.targets}
        if not final:
            return weights
        if not self.final_loss_weights:
            return {t: w * 10.0 if t == "energy" else w for t, w in weights.items()}
        return {t: float(self.final_loss_weights.get(t, weights[t])) for t in self.targets}


def parse_element_references(value) -> dict[int, float]:
    """``{"H": -13.6, 8: -432.1}`` or ``"H=-13.6,O=-432.1"`` -> ``{1: -13.6, 8: -432.1}`` (eV)."""
    from ase.data import atomic_numbers

    error = ValueError(f"element_references must map elements to energies in eV (e.g. H=-13.6,O=-432.1), "
                       f"got {value!r}")
    if isinstance(value, str):
        pairs = [item.partition("=")[::2] for item in value.split(",") if item.strip()]
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise error
    out = {}
    for key, energy in pairs:
        key = str(key).strip()
        z = int(key) if key.isdigit() else atomic_numbers.get(key, 0)
        try:
            out[z] = float(energy)
        except (TypeError, ValueError):
            raise error from None
        if not 1 <= z <= 118:
            raise error
    if not out:
        raise error
    return out


def parse_qint_tags(value) -> tuple[int, ...]:
    """``"1,2"``, ``[1, 2]`` -> ``(1, 2)``; tags are 0 (bulk), 1 (surface), 2 (adsorbate / molecule)."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    try:
        tags = tuple(sorted({int(v) for v in items}))
    except (TypeError, ValueError):
        raise ValueError(f"--qint-tags must be tags among 0, 1, 2 (e.g. 1,2), got {value!r}") from None
    if not tags or not set(tags) <= {0, 1, 2}:
        raise ValueError(f"--qint-tags must be tags among 0, 1, 2 (e.g. 1,2), got {value!r}")
    return tags
