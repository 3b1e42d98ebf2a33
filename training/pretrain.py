"""Joint multi-domain pre-training of JMP (paper Sec. 4, App. F/J), with Lightning.

``run_pretrain(config)`` (a :class:`~jmp_ase.training.pretrain_config.PretrainConfig`; started by
``jmp-train pretrain CONFIG.yaml [--resume]`` or, the same way, ``python -m jmp_ase.training.pretrain
CONFIG.yaml [--resume]``) trains one GemNet-OC backbone with one energy and one direct-force head
per data set on temperature-sampled mixed batches (:mod:`jmp_ase.training.sampler`) with the
structure-wise loss (:mod:`jmp_ase.training.losses`), AdamW, linear warm-up + cosine decay, gradient
clipping, EMA (:mod:`jmp_ase.training.ema`) and edge dropout, after fitting the scale factors
(:mod:`jmp_ase.training.scaling`). It writes to ``out_dir``:

* ``last.ckpt`` every ``checkpoint_every_n_steps`` steps and at the end (atomic write): the
  full Lightning state, resumable mid-epoch with ``resume=True``;
* ``pretrain.ckpt``: JMP's checkpoint layout (``state_dict`` with ``embedding.*``,
  ``backbone.*``, ``output.out_{energy,forces}.{i}.*``; ``optimizer_states[0]["ema"]``;
  ``hyper_parameters`` as plain dicts with the task names, element references and
  normalisation), read by :func:`jmp_ase.io.pretrained.load_jmp_pretrained`;
* ``metrics.csv`` (appended to on resume), the unit of each column in ``metrics_units.json``.

Targets are normalised per data set: ``E_n = (E - Σ_i ref[Z_i]) / energy_std`` with
least-squares element references (their per-atom mean residual folded in) and
``F_n = F / force_rms`` (statistics of the training split).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from jmp_ase.io.model_file import atomic_torch_save
from jmp_ase.nn.config import BackboneConfig, named_config
from jmp_ase.io.jmp_checkpoint import PRETRAIN_FORMAT
from jmp_ase.nn.model import JMPPretrainedModel
from . import pretrain_data as D
from jmp_ase.training.checkpoints import AtomicCheckpointIO, StepCheckpoint
from jmp_ase.training.ema import EMA
from jmp_ase.training.losses import per_task_means, structurewise_loss
from jmp_ase.training.metric_units import write_units
from jmp_ase.training.scaling import fit_scale_factors
from jmp_ase.training.schedules import warmup_cosine_factor
from jmp_ase.training.console import quiet_third_party
from jmp_ase.training.preflight import is_worker_process, prepare_pretrain
from jmp_ase.training.pretrain_config import PretrainConfig
from jmp_ase.training.threads import describe_threads

def backbone_config(cfg: PretrainConfig) -> BackboneConfig:
    spec = cfg.model.backbone
    bb = named_config(spec) if isinstance(spec, str) else BackboneConfig.from_dict(spec)
    bb.dropout, bb.edge_dropout = cfg.model.dropout, cfg.model.edge_dropout
    return bb


# Shared basis weights of GemNet-OC (JMP's ``Bases._set_shared_params``): gradient / uses.
_SHARED = ("mlp_rbf_tint.linear.weight", "mlp_cbf_tint.weight", "mlp_rbf_h.linear.weight",
           "mlp_rbf_qint.linear.weight", "mlp_cbf_qint.weight", "mlp_sbf_qint.weight",
           "mlp_rbf_aeint.linear.weight", "mlp_cbf_aeint.weight", "mlp_rbf_eaint.linear.weight",
           "mlp_cbf_eaint.weight", "mlp_rbf_aint.weight")


class NonFiniteLossError(FloatingPointError):
    """Raised before the optimiser step when a loss or gradient is NaN/inf."""


class PretrainModule(pl.LightningModule):
    """Embedding + backbone + per-task heads as direct children: JMP's state-dict layout."""

    def __init__(self, hparams: dict, data: D.PretrainData | None = None):
        super().__init__()
        self.save_hyperparameters(hparams)
        self.data = data  # builds the loaders once the process group is known
        bb = BackboneConfig.from_dict(hparams["backbone"])
        net = JMPPretrainedModel(bb, len(hparams["tasks"]), hparams["num_mlps"])
        self.embedding, self.backbone, self.output = net.embedding, net.backbone, net.output
        self.tasks = hparams["tasks"]
        self.shared = [(self.backbone.bases.get_parameter(n), bb.num_blocks) for n in _SHARED]
        self.shared.append((self.backbone.bases.get_parameter("mlp_rbf_out.linear.weight"), bb.num_blocks + 1))
        self._last_ids = None
        # wall time of this process: waiting for batches (reading, graph building, collation) and steps
        self.timing = {"structures": 0, "data_s": 0.0, "step_s": 0.0}
        self._t_end = self._t_start = None

    def forward(self, batch, task: torch.Tensor):
        """Energy (B,) and forces (N, 3) of every structure's own head (normalised units)."""
        out = self.backbone(self.embedding(batch.numbers), batch.positions, batch.cell, batch.atom_batch,
                            batch.indices)
        return self.output.per_structure_task(out, batch.atom_batch, batch.num_structures, task)

    def train_dataloader(self):
        loader = self.data.train_loader(self.trainer.world_size, self.trainer.global_rank)
        loader.progress = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return loader

    def val_dataloader(self):
        return self.data.val_loader(self.trainer.world_size, self.trainer.global_rank) or []

    def on_train_epoch_start(self):
        self._t_end = time.perf_counter()

    def on_train_batch_start(self, batch, batch_idx):
        self._t_start = time.perf_counter()
        self.timing["data_s"] += self._t_start - self._t_end if self._t_end is not None else 0.0

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._t_end = time.perf_counter()
        self.timing["step_s"] += self._t_end - self._t_start
        self.timing["structures"] += batch[0].num_structures
        if "first" not in self.timing:  # the first batch of the run waits for the workers to start
            self.timing["first"] = dict(self.timing)

    def throughput_line(self) -> str:
        """Training structures per second of this process and the share spent waiting for data
        (all batches; then without the run's first batch, which includes starting the workers)."""
        t = self.timing
        total = t["data_s"] + t["step_s"]
        if total <= 0:
            return "training: no step timed"
        line = (f"training: {t['structures'] / total:.3g} structures/s per process, {100 * t['data_s'] / total:.1f} % "
                f"of it waiting for data (reading, graph building; num_workers {self.data.cfg.data.num_workers})")
        first = t.get("first", t)
        rest = total - first["data_s"] - first["step_s"]
        if rest > 0:
            line += f"; after the first batch {100 * (t['data_s'] - first['data_s']) / rest:.1f} %"
        return line

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        atoms, targets = batch
        return atoms.to(device), {k: v.to(device) if torch.is_tensor(v) else v for k, v in targets.items()}

    def _loss(self, batch, targets):
        energy, forces = self(batch, targets["task"])
        return structurewise_loss(energy, targets["energy"], forces, targets["forces"], batch.atom_batch,
                                  targets["energy_scale"], targets["force_scale"])

    def training_step(self, data, batch_idx):
        batch, targets = data
        self._last_ids = (batch_idx, targets["ids"])
        terms = self._loss(batch, targets)
        bad = (~torch.isfinite(terms.per_structure)).any().float()
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        if bad.item() > 0:
            mask = ~torch.isfinite(terms.per_structure).cpu()
            raise NonFiniteLossError(self._describe("loss", terms.loss.item(), mask))
        bs = batch.num_structures
        self.log_dict({"train/loss": terms.loss, "train/energy_loss": terms.energy, "train/force_loss": terms.force},
                      batch_size=bs, prog_bar=True)
        for kind, values in (("energy_loss", terms.per_structure_energy), ("force_loss", terms.per_structure_force)):
            for task, mean in zip(self.tasks, per_task_means(values.detach(), targets["task"], len(self.tasks))):
                # NaN when the batch has no structure of the task (Lightning would repeat the last value)
                self.log(f"train/{task['name']}/{kind}", float("nan") if mean is None else mean, batch_size=bs)
        return terms.loss

    def _describe(self, what: str, value: float, mask=None) -> str:
        batch_idx, ids = self._last_ids
        picked = [i for k, i in enumerate(ids) if mask is None or bool(mask[k])] or ids
        by_task: dict[str, list[str]] = {}
        for name, index, source in picked:
            by_task.setdefault(name, []).append(f"{index} ({source[0]}:{source[1]})")
        where = "; ".join(f"data set {n!r} structures {', '.join(v[:10])}" + (" ..." if len(v) > 10 else "")
                          for n, v in by_task.items())
        return (f"non-finite {what} ({value}) at step {self.global_step}, epoch {self.current_epoch}, batch "
                f"{batch_idx} on rank {self.global_rank}: {where}. Training stopped before the optimiser step; "
                "the weights and the last checkpoint are unchanged.")

    def on_before_optimizer_step(self, optimizer):
        # JMP divides the gradients of the basis weights shared by all blocks by their number of
        # uses (after backward; here once per optimiser step, so accumulation stays exact)
        for param, uses in self.shared:
            if param.grad is not None:
                param.grad.div_(uses)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if not torch.isfinite(norm):
            if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
                return  # float16 loss scaling: the scaler skips this step and lowers its scale
            raise NonFiniteLossError(self._describe("gradient norm", norm.item()))
        self.log("train/grad_norm", norm)
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    def on_validation_epoch_start(self):
        # per task: |ΔE| sum, structures, |ΔF| sum, force components, loss sum (reduced over ranks at the end)
        self._val = torch.zeros(5, len(self.tasks), dtype=torch.float64, device=self.device)

    def validation_step(self, data, batch_idx):
        batch, targets = data
        energy, forces = self(batch, targets["task"])
        task = targets["task"]
        terms = structurewise_loss(energy, targets["energy"], forces, targets["forces"], batch.atom_batch,
                                   targets["energy_scale"], targets["force_scale"])
        f_err = (forces - targets["forces"]).abs().sum(dim=1)
        rows = [(energy - targets["energy"]).abs(), torch.ones_like(energy), None, None, terms.per_structure]
        for k, values in enumerate(rows):
            if values is not None:
                self._val[k].index_add_(0, task, values.detach().double())
        self._val[2].index_add_(0, task[batch.atom_batch], f_err.detach().double())
        self._val[3].index_add_(0, task[batch.atom_batch], torch.full_like(f_err, 3.0).double())

    def on_validation_epoch_end(self):
        val = self._val
        if self.trainer.world_size > 1:
            val = self.trainer.strategy.reduce(val, reduce_op="sum")
        for t, task in enumerate(self.tasks):
            if val[1, t] > 0:
                self.log(f"val/{task['name']}/energy_mae", val[0, t] / val[1, t] * task["energy_std"])
                self.log(f"val/{task['name']}/forces_mae", val[2, t] / val[3, t] * task["force_rms"])
        if val[1].sum() > 0:
            self.log("val/loss", val[4].sum() / val[1].sum())

    def configure_optimizers(self):
        o = self.hparams["optim"]
        opt = torch.optim.AdamW(self.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                weight_decay=o["weight_decay"], amsgrad=False)
        total = self.total_steps = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_factor(
            s, o["warmup_steps"], total, o["warmup_start_lr_factor"], o["min_lr_factor"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint):
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"])


class _AppendingLogger(CSVLogger):
    """CSV logger writing ``out_dir/metrics.csv`` and keeping the rows of earlier runs."""

    @property
    def experiment(self):
        if self._experiment is None:
            from lightning.pytorch.loggers.csv_logs import ExperimentWriter

            class Writer(ExperimentWriter):
                def _check_log_dir_exists(self):
                    if os.path.isfile(self.metrics_file_path):
                        with open(self.metrics_file_path, newline="") as f:
                            self.metrics_keys = sorted(next(csv.reader(f), []))

            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = Writer(log_dir=self.log_dir)
        return self._experiment


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a run resumes from (those steps are redone)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = list(rows[0]) if rows else []
    keep = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)


