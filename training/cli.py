"""Entry point of the ``jmp-train`` command: ``finetune``, ``evaluate``, ``refit-references``, ``pretrain``
and ``info``."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np

from jmp_ase._version import __version__
from jmp_ase.training.metric_units import axis_label, metric_unit, target_unit
from jmp_ase.training.threads import describe_threads, requested_threads, use_threads

# jmp-train evaluate's loss: the targets' mean errors added without weights or scales
MIXED_LOSS = "mixed: the sum of each target's mean error in its own unit"


@click.group(name="jmp-train")
@click.version_option(__version__, "--version", prog_name="jmp-train")
def main() -> None:
    """Fine-tune and evaluate JMP (GemNet-OC) models for use with ASE."""


def _devices(value):
    if value is None:
        return None
    return int(value) if str(value).isdigit() else value


# Faults a user can cause (bad options, files, folders, data): one "Error:" line, no traceback.
ANTICIPATED = (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, ImportError,
               FloatingPointError)


@main.command()
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--pretrained", help="Parent model: original JMP checkpoint, pretrain.ckpt, jmp-ase model file or name.")
@click.option("--ema/--no-ema", default=None, help="Use the parent checkpoint's EMA weights.")
@click.option("--scratch", is_flag=True, default=None, help="Random weights (the parent's architecture if given).")
@click.option("--train", "train", help="Training data (.extxyz/.xyz, ASE .db, .lmdb).")
@click.option("--val", help="Validation data (default: a fraction of the training data).")
@click.option("--test", help="Test data, evaluated with the best model at the end.")
@click.option("--targets", help="Comma-separated: energy,forces[,stress] or a graph-level label, e.g. homo_lumo_gap.")
@click.option("--max-epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float, help="Peak learning rate of the top layers.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder (model.ckpt, last.ckpt, metrics.csv, steps.csv); must not hold a run or model.")
@click.option("--seed", type=int)
@click.option("--cutoff", type=float, help="Graph cutoff in Å (default: the parent's).")
@click.option("--max-neighbors", help="Neighbours per atom (default: the parent's), or 'untruncated': the "
                                      "smallest limit under which no training structure loses a neighbour in any "
                                      "graph, so energy and forces are continuous (more quadruplets: slower).")
@click.option("--tags", type=click.Choice(["ignore", "oc20"]),
              help="How the data's tags are read (default: the parent's, else ignore): ignore (every atom tag 2) "
                   "or oc20 (0/1/2).")
@click.option("--qint-tags", help="Tags of the atoms in the quadruplet graph, e.g. 1,2 (default: the parent's).")
@click.option("--smooth-dihedral/--jmp-dihedral", default=None,
              help="Quadruplet basis: smooth (default with conservative forces) or JMP's exact dihedral.")
@click.option("--dihedral-damping", type=float,
              help="ε of the smooth basis: close to JMP's dihedral unless a triplet is within ~ε rad of "
                   "collinear (0: damped by sin θ everywhere).")
@click.option("--init-energy-head",
              help="Start the energy head from this pre-training head of the parent (e.g. molecules-gfn2 of "
                   "jmp-mini) instead of a new random head.")
@click.option("--unseen-embeddings", type=click.Choice(["similar", "random"]),
              help="Embedding rows of training elements the parent never saw: similar (default) starts each from "
                   "the nearest seen element on the periodic table (Fe from Ni, Si from C), random keeps the "
                   "untrained rows as JMP does.")
@click.option("--replay", multiple=True, metavar="HEAD=FILE",
              help="Multi-head replay: every step also trains the parent's pre-training head HEAD (energy and "
                   "direct forces) on a batch of FILE, its pre-training data, so the backbone keeps what it "
                   "learned; repeat for several heads.")
@click.option("--replay-weight", type=float, help="Weight of the replay loss against the task's (default 0.1).")
@click.option("--committee", type=int,
              help="K energy MLPs on one backbone pass, each trained on the labels: the energy is their mean and "
                   "the calculator gives energy_std and forces_std (K backward passes per training step).")
@click.option("--loss", type=click.Choice(["mae", "mse"]),
              help="mae (default, JMP's): absolute energy and force errors; mse: squared, as MACE, which weighs "
                   "rare structures far from the bulk of the data more (validation loss stays MAE).")
@click.option("--element-references",
              help="Energies (eV) of the isolated atoms at the labels' level of theory, e.g. H=-13.6,O=-432.1: "
                   "they replace the references fitted to the training energies.")
@click.option("--isolated-atom-references/--no-isolated-atom-references", default=None,
              help="An atom without neighbours gets exactly its element reference, so a structure pulled apart "
                   "ends at the sum of the references (give them with --element-references).")
@click.option("--final-epochs", type=int,
              help="Make the last N epochs an energy-refinement stage: energy loss weight x10 (or "
                   "final_loss_weights), constant rate lr x final_lr_factor (0.1); the model is the best of it.")
@click.option("--head-epochs", type=int,
              help="Linear-probe start (LP-FT): the first N epochs train only the new heads on the parent's "
                   "features; then the parent's layers start their own warmup and cosine.")
@click.option("--devices", help="Devices per node (a number or 'auto').")
@click.option("--num-nodes", type=int, help="Nodes (several: one process per device on each).")
@click.option("--strategy", help="Lightning strategy: auto, ddp, ddp_spawn, ...")
@click.option("--accelerator", help="cpu, gpu or auto.")
@click.option("--num-workers", type=int, help="DataLoader worker processes (they read structures and build graphs).")
@click.option("--checkpoint-every", type=int,
              help="Write last.ckpt every N optimiser steps (default: every 10 minutes, and after every epoch).")
@click.option("--resume", is_flag=True, default=None, help="Continue the run in --out from its last.ckpt.")
@click.option("--progress/--no-progress", default=None, help="Progress bars.")
@click.option("--memory", type=click.Choice(["auto", "fast", "lean"]),
              help="lean: interactions in chunks, recomputed in backward (same numbers, a fraction of the memory, "
                   "slower); auto (default): lean for large structures only.")
@click.option("--threads", type=int,
              help="CPU threads per process (default: OMP_NUM_THREADS if exported, else 1).")
def finetune(config, threads, **options):
    """Fine-tune a JMP backbone; CONFIG is a YAML file whose settings the options override.
    Graph settings (cutoff, max_neighbors, tags, qint_tags) default to the parent's."""
    from jmp_ase.training.finetune_config import FinetuneConfig
    from jmp_ase.training.preflight import preflight_finetune

    options["devices"] = _devices(options["devices"])
    options["replay"] = _replay(options["replay"])
    try:
        requested_threads(threads)
        settings = FinetuneConfig.from_yaml(config, **options)
        preflight_finetune(settings)  # before torch and Lightning are imported: fails within a second
        use_threads(threads)
        from jmp_ase.training.finetune import run_finetune

        summary = run_finetune(settings)
    except ANTICIPATED as err:
        raise click.ClickException(str(err)) from None
    if summary["text"]:
        click.echo(summary["text"])


