"""MD speed through the ASE calculator: steps per second, ms per atom and peak memory.

Velocity Verlet NVE (2 fs, 300 K start) of rattled fcc Cu cells of 20, 100, 1,000 and
10,000 atoms (periodic, so each step also computes the stress) for two models:

* ``small``: --model (a jmp-ase model file or shipped name); by default the shipped
  ``jmp-mini-catalysis`` if present, else a tiny random model (``config.tiny()``,
  cutoff 6 Å, max_neighbors 30);
* ``jmp-s``: the JMP-S configuration with random weights (cutoff 12 Å, max_neighbors 30)
  and a conservative energy head (forces and stress by autograd).

Every (model, size) runs in a fresh subprocess, so its peak resident memory
(``ru_maxrss``) is its own; a run longer than --timeout seconds is stopped and larger
sizes of that model are skipped. --memory-limit-gb caps the address space of each run, so
a too-large system fails with an out-of-memory error instead of exhausting the machine's
memory (and the kernel's OOM killer picking a victim). The step time is the median over
the timed steps (at least --min-steps after --warmup untimed ones).

    python benchmarks/md_speed.py --sizes 20,100,1000 --models small,jmp-s --threads 2
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIPPED_SMALL = "jmp-mini-catalysis"


def small_model(path: str | None):
    """(model, description) for the ``small`` entry."""
    from jmp_ase.io.model_file import load_model, resolve_model_path

    if path is None:
        try:
            path = str(resolve_model_path(SHIPPED_SMALL))
        except FileNotFoundError:
            path = None
    if path is not None:
        model = load_model(path)
        return model, f"{path} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)"
    import torch

    from jmp_ase.nn.config import tiny
    from jmp_ase.nn.heads import HeadSpec
    from jmp_ase.nn.model import FineTunedModel, ModelConfig

    torch.manual_seed(0)
    model = FineTunedModel(ModelConfig(tiny(), [HeadSpec("energy")], cutoff=6.0, max_neighbors=30))
    return model, (f"tiny random model, cutoff 6 A, max_neighbors 30 "
                   f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
                   f"no shipped {SHIPPED_SMALL})")


def jmp_s_model():
    import torch

    from jmp_ase.nn.config import jmp_s
    from jmp_ase.nn.heads import HeadSpec
    from jmp_ase.nn.model import FineTunedModel, ModelConfig

    torch.manual_seed(0)
    model = FineTunedModel(ModelConfig(jmp_s(), [HeadSpec("energy")], cutoff=12.0, max_neighbors=30))
    return model, (f"JMP-S random weights, cutoff 12 A, max_neighbors 30 "
                   f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")


def worker(args) -> dict:
    """One (model, size) measurement; runs in its own process and prints a JSON line."""
    if args.memory_limit_gb:
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from ase.md import velocitydistribution as vd
    from backbone_speed import fcc_cu
    from original_jmp import rss_mb

    from jmp_ase.calculators.calculator import JMPCalculator

    if args.threads:
        torch.set_num_threads(args.threads)
    model, description = small_model(args.model) if args.worker == "small" else jmp_s_model()
    atoms = fcc_cu(args.size, seed=args.seed)
    atoms.calc = JMPCalculator(model, dtype=args.dtype)
    rng = np.random.default_rng(args.seed)
    if hasattr(vd, "thermalize_momenta"):  # ase >= 3.29
        vd.thermalize_momenta(atoms, 300, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=rng)
    vd.Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=2 * units.fs)
    rss_before = rss_mb()

    start = time.perf_counter()
    atoms.get_forces()  # first call: graph and model warm-up, not timed as a step
    first_call = time.perf_counter() - start
    if args.steps == 0:  # huge systems: the first force call stands in for a step
        steps, ms = 0, 1000 * first_call
    else:
        start = time.perf_counter()
        dyn.run(args.warmup)
        warm = (time.perf_counter() - start) / args.warmup if args.warmup else first_call
        steps = min(args.steps, max(args.min_steps, int(args.target_seconds / max(warm, 1e-9))))
        stamps: list[float] = []
        dyn.attach(lambda: stamps.append(time.perf_counter()))  # called before the first step and after each
        dyn.run(steps)
        ms = 1000 * statistics.median(np.diff(stamps))
    return {
        "model": args.worker, "description": description, "atoms": len(atoms), "steps": steps,
        "ms_per_step": ms, "steps_per_s": 1000 / ms, "ms_per_atom": ms / len(atoms),
        "first_call_s": first_call, "rss_before_mb": rss_before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def run_one(model: str, size: int, args) -> dict:
    """Run :func:`worker` in a fresh interpreter with a timeout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", model, "--size", str(size),
           "--steps", str(args.steps), "--min-steps", str(args.min_steps), "--warmup", str(args.warmup),
           "--target-seconds", str(args.target_seconds),
           "--dtype", args.dtype, "--seed", str(args.seed), "--memory-limit-gb", str(args.memory_limit_gb)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.model:
        cmd += ["--model", args.model]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=HERE)
    except subprocess.TimeoutExpired:
        return {"model": model, "atoms": size, "error": f"timed out after {args.timeout:.0f} s"}
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "MemoryError" in proc.stderr or "DefaultCPUAllocator" in proc.stderr:
            wanted = re.search(r"allocate (\d+) bytes", proc.stderr)
            tail = (f"out of memory (address-space cap {args.memory_limit_gb:g} GB"
                    + (f"; one more tensor of {int(wanted.group(1)) / 2**30:.2f} GB was asked for)" if wanted else ")"))
        return {"model": model, "atoms": size, "error": f"exit {proc.returncode}: {tail[:200]}"}
    result = json.loads(lines[-1])
    result["wall_s"] = wall
    return result


