"""Peak memory and time of JMP-S (or JMP-L) conservative energy + forces (+ stress): fast vs lean mode.

    python benchmarks/memory.py --sizes 3,4,5,7 --modes fast,lean --threads 1 --memory-limit-gb 12

JMP-S backbone (``config.jmp_s()``, random weights; ``--backbone jmp-l``: JMP-L) with a fine-tuning energy head
(``FineTunedModel``), float32, cutoff 12 Å, max_neighbors 30; forces = -dE/dr and stress by
autograd through the model (what ``JMPCalculator`` does for MD). Systems: rattled fcc Cu
cubic supercells n x n x n of the 4-atom cubic cell (3 -> 108, 4 -> 256, 5 -> 500,
7 -> 1372, 10 -> 4000 atoms).

Each (size, mode) runs in a fresh subprocess under an address-space cap (``--memory-limit-gb``,
so a case that does not fit fails with an out-of-memory error instead of exhausting the
machine). "RSS before" is the child's resident memory once the model and the batch (graphs
and interaction indices) are built, "peak RSS" its ``ru_maxrss`` over the whole run (graph
building included); "model ms" is the median of ``--repeats`` model calls after ``--warmup``;
"ms/atom" and "MB/atom" (peak - before) are per atom; "CPU ms/atom" is the process's CPU time per
call and atom (same median), which other jobs on a shared machine disturb far less than wall time
when the case runs with one thread.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def machine_line(threads: int) -> str:
    """backbone_speed.py's machine line, with the thread count the cases run with."""
    import torch
    from backbone_speed import machine

    torch.set_num_threads(threads)
    return f"# machine: {machine()}"


