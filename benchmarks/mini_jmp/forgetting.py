"""How much of pre-training a fine-tuned backbone keeps: the pre-training loss (paper eq. 1,
normalised by the parent's statistics) on batches of the corpus's pre-training sets.

    python benchmarks/mini_jmp/forgetting.py --data ../shared/data/mini-jmp RUN_DIR [RUN_DIR ...]

Rows: the parent itself (its backbone and heads), then each fine-tuning run's saved model
(``model.ckpt``) with the pre-training heads of its ``last.ckpt`` where the run trained them
(``--replay``), else the parent's heads unchanged. Every row sees the same batches.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from jmp_ase.io.model_file import load_model, resolve_model_path
from jmp_ase.io.pretrained import load_jmp_pretrained
from jmp_ase.training.replay import Replay

REPO = Path(__file__).resolve().parents[2]
SETS = ("catalysis-emt", "molecules-gfn2", "reactions-gfn2")


def mean_loss(parent: Path, data: Path, backbone, heads: dict | None, batches: int, batch_size: int) -> float:
    replay = Replay(parent, {name: str(data / name / "train.extxyz") for name in SETS}, (1, 2), batch_size, seed=123)
    if heads:
        replay.heads.load_state_dict(heads)
    with torch.no_grad():
        return sum(float(replay.loss(backbone.eval())) for _ in range(batches)) / batches


def trained_heads(run: Path) -> dict | None:
    """The replay heads of a run's last.ckpt (None: the run had no replay)."""
    state = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    heads = {k[len("replay.heads."):]: v for k, v in state.items() if k.startswith("replay.heads.")}
    return heads or None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="fine-tuning output folders (model.ckpt, last.ckpt)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mini-jmp")
    parser.add_argument("--parent", default="jmp-mini")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    if not (args.data / "catalysis-emt" / "train.extxyz").is_file():
        raise SystemExit(f"Error: --data {args.data} is not the mini-JMP corpus (no catalysis-emt/train.extxyz)")
    torch.set_num_threads(1)
    parent_path = resolve_model_path(args.parent)
    parent, _ = load_jmp_pretrained(parent_path)
    print(f"# pre-training loss on {args.batches} batches of {args.batch_size} ({platform.machine()}, "
          f"{platform.processor() or 'cpu'}, torch {torch.__version__}, 1 thread)")
    print(f"{'model':60s} {'heads':16s} loss")
    print(f"{args.parent:60s} {'its own':16s} "
          f"{mean_loss(parent_path, args.data, parent, None, args.batches, args.batch_size):.3f}")
    for run in args.runs:
        heads = trained_heads(run)
        loss = mean_loss(parent_path, args.data, load_model(run / "model.ckpt"), heads, args.batches, args.batch_size)
        print(f"{str(run):60s} {'replayed' if heads else 'the parent’s':16s} {loss:.3f}")


if __name__ == "__main__":
    main()
