"""Speed of one energy + forces evaluation at JMP-S size (random weights).

Two ways to get forces are timed on prebuilt graphs:

* ``direct``: pre-training style, the energy head and the direct-force head of
  :class:`~jmp_ase.nn.model.JMPPretrainedModel` under ``torch.no_grad()``;
* ``conservative``: a fine-tuning energy head (:class:`~jmp_ase.nn.model.FineTunedModel`)
  with forces = -dE/dr by autograd, as the ASE calculator computes them for MD.

Graph construction (the four radius graphs plus the interaction indices, i.e.
:func:`jmp_ase.data.batch.batch_from_atoms`) is timed separately; the table gives its share of
graph + model time. Systems: ``aspirin`` (21-atom molecule) and rattled fcc Cu supercells
of about N atoms (periodic), cutoff 12 Å, max_neighbors 30 as in JMP.

    python benchmarks/backbone_speed.py --sizes aspirin,100,1000 --repeats 5 --threads 2

Each number is the median over --repeats calls after --warmup calls; a call slower than
--budget seconds is not repeated (the table then shows n=1).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "md_examples"))  # aspirin coordinates live with the MD examples
try:
    import jmp_ase  # noqa: F401
except ImportError:  # a clone without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from ase.build import bulk  # noqa: E402

from jmp_ase.data.batch import batch_from_atoms  # noqa: E402
from jmp_ase.nn.config import jmp_s  # noqa: E402
from jmp_ase.data.graphs import GraphSettings  # noqa: E402
from jmp_ase.nn.heads import HeadSpec  # noqa: E402
from jmp_ase.nn.model import FineTunedModel, JMPPretrainedModel, ModelConfig  # noqa: E402

CUTOFF, MAX_NEIGHBORS = 12.0, 30


def machine() -> str:
    """CPU model, cores, torch threads and versions (one line)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            memory = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        memory = "RAM unknown"
    load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {memory}; torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, numpy {np.__version__}, python {platform.python_version()}; "
            f"{load}")


def fcc_cu(natoms: int, seed: int = 0):
    """Rattled fcc Cu: the primitive cell repeated to the near-cubic supercell closest to ``natoms``."""
    best = None
    for a in range(1, natoms + 1):
        for b in range(a, natoms + 1):
            c = max(b, round(natoms / (a * b)))
            score = (abs(a * b * c - natoms), c - a)
            if best is None or score < best[0]:
                best = (score, (a, b, c))
            if a * b * b > natoms * 2:
                break
        if a ** 3 > natoms * 2:
            break
    atoms = bulk("Cu", "fcc", a=3.61).repeat(best[1])
    atoms.rattle(0.05, seed=seed)
    return atoms


def system(spec: str):
    """``aspirin`` or an atom count."""
    if spec == "aspirin":
        from _common import molecule

        return "aspirin", molecule("aspirin")
    atoms = fcc_cu(int(spec))
    return f"Cu fcc {'x'.join(map(str, _repeats(atoms)))}", atoms


def _repeats(atoms) -> tuple[int, ...]:
    base = bulk("Cu", "fcc", a=3.61).cell.lengths()
    return tuple(int(round(x)) for x in atoms.cell.lengths() / base)


def timed(fn, warmup: int, repeats: int, budget: float) -> tuple[float, int]:
    """Median milliseconds of ``fn()`` and the number of timed calls."""
    times = []
    for k in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        if k >= warmup or seconds > budget:
            times.append(seconds)
        if seconds > budget and times:
            break
    return 1000 * statistics.median(times), len(times)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", default="aspirin,100,1000", help="comma-separated: aspirin and/or atom counts")
    p.add_argument("--modes", default="direct,conservative", help="comma-separated: direct, conservative")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds: a slower call is not repeated")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="cap this process's address space so a case too large for the machine ends as "
                        "'out of memory' instead of swapping or killing it (default: 80%% of RAM; 0: none)")
    args = p.parse_args(argv)
    if args.memory_limit_gb is None:
        args.memory_limit_gb = 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if args.memory_limit_gb:
        import resource

        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    print(f"# machine: {machine()}")
    print(f"# JMP-S backbone (random weights), cutoff {CUTOFF} A, max_neighbors {MAX_NEIGHBORS}, {args.dtype}; "
          f"median of {args.repeats} after {args.warmup} warm-up")
    settings = GraphSettings(cutoff=CUTOFF, max_neighbors=MAX_NEIGHBORS)
    models = {
        "direct": JMPPretrainedModel(jmp_s(), num_tasks=1),
        "conservative": FineTunedModel(ModelConfig(jmp_s(), [HeadSpec("energy")], CUTOFF, MAX_NEIGHBORS)),
    }
    models = {k: models[k].to(dtype).eval() for k in args.modes.split(",")}
    print("# parameters: " + ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.1f} M"
                                       for k, m in models.items()))

    header = (f"{'system':<18} {'atoms':>6} {'main E':>8} {'a2a E':>9} {'mode':<13} {'graph ms':>9} "
              f"{'model ms':>10} {'total ms':>10} {'graph %':>8} {'n':>3}")
    print(header)
    print("-" * len(header))
    rows = []
    for spec in args.sizes.split(","):
        label, atoms = system(spec.strip())
        batch = batch_from_atoms([atoms], settings, dtype=dtype)
        graph_ms, _ = timed(lambda: batch_from_atoms([atoms], settings, dtype=dtype), 1, args.repeats, args.budget)
        edges = {g: int(batch.indices.graph(g)[0].shape[1]) for g in ("main", "a2a")}
        for mode, model in models.items():
            if mode == "direct":
                def call():
                    with torch.no_grad():
                        return model(batch, task=0)
            else:
                def call():
                    return model(batch)
            try:
                model_ms, n = timed(call, args.warmup, args.repeats, args.budget)
            except (MemoryError, RuntimeError) as err:
                if not isinstance(err, MemoryError) and "alloc" not in str(err):
                    raise
                rows.append(dict(system=label, atoms=len(atoms), mode=mode, error="out of memory"))
                print(f"{label:<18} {len(atoms):>6} {edges['main']:>8} {edges['a2a']:>9} {mode:<13} {graph_ms:>9.1f} "
                      f"  out of memory{f' (cap {args.memory_limit_gb:g} GB)' if args.memory_limit_gb else ''}",
                      flush=True)
                continue
            total = graph_ms + model_ms
            row = dict(system=label, atoms=len(atoms), mode=mode, graph_ms=graph_ms, model_ms=model_ms,
                       total_ms=total, graph_share=graph_ms / total, n=n, **{f"{g}_edges": e for g, e in edges.items()})
            rows.append(row)
            print(f"{label:<18} {len(atoms):>6} {edges['main']:>8} {edges['a2a']:>9} {mode:<13} {graph_ms:>9.1f} "
                  f"{model_ms:>10.1f} {total:>10.1f} {100 * graph_ms / total:>7.1f}% {n:>3}", flush=True)
    print(f"# end: {machine().rsplit('; ', 1)[-1]}")
    return rows


if __name__ == "__main__":
    main()
