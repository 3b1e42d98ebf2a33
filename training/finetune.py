"""Fine-tune a JMP backbone on labelled structures (Lightning).

``run_finetune(config)`` reads the parent model first (:mod:`jmp_ase.training.parent`: an
original JMP checkpoint, our own pre-training output, a jmp-ase model file, or random
weights) and takes its graph settings (cutoff, max_neighbors, tags, qint_tags) unless the
config gives them; builds the data with those settings (:mod:`jmp_ase.training.data`), so
the graphs of training are the graphs the saved model builds at inference; puts new heads on
the embedding and backbone whose de-normalisation (per-element references, shift, scale
fitted on the training split) is part of the model, and trains with AdamW + layer-wise LR
decay, warmup + cosine then ReduceLROnPlateau (:mod:`jmp_ase.training.schedules`), early
stopping and an EMA of the weights (used for validation and for the saved model).

Parameters the loss never reaches (e.g. the backbone's force branch under an energy head)
are frozen before training, so DDP gets only trained parameters. Output folder:
``model.ckpt`` (best validation, a jmp-ase model file), ``last.ckpt`` (written atomically
every ``checkpoint_every`` steps or ``checkpoint_minutes``, after every epoch and at the end:
``resume`` continues from it mid-epoch), ``metrics.csv`` (one row per epoch) and
``steps.csv`` (one row per optimiser step).

Losses (computed in physical units, each divided by the target's training-set scale σ_t,
which equals computing them on normalised targets as JMP does): MAE for energy, stress and
graph-level scalars, and for forces the mean over atoms of the Euclidean norm of the error.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import sys
from pathlib import Path

import lightning as L
from ase.data import chemical_symbols
import torch

from jmp_ase.data.graph_settings import max_neighbors_keeping
from jmp_ase.data.graphs import GraphSettings
from jmp_ase.data.neighbors import largest_neighbor_count
from jmp_ase.io.model_file import load_model
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.keys import ENERGY_AND_DERIVATIVES
from jmp_ase.nn.config import basis_description
from jmp_ase.nn.model import FineTunedModel, ModelConfig

from jmp_ase.training.checkpoints import AtomicCheckpointIO, EpochStepCheckpoint, keep_rows
from jmp_ase.training.data import DatasetSpec, collate, dataset_statistics, fit_element_references, split_by_fraction
from jmp_ase.training.ema import EMA
from jmp_ase.training.data.readers import open_structures
from jmp_ase.training.finetune_config import UNTRUNCATED, FinetuneConfig
from jmp_ase.calculators.evaluation import ErrorSums
from jmp_ase.training.finetune_module import FinetuneModule, StepRows, throughput
from jmp_ase.training.head_init import head_specs_for_start, start_energy_head
from jmp_ase.training.losses import compute_losses
from jmp_ase.training.replay import Replay
from jmp_ase.training.unseen_elements import start_unseen_embeddings
from jmp_ase.training.parent import Parent, graph_settings, load_parent, parent_of, unseen_elements
from jmp_ase.training.preflight import is_worker_process, preflight_finetune
from jmp_ase.training.scaling import fit_scale_factors
from jmp_ase.training.console import quiet_third_party
from jmp_ase.training.threads import describe_threads

__all__ = ["FinetuneConfig", "ErrorSums", "FinetuneModule", "build_model", "load_parent", "make_datasets",
           "predict_dataset", "run_finetune"]

# Neighbour order of every model fine-tuned here (order independent, whole tied shells); the
# parent's pre-training order does not carry over: its weights adapt in fine-tuning.
NEW_MODEL_NEIGHBOR_ORDER = "canonical"


def say(text: str) -> None:
    """A line for the user (first process only)."""
    if not is_worker_process():
        print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- model
def build_heads(config: FinetuneConfig, stats: dict, references: dict) -> list[HeadSpec]:
    """Heads for the targets, with the training-set normalisation written into them."""
    def positive(value, default=1.0):
        return float(value) if value is not None and value > 1e-8 else default

    heads = []
    targets = config.targets
    if any(t in ENERGY_AND_DERIVATIVES for t in targets):
        scale = positive(stats.get("force_rms")) if "forces" in targets else positive(stats.get("energy_std"))
        heads.append(HeadSpec("energy", "energy", "sum", scale=scale, shift=stats.get("energy_mean_per_atom", 0.0),
                              element_references=references, units="eV", committee=int(config.committee)))
        if config.direct_forces:
            heads.append(HeadSpec("forces", "direct_forces", "sum", scale=positive(stats.get("force_rms")),
                                  units="eV/Å"))
    for name in targets:
        if name in ENERGY_AND_DERIVATIVES:
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


def _graph(config: FinetuneConfig, parent: Parent | None):
    """(backbone, GraphSettings, sources) of the run: options, else the parent's, else defaults.

    ``max_neighbors`` not given: a model of the energy surface (forces -dE/dr) trained on
    molecules alone takes the untruncated limit where it exceeds the parent's (a continuous
    energy for MD; a molecule's graphs stay small); one with any periodic training structure
    keeps the parent's (untruncated slab or crystal graphs cost several times the memory and
    time), as do direct-force and graph-level scalar models."""
    parent = parent or parent_of(config)
    backbone, values, sources = graph_settings(config, parent)
    if values["max_neighbors"] == UNTRUNCATED:
        values["max_neighbors"], sources["max_neighbors"] = untruncated_max_neighbors(config, values["cutoff"])
    elif sources["max_neighbors"] != "option" and models_energy_surface(config):
        scan = untruncated_max_neighbors(config, values["cutoff"], molecules_only=True)
        if scan is not None and scan[0] > values["max_neighbors"]:
            values["max_neighbors"], sources["max_neighbors"] = scan[0], scan[1] + " (default for molecules)"
        elif scan is not None:
            sources["max_neighbors"] += ", which truncates no training structure"
    return backbone, GraphSettings(cutoff=values["cutoff"], max_neighbors=values["max_neighbors"],
                                   qint_tags=tuple(backbone.qint_tags), tags=values["tags"],
                                   neighbor_order=NEW_MODEL_NEIGHBOR_ORDER), sources


def models_energy_surface(config: FinetuneConfig) -> bool:
    """Whether the run trains an energy whose -dE/dr are the model's forces (for MD, relaxations)."""
    return any(t in ENERGY_AND_DERIVATIVES for t in config.targets) and not config.direct_forces