def metric_columns(tasks: list[str]) -> list[str]:
    """Every column ``metrics.csv`` can get (Lightning adds them as they are first logged)."""
    per_task = [f"train/{t}/{k}" for t in tasks for k in ("energy_loss", "force_loss")]
    per_task += [f"val/{t}/{k}" for t in tasks for k in ("energy_mae", "forces_mae")]
    return ["epoch", "step", "train/loss", "train/energy_loss", "train/force_loss", *per_task, "train/grad_norm",
            "train/lr", "val/loss"]


def export_pretrained(module: PretrainModule, ema: EMA | None, path, trainer: pl.Trainer | None = None) -> None:
    """Write ``path`` in JMP's pre-training checkpoint layout (plain containers and tensors)."""
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    content = {
        "epoch": trainer.current_epoch if trainer else 0, "global_step": trainer.global_step if trainer else 0,
        "pytorch-lightning_version": pl.__version__, "state_dict": state,
        "optimizer_states": [{"ema": ema.averaged_tuple()}] if ema is not None and ema.ema is not None else [],
        "hyper_parameters": copy.deepcopy(dict(module.hparams)),
    }
    atomic_torch_save(content, path)


def pretrained_provenance(content: dict, extra: dict | None = None) -> dict:
    """What a ``pretrain.ckpt`` was trained on and how (plain containers), plus ``extra``."""
    hp = content["hyper_parameters"]
    datasets = [{k: t[k] for k in ("name", "cutoff", "max_neighbors", "tags", "num_structures", "mean_natoms",
                                   "energy_std", "force_rms") if k in t} for t in hp["tasks"]]
    return {"kind": "jmp-ase pre-trained backbone with one energy and one direct-force head per data set",
            "datasets": datasets, "steps": int(content.get("global_step", 0)), "batch_size": hp.get("batch_size"),
            "temperature": hp.get("temperature"), "optim": hp.get("optim"), "seed": hp.get("seed"),
            "ema_in_file": bool(content.get("optimizer_states")), **(extra or {})}


