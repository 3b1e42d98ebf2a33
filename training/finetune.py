"""Fine-tune a JMP backbone on labelled structures (Lightning).

``run_finetune(config)`` builds the data (:mod:`jmp_ase.training.data`), takes the embedding and
backbone of a parent model (an original JMP checkpoint, our own pre-training output, a
jmp-ase model file, or random weights), puts new heads on it whose de-normalisation
(per-element references, shift, scale fitted on the training split) is part of the model,
and trains with AdamW + layer-wise LR decay, warmup + cosine then ReduceLROnPlateau
(:mod:`jmp_ase.training.schedules`), early stopping and an EMA of the weights (used for validation
and for the saved model). Output folder: ``model.ckpt`` (best validation, a jmp-ase model
file), ``last.ckpt`` (Lightning state for ``resume``) and ``metrics.csv`` (one row per epoch).

Losses (computed in physical units, each divided by the target's training-set scale σ_t,
which equals computing them on normalised targets as JMP does): MAE for energy, stress and
graph-level scalars, and for forces the mean over atoms of the Euclidean norm of the error.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml

from jmp_ase._version import __version__
from jmp_ase.io.model_file import load_model, resolve_model_path, save_model
from jmp_ase.nn.config import BackboneConfig
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.nn.model import FineTunedModel, ModelConfig
from jmp_ase.nn.config import resolve_backbone_config
from jmp_ase.io.pretrained import load_jmp_pretrained

from jmp_ase.training.data import DatasetSpec, collate, dataset_statistics, fit_element_references, split_by_fraction
from jmp_ase.training.ema import EMACallback
from jmp_ase.training.losses import check_force_errors, compute_losses
from jmp_ase.training.scaling import fit_scale_factors
from jmp_ase.training.schedules import WarmupCosineRLP, param_groups_with_llrd

FORCE_LIKE = ("energy", "forces", "stress")


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
    fit_references: bool = True
    cutoff: float = 12.0
    max_neighbors: int = 30
    tags: str = "ignore"  # "ignore": every atom tag 2 (JMP's fine-tuning convention); "oc20": 0/1/2 from the data
    smooth_dihedral: bool | None = None  # smooth quadruplet basis; None: on with conservative forces
    force_error_limit: float = 100.0  # stop when a structure's force error exceeds this many force-label RMS
    loss_weights: dict = field(default_factory=lambda: {"energy": 1.0, "forces": 100.0, "stress": 1.0})
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
    num_workers: int = 0
    grad_clip: float | None = 1.0  # by value, as JMP
    seed: int = 0
    out: str = "runs/finetune"
    resume: bool = False
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str = "32-true"
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> "FinetuneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fine-tuning settings {unknown}; known settings: {sorted(known)}")
        values = {k: v for k, v in values.items() if v is not None or k in ("val", "test", "pretrained")}
        for f in dataclasses.fields(cls):  # YAML reads 1e-4 as a string
            if f.name in values and isinstance(values[f.name], str) and f.type in ("float", "int"):
                try:
                    values[f.name] = float(values[f.name]) if f.type == "float" else int(values[f.name])
                except ValueError:
                    raise ValueError(f"setting {f.name} must be a number, got {values[f.name]!r}") from None
        config = cls(**values)
        if isinstance(config.targets, str):
            config.targets = [t.strip() for t in config.targets.split(",") if t.strip()]
        if not config.targets:
            raise ValueError("no targets given")
        if config.direct_forces and "stress" in config.targets:
            raise ValueError("a model with direct forces has no stress: drop 'stress' or direct_forces")
        if config.train is None:
            raise ValueError("no training data given (train: FILE)")
        if config.pretrained is None and not config.scratch:
            raise ValueError("give a parent model (pretrained: PATH) or train from scratch (scratch: true)")
        return config

    @classmethod
    def from_yaml(cls, path, **overrides) -> "FinetuneConfig":
        values = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)


class ErrorSums:
    """Accumulates, per target, the loss measure and component-wise absolute/squared errors."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}

    def add(self, preds: dict, targets: dict) -> None:
        for name, target in targets.items():
            err = (preds[name].detach() - target).double()
            loss = err.norm(dim=-1) if name == "forces" else err.abs()
            row = np.array([loss.sum().item(), loss.numel(), err.abs().sum().item(), err.square().sum().item(),
                            err.numel()])
            self.sums[name] = self.sums.get(name, 0) + row

    def metrics(self, weights: dict, scales: dict, prefix: str = "") -> dict[str, float]:
        """``{prefix}loss`` (the weighted loss of the whole epoch), ``{prefix}{t}_mae`` / ``_rmse``."""
        out, total = {}, 0.0
        for name, (loss_sum, loss_n, abs_sum, sq_sum, n) in self.sums.items():
            total += weights.get(name, 1.0) * (loss_sum / loss_n) / scales.get(name, 1.0)
            out[f"{prefix}{name}_mae"] = float(abs_sum / n)
            out[f"{prefix}{name}_rmse"] = math.sqrt(sq_sum / n)
        out[f"{prefix}loss"] = float(total)
        return out


