"""The fine-tuning LightningModule: steps, optimiser and schedule, metrics.csv (units in
metrics_units.json) / steps.csv, the best model file and the state a run resumes from (mid-epoch included)."""
from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path

import lightning as L
import torch

from jmp_ase._version import __version__
from jmp_ase.calculators.evaluation import ErrorSums
from jmp_ase.io.model_file import save_model
from jmp_ase.nn.model import FineTunedModel

from jmp_ase.training.checkpoints import count_rows
from jmp_ase.training.finetune_config import FinetuneConfig
from jmp_ase.training.loaders import eval_loader, train_batches_per_epoch, train_loader
from jmp_ase.training.losses import check_force_errors, compute_losses
from jmp_ase.training.metric_units import UNITS_FILE, write_units
from jmp_ase.training.schedules import WarmupCosineRLP, param_groups_with_llrd


def throughput(timing: dict) -> dict:
    """Training structures per second of one process (waiting for data included) and the share
    of that time spent waiting for batches (reading structures, building graphs, collating)."""
    total = timing["data_s"] + timing["step_s"]
    return {"structures_per_s": round(timing["structures"] / total, 3) if total > 0 else float("nan"),
            "data_wait_share": round(timing["data_s"] / total, 4) if total > 0 else float("nan")}


class FinetuneModule(L.LightningModule):
    """Training/validation steps, optimiser and schedule, metrics.csv, steps.csv and the best model file.

    ``datasets``: ``train`` and ``val`` :class:`~jmp_ase.training.data.StructureDataset`; the
    loaders are made once the process group is known (each process gets its share).
    """

    def __init__(self, model: FineTunedModel, config: FinetuneConfig, scales: dict, datasets: dict,
                 provenance: dict | None = None, replay=None):
        super().__init__()
        self.model, self.config, self.scales = model, config, scales
        self.replay = replay  # training/replay.py: the parent's pre-training heads, trained beside the task
        self._replay_sum = [0.0, 0]
        self.datasets = datasets
        self.provenance = provenance or {}
        self.best = {"val_loss": math.inf, "epoch": -1}
        # eV/Å: a structure whose force error exceeds this stops the run (check_force_errors)
        self.force_error_limit = config.force_error_limit * scales.get("forces", 1.0)
        self._train, self._val, self._val_metrics = ErrorSums(), ErrorSums(), {}
        self._elapsed_before, self._loss = 0.0, None
        # wall time of this process: waiting for batches (reading, graph building, collation) and steps
        self.timing = {"structures": 0, "data_s": 0.0, "step_s": 0.0}
        self._epoch_timing = dict(self.timing)
        self._t_end = self._t_start = None
        self._batch_structures, self._data_s, self._step_lr = 0, 0.0, math.nan
        self.out = Path(config.out)

    # ------------------------------------------------------------------ data
    def train_dataloader(self):
        c = self.config
        loader = train_loader(self.datasets["train"], c.batch_size, c.seed, self.trainer.world_size,
                              self.trainer.global_rank, c.num_workers)
        loader.progress = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return loader

    def val_dataloader(self):
        c = self.config
        return eval_loader(self.datasets["val"], c.eval_batch_size or c.batch_size, self.trainer.world_size,
                           self.trainer.global_rank, c.num_workers)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        atoms_batch, targets = batch
        return atoms_batch.to(device), {k: v.to(device) for k, v in targets.items()}

    # ------------------------------------------------------------------ stages
    @property
    def final_start_epoch(self) -> int:
        """First epoch of the energy-refinement stage (``max_epochs`` when there is none)."""
        return self.config.max_epochs - self.config.final_epochs

    @property
    def in_final_stage(self) -> bool:
        return self.config.final_epochs > 0 and self.current_epoch >= self.final_start_epoch

    @property
    def weights(self) -> dict[str, float]:
        """Loss weights of the current stage (they also define val_loss)."""
        return self.config.stage_loss_weights(self.in_final_stage)

    def _start_final_stage(self) -> None:
        """val_loss changes meaning with the weights: the best model, and early stopping, start afresh
        (idempotent, so a run resumed within the stage's first epoch keeps its best)."""
        if self.best["epoch"] >= self.final_start_epoch:
            return
        self.best = {"val_loss": math.inf, "epoch": -1}
        for callback in self.trainer.callbacks:
            if isinstance(callback, L.pytorch.callbacks.EarlyStopping):
                callback.wait_count = 0
                callback.best_score = torch.tensor(math.inf)

    # ------------------------------------------------------------------ steps
    def on_fit_start(self):
        self._fit_start = time.perf_counter() - self._elapsed_before  # wall time of the run, logged per epoch

    def forward(self, batch):
        targets = self.config.targets
        return self.model(batch, compute_stress="stress" in targets, compute_forces="forces" in targets)

    def on_train_epoch_start(self):
        if self.in_final_stage:
            self._start_final_stage()
        self._t_end = time.perf_counter()
        self._epoch_timing = {"structures": 0, "data_s": 0.0, "step_s": 0.0}

    def on_train_batch_start(self, batch, batch_idx):
        self._t_start = time.perf_counter()
        self._step_lr = max(g["lr"] for g in self.optimizers().param_groups)  # the rate this step trains at
        self._data_s = self._t_start - self._t_end if self._t_end is not None else 0.0

    def training_step(self, batch, batch_idx):
        atoms_batch, targets = batch
        self._batch_structures = atoms_batch.num_structures
        preds = self(atoms_batch)
        check_force_errors(preds, targets, atoms_batch, self.force_error_limit)
        loss, terms = compute_losses(preds, targets, self.weights, self.scales, self.config.loss)
        self._train.add(preds, targets)
        if self.replay is not None:
            replay_loss = self.replay.loss(self.model, self.trainer.world_size, self.trainer.global_rank)
            loss = loss + self.config.replay_weight * replay_loss
            self._replay_sum = [self._replay_sum[0] + replay_loss.detach(), self._replay_sum[1] + 1]  # no sync per step
        self._loss = loss.detach()
        self.log("loss", self._loss, prog_bar=True, batch_size=atoms_batch.num_structures)
        return loss

    def write_step(self, batch_idx) -> None:
        """One row of steps.csv per optimiser step (called by :class:`StepRows`, before a checkpoint)."""
        now = time.perf_counter()
        step_s = now - self._t_start if self._t_start is not None else 0.0
        self._t_end = now
        for timing in (self.timing, self._epoch_timing):
            timing["structures"] += self._batch_structures
            timing["data_s"] += self._data_s
            timing["step_s"] += step_s
        if not self.trainer.is_global_zero or self._loss is None:
            return
        path = self.out / "steps.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "batch", "loss", "lr", "structures", "data_s", "step_s"])
            writer.writerow([self.global_step - 1, self.current_epoch, batch_idx, repr(float(self._loss)),
                             repr(self._step_lr), self._batch_structures,
                             round(self._data_s, 4), round(step_s, 4)])

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
                total = self.trainer.strategy.reduce(torch.tensor(errors.sums[name], device=self.device),
                                                     reduce_op="sum")
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
        if metrics["val_loss"] < self.best["val_loss"]:  # EMA weights are in place (training/ema.py)
            self.best = {"val_loss": metrics["val_loss"], "epoch": self.current_epoch, **metrics}
            if self.trainer.is_global_zero:
                self.save_model(self.out / "model.ckpt")

    def on_train_epoch_end(self):
        row = {"epoch": self.current_epoch, **self._synced(self._train).metrics(self.weights, self.scales, "train_"),
               **self._val_metrics, "lr": max(g["lr"] for g in self.optimizers().param_groups),
               "elapsed_s": round(time.perf_counter() - self._fit_start, 2), **throughput(self._epoch_timing)}
        if self.replay is not None:  # the parent's pre-training loss on the replay batches (normalised, eq. 1)
            row["train_replay_loss"] = float(self._replay_sum[0]) / max(self._replay_sum[1], 1)
        self._train, self._val_metrics, self._replay_sum = ErrorSums(), {}, [0.0, 0]
        path = self.out / "metrics.csv"
        if self.trainer.is_global_zero:
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
            if new or not (self.out / UNITS_FILE).is_file():
                write_units(self.out, list(row), self.config.units)
        if row["lr"] < self.config.min_lr:
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ optimiser
    def _schedulers(self):
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        return [s for s in schedulers if isinstance(s, WarmupCosineRLP)]

    def configure_optimizers(self):
        c = self.config
        groups = param_groups_with_llrd(self.model, c.lr, c.llrd_decay, c.weight_decay)
        for group in groups:  # parameters outside the loss are frozen (freeze_unused): not optimised
            group["params"] = [p for p in group["params"] if p.requires_grad]
        if self.replay is not None:  # the pre-training heads: the top layer's rate
            groups.append({"name": "replay_heads", "params": [p for p in self.replay.parameters() if p.requires_grad],
                           "lr": c.lr, "lr_scale": 1.0, "weight_decay": c.weight_decay})
        steps_per_epoch = train_batches_per_epoch(len(self.datasets["train"]), c.batch_size, self.trainer.world_size)
        if c.head_epochs:  # linear-probe start: the new heads get their own group; the others wait
            groups = split_heads(groups, self.model.heads.parameters(), int(c.head_epochs) * steps_per_epoch,
                                 c.lr, c.weight_decay)
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=c.lr, betas=tuple(c.betas))
        warmup = int(round(c.warmup_epochs * steps_per_epoch))
        main_epochs = c.max_epochs - c.final_epochs
        cosine = int(round(min(c.cosine_epochs, main_epochs) * steps_per_epoch))
        final = main_epochs * steps_per_epoch if c.final_epochs else None
        scheduler = WarmupCosineRLP(optimizer, warmup, cosine, c.warmup_start_factor, c.min_lr_factor,
                                    c.rlp_factor, c.rlp_patience, min_lr=c.min_lr * 0.1, final_start=final,
                                    final_factor=c.final_lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ files and state
    def save_model(self, path) -> None:
        """Write the current weights as a jmp-ase model file with provenance and metrics."""
        model = copy.deepcopy(self.model).cpu().eval()
        for p in model.parameters():
            p.requires_grad_(True)
        model.model_config.provenance = {
            **self.provenance, "best_epoch": self.best["epoch"],
            "metrics": {k: float(v) for k, v in self.best.items() if k != "epoch"},
            "jmp_ase_version": __version__, "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        save_model(model, path)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["finetune_best"] = self.best
        checkpoint["finetune_state"] = {
            "train_sums": self._train.state(), "val_metrics": dict(self._val_metrics),
            "elapsed_s": time.perf_counter() - self._fit_start,
            # rows of the logs written up to this checkpoint; a resumed run drops the others
            "rows": {name: count_rows(self.out / name) for name in ("metrics.csv", "steps.csv")},
            "replay_batches": None if self.replay is None else self.replay.batches_done,
        }
        checkpoint["rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint):
        self.best = checkpoint.get("finetune_best", self.best)
        state = checkpoint.get("finetune_state") or {}
        self._train = ErrorSums.from_state(state.get("train_sums"))
        self._val_metrics = dict(state.get("val_metrics") or {})
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        if self.replay is not None:  # the replay stream goes on where it stopped, not from its start
            self.replay.restart(int(state.get("replay_batches") or 0))
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"])


def split_heads(groups: list[dict], head_params, start_step: int, lr: float, weight_decay: float) -> list[dict]:
    """``groups`` with the heads' parameters moved into a group ``heads`` at rate ``lr``, and every
    other group given ``start_step`` (WarmupCosineRLP keeps it at rate 0 until then)."""
    heads = {id(p) for p in head_params}
    head_group = {"name": "heads", "params": [], "lr": lr, "lr_scale": 1.0, "weight_decay": weight_decay,
                  "start_step": 0}
    out = []
    for group in groups:
        head_group["params"] += [p for p in group["params"] if id(p) in heads]
        out.append({**group, "params": [p for p in group["params"] if id(p) not in heads], "start_step": start_step})
    return [head_group] + out


class StepRows(L.pytorch.Callback):
    """steps.csv rows, written before the step's checkpoint (checkpoint callbacks run last)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.write_step(batch_idx)