def untruncated_max_neighbors(config: FinetuneConfig, cutoff: float,
                              molecules_only: bool = False) -> tuple[int, str] | None:
    """(max_neighbors, where it came from) under which no training structure is truncated in any
    of the four graphs: the energy is then a continuous function of the training geometries.
    ``molecules_only``: None as soon as a periodic training structure turns up."""
    count = 0
    for path in [config.train] if isinstance(config.train, (str, os.PathLike)) else config.train:
        for atoms in open_structures(path, config.format, config.streaming):
            if molecules_only and atoms.pbc.any():
                return None
            count = max(count, largest_neighbor_count(atoms, cutoff))
    value = max_neighbors_keeping(count)
    return value, f"untruncated: up to {count} neighbours within {cutoff:g} Å in the training data"


def build_model(config: FinetuneConfig, train_set, parent: Parent | None = None,
                graph: tuple | None = None) -> tuple[FineTunedModel, dict]:
    """The fine-tuning model (parent weights, new heads, the run's graph settings) and the
    training-set statistics. ``graph``: :func:`_graph`'s result when the caller has it (it may
    have scanned the training data for ``max_neighbors: untruncated``)."""
    parent = parent or parent_of(config)
    backbone, settings, sources = graph or _graph(config, parent)
    labels = [train_set.labels(i) for i in range(len(train_set))]
    elements = sorted({int(z) for numbers, _ in labels for z in numbers})
    references = {}
    if config.element_references is not None:
        missing = [z for z in elements if z not in config.element_references]
        if missing:
            raise ValueError(f"element_references lacks training element(s) {missing}")
        references = {z: config.element_references[z] for z in elements}
    elif config.fit_references and all("energy" in lab for _, lab in labels):
        references = fit_element_references([lab["energy"] for _, lab in labels], [n for n, _ in labels], elements)
    stats = dataset_statistics(labels, references)
    backbone = dataclasses.replace(backbone, smooth_dihedral=smooth_dihedral_setting(config),
                                   dihedral_damping=float(config.dihedral_damping))
    heads = build_heads(config, stats, references)
    if config.init_energy_head:
        heads = head_specs_for_start(heads, parent, config.init_energy_head)
    model_config = ModelConfig(backbone, heads, cutoff=settings.cutoff,
                               max_neighbors=settings.max_neighbors, tags=settings.tags,
                               neighbor_order=settings.neighbor_order, elements=elements,
                               isolated_atom_references=bool(config.isolated_atom_references),
                               provenance=dict(parent.provenance))
    model = FineTunedModel(model_config)
    if parent.state is not None:
        missing, unexpected = model.load_state_dict(parent.state, strict=False)
        if unexpected or any(k.split(".")[0] != "heads" for k in missing):
            raise ValueError(f"parent weights do not fit: missing {missing}, unexpected {unexpected}")
    model.memory = config.memory  # a runtime setting: not saved in the model file
    info = {"statistics": stats, "element_references": references, "elements": elements, "graph_sources": sources,
            "unseen": unseen_elements(parent, elements)}
    if config.unseen_embeddings == "similar" and info["unseen"]:
        # every row the parent never trained (elements outside the training data too, for --allow-unknown-elements)
        rows = model.embedding.atom_embedding
        every = unseen_elements(parent, range(1, rows.num_embeddings + 1))
        donors = start_unseen_embeddings(rows, every, parent.elements)
        info["unseen_donors"] = {z: d for z, d in donors.items() if z in elements}
    if config.init_energy_head:
        info["energy_head_start"] = start_energy_head(model, parent, config.init_energy_head, train_set)
    return model, info


