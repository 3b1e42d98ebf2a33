"""Resumable training state: ``last.ckpt`` written atomically every N optimiser steps (or every
few minutes), at the end of every epoch and when training ends; CSV logs cut back to the
checkpoint a run resumes from."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from jmp_ase.io.model_file import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same folder, then renamed.

    Lightning's own writer goes through fsspec, which stages the file in the system temp
    folder and *moves* it: a copy, not an atomic rename, when that is another file system.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_torch_save(checkpoint, path)


class _Saver:
    def _init(self, path, every_n_steps: int | None, minutes: float | None = None):
        self.path, self.every, self.minutes = str(path), every_n_steps, minutes
        self._saved_at, self._saved_time = -1, time.monotonic()

    def _save(self, trainer):
        if trainer.global_step != self._saved_at:
            trainer.save_checkpoint(self.path)
            self._saved_at, self._saved_time = trainer.global_step, time.monotonic()

    def _due(self, trainer) -> bool:
        """Same answer on every process (saving is collective)."""
        if self.every:
            return trainer.global_step > 0 and trainer.global_step % self.every == 0
        if not self.minutes:
            return False
        due = time.monotonic() - self._saved_time >= 60.0 * self.minutes
        return bool(trainer.strategy.broadcast(due, src=0)) if trainer.world_size > 1 else due


class StepCheckpoint(_Saver, pl.Callback):
    """``last.ckpt`` every ``every_n_steps`` optimiser steps and when training ends (pre-training)."""

    def __init__(self, path, every_n_steps: int):
        self._init(path, int(every_n_steps))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every > 0 and self._due(trainer):
            self._save(trainer)

    def on_train_end(self, trainer, pl_module):
        self._save(trainer)


class EpochStepCheckpoint(_Saver, Checkpoint):
    """Fine-tuning's ``last.ckpt``: every ``every_n_steps`` optimiser steps (None: every
    ``minutes`` of wall time) inside an epoch, after every epoch (validation, metrics.csv and
    the best model written) and when training ends."""

    def __init__(self, path, every_n_steps: int | None = None, minutes: float = 10.0):
        self._init(path, every_n_steps, minutes)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch-end checkpoint follows validation
        if self._due(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._save(trainer)

    def on_train_end(self, trainer, pl_module):
        self._save(trainer)


def count_rows(path) -> int:
    """Data rows of a CSV file (0 when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)


def keep_rows(path, rows: int) -> None:
    """Cut a CSV file back to its header and first ``rows`` data rows (rows logged after the
    checkpoint a run resumes from are redone)."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(lines[:rows + 1])
