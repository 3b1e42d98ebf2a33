"""What jmp-train prints: its own lines, not third-party banners.

Lightning announces the hardware ("GPU available: False ...") and advertises add-on packages
at INFO level on every start, and its pytree helper raises a DeprecationWarning under recent
torch; none of it is actionable for a jmp-train user. Warnings that are (data, numerics) pass.
"""
from __future__ import annotations

import logging
import warnings

_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                      "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.distributed")


def quiet_third_party() -> None:
    """Silence Lightning's start-up INFO lines and known third-party deprecation noise."""
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
