"""Fine-tune a variant of the mini-JMP recipe over several seeds (the pre-trained side only).

Each run is tasks.yaml's fine-tuned run of the task (common settings, the task's own, its
``finetune`` section) with ``seed`` set and the ``--set`` overrides on top, at one learning
rate, fine-tuned from ``--pretrained``; its selected model meets the task's test set as in
run.py. The from-scratch side does not depend on the variant: compare with the scratch runs of
run.py at the same seeds (results.md, results-seeds.md). Example (multi-head replay)::

    python benchmarks/mini_jmp/variant.py --data ../shared/data/mini-jmp --out runs/replay \\
        --tasks gap bulk-modulus --seeds 0 1 2 --replay-corpus --set replay_weight=0.1

prints one JSON line per run and writes ``results.json`` in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (run.py beside this file)

#: the pre-training data sets of the corpus (pretrain.yaml), for --replay-corpus
PRETRAINING_SETS = ("catalysis-emt", "molecules-gfn2", "reactions-gfn2")


def parse_set(values: list[str]) -> dict:
    """``KEY=VALUE`` pairs, each value read as YAML (numbers, lists, mappings)."""
    out = {}
    for item in values:
        if "=" not in item:
            raise SystemExit(f"Error: --set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def plan(args) -> list[dict]:
    spec = R.load_yaml(R.HERE / "tasks.yaml")
    overrides = parse_set(args.set)
    if args.replay_corpus:
        overrides["replay"] = {name: f"{name}/train.extxyz" for name in PRETRAINING_SETS}
    runs = []
    for name in args.tasks:
        task = R.task_spec(spec, name)
        task = {**task, **overrides}  # max_epochs here also sets warm-up and cosine lengths, as in run.py
        lr = args.lr if args.lr is not None else task.get("learning_rates", spec["learning_rates"])[-1]
        for seed in args.seeds:
            out = args.out / f"{name}-seed{seed}"
            cfg = R.finetune_config(task, {**spec["common"], "seed": seed}, args.data, out, lr, False, args.pretrained)
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(yaml.safe_dump(cfg))
            runs.append({"task": name, "seed": seed, "lr": lr, "out": out, "test": R.cfg_test(task, args.data),
                         "metric": next(iter(task["metrics"])), "factor": next(iter(task["metrics"].values()))[0]})
    return runs


def execute(run: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(R.REPO), os.environ.get("PYTHONPATH", "")])}
    out = run["out"]
    with open(out / "log.txt", "w") as f:
        code = subprocess.call([sys.executable, "-m", "jmp_ase.training.cli", "finetune", str(out / "config.yaml")],
                               stdout=f, stderr=subprocess.STDOUT, cwd=R.REPO, env=env)
    result = {k: (str(v) if isinstance(v, Path) else v) for k, v in run.items()}
    result["exit_code"] = code
    if code == 0:
        rows = R.read_metrics(out / "metrics.csv")
        result["best_val_loss"] = min(r["val_loss"] for r in rows)
        result["wall_s"] = rows[-1].get("elapsed_s")
        metrics = R.evaluate(out / "model.ckpt", run["test"], out / "test", threads)
        result["test_" + run["metric"]] = metrics[run["metric"]] * run["factor"]
    print(json.dumps(result), flush=True)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=R.REPO.parent / "shared" / "data" / "mini-jmp")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks of tasks.yaml (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--pretrained", default="jmp-mini", help="parent model (file or shipped name)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: the task's highest; every seed of results-seeds.md chose it)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="FinetuneConfig overrides")
    parser.add_argument("--replay-corpus", action="store_true",
                        help="multi-head replay on the corpus's three pre-training sets (their train.extxyz)")
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.data, args.out = args.data.resolve(), args.out.resolve()
    if not (args.data / "catalysis-emt" / "train.extxyz").is_file():
        raise SystemExit(f"Error: --data {args.data} is not the mini-JMP corpus (no catalysis-emt/train.extxyz)")
    args.tasks = args.tasks or list(R.load_yaml(R.HERE / "tasks.yaml")["tasks"])
    runs = plan(args)
    with ThreadPoolExecutor(args.lanes) as pool:
        results = list(pool.map(lambda r: execute(r, args.threads), runs))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
