"""Learning rates for fine-tuning: layer-wise decay and warmup + cosine, then ReduceLROnPlateau.

Both follow JMP's fine-tuning recipe (paper App. B.4; ``jmp.utils.param_specific_util``,
``jmp.modules.scheduler.linear_warmup_cos_rlp``):

* layer-wise learning-rate decay (LLRD): the parameters nearest the output learn at ``lr``,
  each backbone block below at ``lr * decay**depth``;
* per optimiser step, a linear warmup from ``warmup_start_factor * lr`` to ``lr`` over
  ``warmup_steps``, then a cosine decay to ``min_lr_factor * lr`` at ``cosine_steps``; from
  then on the rate is only lowered by a plateau rule on the validation metric
  (multiplied by ``rlp_factor`` after more than ``rlp_patience`` epochs without improvement);
* optionally, from step ``final_start`` on, a constant ``final_factor * lr`` for an
  energy-refinement stage (``FinetuneConfig.final_epochs``), where the plateau rule rests.
"""
from __future__ import annotations

import math

from torch import nn
from torch.optim.lr_scheduler import LRScheduler


def llrd_depths(model: nn.Module) -> dict[str, int]:
    """Depth from the top of each parameter of a JMP model (name -> depth).

    With B interaction blocks: block i (``backbone.int_blocks.i`` and its output block
    ``backbone.out_blocks.{i+1}``; ``out_blocks.0`` goes with block 0, as in JMP's
    ``PARAMETER_PATTERNS``) has depth B - i, the atom embedding depth B + 1, and
    everything else (heads, the final output MLPs, the radial/angular bases, which JMP
    leaves at the full rate too) depth 0.
    """
    num_blocks = len(model.backbone.int_blocks)
    depths = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        depth = 0
        if parts[0] == "embedding":
            depth = num_blocks + 1
        elif parts[:2] == ["backbone", "int_blocks"]:
            depth = num_blocks - int(parts[2])
        elif parts[:2] == ["backbone", "out_blocks"]:
            depth = num_blocks - max(int(parts[2]) - 1, 0)
        depths[name] = depth
    return depths


def param_groups_with_llrd(model: nn.Module, lr: float, decay: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups with layer-wise learning-rate decay.

    One group per depth (see :func:`llrd_depths`) with ``lr * decay**depth``; each group
    also records ``name`` and ``lr_scale``. Frozen parameters are left out.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"the layer-wise lr decay must be in (0, 1], got {decay}")
    depths = llrd_depths(model)
    groups: dict[int, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = depths[name]
        if depth not in groups:
            num_blocks = len(model.backbone.int_blocks)
            label = "top" if depth == 0 else "embedding" if depth == num_blocks + 1 else f"block_{num_blocks - depth}"
            scale = decay**depth
            groups[depth] = {"name": label, "params": [], "lr": lr * scale, "lr_scale": scale,
                             "weight_decay": weight_decay}
        groups[depth]["params"].append(param)
    return [groups[d] for d in sorted(groups)]


def warmup_cosine_factor(step: int, warmup_steps: int, cosine_steps: int, warmup_start_factor: float = 0.1,
                         min_lr_factor: float = 0.1) -> float:
    """Multiplier of the base rate at optimiser step ``step`` (0-based).

    Linear from ``warmup_start_factor`` (step 0) towards 1 (reached at ``warmup_steps``),
    then ``min + (1 - min) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 at
    ``warmup_steps`` to 1 at ``cosine_steps``; ``min_lr_factor`` afterwards.
    """
    if step < warmup_steps:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
    if step >= cosine_steps:
        return min_lr_factor
    t = (step - warmup_steps) / max(cosine_steps - warmup_steps, 1)
    return min_lr_factor + (1.0 - min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def group_min_factor(min_lr_factor: float, lr_scale: float) -> float:
    """JMP's per-group floor: ``min_lr_factor / lr_scale`` clamped to [0.01, 0.99] for decayed
    groups, so that every group's cosine ends near the same absolute rate."""
    if lr_scale == 1.0:
        return min_lr_factor
    return max(0.01, min(0.99, min_lr_factor / lr_scale))


class WarmupCosineRLP(LRScheduler):
    """Per-step warmup + cosine (:func:`warmup_cosine_factor`), then ReduceLROnPlateau.

    Call :meth:`step` after every optimiser step and :meth:`plateau_step` with the
    validation metric (lower is better) after every validation; the latter acts only after
    ``cosine_steps``. Lowered rates never go below ``min_lr``.

    A parameter group with ``start_step`` s > 0 (a linear-probe start) stays at rate 0 before
    step s, then runs its own warmup from s and a cosine that ends at ``cosine_steps`` as the
    others'.
    """

    def __init__(self, optimizer, warmup_steps: int, cosine_steps: int, warmup_start_factor: float = 0.1,
                 min_lr_factor: float = 0.1, rlp_factor: float = 0.8, rlp_patience: int = 3,
                 rlp_threshold: float = 1e-4, min_lr: float = 0.0, final_start: int | None = None,
                 final_factor: float = 0.1, last_epoch: int = -1):
        self.warmup_steps = int(warmup_steps)
        self.cosine_steps = max(int(cosine_steps), self.warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr_factor = float(min_lr_factor)
        self.rlp_factor = float(rlp_factor)
        self.rlp_patience = int(rlp_patience)
        self.rlp_threshold = float(rlp_threshold)
        self.min_lr = float(min_lr)
        self.final_start = None if final_start is None else int(final_start)
        self.final_factor = float(final_factor)
        self.best = math.inf
        self.bad_epochs = 0
        self.min_factors = [group_min_factor(self.min_lr_factor, g.get("lr_scale", 1.0)) for g in optimizer.param_groups]
        self.start_steps = [int(g.get("start_step", 0)) for g in optimizer.param_groups]
        super().__init__(optimizer, last_epoch)

    @property
    def in_plateau_stage(self) -> bool:
        return self.last_epoch >= self.cosine_steps

    @property
    def in_final_stage(self) -> bool:
        return self.final_start is not None and self.last_epoch >= self.final_start

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if self.in_final_stage:
            return [base * self.final_factor for base in self.base_lrs]
        if step > self.cosine_steps:  # plateau stage: keep what the plateau rule set
            return [group["lr"] for group in self.optimizer.param_groups]
        return [
            0.0 if step < start else base * warmup_cosine_factor(
                step - start, self.warmup_steps, max(self.cosine_steps - start, self.warmup_steps),
                self.warmup_start_factor, floor)
            for base, floor, start in zip(self.base_lrs, self.min_factors, self.start_steps)
        ]

    def plateau_step(self, metric: float) -> bool:
        """Feed one validation metric; returns True when the rates were lowered."""
        if not self.in_plateau_stage or self.in_final_stage:
            return False
        metric = float(metric)
        if math.isinf(self.best) or metric < self.best - abs(self.best) * self.rlp_threshold:
            self.best, self.bad_epochs = metric, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= self.rlp_patience:
            return False
        self.bad_epochs = 0
        for group in self.optimizer.param_groups:
            group["lr"] = max(group["lr"] * self.rlp_factor, self.min_lr)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return True
