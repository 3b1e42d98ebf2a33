"""Where the time of one energy + forces evaluation goes: per-op profile and median step time.

Cases:

* ``aspirin-md``: one NVE MD step (velocity Verlet, 0.5 fs) of aspirin with the shipped
  ``jmp-mini-aspirin`` model through :class:`~jmp_ase.calculators.calculator.JMPCalculator`
  (graph building, model, forces: one calculator call per step);
* ``jmps-<system>-<mode>``: JMP-S (random weights, cutoff 12 Å, max_neighbors 30) on a prebuilt
  batch, ``mode`` direct (pre-training heads under ``no_grad``) or conservative (energy head,
  forces by autograd); ``system`` aspirin or a Cu atom count (rattled fcc: 108 = 3x3x3 cubic).

    python benchmarks/profile_step.py --cases aspirin-md,jmps-108-conservative --threads 1 --rows 15

Prints the machine line of ``backbone_speed.py``, the median step time over ``--repeats``
calls after ``--warmup``, then a torch.profiler table (forward and backward ops together)
sorted by self CPU time, top ``--rows``.

``--compare-with DIR`` (a checkout of other jmp-ase code, e.g. ``git worktree add ../old main``)
instead times each case in lockstep: two worker processes, DIR's code ("before") and this
one's ("after"), one step each in turn (the order alternating), ``--repeats`` steps each after
``--warmup``; it prints the medians of wall and process CPU time and the median over pairs of
before/after. On a shared machine this is the comparison to trust: both sides see the same load.
``--compare-env VAR=VALUE`` runs the same lockstep with this checkout on both sides, "before"
with VAR=VALUE in its environment, e.g. ``JMP_ASE_RETAIN_FREED_MEMORY=0``
(:mod:`jmp_ase.allocator`: the model's passes set it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbone_speed import CUTOFF, MAX_NEIGHBORS, machine, system  # noqa: E402

from ase.build import bulk  # noqa: E402

from jmp_ase.data.batch import batch_from_atoms  # noqa: E402
from jmp_ase.data.graphs import GraphSettings  # noqa: E402
from jmp_ase.nn.config import jmp_s  # noqa: E402
from jmp_ase.nn.heads import HeadSpec  # noqa: E402
from jmp_ase.nn.model import FineTunedModel, JMPPretrainedModel, ModelConfig  # noqa: E402


def cu_cubic(natoms: int):
    """Rattled cubic fcc Cu n x n x n (4 n^3 atoms, n^3 closest to natoms / 4)."""
    n = max(1, round((natoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
    atoms.rattle(0.05, seed=0)
    return atoms


def aspirin_md_step():
    """A callable doing one velocity Verlet step (0.5 fs, 300 K start) of aspirin with the shipped
    jmp-mini-aspirin model: one calculator call (graphs, model, forces) per step."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from jmp_ase import JMPCalculator

    _, atoms = system("aspirin")
    atoms.calc = JMPCalculator("jmp-mini-aspirin")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)

    def step():
        dyn.run(1)

    return step


def jmps_step(spec: str, mode: str, dtype=torch.float32):
    atoms = system("aspirin")[1] if spec == "aspirin" else cu_cubic(int(spec))
    batch = batch_from_atoms([atoms], GraphSettings(cutoff=CUTOFF, max_neighbors=MAX_NEIGHBORS), dtype=dtype)
    torch.manual_seed(0)
    if mode == "direct":
        model = JMPPretrainedModel(jmp_s(), num_tasks=1).to(dtype).eval()

        def step():
            with torch.no_grad():
                return model(batch, task=0)
    else:
        model = FineTunedModel(ModelConfig(jmp_s(), [HeadSpec("energy")], CUTOFF, MAX_NEIGHBORS)).to(dtype).eval()

        def step():
            return model(batch)
    return step


def make_case(name: str):
    if name == "aspirin-md":
        return aspirin_md_step()
    prefix, spec, mode = name.split("-")
    if prefix != "jmps" or mode not in ("direct", "conservative"):
        raise SystemExit(f"unknown case {name!r}")
    return jmps_step(spec, mode)


def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def worker(name: str, warmup: int) -> None:
    """Lockstep side: one step per line read from stdin, its wall and CPU ms written as JSON."""
    import json

    import jmp_ase

    step = make_case(name)
    for _ in range(max(1, warmup)):
        step()
    print(json.dumps({"ready": jmp_ase.__file__}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        print(json.dumps({"wall": 1000 * (time.perf_counter() - wall), "cpu": 1000 * (time.process_time() - cpu)}),
              flush=True)


def compare(name: str, other: Path | None, args, before_env: dict | None = None) -> None:
    """Time case ``name`` with ``other``'s code (or this checkout's with ``before_env`` added to the
    environment) and with this checkout's, in lockstep."""
    import json
    import os
    import subprocess

    here = Path(__file__).resolve().parent.parent
    sides = {"before": Path(other).resolve() if other is not None else here, "after": here}
    procs = {}
    for side, root in sides.items():
        env = dict(os.environ, PYTHONPATH=str(root), **((before_env or {}) if side == "before" else {}))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--threads", str(args.threads),
               "--warmup", str(args.warmup)]
        procs[side] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                       cwd=str(root))
    for side, proc in procs.items():
        ready = json.loads(proc.stdout.readline())["ready"]
        print(f"# {side}: {ready}")
    times = {side: [] for side in procs}
    for k in range(args.repeats):
        for side in (("before", "after") if k % 2 == 0 else ("after", "before")):
            procs[side].stdin.write("step\n")
            procs[side].stdin.flush()
            times[side].append(json.loads(procs[side].stdout.readline()))
    for proc in procs.values():
        proc.communicate("stop\n")

    def med(side, key):
        return statistics.median(t[key] for t in times[side])

    def paired(key):
        return statistics.median(b[key] / a[key] for b, a in zip(times["before"], times["after"]))

    print(f"{name:24s} wall: before {med('before', 'wall'):8.1f} ms  after {med('after', 'wall'):8.1f} ms  "
          f"(paired {paired('wall'):.2f}x);  process CPU: before {med('before', 'cpu'):8.1f} ms  after "
          f"{med('after', 'cpu'):8.1f} ms  (paired {paired('cpu'):.2f}x)  n={args.repeats}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="aspirin-md,jmps-108-conservative")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--no-profile", action="store_true", help="median step time only")
    p.add_argument("--compare-with", type=Path, metavar="DIR",
                   help="time each case against the jmp-ase code in DIR, in lockstep (no profile)")
    p.add_argument("--compare-env", metavar="VAR=VALUE",
                   help="time each case with VAR=VALUE (before) and without (after), in lockstep")
    p.add_argument("--worker", metavar="CASE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args.worker, args.warmup)
    print(f"# machine: {machine()}")
    if args.compare_with is not None or args.compare_env:
        before_env = dict([args.compare_env.split("=", 1)]) if args.compare_env else None
        for name in args.cases.split(","):
            compare(name, args.compare_with, args, before_env)
        print(f"# end: {machine().rsplit('; ', 1)[-1]}")
        return
    for name in args.cases.split(","):
        step = make_case(name)
        ms = median_ms(step, args.warmup, args.repeats)
        print(f"\n## {name}: median {ms:.1f} ms per step ({args.repeats} steps after {args.warmup} warm-up)")
        if args.no_profile:
            continue
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                        max_name_column_width=40))
    print(f"# end: {machine().rsplit('; ', 1)[-1]}")


if __name__ == "__main__":
    main()
