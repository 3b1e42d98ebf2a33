"""What glibc's malloc does with the memory a model pass frees: the process's policy, in one place.

Every energy + forces call allocates and frees the same large tensors (for aspirin with
``jmp-mini-aspirin``: the padded quadruplet basis, 16 MB, and its gradient among others).
By default glibc hands large freed blocks straight back to the kernel (``munmap``, or
trimming the top of the heap), so the next call page-faults on freshly zeroed pages again:
about a fifth of an aspirin MD step on one thread and of a JMP-S call on 108 Cu atoms, and
half of a lean-mode call, whose chunks allocate and free the same buffers over and over
(``benchmarks/README.md``). Two policies, set with ``mallopt``:

* ``retain``: freed blocks stay in the process and are reused. The process keeps the memory
  of its largest pass; :func:`retained_free_bytes` says how much of it is free, and the memory
  check of :mod:`jmp_ase.nn.backbone` counts that as available.
* ``release``: every block from 128 kB up gets its own ``mmap`` and goes back to the kernel
  when freed, so a lean pass holds little more than what it keeps alive (JMP-S, Cu 1,372,
  energy + forces + stress: peak 5.8 GB against 9.3 GB retained, at twice the time).

The backbone chooses per pass on the CPU (:meth:`jmp_ase.nn.backbone.GemNetOCBackbone.lean_chunk_size`):
retain in fast mode, and in lean mode where memory is plentiful (3.5x lean's estimated need
within half the available memory); release otherwise. The environment variable ``JMP_ASE_RETAIN_FREED_MEMORY``
overrides: ``always`` (retain in every pass), ``0`` (leave glibc's defaults alone). Process-wide;
nothing changes on other platforms or C libraries.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys

ENV_SWITCH = "JMP_ASE_RETAIN_FREED_MEMORY"
# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# retain: blocks up to this size come from the heap and stay there when freed (mallopt takes an int).
RETAINED_BLOCK_BYTES = 2**31 - 1
# release: blocks from this size up are mmapped, and the heap is trimmed above it (glibc's
# initial values, before its adaptive threshold moves).
RELEASED_BLOCK_BYTES = 128 * 1024
POLICIES = ("retain", "release")

_state: dict[str, str] = {}  # "policy": the policy set last ("retain", "release" or "off")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=1)
def _glibc():
    """The process's C library when it is glibc (has ``mallopt``), else None (looked up once)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (musl and others lack it)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        if hasattr(libc, "mallinfo2"):  # glibc 2.33 and later
            libc.mallinfo2.restype = _Mallinfo2
        return libc
    except (OSError, AttributeError):
        return None


def _switch() -> str:
    value = os.environ.get(ENV_SWITCH, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "always" if value == "always" else "auto"


def use_policy(policy: str) -> str:
    """Set the process's policy, ``"retain"`` or ``"release"`` (``JMP_ASE_RETAIN_FREED_MEMORY``
    may override it); returns the policy in effect: ``"retain"``, ``"release"`` or ``"off"``
    (not glibc, or switched off). Cheap when nothing changes."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    switch = _switch()
    if switch == "off":
        return _state.setdefault("policy", "off")
    if switch == "always":
        policy = "retain"
    if _state.get("policy") in (policy, "off"):
        return _state["policy"]
    libc = _glibc()
    block = RETAINED_BLOCK_BYTES if policy == "retain" else RELEASED_BLOCK_BYTES
    ok = libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, block)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, block))
    _state["policy"] = policy if ok else "off"
    return _state["policy"]


def retained_free_bytes() -> int:
    """Bytes the process's heaps hold free for reuse (glibc's ``mallinfo2().fordblks``): memory
    the kernel counts as in use that a new allocation here gets without asking for more.
    0 where unknown."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return 0
    return int(libc.mallinfo2().fordblks)