def linearity(rows: list[dict]) -> str:
    """Does the cost per atom stay flat from the smallest successful run to the largest?"""
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: r["atoms"])
    if len(ok) < 2:
        return "fewer than two sizes ran: scaling not judged"
    a, b = ok[0], ok[-1]
    ratio = b["ms_per_atom"] / a["ms_per_atom"]
    verdict = ("roughly linear (ms/atom about constant)" if ratio < 1.5
               else "faster than linear (ms/atom grows)")
    return (f"ms/atom {a['ms_per_atom']:.2f} at {a['atoms']} atoms -> {b['ms_per_atom']:.2f} at {b['atoms']} atoms "
            f"(x{ratio:.2f} for x{b['atoms'] / a['atoms']:.0f} atoms): cost grows {verdict}")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help=f"small model file (default: shipped {SHIPPED_SMALL} or tiny random)")
    p.add_argument("--models", default="small,jmp-s", help="comma-separated: small, jmp-s")
    p.add_argument("--sizes", default="20,100,1000,10000", help="comma-separated atom counts")
    p.add_argument("--steps", type=int, default=20,
                   help="timed MD steps at most (see --target-seconds); 0: time only the first force call")
    p.add_argument("--warmup", type=int, default=1, help="untimed MD steps after the first force call")
    p.add_argument("--target-seconds", type=float, default=20.0,
                   help="fewer timed steps when a step is slow: about this many seconds, at least --min-steps")
    p.add_argument("--min-steps", type=int, default=3, help="timed MD steps at least (unless --steps is less)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per (model, size) run")
    p.add_argument("--memory-limit-gb", type=float, default=12.0, help="address-space cap per run (0: none)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=["small", "jmp-s"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    try:
        import jmp_ase  # noqa: F401
    except ImportError:  # a clone without `pip install -e .`
        sys.path.insert(0, str(HERE.parent))
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return []

    from backbone_speed import machine

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"# machine: {machine()}")
    print(f"# NVE velocity Verlet, rattled fcc Cu, {args.dtype}, energy + forces + stress per step, "
          f"median step time; "
          f"timeout {args.timeout:.0f} s and address-space cap {args.memory_limit_gb:g} GB per run")
    header = (f"{'model':<7} {'atoms':>6} {'steps':>5} {'ms/step':>10} {'steps/s':>9} {'ms/atom':>8} "
              f"{'1st call s':>10} {'RSS before MB':>13} {'peak RSS MB':>11}")
    print(header)
    print("-" * len(header))
    rows: list[dict] = []
    for model in args.models.split(","):
        model_rows: list[dict] = []
        described = False
        for size in (int(s) for s in args.sizes.split(",")):
            if any("error" in r and "timed out" in r["error"] for r in model_rows):
                row = {"model": model, "atoms": size, "error": "skipped: a smaller size timed out"}
            else:
                row = run_one(model, size, args)
            model_rows.append(row)
            if "error" in row:
                print(f"{model:<7} {size:>6} {row['error']}", flush=True)
                continue
            if not described:
                print(f"# {model}: {row['description']}; {row['threads']} torch threads")
                described = True
            print(f"{model:<7} {row['atoms']:>6} {row['steps']:>5} {row['ms_per_step']:>10.1f} "
                  f"{row['steps_per_s']:>9.3f} {row['ms_per_atom']:>8.2f} {row['first_call_s']:>10.1f} "
                  f"{row['rss_before_mb']:>13.0f} {row['peak_rss_mb']:>11.0f}", flush=True)
        print(f"# {model}: {linearity(model_rows)}")
        rows += model_rows
    if any(r.get("steps") == 0 for r in rows):
        print("# steps 0: no MD step timed, ms/step is the first force call (graph + model, untimed warm-up)")
    print(f"# end: {machine().rsplit('; ', 1)[-1]}")
    return rows


if __name__ == "__main__":
    main()