def child(args) -> dict:
    import numpy as np
    from original_jmp import rss_mb
    import torch
    from ase.build import bulk

    from jmp_ase.data.batch import batch_from_atoms
    from jmp_ase.data.graphs import GraphSettings
    from jmp_ase.nn.config import named_config
    from jmp_ase.nn.heads import HeadSpec
    from jmp_ase.nn.model import FineTunedModel, ModelConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    structures = []
    for seed in range(args.batch):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((args.size,) * 3)
        atoms.positions += np.random.default_rng(seed).normal(scale=0.02, size=atoms.positions.shape)
        structures.append(atoms)
    config = ModelConfig(backbone=named_config(args.backbone), heads=[HeadSpec("energy")], cutoff=args.cutoff,
                         max_neighbors=args.max_neighbors)
    model = FineTunedModel(config).eval()
    model.memory = args.mode
    if args.chunk_size:
        model.backbone.chunk_size = args.chunk_size
    settings = GraphSettings(cutoff=args.cutoff, max_neighbors=args.max_neighbors)
    batch = batch_from_atoms(structures, settings)
    idx = batch.indices
    info = {"atoms": sum(len(a) for a in structures), "main_edges": int(idx.main_edge_index.shape[1]),
            "a2a_edges": int(idx.a2a_edge_index.shape[1]), "quadruplets": int(idx.quad.out.shape[0]),
            "chunk": model.backbone.lean_chunk_size(idx)}
    info["rss_before_mb"] = rss_mb()
    times, cpu_times = [], []
    step = train_step(model, batch, args.stress) if args.train_step else None
    try:
        for k in range(args.warmup + args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            out = step() if step else model(batch, compute_stress=args.stress)
            energy = float(out["energy"].detach()[0])
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            del out
            if k >= args.warmup:
                times.append(elapsed)
                cpu_times.append(cpu)
            if elapsed > args.budget:
                break
        info.update(energy=energy, model_ms=1000 * statistics.median(times) if times else 1000 * elapsed,
                    cpu_ms=1000 * statistics.median(cpu_times) if cpu_times else 1000 * cpu,
                    n=len(times) or 1)
    except (MemoryError, RuntimeError) as err:
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        info["error"] = f"out of memory (cap {args.memory_limit_gb:g} GB)"
    info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return info


def train_step(model, batch, stress: bool):
    """One fine-tuning step as ``jmp-train finetune`` takes it: training mode, energy and
    conservative forces (+ stress) with their graph kept (the force loss needs -dE/dr's own
    gradient), squared-error loss against fixed labels, backward, an Adam step. Returns a
    function that takes one step and returns the predictions."""
    import torch

    from jmp_ase.training.losses import compute_losses

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    targets = {"energy": torch.randn(batch.num_structures, generator=generator),
               "forces": torch.randn(batch.positions.shape, generator=generator)}
    if stress:
        targets["stress"] = torch.zeros(batch.num_structures, 3, 3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        preds = model(batch, compute_stress=stress, compute_forces=True)
        loss, _ = compute_losses(preds, targets, {"energy": 1.0, "forces": 10.0, "stress": 10.0}, {}, "mse")
        loss.backward()
        optimizer.step()
        return {name: value.detach() for name, value in preds.items()}

    return step


def run_case(args, size: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--size", str(size), "--mode", mode, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--budget", str(args.budget),
           "--cutoff", str(args.cutoff), "--max-neighbors", str(args.max_neighbors),
           "--memory-limit-gb", str(args.memory_limit_gb), "--chunk-size", str(args.chunk_size or 0),
           "--backbone", args.backbone, "--batch", str(args.batch)]
    if args.train_step:
        cmd.append("--train-step")
    if not args.stress:
        cmd.append("--no-stress")
    cap = int(args.memory_limit_gb * 1e9)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, env=env, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        oom = "allocate memory" in tail[0] or "MemoryError" in tail[0] or proc.returncode in (-9, 137)
        return {"size": size, "mode": mode, "error": f"out of memory (cap {args.memory_limit_gb:g} GB)" if oom
                else f"failed: {tail[0][:80]}"}
    info = json.loads(lines[-1])
    info.update(size=size, mode=mode)
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="3,4,5,7", help="cubic supercell repeats n (4 n^3 Cu atoms)")
    parser.add_argument("--modes", default="fast,lean")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget", type=float, default=60.0, help="s: a slower call is not repeated")
    parser.add_argument("--no-stress", dest="stress", action="store_false", help="energy + forces only")
    parser.add_argument("--cutoff", type=float, default=12.0)
    parser.add_argument("--max-neighbors", type=int, default=30)
    parser.add_argument("--chunk-size", type=int, default=0, help="lean chunk size (0: the default)")
    parser.add_argument("--backbone", default="jmp-s", choices=["jmp-s", "jmp-l"],
                        help="backbone size (random weights)")
    parser.add_argument("--batch", type=int, default=1, help="structures per call (copies, rattled differently)")
    parser.add_argument("--train-step", action="store_true",
                        help="time a fine-tuning step (energy + force loss, backward, Adam) instead of a call")
    parser.add_argument("--memory-limit-gb", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="s per case")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    print(machine_line(args.threads))
    what = "E+F+S" if args.stress else "E+F"
    if args.train_step:
        what = f"fine-tuning step ({what}, squared-error loss on energy and forces, backward, Adam)"
    if args.batch > 1:
        what += f", batches of {args.batch} structures (atoms: in the batch)"
    print(f"# {args.backbone.upper()} (random weights), conservative {what} through FineTunedModel, cutoff {args.cutoff:g} A, "
          f"max_neighbors {args.max_neighbors}, float32; median of {args.repeats} after {args.warmup} warm-up; "
          f"address-space cap {args.memory_limit_gb:g} GB per case")
    header = (f"{'atoms':>6} {'main E':>7} {'quads':>9} {'mode':<5} {'RSS before':>10} {'peak RSS':>9} "
              f"{'MB/atom':>8} {'model ms':>9} {'ms/atom':>8} {'CPU ms/atom':>11} {'n':>2}")
    print(header)
    print("-" * len(header), flush=True)
    failed = set()
    for size in [int(s) for s in args.sizes.split(",")]:
        for mode in args.modes.split(","):
            if mode in failed:
                print(f"{4 * size**3 * args.batch:>6} {'':>7} {'':>9} {mode:<5} skipped (a smaller size ran out of memory)",
                      flush=True)
                continue
            r = run_case(args, size, mode)
            if "error" in r and "model_ms" not in r:
                print(f"{4 * size**3 * args.batch:>6} {r.get('main_edges', ''):>7} {r.get('quadruplets', ''):>9} {mode:<5} "
                      f"{r['error']}", flush=True)
                failed.add(mode)
                continue
            per_atom = (r["peak_rss_mb"] - r["rss_before_mb"]) / r["atoms"]
            print(f"{r['atoms']:>6} {r['main_edges']:>7} {r['quadruplets']:>9} {mode:<5} "
                  f"{r['rss_before_mb']:>8.0f}MB {r['peak_rss_mb']:>7.0f}MB {per_atom:>8.2f} "
                  f"{r['model_ms']:>9.0f} {r['model_ms'] / r['atoms']:>8.1f} {r['cpu_ms'] / r['atoms']:>11.1f} "
                  f"{r['n']:>2}", flush=True)
    print("# end: load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