def pretrained_calculator(path, task: str | int = 0, ema: bool = True, **kwargs):
    """A :class:`~jmp_ase.calculators.calculator.JMPCalculator` on one head of a ``pretrain.ckpt`` (eV, eV/Å:
    the file states each head's references and statistics)."""
    from jmp_ase.calculators.calculator import JMPCalculator

    return JMPCalculator.from_jmp_checkpoint(path, head=task, ema=ema, **kwargs)


def run_pretrain(config: PretrainConfig | dict, resume: bool | None = None) -> Path:
    """Pre-train as configured (a :class:`PretrainConfig` or its mapping; see ``benchmarks/mini_jmp/pretrain.yaml``).

    ``resume=True`` continues from ``out_dir/last.ckpt`` (killed runs included) with the
    same optimiser, scheduler, EMA, data position and RNG state; without a checkpoint it
    starts afresh (``resume: true`` in the config does the same). Returns the path of
    ``pretrain.ckpt``.
    """
    cfg = config if isinstance(config, PretrainConfig) else PretrainConfig.from_dict(config)
    resume = cfg.resume if resume is None else resume
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    if resume and ckpt_path is None:
        print(f"jmp-train pretrain: no {last} to resume from; starting afresh", file=sys.stderr)
    if not is_worker_process():
        names = ", ".join(d.name for d in cfg.data.datasets)
        print(f"jmp-train pretrain: data sets {names}; out_dir {out}; {describe_threads(torch.get_num_threads())}",
              file=sys.stderr, flush=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    bb = backbone_config(cfg)
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True) if ckpt_path else None
    data = D.PretrainData(cfg, bb.qint_tags, bb.num_elements, saved["hyper_parameters"]["tasks"] if saved else None)
    t = cfg.trainer
    hparams = {"backbone": bb.to_dict(), "num_mlps": cfg.model.num_mlps, "tasks": data.task_info,
               "optim": dataclasses.asdict(cfg.optim), "temperature": cfg.data.temperature,
               "batch_size": cfg.data.batch_size, "seed": cfg.seed, "format": PRETRAIN_FORMAT}
    module = PretrainModule(hparams, data)
    if ckpt_path is None and cfg.scale_fit is not None and cfg.scale_fit.enabled:
        fit_scale_factors(module, data.scale_fit_batches(cfg.scale_fit.num_batches),
                          lambda m, b: m(b[0], b[1]["task"]))
    ema = EMA(cfg.ema.decay, cfg.ema.every_n_steps) if cfg.ema is not None else None
    has_val = data.has_val
    quiet_third_party()
    trainer = pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_steps=t.max_steps or -1, max_epochs=t.max_epochs or -1,
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=cfg.optim.gradient_clip,
        gradient_clip_algorithm="norm", use_distributed_sampler=False, enable_checkpointing=False,
        callbacks=[c for c in (ema, StepCheckpoint(last, t.checkpoint_every_n_steps)) if c is not None],
        plugins=[AtomicCheckpointIO()], logger=_AppendingLogger(out, name="", version=""),
        log_every_n_steps=t.log_every_n_steps, enable_progress_bar=t.progress_bar,
        num_sanity_val_steps=0, limit_val_batches=t.limit_val_batches if has_val else 0,
        val_check_interval=t.val_every_n_steps if has_val and t.val_every_n_steps else None,
        check_val_every_n_epoch=None if has_val and t.val_every_n_steps else 1,
        enable_model_summary=False,
    )
    if saved is not None and trainer.is_global_zero:
        _truncate_metrics(out / "metrics.csv", int(saved["global_step"]))
    if trainer.is_global_zero:
        write_units(out, metric_columns([task["name"] for task in data.task_info]))
    del saved
    trainer.fit(module, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        export_pretrained(module, ema, out / "pretrain.ckpt", trainer)
        print(module.throughput_line(), file=sys.stderr, flush=True)
    return out / "pretrain.ckpt"


def main(argv=None) -> None:
    """``python -m jmp_ase.training.pretrain CONFIG [--resume] [--threads N]``: the start of
    ``jmp-train pretrain`` (:func:`~jmp_ase.training.preflight.prepare_pretrain`), then :func:`run_pretrain`."""
    import argparse

    parser = argparse.ArgumentParser(description="JMP multi-domain pre-training (as jmp-train pretrain)")
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    try:
        config = prepare_pretrain(args.config, args.resume or None, args.threads)
    except ValueError as err:
        sys.exit(f"Error: {err}")
    print(f"wrote {run_pretrain(config, resume=args.resume or None)}")


if __name__ == "__main__":
    main()