def _replay(values: tuple[str, ...]) -> dict | None:
    """``--replay HEAD=FILE`` options as the config's mapping (None when not given)."""
    if not values:
        return None
    bad = [v for v in values if "=" not in v or not v.split("=", 1)[0] or not v.split("=", 1)[1]]
    if bad:
        raise click.BadParameter(f"expected HEAD=FILE, got {bad[0]!r}", param_hint="--replay")
    return dict(v.split("=", 1) for v in values)


def default_targets(model, labels: list[str]) -> list[str]:
    """What a model predicts that the data has labels for."""
    names = []
    if model.needs_grad:
        names += [t for t in ("energy", "forces", "stress") if t in labels]
    elif any(h.spec.kind == "direct_forces" for h in model.heads.values()):
        names += [t for t in ("energy", "forces") if t in labels]
    names += [n for n, h in model.heads.items() if h.spec.kind == "scalar" and n in labels]
    return names


def write_predictions(path, errors, targets) -> None:
    """One row per structure: natoms, label and prediction of each graph-level target, force errors."""
    preds = {t: (np.concatenate(p), np.concatenate(y)) for t, (p, y) in errors.predictions.items()}
    natoms = np.asarray(errors.natoms)
    starts = np.concatenate([[0], np.cumsum(natoms)])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        header = ["structure", "natoms"]
        for t in targets:
            header += [f"{t}_mae"] if t in ("forces", "stress") else [f"{t}_label", f"{t}_pred"]
        writer.writerow(header)
        for s, n in enumerate(natoms):
            row = [s, int(n)]
            for t in targets:
                p, y = preds[t]
                if t == "forces":
                    row.append(float(np.abs(p[starts[s]:starts[s + 1]] - y[starts[s]:starts[s + 1]]).mean()))
                elif t == "stress":
                    row.append(float(np.abs(p[s] - y[s]).mean()))
                else:
                    row += [float(y[s]), float(p[s])]
            writer.writerow(row)


