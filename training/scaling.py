"""Fit GemNet-OC's ``ScaleFactor`` buffers on data, as JMP's ``utils/fit_scales.py`` does.

Every factor is reset to 0 (= identity), then the factors are fitted one after the other
in ``named_modules()`` order (JMP's order: interaction blocks, then output blocks), each
with the already fitted ones in effect: a forward pass over the fitting batches (model in
eval mode, no gradients) accumulates, per factor,

    var_out += mean_features(var_over_rows(x)) * n_rows,
    var_in  += mean_features(var_over_rows(ref)) * n_rows   (n_rows if there is no ref),

and the factor becomes ``sqrt(1 / (var_out / var_in))``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from jmp_ase.nn.layers import ScaleFactor

log = logging.getLogger(__name__)


def scale_factors(model: nn.Module) -> dict[str, ScaleFactor]:
    """The model's scale factors by name, in fitting order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ScaleFactor)}


class _Stats:
    def __init__(self):
        self.var_in = self.var_out = 0.0
        self.n = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> None:
        rows = x.shape[0]
        if rows < 2:  # a variance needs two rows
            return
        self.var_out += torch.mean(torch.var(x.float(), dim=0)).item() * rows
        self.var_in += rows if ref is None else torch.mean(torch.var(ref.float(), dim=0)).item() * rows
        self.n += rows


def fit_scale_factors(model: nn.Module, batches: Iterable, forward: Callable | None = None) -> dict[str, float]:
    """Fit every ``ScaleFactor`` of ``model`` on ``batches`` (JMP's order and formula).

    ``forward(model, batch)`` runs the model on one batch (default: ``model(batch)``);
    ``batches`` is re-iterated once per factor, so pass a list. Returns ``{name: value}``.
    Raises ``RuntimeError`` naming a factor that saw no data (or a zero variance).
    """
    forward = forward or (lambda m, b: m(b))
    batches = list(batches)
    if not batches:
        raise ValueError("fit_scale_factors needs at least one batch")
    factors = scale_factors(model)
    for module in factors.values():
        module.scale_factor.zero_()
    was_training = model.training
    model.eval()
    values: dict[str, float] = {}
    try:
        for name, module in factors.items():
            stats = _Stats()
            module.observer = stats
            try:
                with torch.no_grad():
                    for batch in batches:
                        forward(model, batch)
            finally:
                module.observer = None
            if stats.n == 0 or stats.var_in <= 0 or stats.var_out <= 0:
                raise RuntimeError(f"cannot fit scale factor {name}: no data reached it "
                                   f"(var_in={stats.var_in}, var_out={stats.var_out}, n={stats.n})")
            ratio = (stats.var_out / stats.n) / (stats.var_in / stats.n)
            values[name] = math.sqrt(1.0 / ratio)
            module.scale_factor.fill_(values[name])
            log.info("scale factor %s: var_in %.4g var_out %.4g -> %.4f", name,
                     stats.var_in / stats.n, stats.var_out / stats.n, values[name])
    finally:
        model.train(was_training)
    return values