# ----------------------------------------------------------------------------- model
def load_parent(pretrained: str | None, ema: bool = False) -> tuple[BackboneConfig, dict, dict]:
    """(backbone config, embedding + backbone state dict, provenance) of a parent model.

    Accepts a jmp-ase model file (or shipped model name) and an original-layout JMP
    checkpoint (JMP's ``jmp-s.pt`` or our pre-training's ``pretrain.ckpt``).
    """
    path = resolve_model_path(pretrained) if not Path(str(pretrained)).is_file() else Path(pretrained)
    try:
        model = load_model(path)
        kind = "jmp-ase model file"
    except ValueError:
        model, _ = load_jmp_pretrained(path, ema=ema)
        kind = "JMP checkpoint (EMA weights)" if ema else "JMP checkpoint"
    state = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("embedding", "backbone")}
    # Dropout and edge dropout are pre-training regularisers (JMP fine-tunes without them); with
    # edge_dropout kept, training would rescale edges that the fine-tuning data never drops.
    backbone = dataclasses.replace(model.config, dropout=None, edge_dropout=None)
    return backbone, state, {"parent": str(pretrained), "parent_path": str(path), "parent_kind": kind}


def build_heads(config: FinetuneConfig, stats: dict, references: dict) -> list[HeadSpec]:
    """Heads for the targets, with the training-set normalisation written into them."""
    def positive(value, default=1.0):
        return float(value) if value is not None and value > 1e-8 else default

    heads = []
    targets = config.targets
    if any(t in FORCE_LIKE for t in targets):
        scale = positive(stats.get("force_rms")) if "forces" in targets else positive(stats.get("energy_std"))
        heads.append(HeadSpec("energy", "energy", "sum", scale=scale, shift=stats.get("energy_mean_per_atom", 0.0),
                              element_references=references, units="eV"))
        if config.direct_forces:
            heads.append(HeadSpec("forces", "direct_forces", "sum", scale=positive(stats.get("force_rms")),
                                  units="eV/Å"))
    for name in targets:
        if name in FORCE_LIKE:
            continue
        reduction = config.reductions.get(name, "mean")
        shift = stats[f"{name}_mean_per_atom"] if reduction == "sum" else stats[f"{name}_mean"]
        heads.append(HeadSpec(name, "scalar", reduction, scale=positive(stats[f"{name}_std"]), shift=shift,
                              units=config.units.get(name, "")))
    return heads


def loss_scales(stats: dict, targets) -> dict[str, float]:
    """σ_t: energy_std, force_rms, stress_std, std of each graph target (1 when degenerate)."""
    keys = {"energy": "energy_std", "forces": "force_rms", "stress": "stress_std"}
    out = {}
    for name in targets:
        value = stats.get(keys.get(name, f"{name}_std"))
        out[name] = float(value) if value is not None and value > 1e-8 else 1.0
    return out


def smooth_dihedral_setting(config: FinetuneConfig) -> bool:
    """The fine-tuned backbone's ``smooth_dihedral``: as configured, else on when forces are
    -dE/dr (JMP's dihedral makes them diverge near collinear atoms), off for direct forces."""
    if config.smooth_dihedral is not None:
        return bool(config.smooth_dihedral)
    return "forces" in config.targets and not config.direct_forces


