"""CPU threads of a ``jmp-train`` process (``--threads``), set before torch does heavy work.

torch starts as many threads as the machine has cores; several processes (DDP, DataLoader
workers) or a machine shared with other jobs then fight over the cores, and small graphs run
faster on one thread (on a loaded 2-core machine the default 2 threads were 3.5x slower than
one). So ``jmp-train`` uses one thread per process unless asked: ``--threads N``, else the
``OMP_NUM_THREADS`` the user exported.
"""
from __future__ import annotations

import os


def requested_threads(threads: int | None) -> int:
    """``threads`` if given, else a positive ``OMP_NUM_THREADS``, else 1; ``ValueError`` below 1."""
    if threads is None:
        exported = os.environ.get("OMP_NUM_THREADS", "").strip()
        threads = int(exported) if exported.isdigit() and int(exported) > 0 else 1
    if int(threads) < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    return int(threads)


def use_threads(threads: int | None) -> int:
    """Set torch's intra- and inter-op threads (and ``OMP_NUM_THREADS`` for the processes this
    one starts, which Lightning's DDP then leaves alone); returns the number set."""
    n = requested_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # settable once, before any inter-op work: a second run in one process keeps it
        pass
    return n


def describe_threads(n: int) -> str:
    return f"{n} CPU thread{'s' if n != 1 else ''} per process"
