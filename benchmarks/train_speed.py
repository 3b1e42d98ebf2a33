"""Training throughput: structures per second for forward + backward (energy + conservative
forces, the fine-tuning objective) on mini-JMP data.

    python benchmarks/train_speed.py --data ../shared/data/mini-jmp --configs tiny jmp-s

Graphs are built once beforehand (as a cached dataset does after the first epoch), so the
numbers measure the model; the graph-building rate is printed separately.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from jmp_ase.nn.config import named_config
from jmp_ase.data.graphs import GraphSettings
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.nn.model import FineTunedModel, ModelConfig
from jmp_ase.training.data import StructureDataset, collate, read_structures
from jmp_ase.training.finetune import compute_losses

SETS = {"molecules": ("molecules-gfn2/train.extxyz", 12.0), "catalysis": ("catalysis-emt/train.extxyz", 12.0)}


def batches(path: Path, cutoff: float, batch_size: int, count: int):
    structures = read_structures(path, f":{batch_size * count}")
    dataset = StructureDataset(structures, ["energy", "forces"], GraphSettings(cutoff=cutoff, max_neighbors=30))
    start = time.perf_counter()
    samples = [dataset[i] for i in range(len(dataset))]
    graph_rate = len(samples) / (time.perf_counter() - start)
    chunks = [collate(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
    return chunks, graph_rate


def step_seconds(model, optimizer, batch, targets) -> float:
    start = time.perf_counter()
    preds = model(batch)
    loss, _ = compute_losses(preds, targets, {"energy": 1.0, "forces": 100.0}, {"energy": 1.0, "forces": 1.0})
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mini-jmp", type=Path)
    parser.add_argument("--configs", nargs="+", default=["tiny", "jmp-s"])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'config':8s} {'set':10s} {'atoms/struct':>12s} {'graphs/s':>9s} {'train structs/s':>16s}")
    for set_name in args.sets:
        rel, cutoff = SETS[set_name]
        chunks, graph_rate = batches(args.data / rel, cutoff, args.batch_size, args.batches + 1)
        mean_atoms = statistics.mean(int(b.natoms.float().mean()) for b, _ in chunks)
        for config_name in args.configs:
            torch.manual_seed(0)
            model = FineTunedModel(ModelConfig(named_config(config_name), [HeadSpec("energy")], cutoff=cutoff)).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            step_seconds(model, optimizer, *chunks[0])  # warm-up
            times = [step_seconds(model, optimizer, *c) for c in chunks[1:]]
            rate = args.batch_size / statistics.median(times)
            print(f"{config_name:8s} {set_name:10s} {mean_atoms:12d} {graph_rate:9.1f} {rate:16.2f}")


if __name__ == "__main__":
    main()
