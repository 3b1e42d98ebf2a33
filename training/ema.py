"""Exponential moving average of the weights, as JMP's ``modules/ema.py`` keeps it: the one
EMA of pre-training and fine-tuning (for fine-tuning the averaged weights are also those of
the saved model, ``model.ckpt``).

After every ``every_n_steps``-th optimiser step ``ema = decay * ema + (1 - decay) * param``
for every trained parameter; the average starts from the weights before the first step.
Validation runs on the averaged weights (swapped in and back). Checkpoints store the
average where JMP stores it: ``optimizer_states[0]["ema"]``, a tuple with one tensor per
parameter in ``named_parameters()`` order, which is the order of
:func:`jmp_ase.io.jmp_checkpoint.ema_keys` for a JMP-layout module.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import lightning.pytorch as pl
import torch


@torch.no_grad()
def ema_update_(ema: Sequence[torch.Tensor], params: Sequence[torch.Tensor], decay: float) -> None:
    """In place: ``ema_k <- decay * ema_k + (1 - decay) * params_k``."""
    ema, params = list(ema), [p.detach().to(e.device, e.dtype) for p, e in zip(params, ema)]
    torch._foreach_mul_(ema, decay)
    torch._foreach_add_(ema, params, alpha=1.0 - decay)


class EMA(pl.Callback):
    """Lightning callback keeping the EMA of ``pl_module``'s parameters.

    decay: JMP uses 0.99 for pre-training; every_n_steps: update period in optimiser steps;
    validate_ema: evaluate with the averaged weights (JMP's default).
    """

    def __init__(self, decay: float = 0.99, every_n_steps: int = 1, validate_ema: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.every_n_steps, self.validate_ema = float(decay), int(every_n_steps), validate_ema
        self.names: list[str] | None = None
        self.ema: list[torch.Tensor] | None = None
        self.last_step = 0
        self._swapped = False

    @property
    def state_key(self) -> str:
        return "EMA"

    # ---------------------------------------------------------------- updates
    def _params(self, pl_module) -> tuple[list[str], list[torch.Tensor]]:
        named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        return [n for n, _ in named], [p for _, p in named]

    def on_fit_start(self, trainer, pl_module) -> None:
        names, params = self._params(pl_module)
        if self.ema is None:
            self.names = names
            self.ema = [p.detach().clone() for p in params]
            self.last_step = trainer.global_step
        else:
            if self.names != names:
                raise ValueError("the checkpoint's EMA parameters do not match the model's parameters")
            self.ema = [e.to(p.device, p.dtype) for e, p in zip(self.ema, params)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step <= self.last_step:  # accumulating gradients, no optimiser step yet
            return
        for done in range(self.last_step, step):  # ``done``-th optimiser step just happened
            if done % self.every_n_steps == 0:
                ema_update_(self.ema, self._params(pl_module)[1], self.decay)
        self.last_step = step

    # ---------------------------------------------------------------- swapping
    @torch.no_grad()
    def _swap(self, pl_module) -> None:
        for p, e in zip(self._params(pl_module)[1], self.ema):
            tmp = p.detach().clone()
            p.copy_(e)
            e.copy_(tmp)

    @contextlib.contextmanager
    def averaged_weights(self, pl_module):
        """Context in which ``pl_module`` holds the averaged weights."""
        if self.ema is None:
            yield
            return
        self._swap(pl_module)
        try:
            yield
        finally:
            self._swap(pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.validate_ema and self.ema is not None and not self._swapped:
            self._swap(pl_module)
            self._swapped = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap(pl_module)
            self._swapped = False

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_validation_end(trainer, pl_module)

    # ---------------------------------------------------------------- checkpoints
    def averaged_tuple(self) -> tuple[torch.Tensor, ...]:
        """The EMA tensors (CPU copies) in parameter order: JMP's ``optimizer_states[0]["ema"]``."""
        if self.ema is None:
            raise RuntimeError("the EMA is not initialised (training has not started)")
        return tuple(e.detach().cpu().clone() for e in self.ema)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "every_n_steps": self.every_n_steps, "last_step": self.last_step,
                "names": list(self.names or [])}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.every_n_steps = float(state["decay"]), int(state["every_n_steps"])
        self.last_step, self.names = int(state["last_step"]), list(state["names"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.ema is None:
            return
        states = checkpoint.get("optimizer_states") or [{}]
        states[0]["ema"] = self.averaged_tuple()
        checkpoint["optimizer_states"] = states

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = checkpoint.get("optimizer_states") or []
        ema = states[0].pop("ema", None) if states else None
        if ema is not None:
            self.ema = [t.clone() for t in ema]