def freeze_unused(model: FineTunedModel, batch, config: FinetuneConfig, replay: Replay | None = None) -> list[str]:
    """Freeze the parameters no gradient of the loss reaches (found on one batch: which
    parameters the loss uses depends on the heads and targets, not on the data; with
    ``replay``, its loss on its first batch counts too). DDP requires every parameter it is
    handed to get a gradient in every step."""
    atoms_batch, targets = batch
    model.zero_grad(set_to_none=True)
    preds = model(atoms_batch, compute_stress="stress" in config.targets, compute_forces="forces" in config.targets)
    loss, _ = compute_losses(preds, targets, {}, {})
    if replay is not None:
        loss = loss + replay.loss(model)
        replay.zero_grad(set_to_none=True)
        replay.restart()
    loss.backward()
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    return frozen


def make_datasets(config: FinetuneConfig, settings: GraphSettings | None = None) -> dict:
    """train / val / test :class:`StructureDataset` with the model's graph ``settings``
    (default: the config's, else the defaults); val split off train when not given."""
    if settings is None:
        settings = GraphSettings(cutoff=config.cutoff or 12.0, max_neighbors=config.max_neighbors or 30,
                                 qint_tags=tuple(config.qint_tags or (1, 2)), tags=config.tags or "ignore",
                                 neighbor_order=NEW_MODEL_NEIGHBOR_ORDER)

    def build(paths, name):
        spec = DatasetSpec.for_model(paths, config.targets, settings, name=name, format=config.format,
                                     streaming=config.streaming)
        return spec.build(settings.qint_tags)

    out = {"train": build(config.train, "train")}
    if config.val:
        out["val"] = build(config.val, "val")
    else:
        val_idx, train_idx = split_by_fraction(len(out["train"]), [config.val_fraction, 1 - config.val_fraction],
                                               config.seed)
        out["train"], out["val"] = out["train"].subset(train_idx), out["train"].subset(val_idx)
    if len(out["val"]) == 0 or len(out["train"]) == 0:
        if config.val and len(out["val"]) == 0:
            raise ValueError(f"--val: {config.val} has no structures")
        n = len(out["train"]) + (0 if config.val else len(out["val"]))
        raise ValueError(f"--train: {config.train} has {n} structures: too few to split off a validation set "
                         f"(val_fraction {config.val_fraction}); give --val or more structures")
    if config.test:
        out["test"] = build(config.test, "test")
    return out