def parity_plot(path, errors, targets, units) -> None:
    """Predicted against labelled values, one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 4), squeeze=False)
    for ax, t in zip(axes[0], targets):
        p, y = (np.concatenate(v).ravel() for v in errors.predictions[t])
        ax.scatter(y, p, s=4, alpha=0.5)
        lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(axis_label("label", t, units))
        ax.set_ylabel(axis_label("predicted", t, units))
        ax.set_title(f"{t}: MAE {np.abs(p - y).mean():.4g} {target_unit(t, units)}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def refuse_unknown_elements(dataset, known: list[int] | None, data) -> None:
    """ValueError naming the elements the model never saw and the first structures holding them."""
    if not known:
        return
    from ase.data import chemical_symbols

    where: dict[int, list[int]] = {}
    for i in range(len(dataset)):
        for z in sorted(set(int(z) for z in dataset.labels(i)[0]) - set(known)):
            where.setdefault(z, []).append(i)
    if where:
        listed = "; ".join(f"{chemical_symbols[z]} in structures {idx[:5]}{' ...' if len(idx) > 5 else ''}"
                           for z, idx in where.items())
        raise ValueError(f"{data}: elements the model was not trained on: {listed}. It knows only "
                         f"{' '.join(chemical_symbols[z] for z in known)}; --allow-unknown-elements evaluates anyway")


@main.command()
@click.argument("model")
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False), default="evaluation", show_default=True,
              help="Folder for metrics.json, predictions.csv and parity.png.")
@click.option("--targets", help="Comma-separated targets (default: all the model predicts and the data has).")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--allow-unknown-elements", is_flag=True,
              help="Evaluate structures with elements absent from the model's training data (refused by default, "
                   "as the calculator refuses them).")
@click.option("--threads", type=int,
              help="CPU threads per process (default: OMP_NUM_THREADS if exported, else 1).")
def evaluate(model, data, out, targets, batch_size, device, allow_unknown_elements, threads):
    """Errors of MODEL (a model file or shipped name) on DATA; writes metrics.json, a CSV and a parity plot."""
    from jmp_ase.io.model_file import load_model

    from jmp_ase.training.data import DatasetSpec, available_labels, read_structures
    from jmp_ase.training.finetune import physical, predict_dataset

    try:
        click.echo(f"jmp-train evaluate: {describe_threads(use_threads(threads))}", err=True)
        net = load_model(model)
        if targets:
            names = [t.strip() for t in targets.split(",") if t.strip()]
        else:
            names = default_targets(net, available_labels(read_structures(data, 0)[0]))
        if not names:
            raise ValueError(f"{data} has no labels for what the model predicts ({list(net.heads)})")
        cfg = net.model_config
        spec = DatasetSpec.for_model(data, names, net.graph_settings)
        dataset = spec.build(cfg.backbone.qint_tags, cfg.backbone.num_elements)
        if not allow_unknown_elements:
            refuse_unknown_elements(dataset, net.elements, data)
        errors = predict_dataset(net, dataset, batch_size, device, names)
    except ANTICIPATED as err:
        raise click.ClickException(str(err)) from None
    metrics = errors.metrics({}, {})
    units = {n: h.spec.units for n, h in net.heads.items()}
    units.update({"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³"})
    click.echo(f"{model} on {data} ({len(dataset)} structures):")
    for t in names:
        click.echo(f"  {t:>12s}: MAE {physical(t, metrics[f'{t}_mae'], units)}, "
                   f"RMSE {physical(t, metrics[f'{t}_rmse'], units)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"model": str(model), "data": str(data), "structures": len(dataset),
                                                  "units": {k: MIXED_LOSS if k == "loss" else metric_unit(k, units)
                                                            for k in metrics},
                                                  **{k: float(v) for k, v in metrics.items()}}, indent=1))
    write_predictions(out / "predictions.csv", errors, names)
    parity_plot(out / "parity.png", errors, names, units)
    click.echo(f"wrote {out / 'predictions.csv'} and {out / 'parity.png'}")


@main.command("refit-references")
@click.argument("model")
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The new model file (.ckpt).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--threads", type=int,
              help="CPU threads per process (default: OMP_NUM_THREADS if exported, else 1).")
def refit_references(model, data, out, batch_size, threads):
    """Refit MODEL's per-element energy references on the energy-labelled structures of DATA
    (its training data: fitting on test data would hide the error it measures) and write the
    model to OUT. Energies shift by a constant per atom of each element; forces and stress do
    not change. The fit and the energy MAE on DATA before and after go into OUT's provenance."""
    from ase.data import chemical_symbols

    from jmp_ase.io.model_file import load_model, save_model
    from jmp_ase.training.data import DatasetSpec
    from jmp_ase.training.references import add_energy_offsets, energy_head

    if Path(out).exists():
        raise click.ClickException(f"{out} exists; give a new file name (the input model is never overwritten)")
    try:
        click.echo(f"jmp-train refit-references: {describe_threads(use_threads(threads))}", err=True)
        net = load_model(model)
        energy_head(net)
        cfg = net.model_config
        dataset = DatasetSpec.for_model(data, ["energy"], net.graph_settings).build(cfg.backbone.qint_tags,
                                                                                    cfg.backbone.num_elements)
        refuse_unknown_elements(dataset, net.elements, data)
        fit = add_energy_offsets(net, [dataset[i] for i in range(len(dataset))], batch_size)
    except ANTICIPATED as err:
        raise click.ClickException(str(err)) from None
    offsets = {chemical_symbols[z]: round(v, 6) for z, v in sorted(fit["offsets"].items())}
    cfg.provenance = {**cfg.provenance, "reference_refit": {
        "data": str(data), "structures": len(dataset), "offsets_eV": offsets,
        "energy_mae_before": fit["energy_mae_before"], "energy_mae_after": fit["energy_mae_after"]}}
    save_model(net, out)
    click.echo(f"{model} on {data} ({len(dataset)} structures): energy MAE {1000 * fit['energy_mae_before']:.1f} meV "
               f"-> {1000 * fit['energy_mae_after']:.1f} meV after per-element offsets (eV: "
               + ", ".join(f"{k} {v:+.3f}" for k, v in offsets.items()) + f"); wrote {out}")


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue the run in the config's output folder from its last.ckpt.")
@click.option("--devices", help="Devices per node (a number or 'auto'); overrides trainer.devices.")
@click.option("--num-nodes", type=int, help="Nodes; overrides trainer.num_nodes.")
@click.option("--strategy", help="Lightning strategy (auto, ddp, ...); overrides trainer.strategy.")
@click.option("--accelerator", help="cpu, gpu or auto; overrides trainer.accelerator.")
@click.option("--checkpoint-every", type=int, help="last.ckpt every N optimiser steps; overrides "
                                                   "trainer.checkpoint_every_n_steps.")
