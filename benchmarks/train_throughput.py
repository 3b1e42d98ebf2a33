"""Training throughput on the mini-JMP sets: structures per second of the real training loops
(``jmp-train finetune`` and ``jmp-train pretrain``, one process each) and the share of that
time spent waiting for data (reading structures, building graphs, collating), for each
``--num-workers``; optionally the model alone on prebuilt graphs (``--model-only``).

    python benchmarks/train_throughput.py --data ../shared/data/mini-jmp --steps 30 --num-workers 0 1
    python benchmarks/train_throughput.py --data ../shared/data/mini-jmp --model-only --configs tiny jmp-s

Loops: ``pretrain`` is benchmarks/mini_jmp/pretrain.yaml (the mini-JMP backbone, random
weights, its three data sets re-rooted under --data, edge dropout 0.1) for --steps optimiser
steps, no validation, no checkpoints, ``streaming: true`` (graphs built on every access, as
for data larger than memory; the first epoch of a cached run costs the same). The fine-tuning
cases are tasks of benchmarks/mini_jmp/tasks.yaml started from the shipped ``jmp-mini``: the
first ``--steps`` x batch_size training structures for one epoch. The numbers are the ones the
runs print at their end (``training: ... structures/s per process, ... % of it waiting for
data``): wall time from the start of the first training batch, first steps included.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "mini_jmp"))
from run import finetune_config, load_yaml, pretrain_config, task_spec, write_slice  # noqa: E402  (benchmarks/mini_jmp/run.py)

FINETUNE_TASKS = {"aspirin": "aspirin-1000", "catalysis": "catalysis"}  # case -> tasks.yaml task
LINE = re.compile(r"training: ([0-9.e+]+) structures/s per process, ([0-9.]+) % of it waiting for data"
                  r"[^\n]*?(?:after the first batch ([0-9.]+) %)?$", re.M)


def machine_line(threads: int) -> str:
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"# machine: {cpu}, {os.cpu_count()} logical CPUs, {ram:.0f} GiB RAM; torch {torch.__version__} with "
            f"{threads} threads per process, numpy {numpy.__version__}, python {platform.python_version()}; "
            f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _run(argv: list, log: Path, threads: int) -> tuple[float, float, float, float]:
    """Run one training subprocess; (structures/s, data-wait share, the share without the first
    batch, wall s) from its last line (fine-tuning: the share without the first batch from steps.csv)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    log.write_text(proc.stdout)
    found = LINE.findall(proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed (log: {log}):\n{proc.stdout[-2000:]}")
    rate, share, later = found[-1]
    steps = log.parent / "out" / "steps.csv"
    if not later and steps.is_file():
        with open(steps, newline="") as f:
            rows = list(csv.DictReader(f))[1:]
        data_s, step_s = (sum(float(r[k]) for r in rows) for k in ("data_s", "step_s"))
        later = 100 * data_s / (data_s + step_s) if rows else math.nan
    return float(rate), float(share) / 100, float(later or "nan") / 100, wall


def pretrain_case(data: Path, work: Path, steps: int, workers: int, threads: int):
    cfg = pretrain_config(data, work, quick=False)
    cfg["out_dir"] = str(work / "out")
    for d in cfg["data"]["datasets"]:
        d.pop("val", None), d.pop("val_index", None)
    cfg["data"].update(num_workers=workers, streaming=True)
    cfg["trainer"].update(max_steps=steps, checkpoint_every_n_steps=0, log_every_n_steps=steps,
                          val_every_n_steps=None)
    cfg["scale_fit"]["num_batches"] = 2
    path = work / "pretrain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return (*_run([sys.executable, "-m", "jmp_ase.training.pretrain", str(path), "--threads", str(threads)],
                  work / "log.txt", threads), cfg["data"]["batch_size"])


def finetune_case(task_name: str, data: Path, work: Path, steps: int, workers: int, threads: int):
    spec = load_yaml(HERE / "mini_jmp" / "tasks.yaml")
    task = dict(task_spec(spec, task_name))
    batch = int(task.get("batch_size", spec["common"]["batch_size"]))
    train = task.pop("train_slice", None) or ":"
    train_file = write_slice(data / task["train"], train, work / "all.extxyz")
    task["train"] = str(write_slice(train_file, f":{steps * batch}", work / "train.extxyz"))
    task["val"] = str(write_slice(data / task["val"], f":{batch}", work / "val.extxyz"))
    task.pop("val_slice", None)
    task.update(max_epochs=1, test=str(task["val"]))
    cfg = finetune_config(task, spec["common"], data, work / "out", float(task.get("lr", spec["learning_rates"][0])),
                          False, REPO / "jmp_ase" / "models" / "jmp-mini.ckpt")
    cfg.update(num_workers=workers, test=None, warmup_epochs=0.5, cosine_epochs=1, ema=False)  # a model file: no EMA
    path = work / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return (*_run([sys.executable, "-m", "jmp_ase.training.cli", "finetune", str(path), "--threads", str(threads)],
                  work / "log.txt", threads), batch)


