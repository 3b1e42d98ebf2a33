"""Mini-JMP: pre-train on three domains, fine-tune on five held-out tasks, compare with scratch.

    python benchmarks/mini_jmp/run.py --data ../shared/data/mini-jmp            # ~1 h, 2 cores
    python benchmarks/mini_jmp/run.py --data ../shared/data/mini-jmp --ship    # and update jmp_ase/models

Runs (each a `jmp-train` subprocess with its own log, ``--lanes`` at a time, one thread each):
pre-training (pretrain.yaml), then for every task in tasks.yaml and every
learning rate one fine-tuning run from the pre-trained backbone and one `--scratch` run of the
same architecture. Scratch runs do not need the pre-trained model, so they start at once,
beside pre-training. Writes results.json, results.md and learning_curves.png to --results
(default: this folder); with --ship, then also the shipped models (jmp-mini, jmp-mini-aspirin,
jmp-mini-catalysis; see ship.py) with their provenance and test errors inside.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass
class Job:
    """One subprocess run: ``name`` is also its folder under --out."""

    name: str
    argv: list
    needs_pretrain: bool = False
    wall_s: float = math.nan
    ok: bool = False
    info: dict = field(default_factory=dict)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def task_spec(spec: dict, name: str) -> dict:
    """A task of tasks.yaml (the dict ``load_yaml`` read): a mini-JMP task, or a shipped model's
    recipe from its ``ship`` section (``catalysis``: the data of ``jmp-mini-catalysis``)."""
    if name in spec["tasks"]:
        return spec["tasks"][name]
    if name in spec.get("ship", {}):
        return spec["ship"][name]
    raise SystemExit(f"Error: unknown task {name!r}; tasks.yaml has {sorted(spec['tasks'])} "
                     f"and the shipped recipes {sorted(spec.get('ship', {}))}")


# ----------------------------------------------------------------------------- planning
def pretrain_config(data: Path, out: Path, quick: bool) -> dict:
    cfg = load_yaml(HERE / "pretrain.yaml")
    cfg["out_dir"] = str(out / "pretrain")
    for d in cfg["data"]["datasets"]:  # <set>/<file> under --data
        d["train"], d["val"] = (str(data.joinpath(*Path(d[k]).parts[-2:])) for k in ("train", "val"))
        if quick:
            d["train_index"], d["val_index"] = ":64", ":8"
    if quick:
        cfg["trainer"].update(max_steps=20, val_every_n_steps=10, checkpoint_every_n_steps=10)
        cfg["optim"]["warmup_steps"] = 5
        cfg["scale_fit"]["num_batches"] = 2
    return cfg


def finetune_config(task: dict, common: dict, data: Path, out: Path, lr: float, scratch: bool,
                    pretrained: Path) -> dict:
    """A complete FinetuneConfig dict for one run."""
    cfg = {k: v for k, v in common.items() if k != "warmup_fraction"}
    cfg.update({k: v for k, v in task.items()
                if k not in ("mirrors", "metrics", "name", "train_slice", "val_slice", "lr", "warmup_fraction",
                             "learning_rates", "finetune")})
    for split in ("train", "val", "test"):
        cfg[split] = str(task[split]) if Path(task[split]).is_absolute() else str(data / task[split])
    cfg["test"] = None  # the driver meets the test set only with the selected model
    cfg["warmup_epochs"] = task.get("warmup_fraction", common["warmup_fraction"]) * cfg["max_epochs"]
    cfg["cosine_epochs"] = cfg["max_epochs"]
    cfg.update(lr=float(lr), out=str(out), accelerator="cpu", devices=1, progress=False)
    if scratch:
        cfg.update(scratch=True, pretrained=None, backbone=load_yaml(HERE / "pretrain.yaml")["model"]["backbone"])
    else:  # settings that need a parent (e.g. init_energy_head) apply to this side only
        # a run's own pre-training checkpoint holds EMA weights beside the raw ones; a given model
        # (--pretrained, e.g. the shipped jmp-mini) has them as its weights already
        cfg.update(scratch=False, pretrained=str(pretrained), ema=Path(str(pretrained)).name == "pretrain.ckpt",
                   **task.get("finetune", {}))
        if cfg.get("replay"):  # multi-head replay: pre-training data sets of the corpus, relative to --data
            cfg["replay"] = {head: str(path) if Path(path).is_absolute() else str(data / path)
                             for head, path in cfg["replay"].items()}
    return cfg


def write_slice(source: Path, index: str, target: Path) -> Path:
    """``source[index]`` as a new extxyz file (labels kept)."""
    import ase.io

    target.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(target, ase.io.read(source, index), format="extxyz")
    return target


def quick_task(task: dict, data: Path, folder: Path) -> dict:
    """A tiny version of a task for a smoke run: 16/8/8 structures, 2 epochs."""
    task = copy.deepcopy(task)
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        task[split] = str(write_slice(data / task[split], f":{n}", folder / f"{split}.extxyz"))
    task["max_epochs"] = 2
    task.pop("train_slice", None), task.pop("val_slice", None)
    return task


def plan(args) -> tuple[list[Job], dict]:
    spec = load_yaml(HERE / "tasks.yaml")
    out, data = args.out, args.data
    cli = [sys.executable, "-m", "jmp_ase.training.cli"]
    jobs = []
    configs = out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    if args.pretrained:  # an existing pre-trained model: no pre-training job
        pretrained = args.pretrained
    else:
        pretrained = out / "pretrain" / "pretrain.ckpt"
        pt = configs / "pretrain.yaml"
        pt.write_text(yaml.safe_dump(pretrain_config(data, out, args.quick), sort_keys=False))
        jobs.append(Job("pretrain", cli + ["pretrain", str(pt)]))
    tasks = {name: spec["tasks"][name] for name in args.tasks}
    if args.quick:
        tasks = {name: quick_task(t, data, out / "quick-data" / name) for name, t in tasks.items()}
    by_cost = sorted(tasks, key=lambda n: -tasks[n]["max_epochs"] * _size(data, tasks[n]["train"]))
    for scratch in (True, False):
        for name in by_cost:
            lrs = tasks[name].get("learning_rates", spec["learning_rates"])
            for lr in lrs[:1] if args.quick else lrs:
                run = f"{name}/{'scratch' if scratch else 'finetune'}-lr{lr:g}"
                path = configs / f"{run.replace('/', '--')}.yaml"
                cfg = finetune_config(tasks[name], spec["common"], data, out / run, lr, scratch, pretrained)
                path.write_text(yaml.safe_dump(cfg, sort_keys=False))
                job = Job(run, cli + ["finetune", str(path)], needs_pretrain=not (scratch or args.pretrained))
                job.info = {"task": name, "lr": lr, "side": "scratch" if scratch else "finetune", "out": out / run}
                jobs.append(job)
    for name, ship in (spec.get("ship") or {}).items():
        if not args.ship:
            continue
        ship = copy.deepcopy(ship)
        folder = out / "ship-data" / name
        if args.quick:
            ship = quick_task(ship, data, folder)
        else:
            for split in ("train", "val"):
                if ship.get(f"{split}_slice"):
                    ship[split] = str(write_slice(data / ship[split], ship[f"{split}_slice"], folder / f"{split}.extxyz"))
        run = f"ship/{ship['name']}"
        cfg = finetune_config(ship, spec["common"], data, out / run, ship["lr"], False, pretrained)
        path = configs / f"ship--{ship['name']}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        job = Job(run, cli + ["finetune", str(path)], needs_pretrain=not args.pretrained)
        job.info = {"task": name, "ship": ship, "out": out / run, "test": cfg_test(ship, data)}
        jobs.append(job)
    return jobs, {"spec": spec, "tasks": tasks, "pretrained": pretrained}


def cfg_test(task: dict, data: Path) -> str:
    return task["test"] if Path(task["test"]).is_absolute() else str(data / task["test"])


def _size(data: Path, rel: str) -> int:
    """Structures in an extxyz file (counted from its frame headers, cheaply)."""
    path = Path(rel) if Path(rel).is_absolute() else data / rel
    count, lines = 0, path.read_text().splitlines()
    k = 0
    while k < len(lines):
        n = int(lines[k])
        count, k = count + 1, k + n + 2
    return count


# ----------------------------------------------------------------------------- running
def run_jobs(jobs: list[Job], out: Path, lanes: int, threads: int) -> None:
    """Run every job, ``lanes`` at a time; fine-tuning jobs wait for pre-training."""
    pretrained_ready, pretrain_ok = threading.Event(), {"ok": False}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done, lock = [0], threading.Lock()
    start = time.perf_counter()

    def execute(job: Job) -> None:
        if job.needs_pretrain:
            pretrained_ready.wait()
            if not pretrain_ok["ok"]:
                print(f"  skipped {job.name}: pre-training failed", flush=True)
                return
        log = out / job.name / "log.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(log, "w") as f:
            code = subprocess.call(job.argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        job.wall_s, job.ok = time.perf_counter() - t0, code == 0
        if job.name == "pretrain":
            pretrain_ok["ok"] = job.ok
            pretrained_ready.set()
        with lock:
            done[0] += 1
            state = "done" if job.ok else f"FAILED (exit {code}, see {log})"
            print(f"[{done[0]:2d}/{len(jobs)}] {time.perf_counter() - start:7.0f} s  {job.name:42s} "
                  f"{job.wall_s:6.0f} s  {state}", flush=True)

    print(f"{len(jobs)} runs, {lanes} at a time, {threads} thread(s) each; logs under {out}", flush=True)
    try:
        with ThreadPoolExecutor(max_workers=lanes) as pool:
            list(pool.map(execute, jobs))
    finally:
        pretrained_ready.set()


# ----------------------------------------------------------------------------- results
def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def evaluate(model: Path, test: str, folder: Path, threads: int) -> dict:
    """Test errors of a model file or shipped name (``jmp-train evaluate``; physical units eV, eV/Å,
    label units). Paths are taken relative to the caller's folder (the command runs in REPO)."""
    folder, test = Path(folder).resolve(), str(Path(test).resolve())
    model = Path(model).resolve() if Path(model).exists() else model
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    # held-out test sets may hold elements a from-scratch model never saw (bulk-modulus: Mo, Cu);
    # both sides are evaluated on every structure, as before the calculator refused such elements
    subprocess.run([sys.executable, "-m", "jmp_ase.training.cli", "evaluate", str(model), test, "--out", str(folder),
                    "--allow-unknown-elements"],
                   check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - t0
    return metrics


def summarise_task(task: dict, runs: list[Job], data: Path, threads: int) -> dict:
    """Pick each side's learning rate by validation loss, test it, compare."""
    main_metric = next(iter(task["metrics"]))
    result = {"mirrors": task.get("mirrors"), "metric": main_metric, "runs": {}}
    for side in ("scratch", "finetune"):
        candidates = []
        for job in runs:
            if job.info["side"] != side:
                continue
            rows = read_metrics(job.info["out"] / "metrics.csv") if job.ok else []
            val = [r for r in rows if "val_loss" in r]
            best = min(val, key=lambda r: r["val_loss"]) if val else None
            result["runs"][f"{side}-lr{job.info['lr']:g}"] = {
                "lr": job.info["lr"], "wall_s": round(job.wall_s, 1), "ok": job.ok, "epochs": len(rows),
                "best_val_loss": best["val_loss"] if best else None,
                "curve": [{"epoch": int(r["epoch"]), "elapsed_s": r.get("elapsed_s"),
                           f"val_{main_metric}": r.get(f"val_{main_metric}")} for r in val]}
            if best is not None and (job.info["out"] / "model.ckpt").is_file():
                candidates.append((best["val_loss"], job, val))
        if not candidates:
            result[side] = None
            continue
        _, job, val = min(candidates, key=lambda c: c[0])
        test = evaluate(job.info["out"] / "model.ckpt", cfg_test(task, data), job.info["out"] / "test", threads)
        result[side] = {"lr": job.info["lr"], "model": str(job.info["out"] / "model.ckpt"), "wall_s": round(job.wall_s, 1),
                        "val_curve": [(r.get("elapsed_s"), r.get(f"val_{main_metric}")) for r in val],
                        "test": {m: test[m] * f for m, (f, _) in task["metrics"].items()},
                        "test_structures": test["structures"]}
    if result.get("scratch") and result.get("finetune"):
        s, f = result["scratch"], result["finetune"]
        result["improvement"] = {m: 1.0 - f["test"][m] / s["test"][m] for m in task["metrics"]}
        target = min(v for _, v in s["val_curve"] if v is not None)
        reached = [t for t, v in f["val_curve"] if v is not None and v <= target]
        result["scratch_final_val"] = target
        result["finetune_time_to_scratch_val_s"] = reached[0] if reached else None
    return result


def results_markdown(results: dict) -> str:
    lines = ["# Mini-JMP: pre-trained vs from scratch", "",
             f"Machine: {results['machine']}. Command: `{results['command']}`. "
             f"Total wall time {results['total_wall_s'] / 60:.1f} min "
             f"({pretraining_text(results['pretrain'])}, {results['lanes']} runs at a time, "
             f"{results['threads']} thread each).", "",
             "Test MAE of the model with the best validation loss over the learning rates "
             f"{results['learning_rates']} unless a task names its own (each side chooses its own), "
             "same epochs, loss and schedule on both sides.", "",
             "| task | mirrors | metric | scratch | fine-tuned | improvement | scratch wall | fine-tune wall "
             "| fine-tune time to scratch's best val |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["tasks"].items():
        s, f = r.get("scratch"), r.get("finetune")
        if not (s and f):
            lines.append(f"| {name} | {r.get('mirrors')} | | failed | failed | | | | |")
            continue
        for k, (metric, (_, unit)) in enumerate(r["units"].items()):
            reach = r.get("finetune_time_to_scratch_val_s")
            reach_txt = "not reached" if reach is None else f"{reach:.0f} s"
            lines.append(
                f"| {name if k == 0 else ''} | {r['mirrors'] if k == 0 else ''} | {metric.replace('_mae', '')} ({unit}) "
                f"| {s['test'][metric]:.4g} | {f['test'][metric]:.4g} | {100 * r['improvement'][metric]:+.0f} % "
                f"| {s['wall_s']:.0f} s | {f['wall_s']:.0f} s | {reach_txt if k == 0 else ''} |")
    mean = results.get("mean_improvement")
    if mean is not None:
        lines += ["", f"Mean improvement of the main metric over the tasks: {100 * mean:+.0f} % "
                      "(the paper: 59 % on average over its downstream tasks)."]
    if "common" in results:  # runs before 2026-12-02 did not record their recipe
        lines += ["", "Recipe: " + ", ".join(f"{k} {v}" for k, v in results["common"].items()) + "; per task:"]
        lines += [f"- {name}: " + ", ".join(f"{k} {v}" for k, v in r.get("recipe", {}).items())
                  for name, r in results["tasks"].items()]
    lines += ["", "Learning curves (validation error against wall time of the selected runs): "
              "`learning_curves.png`. Validation curves of every run: `results.json`.", "",
              "## Every run", "", "| run | learning rate | epochs | best validation loss | wall time |",
              "|---|---|---|---|---|"]
    if results["pretrain"].get("wall_s") is not None:
        lines.append(f"| pretrain | | | | {results['pretrain']['wall_s']:.0f} s |")
    for name, r in results["tasks"].items():
        for run, info in r["runs"].items():
            loss = "failed" if info["best_val_loss"] is None else f"{info['best_val_loss']:.4g}"
            lines.append(f"| {name}/{run} | {info['lr']:g} | {info['epochs']} | {loss} | {info['wall_s']:.0f} s |")
    lines.append("")
    return "\n".join(lines)


def pretraining_text(pretrain: dict) -> str:
    if pretrain.get("wall_s") is None:
        return f"no pre-training: the fine-tuned side starts from {pretrain['model']}"
    return f"pre-training {pretrain['wall_s'] / 60:.1f} min"


def write_report(results: dict, folder: Path) -> None:
    """results.json, results.md and learning_curves.png in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (folder / "results.md").write_text(results_markdown(results))
    plot_curves(results, folder / "learning_curves.png")


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results["tasks"].items() if r.get("scratch") and r.get("finetune")]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        r = results["tasks"][name]
        factor, unit = r["units"][r["metric"]]
        for side, style in (("scratch", "o--"), ("finetune", "s-")):
            t, v = zip(*[(a, b) for a, b in r[side]["val_curve"] if a is not None and b is not None])
            ax.plot(t, [x * factor for x in v], style, ms=3, label=f"{side} (lr {r[side]['lr']:g})")
        ax.set_title(name)
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel(f"val {r['metric'].replace('_mae', '')} MAE ({unit})")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mini-jmp",
                        help="the mini-JMP corpus (default: ../shared/data/mini-jmp)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "mini-jmp", help="run folders and logs")
    parser.add_argument("--results", type=Path, default=None,
                        help="where results.{md,json} and the plot go (default: --out, or beside --report's file)")
    parser.add_argument("--update-results", action="store_true",
                        help="write them over the committed ones in benchmarks/mini_jmp/ (not with --quick)")
    parser.add_argument("--tasks", nargs="+", default=None, help="subset of tasks.yaml's tasks")
    parser.add_argument("--lanes", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--ship", action="store_true",
                        help="then write the shipped models into jmp_ase/models (ship.py; test slices to tests/data)")
    parser.add_argument("--quick", action="store_true", help="a 1-minute smoke run on a few structures")
    parser.add_argument("--pretrained", default=None,
                        help="fine-tune from this pre-trained model (file or shipped name, e.g. jmp-mini) "
                             "instead of pre-training first")
    parser.add_argument("--scratch-from", type=Path, default=None, metavar="DIR",
                        help="reuse the from-scratch runs of an earlier run in DIR (they do not depend on the "
                             "pre-trained model); each must have been made from the same settings")
    parser.add_argument("--summarise", action="store_true",
                        help="only test and tabulate the finished runs in --out (wall times from their metrics.csv)")
    parser.add_argument("--report", type=Path, default=None,
                        help="only rewrite results.md and the plot from this results.json")
    args = parser.parse_args(argv)
    if args.update_results:
        if args.quick:
            parser.error("--update-results with --quick would replace the committed results by a smoke run")
        args.results = HERE
    if args.ship and args.pretrained:
        parser.error("--ship ships the run's own pre-training as jmp-mini; it needs a run without --pretrained")
    if args.report is not None:
        write_report(json.loads(args.report.read_text()), args.results or args.report.parent)
        return
    args.data, args.out = args.data.resolve(), args.out.resolve()
    args.results = args.results or args.out
    if not (args.data / "catalysis-emt" / "train.extxyz").is_file():
        raise SystemExit(f"Error: --data {args.data} is not the mini-JMP corpus (no catalysis-emt/train.extxyz); "
                         "it is not in the repository: see benchmarks/README.md, 'The mini-JMP corpus'")
    if not args.summarise and ((args.out / "pretrain").exists() or (args.out / "configs").exists()):
        parser.error(f"{args.out} already holds a run; remove it or give another --out")
    spec = load_yaml(HERE / "tasks.yaml")
    args.tasks = args.tasks or list(spec["tasks"])
    unknown = sorted(set(args.tasks) - set(spec["tasks"]))
    if unknown:
        parser.error(f"unknown tasks {unknown}; tasks.yaml has {list(spec['tasks'])}")
    t0 = time.perf_counter()
    jobs, info = plan(args)
    if args.summarise:
        for job in jobs:
            job.ok = (args.out / job.name / ("pretrain.ckpt" if job.name == "pretrain" else "model.ckpt")).is_file()
            rows = read_metrics(args.out / job.name / "metrics.csv") if job.ok and job.name != "pretrain" else []
            job.wall_s = rows[-1].get("elapsed_s", math.nan) if rows else math.nan
    else:
        if args.scratch_from:
            reuse_scratch(jobs, args.scratch_from.resolve(), args.out)
        run_jobs([j for j in jobs if not j.ok], args.out, args.lanes, args.threads)
    if args.pretrained:
        pretrain = {"model": str(args.pretrained), "wall_s": None, "validation": None}
    elif not jobs[0].ok:
        sys.exit(f"pre-training failed: see {args.out / 'pretrain' / 'log.txt'}")
    else:
        pretrain = {"model": str(info["pretrained"]), "wall_s": round(jobs[0].wall_s, 1),
                    "validation": pretrain_validation(args.out)}
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"{platform.system()}", "command": " ".join(["python", "benchmarks/mini_jmp/run.py", *(argv or sys.argv[1:])]),
               "quick": args.quick, "lanes": args.lanes, "threads": args.threads,
               "learning_rates": spec["learning_rates"], "common": spec["common"], "pretrain": pretrain,
               "tasks": {}}
    for name, task in info["tasks"].items():
        runs = [j for j in jobs if j.info.get("task") == name and "side" in j.info]
        r = summarise_task(task, runs, args.data, args.threads)
        r["units"] = task["metrics"]
        r["recipe"] = {k: v for k, v in task.items() if k not in ("mirrors", "metrics", "train", "val", "test")}
        results["tasks"][name] = r
    gains = [r["improvement"][r["metric"]] for r in results["tasks"].values() if "improvement" in r]
    results["mean_improvement"] = sum(gains) / len(gains) if gains else None
    results["total_wall_s"] = round(time.perf_counter() - t0, 1)
    write_report(results, args.results)
    print(results_markdown(results))
    if args.ship:
        import ship

        ship.ship_all(args.out, json.loads((args.results / "results.json").read_text()), args.data)


def reuse_scratch(jobs: list[Job], earlier: Path, out: Path) -> None:
    """Link each from-scratch run of ``earlier`` into ``out`` and mark its job done, after checking
    that its config equals the one planned now (output paths aside)."""
    def settings(path: Path) -> dict:
        cfg = load_yaml(path)
        cfg.pop("out", None)
        return cfg

    for job in jobs:
        if job.info.get("side") != "scratch":
            continue
        config = f"{job.name.replace('/', '--')}.yaml"
        source = earlier / job.name
        if not (source / "model.ckpt").is_file():
            raise SystemExit(f"--scratch-from: {source} has no model.ckpt")
        if settings(earlier / "configs" / config) != settings(out / "configs" / config):
            raise SystemExit(f"--scratch-from: {earlier / 'configs' / config} differs from this run's recipe")
        (out / job.name).parent.mkdir(parents=True, exist_ok=True)
        (out / job.name).symlink_to(source, target_is_directory=True)
        rows = read_metrics(source / "metrics.csv")
        job.ok, job.wall_s = True, rows[-1].get("elapsed_s", math.nan) if rows else math.nan
        print(f"  reused {source}", flush=True)


def pretrain_validation(out: Path) -> dict | None:
    """The last validation losses of pre-training, per data set (normalised units)."""
    path = out / "pretrain" / "metrics.csv"
    if not path.is_file():
        return None
    rows = [r for r in read_metrics(path) if any(k.startswith("val/") for k in r)]
    return {k: v for k, v in rows[-1].items() if k.startswith("val/")} if rows else None


if __name__ == "__main__":
    main()