@click.option("--threads", type=int,
              help="CPU threads per process (default: OMP_NUM_THREADS if exported, else 1).")
def pretrain(config, resume, threads, **options):
    """Joint pre-training on several data sets, as configured in the YAML file CONFIG."""
    from jmp_ase.training.preflight import prepare_pretrain

    try:
        settings = prepare_pretrain(config, resume or None, threads, devices=_devices(options["devices"]),
                                    num_nodes=options["num_nodes"], strategy=options["strategy"],
                                    accelerator=options["accelerator"],
                                    checkpoint_every_n_steps=options["checkpoint_every"])
        from jmp_ase.training.pretrain import run_pretrain

        path = run_pretrain(settings, resume=resume or None)
    except ANTICIPATED as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {path}")


@main.command()
@click.argument("model", required=False)
def info(model):
    """How MODEL (a model file, pre-trained checkpoint or shipped name) was made: data, recipe,
    test errors. Without MODEL: the names of the shipped models."""
    from jmp_ase.io.model_file import shipped_models

    if model is None:
        click.echo("shipped models: " + ", ".join(shipped_models()))
        return
    from jmp_ase.io.model_info import model_info

    try:
        found = model_info(model)  # one read of the file; refuses weights that do not fit, as the calculator
    except ANTICIPATED as err:
        raise click.ClickException(str(err)) from None
    for line in found.settings:
        click.echo(line)
    click.echo(json.dumps(found.provenance, indent=1, default=str) if found.provenance
               else f"{model}: no provenance recorded")


if __name__ == "__main__":  # pragma: no cover
    main()