def build_model(config: FinetuneConfig, train_set) -> tuple[FineTunedModel, dict]:
    """The fine-tuning model (parent weights, new heads) and the training-set statistics."""
    labels = [train_set.labels(i) for i in range(len(train_set))]
    elements = sorted({int(z) for numbers, _ in labels for z in numbers})
    references = {}
    if config.fit_references and all("energy" in lab for _, lab in labels):
        references = fit_element_references([lab["energy"] for _, lab in labels], [n for n, _ in labels], elements)
    stats = dataset_statistics(labels, references)
    provenance = {"parent": "scratch"}
    if config.pretrained and config.scratch:
        backbone, _, _ = load_parent(config.pretrained, config.ema)
        provenance["architecture_of"] = str(config.pretrained)
        state = None
    elif config.scratch:
        backbone, state = resolve_backbone_config(config.backbone or "jmp-s", None), None
    else:
        backbone, state, provenance = load_parent(config.pretrained, config.ema)
    backbone = dataclasses.replace(backbone, smooth_dihedral=smooth_dihedral_setting(config))
    if config.cutoff > backbone.absolute_rbf_cutoff:
        raise ValueError(f"cutoff {config.cutoff} Å exceeds the backbone's radial-basis cutoff "
                         f"{backbone.absolute_rbf_cutoff} Å (absolute_rbf_cutoff): edges beyond it would "
                         f"carry nothing but cost time; use cutoff <= {backbone.absolute_rbf_cutoff}")
    model_config = ModelConfig(backbone, build_heads(config, stats, references), cutoff=config.cutoff,
                               max_neighbors=config.max_neighbors, tags=config.tags, elements=elements,
                               provenance=provenance)
    model = FineTunedModel(model_config)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(k.split(".")[0] != "heads" for k in missing):
            raise ValueError(f"parent weights do not fit: missing {missing}, unexpected {unexpected}")
    return model, {"statistics": stats, "element_references": references}