@torch.no_grad()
def predict_dataset(model: FineTunedModel, dataset, batch_size: int = 16, device="cpu", targets=None) -> ErrorSums:
    """Errors of ``model`` on a data set (physical units), by the evaluator the calculator uses
    (:class:`jmp_ase.calculators.evaluation.ErrorSums`); ``.predictions`` holds per-target lists of
    (prediction, label) arrays and ``.natoms`` the atoms of each structure."""
    model = model.to(device).eval()
    targets = targets or [t for t in ("energy", "forces", "stress", *model.heads) if t in dataset.targets]
    errors = ErrorSums(keep=True)
    for atoms_batch, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        atoms_batch = atoms_batch.to(device)
        labels = {t: labels[t].to(device) for t in targets}
        with torch.enable_grad():
            preds = model(atoms_batch, compute_stress="stress" in targets, compute_forces="forces" in targets)
        errors.add(preds, labels, atoms_batch.natoms.tolist())
    return errors


def fit_scratch_scales(model: FineTunedModel, train_set, config: FinetuneConfig) -> None:
    """Fit the ScaleFactors of a randomly initialised backbone on the first training batches,
    as pre-training does before it starts (GemNet-OC trains poorly with all factors at 1)."""
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=False, collate_fn=collate)
    batches = [atoms_batch for (atoms_batch, _), _ in zip(loader, range(config.scale_fit_batches))]
    # the whole backbone, edge branch included: its factors are fitted even when no head reads it
    fit_scale_factors(model, batches, lambda m, b: m.embed(b, edge_embedding=True))


def _resume_state(last: Path) -> dict:
    """The safely read state of ``last.ckpt`` (tensors and plain containers only)."""
    try:
        return torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot resume: {last} is not a checkpoint jmp-train can read safely ({first})") from None


def describe_settings(model: FineTunedModel, sources: dict, config: FinetuneConfig, frozen: list[str]) -> str:
    cfg = model.model_config
    s = sources
    basis = basis_description(cfg.backbone)
    return (f"jmp-train finetune: parent {cfg.provenance.get('parent')} "
            f"({cfg.provenance.get('parent_kind', 'random weights')}); graphs: cutoff {cfg.cutoff:g} Å "
            f"({s['cutoff']}), max_neighbors {cfg.max_neighbors} ({s['max_neighbors']}), tags {cfg.tags} "
            f"({s['tags']}), qint_tags {tuple(cfg.backbone.qint_tags)} ({s['qint_tags']}); quadruplet basis "
            f"{basis}, {cfg.neighbor_order} neighbour order; memory {model.memory}; "
            f"{describe_threads(torch.get_num_threads())}; heads "
            f"{[h.name + (f' (committee of {h.committee})' if h.committee > 1 else '') for h in cfg.heads]}; {len(frozen)} parameter tensors outside the loss frozen"
            + stages_description(config))


def stages_description(config: FinetuneConfig) -> str:
    """The stages besides the main one (head-only start, energy refinement) in words; "" if none."""
    text = f"; heads alone for the first {config.head_epochs} epochs" if config.head_epochs else ""
    if not config.final_epochs:
        return text
    weights = ", ".join(f"{t} {w:g}" for t, w in config.stage_loss_weights(True).items())
    return (f"{text}; energy-refinement stage: last {config.final_epochs} of {config.max_epochs} epochs, "
            f"loss weights {weights}, rate {config.final_lr_factor:g} x lr")


