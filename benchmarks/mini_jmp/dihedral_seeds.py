"""Does the smooth quadruplet basis cost accuracy? Fine-tune jmp-mini on one mini-JMP task with
JMP's exact dihedral and with the smooth basis, over several seeds, and compare test errors.

    python benchmarks/mini_jmp/dihedral_seeds.py --data ../shared/data/mini-jmp --seeds 1 2 --lanes 2

Each run is tasks.yaml's recipe for the task (at its first learning rate unless --lr), from the
shipped ``jmp-mini``, in its own process with one thread; only the basis options and ``seed``
differ. Prints one line per run and the mean per basis, and writes ``dihedral_seeds.json`` to
--out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import evaluate, finetune_config, load_yaml  # noqa: E402


def run_one(cfg: dict, folder: Path, test_file: str) -> dict:
    """Fine-tune (unless ``folder`` already holds the model) and evaluate on ``test_file``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    wall = None
    if not (folder / "model.ckpt").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        config = folder.parent / f"{folder.name}.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        start = time.perf_counter()
        with open(folder.parent / f"{folder.name}.log", "w") as log:
            done = subprocess.run([sys.executable, "-m", "jmp_ase.training.cli", "finetune", str(config)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
        wall = round(time.perf_counter() - start, 1)
        if done.returncode != 0:
            return {"error": f"exit {done.returncode}, see {folder.parent / f'{folder.name}.log'}"}
    metrics = evaluate(folder / "model.ckpt", test_file, folder / "eval", threads=1)
    return {"energy_mae": metrics["energy_mae"], "forces_mae": metrics["forces_mae"], "wall_s": wall}


def basis_options(basis: str) -> dict:
    """Fine-tuning options of a basis name: ``jmp``, ``smooth`` or ``smooth-EPS``."""
    if basis == "jmp":
        return {"smooth_dihedral": False}
    if basis == "smooth":
        return {"smooth_dihedral": True, "dihedral_damping": 0.0}
    if basis.startswith("smooth-"):
        return {"smooth_dihedral": True, "dihedral_damping": float(basis.split("-", 1)[1])}
    raise SystemExit(f"Error: unknown basis {basis!r} (jmp, smooth or smooth-EPS)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="the mini-JMP corpus")
    p.add_argument("--task", default="aspirin-1000", help="a task of tasks.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--lr", type=float, default=None, help="default: the task's first learning rate")
    p.add_argument("--bases", nargs="+", default=["jmp", "smooth"],
                   help="quadruplet bases to compare: jmp, smooth, or smooth-EPS (smooth with "
                        "dihedral_damping EPS, e.g. smooth-0.15)")
    p.add_argument("--lanes", type=int, default=2, help="runs at a time")
    p.add_argument("--out", type=Path, default=Path("runs/dihedral-seeds"))
    args = p.parse_args(argv)
    spec = load_yaml(HERE / "tasks.yaml")
    task = spec["tasks"][args.task]
    lr = args.lr or task.get("lr", spec["learning_rates"][-1])
    missing = [task[k] for k in ("train", "val", "test") if k in task and not (args.data / task[k]).is_file()]
    if missing:
        raise SystemExit(f"Error: --data {args.data} lacks {missing[0]} (not the mini-JMP corpus?); it is not in "
                         "the repository: see benchmarks/README.md, 'The mini-JMP corpus'")
    test_file = str(args.data.resolve() / task["test"])
    jobs = []
    for seed in args.seeds:
        for basis in args.bases:
            folder = args.out / f"{basis}-seed{seed}"
            cfg = finetune_config(task, spec["common"], args.data.resolve(), folder, lr, False, "jmp-mini")
            cfg.update(pretrained="jmp-mini", ema=False, seed=seed, **basis_options(basis))
            jobs.append((basis, seed, cfg, folder))

    def go(job):
        basis, seed, cfg, folder = job
        result = run_one(cfg, folder, test_file)
        print(f"{basis:>12} seed {seed}: {result}", flush=True)
        return basis, seed, result

    with ThreadPoolExecutor(args.lanes) as pool:
        results = list(pool.map(go, jobs))
    summary = {}
    for name in args.bases:
        rows = [r for b, _, r in results if b == name and "error" not in r]
        summary[name] = {k: statistics.mean(r[k] for r in rows) for k in ("energy_mae", "forces_mae") if rows}
        print(f"{name}: mean over {len(rows)} seeds: " + ", ".join(f"{k} {v:.4f}" for k, v in summary[name].items()))
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "task": args.task, "lr": lr,
              "runs": [{"basis": b, "seed": seed, **r} for b, seed, r in results], "mean": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dihedral_seeds.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