# ----------------------------------------------------------------------------- Lightning
class FinetuneModule(L.LightningModule):
    """Training/validation steps, optimiser and schedule, metrics.csv and the best model file."""

    def __init__(self, model: FineTunedModel, config: FinetuneConfig, scales: dict, steps_per_epoch: int,
                 provenance: dict | None = None):
        super().__init__()
        self.model, self.config, self.scales = model, config, scales
        self.weights = {t: float(config.loss_weights.get(t, 1.0)) for t in config.targets}
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.provenance = provenance or {}
        self.best = {"val_loss": math.inf, "epoch": -1}
        # eV/Å: a structure whose force error exceeds this stops the run (check_force_errors)
        self.force_error_limit = config.force_error_limit * scales.get("forces", 1.0)
        self._train, self._val, self._val_metrics = ErrorSums(), ErrorSums(), {}

    def on_fit_start(self):
        self._fit_start = time.perf_counter()  # wall time of the run so far, logged per epoch

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        atoms_batch, targets = batch
        return atoms_batch.to(device), {k: v.to(device) for k, v in targets.items()}

    def forward(self, batch):
        targets = self.config.targets
        return self.model(batch, compute_stress="stress" in targets, compute_forces="forces" in targets)

    def training_step(self, batch, batch_idx):
        atoms_batch, targets = batch
        preds = self(atoms_batch)
        check_force_errors(preds, targets, atoms_batch, self.force_error_limit)
        loss, terms = compute_losses(preds, targets, self.weights, self.scales)
        self._train.add(preds, targets)
        self.log("loss", loss.detach(), prog_bar=True, batch_size=atoms_batch.num_structures)
        return loss

    def validation_step(self, batch, batch_idx):
        atoms_batch, targets = batch
        with torch.enable_grad():
            preds = self(atoms_batch)
        check_force_errors(preds, targets, atoms_batch, self.force_error_limit)
        self._val.add(preds, targets)

    def _synced(self, errors: ErrorSums) -> ErrorSums:
        """The sums over all processes (DDP); unchanged on one device."""
        if self.trainer.world_size > 1:
            for name in sorted(errors.sums):
                total = self.trainer.strategy.reduce(torch.tensor(errors.sums[name], device=self.device), reduce_op="sum")
                errors.sums[name] = total.cpu().numpy()
        return errors

    def on_validation_epoch_end(self):
        metrics = self._synced(self._val).metrics(self.weights, self.scales, "val_")
        self._val = ErrorSums()
        self._val_metrics = metrics
        self.log("val_loss", metrics["val_loss"], prog_bar=True)
        if self.trainer.sanity_checking:
            return
        for scheduler in self._schedulers():
            scheduler.plateau_step(metrics["val_loss"])
        if metrics["val_loss"] < self.best["val_loss"]:  # EMA weights are in place (EMACallback)
            self.best = {"val_loss": metrics["val_loss"], "epoch": self.current_epoch, **metrics}
            if self.trainer.is_global_zero:
                self.save_model(Path(self.config.out) / "model.ckpt")

    def on_train_epoch_end(self):
        row = {"epoch": self.current_epoch, **self._synced(self._train).metrics(self.weights, self.scales, "train_"),
               **self._val_metrics, "lr": max(g["lr"] for g in self.optimizers().param_groups),
               "elapsed_s": round(time.perf_counter() - self._fit_start, 2)}
        self._train, self._val_metrics = ErrorSums(), {}
        path = Path(self.config.out) / "metrics.csv"
        if self.trainer.is_global_zero:
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
        if row["lr"] < self.config.min_lr:
            self.trainer.should_stop = True

    def _schedulers(self):
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        return [s for s in schedulers if isinstance(s, WarmupCosineRLP)]

    def configure_optimizers(self):
        c = self.config
        groups = param_groups_with_llrd(self.model, c.lr, c.llrd_decay, c.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas))
        warmup = int(round(c.warmup_epochs * self.steps_per_epoch))
        cosine = int(round(min(c.cosine_epochs, c.max_epochs) * self.steps_per_epoch))
        scheduler = WarmupCosineRLP(optimizer, warmup, cosine, c.warmup_start_factor, c.min_lr_factor,
                                    c.rlp_factor, c.rlp_patience, min_lr=c.min_lr * 0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def save_model(self, path) -> None:
        """Write the current weights as a jmp-ase model file with provenance and metrics."""
        model = copy.deepcopy(self.model).cpu().eval()
        model.model_config.provenance = {
            **self.provenance, "best_epoch": self.best["epoch"],
            "metrics": {k: float(v) for k, v in self.best.items() if k != "epoch"},
            "jmp_ase_version": __version__, "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        save_model(model, path)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["finetune_best"] = self.best

    def on_load_checkpoint(self, checkpoint):
        self.best = checkpoint.get("finetune_best", self.best)


# ----------------------------------------------------------------------------- run
def _loader(dataset, batch_size, shuffle, config: FinetuneConfig):
    generator = torch.Generator().manual_seed(config.seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                                       num_workers=config.num_workers, generator=generator,
                                       persistent_workers=config.num_workers > 0)


def make_datasets(config: FinetuneConfig, qint_tags=(1, 2)) -> dict:
    """train / val / test :class:`StructureDataset` (val split off train when not given)."""
    def spec(paths, name):
        return DatasetSpec(paths, config.targets, config.cutoff, config.max_neighbors, name, config.format,
                           config.streaming, tags=config.tags)

    out = {"train": spec(config.train, "train").build(qint_tags)}
    if config.val:
        out["val"] = spec(config.val, "val").build(qint_tags)
    else:
        val_idx, train_idx = split_by_fraction(len(out["train"]), [config.val_fraction, 1 - config.val_fraction],
                                               config.seed)
        out["train"], out["val"] = out["train"].subset(train_idx), out["train"].subset(val_idx)
    if config.test:
        out["test"] = spec(config.test, "test").build(qint_tags)
    return out


@torch.no_grad()
def predict_dataset(model: FineTunedModel, dataset, batch_size: int = 16, device="cpu", targets=None) -> ErrorSums:
    """Errors of ``model`` on a data set (physical units); ``.predictions`` holds per-target
    lists of (prediction, label) arrays."""
    model = model.to(device).eval()
    targets = targets or [t for t in ("energy", "forces", "stress", *model.heads) if t in dataset.targets]
    errors = ErrorSums()
    errors.predictions = {t: ([], []) for t in targets}
    errors.natoms = []
    for atoms_batch, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        atoms_batch = atoms_batch.to(device)
        labels = {k: v.to(device) for k, v in labels.items() if k in targets}
        with torch.enable_grad():
            preds = model(atoms_batch, compute_stress="stress" in targets, compute_forces="forces" in targets)
        errors.add(preds, labels)
        errors.natoms.extend(atoms_batch.natoms.tolist())
        for t in targets:
            errors.predictions[t][0].append(preds[t].detach().cpu().numpy())
            errors.predictions[t][1].append(labels[t].cpu().numpy())
    return errors


def fit_scratch_scales(model: FineTunedModel, train_set, config: FinetuneConfig) -> None:
    """Fit the ScaleFactors of a randomly initialised backbone on the first training batches,
    as pre-training does before it starts (GemNet-OC trains poorly with all factors at 1)."""
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=False, collate_fn=collate)
    batches = [atoms_batch for (atoms_batch, _), _ in zip(loader, range(config.scale_fit_batches))]
    fit_scale_factors(model, batches, lambda m, b: m(b, compute_forces=False))


def run_finetune(config: FinetuneConfig | dict) -> dict:
    """Fine-tune as configured; returns a summary (best epoch, metrics, files)."""
    if isinstance(config, dict):
        config = FinetuneConfig.from_dict(config)
    out = Path(config.out)
    last = out / "last.ckpt"
    if config.resume and not last.is_file():
        raise FileNotFoundError(f"cannot resume: {last} does not exist")
    if not config.resume and (out / "metrics.csv").exists():
        raise FileExistsError(f"{out} already holds a run (metrics.csv); use resume or another --out")
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    datasets = make_datasets(config)
    model, info = build_model(config, datasets["train"])
    scales = loss_scales(info["statistics"], config.targets)
    provenance = {**model.model_config.provenance, "ema": bool(config.ema), "targets": list(config.targets),
                  "data": {"train": config.train, "val": config.val or f"{config.val_fraction} of train",
                           "test": config.test},
                  "statistics": info["statistics"], "loss_scales": scales}
    batch_size = config.batch_size
    train_loader = _loader(datasets["train"], batch_size, True, config)
    val_loader = _loader(datasets["val"], config.eval_batch_size or batch_size, False, config)
    if model.model_config.provenance.get("parent") == "scratch" and config.scale_fit_batches and not config.resume:
        fit_scratch_scales(model, datasets["train"], config)
    module = FinetuneModule(model, config, scales, len(train_loader), provenance)
    callbacks = [
        EMACallback(config.ema_decay),
        L.pytorch.callbacks.EarlyStopping("val_loss", min_delta=config.early_stopping_min_delta,
                                          patience=config.early_stopping_patience, mode="min"),
        L.pytorch.callbacks.ModelCheckpoint(dirpath=out, save_top_k=0, save_last=True),
    ]
    trainer = L.Trainer(max_epochs=config.max_epochs, accelerator=config.accelerator, devices=config.devices,
                        precision=config.precision, callbacks=callbacks, logger=False, inference_mode=False,
                        num_sanity_val_steps=0, gradient_clip_val=config.grad_clip,
                        gradient_clip_algorithm="value", enable_progress_bar=config.progress,
                        enable_model_summary=config.progress, default_root_dir=out)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if config.resume else None)
    summary = {"best_epoch": module.best["epoch"], "val": {k: v for k, v in module.best.items() if k != "epoch"},
               "model": str(out / "model.ckpt"), "last": str(last), "metrics_csv": str(out / "metrics.csv")}
    if "test" in datasets and (out / "model.ckpt").is_file():
        errors = predict_dataset(load_model(out / "model.ckpt"), datasets["test"], config.eval_batch_size or 16,
                                 targets=config.targets)
        summary["test"] = errors.metrics(module.weights, scales)
    summary["text"] = format_summary(summary, config.targets, config.units)
    if not (out / "model.ckpt").is_file():
        summary["text"] += "\nwarning: no model was saved (the validation loss was never finite)"
    return summary


def physical(name: str, value: float, units: dict | None = None) -> str:
    """An error with its unit: meV for energy, meV/Å for forces, meV/Å³ for stress."""
    milli = {"energy": "meV", "forces": "meV/Å", "stress": "meV/Å³"}
    if name in milli:
        return f"{1000 * value:.3f} {milli[name]}"
    return f"{value:.5g} {(units or {}).get(name, '')}".rstrip()


def format_summary(summary: dict, targets, units=None) -> str:
    lines = [f"best epoch: {summary['best_epoch']} (validation loss {summary['val'].get('val_loss', float('nan')):.5g})"]
    for split in ("val", "test"):
        metrics = summary.get(split)
        if not metrics:
            continue
        prefix = "val_" if split == "val" else ""
        for t in targets:
            if f"{prefix}{t}_mae" in metrics:
                lines.append(f"  {split:4s} {t:>12s}: MAE {physical(t, metrics[f'{prefix}{t}_mae'], units)}, "
                             f"RMSE {physical(t, metrics[f'{prefix}{t}_rmse'], units)}")
    lines.append(f"model: {summary['model']}")
    return "\n".join(lines)