def run_finetune(config: FinetuneConfig | dict) -> dict:
    """Fine-tune as configured; returns a summary (best epoch, metrics, files)."""
    if isinstance(config, dict):
        config = FinetuneConfig.from_dict(config)
    preflight_finetune(config)
    out = Path(config.out)
    last = out / "last.ckpt"
    saved = _resume_state(last) if config.resume else None
    L.seed_everything(config.seed, workers=True, verbose=False)
    parent = parent_of(config)  # first: the data sets are built with the model's graph settings
    graph = _graph(config, parent)
    _, settings, sources = graph
    datasets = make_datasets(config, settings)
    model, info = build_model(config, datasets["train"], parent, graph)
    unseen = info["unseen"]
    donors = info.get("unseen_donors") or {}
    if unseen:
        start = ("their embedding rows start from those of similar seen elements (" +
                 ", ".join(f"{chemical_symbols[z]} from {chemical_symbols[d]}" for z, d in donors.items()) + ")"
                 if donors else "their embedding rows are untrained (fine-tuning starts them from random values)")
        say(f"warning: elements {unseen} are in the training data but the parent never saw them in training: {start}")
    start = info.get("energy_head_start")
    if start:
        say(f"energy head: starts from pre-training head {start['head']!r}; zero-shot energy MAE "
            f"{1000 * start['zero_shot_energy_mae']:.1f} meV, {1000 * start['offset_energy_mae']:.1f} meV after "
            "the per-element offset (fitted on the first training structures)")
    scales = loss_scales(info["statistics"], config.targets)
    provenance = {**model.model_config.provenance, "ema": bool(config.ema), "targets": list(config.targets),
                  "data": {"train": config.train, "val": config.val or f"{config.val_fraction} of train",
                           "test": config.test},
                  "graph_settings": {"cutoff": settings.cutoff, "max_neighbors": settings.max_neighbors,
                                     "tags": settings.tags, "qint_tags": list(settings.qint_tags),
                                     "from": dict(sources)},
                  "statistics": info["statistics"], "loss_scales": scales,
                  **({"unseen_elements": unseen} if unseen else {}),
                  **({"unseen_embeddings": {str(z): int(d) for z, d in donors.items()}} if donors else {}),
                  **({"energy_head_start": {k: v for k, v in start.items() if k != "offsets"}} if start else {})}
    if model.model_config.provenance.get("parent") == "scratch" and config.scale_fit_batches and saved is None:
        fit_scratch_scales(model, datasets["train"], config)
    probe = collate([datasets["train"][i] for i in range(min(2, len(datasets["train"])))])
    replay = Replay.of(config, parent, model) if config.replay else None
    frozen = freeze_unused(model, probe, config, replay)
    # the model and the replay hold copies of what they took from the parent; its own weights
    # and pre-training heads (about 1 GB at JMP-L) need not stay in memory for the whole run
    del parent, graph
    say(describe_settings(model, sources, config, frozen))
    if replay is not None:
        say(replay.describe(config.replay_weight))
        provenance["replay"] = {"data": dict(config.replay), "weight": float(config.replay_weight)}
    module = FinetuneModule(model, config, scales, datasets, provenance, replay)
    callbacks = [
        EMA(config.ema_decay),  # the same EMA as pre-training: per optimiser step, swapped in to validate
        L.pytorch.callbacks.EarlyStopping("val_loss", min_delta=config.early_stopping_min_delta,
                                          patience=config.early_stopping_patience, mode="min"),
        StepRows(),
        EpochStepCheckpoint(last, config.checkpoint_every, config.checkpoint_minutes),
    ]
    quiet_third_party()
    trainer = L.Trainer(max_epochs=config.max_epochs, accelerator=config.accelerator, devices=config.devices,
                        num_nodes=config.num_nodes, strategy=config.strategy, precision=config.precision,
                        callbacks=callbacks, logger=False, inference_mode=False, use_distributed_sampler=False,
                        num_sanity_val_steps=0, gradient_clip_val=config.grad_clip, plugins=[AtomicCheckpointIO()],
                        gradient_clip_algorithm="value", enable_progress_bar=config.progress,
                        enable_model_summary=config.progress, default_root_dir=out)
    if saved is not None and trainer.is_global_zero:
        rows = (saved.get("finetune_state") or {}).get("rows", {})
        for name in ("metrics.csv", "steps.csv"):
            keep_rows(out / name, int(rows.get(name, 0)))
    del saved
    trainer.fit(module, ckpt_path=str(last) if config.resume else None)
    summary = {"best_epoch": module.best["epoch"], "val": {k: v for k, v in module.best.items() if k != "epoch"},
               "model": str(out / "model.ckpt"), "last": str(last), "metrics_csv": str(out / "metrics.csv"),
               "frozen": frozen, "unseen_elements": unseen, "graph_settings": provenance["graph_settings"]}
    if not trainer.is_global_zero:
        summary["text"] = ""
        return summary
    if "test" in datasets and (out / "model.ckpt").is_file():
        errors = predict_dataset(load_model(out / "model.ckpt"), datasets["test"], config.eval_batch_size or 16,
                                 targets=config.targets)
        summary["test"] = errors.metrics(module.weights, scales)
    summary["throughput"] = throughput(module.timing)
    summary["text"] = format_summary(summary, config.targets, config.units)
    summary["text"] += (f"\ntraining: {summary['throughput']['structures_per_s']:.3g} structures/s per process, "
                        f"{100 * summary['throughput']['data_wait_share']:.1f} % of it waiting for data "
                        f"(reading, graph building; --num-workers {config.num_workers})")
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
