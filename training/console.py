"""What jmp-train prints: its own lines, not third-party banners.

Lightning announces the hardware ("GPU available: False, used: False", TPU, HPU) and
advertises add-on packages ("Tip: ... litlogger") at INFO level on every start, and its
pytree helper raises a DeprecationWarning under recent torch; none of it is actionable for a
jmp-train user. Other Lightning messages (DDP start-up: who joined, which backend) and all
warnings about data or numerics still pass.
"""
from __future__ import annotations

import logging
import warnings

_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                      "lightning.pytorch.accelerators.cuda")
_BANNERS = ("GPU available", "TPU available", "HPU available", "IPU available", "Tip:", "💡")


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(banner in message for banner in _BANNERS)


_FILTER = _DropBanners()


def quiet_third_party() -> None:
    """Drop Lightning's start-up banners and known third-party deprecation noise (idempotent)."""
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