def loops(args) -> None:
    print(machine_line(args.threads))
    print(f"# {args.steps} optimiser steps per case; data-wait share target < 10 % of a step")
    print("# data wait: share of the training loop's time spent waiting for batches; 'after 1st': without the")
    print("# first batch (which includes starting the workers and, in fine-tuning, the first graphs)")
    print(f"{'case':22s} {'workers':>7s} {'batch':>5s} {'structs/s':>10s} {'data wait':>10s} {'after 1st':>10s} "
          f"{'wall s':>7s}")
    root = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    for case in args.cases:
        for workers in args.num_workers:
            work = root / f"{case}-w{workers}"
            work.mkdir(parents=True)
            if case == "pretrain":
                rate, share, later, wall, batch = pretrain_case(args.data, work, args.steps, workers, args.threads)
                label = "pretrain (3 sets)"
            else:
                rate, share, later, wall, batch = finetune_case(FINETUNE_TASKS[case], args.data, work, args.steps,
                                                                workers, args.threads)
                label = f"finetune {FINETUNE_TASKS[case]}"
            print(f"{label:22s} {workers:7d} {batch:5d} {rate:10.2f} {100 * share:9.1f}% {100 * later:9.1f}% "
                  f"{wall:7.0f}", flush=True)
    print(f"# end: load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; logs under {root}")


# ----------------------------------------------------------------------------- the model alone
SETS = {"molecules": ("molecules-gfn2/train.extxyz", 12.0), "catalysis": ("catalysis-emt/train.extxyz", 12.0)}


def model_only(args) -> None:
    """Forward + backward (energy + conservative forces) on graphs built beforehand."""
    import torch

    from jmp_ase.data.graphs import GraphSettings
    from jmp_ase.nn.config import named_config
    from jmp_ase.nn.heads import HeadSpec
    from jmp_ase.nn.model import FineTunedModel, ModelConfig
    from jmp_ase.training.data import StructureDataset, collate, read_structures
    from jmp_ase.training.losses import compute_losses

    def step_seconds(model, optimizer, batch, targets) -> float:
        start = time.perf_counter()
        loss, _ = compute_losses(model(batch), targets, {"energy": 1.0, "forces": 100.0},
                                 {"energy": 1.0, "forces": 1.0})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    print(f"{'config':8s} {'set':10s} {'atoms/struct':>12s} {'graphs/s':>9s} {'train structs/s':>16s}")
    for set_name in args.sets:
        rel, cutoff = SETS[set_name]
        structures = read_structures(args.data / rel, f":{args.batch_size * (args.batches + 1)}")
        dataset = StructureDataset(structures, ["energy", "forces"], GraphSettings(cutoff=cutoff, max_neighbors=30))
        start = time.perf_counter()
        samples = [dataset[i] for i in range(len(dataset))]
        graph_rate = len(samples) / (time.perf_counter() - start)
        chunks = [collate(samples[i:i + args.batch_size]) for i in range(0, len(samples), args.batch_size)]
        mean_atoms = statistics.mean(int(b.natoms.float().mean()) for b, _ in chunks)
        for config_name in args.configs:
            torch.manual_seed(0)
            model = FineTunedModel(ModelConfig(named_config(config_name), [HeadSpec("energy")], cutoff=cutoff)).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            step_seconds(model, optimizer, *chunks[0])  # warm-up
            rate = args.batch_size / statistics.median(step_seconds(model, optimizer, *c) for c in chunks[1:])
            print(f"{config_name:8s} {set_name:10s} {mean_atoms:12d} {graph_rate:9.1f} {rate:16.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="the mini-JMP data folder (make_data.py's --out)")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per training-loop case")
    parser.add_argument("--num-workers", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--cases", nargs="+", default=["pretrain", *FINETUNE_TASKS],
                        choices=["pretrain", *FINETUNE_TASKS])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    parser.add_argument("--model-only", action="store_true", help="time the model alone on prebuilt graphs")
    parser.add_argument("--configs", nargs="+", default=["tiny", "jmp-s"], help="--model-only: backbones")
    parser.add_argument("--sets", nargs="+", default=list(SETS), help="--model-only: data sets")
    parser.add_argument("--batch-size", type=int, default=8, help="--model-only: structures per batch")
    parser.add_argument("--batches", type=int, default=4, help="--model-only: timed batches")
    args = parser.parse_args(argv)
    args.data = args.data.resolve()
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder")
    model_only(args) if args.model_only else loops(args)


if __name__ == "__main__":
    main()
