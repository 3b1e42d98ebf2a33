"""What the pre-trained model knows before fine-tuning: its molecules-gfn2 head on the MD sets.

    python benchmarks/mini_jmp/zero_shot.py --data ../shared/data/mini-jmp [--model jmp-mini]

For aspirin and the peptide (GFN1-xTB, never seen in pre-training), prints the forces MAE
(meV/Å, per component) of the pre-training head's direct forces and of the forces obtained
as -dE/dx from the same head's energy (what a fine-tuned energy head starts from if it copies
the pre-training head), next to predicting zero forces. Energies are not compared: GFN2 and
GFN1 total energies differ by a large per-element offset.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import ase.io
import numpy as np
import torch

from jmp_ase.data.batch import batch_from_atoms
from jmp_ase.calculators.calculator import JMPCalculator

REPO = Path(__file__).resolve().parents[2]
SETS = {"aspirin": "aspirin-gfn1/test.extxyz", "peptide": "peptide-gfn1/test.extxyz"}


def forces_both_ways(calc: JMPCalculator, structures: list, batch_size: int = 16):
    """(direct, -dE/dx) forces (N_total, 3) in eV/Å from a pre-training head predictor."""
    predictor = calc.predictor
    direct, gradient = [], []
    for start in range(0, len(structures), batch_size):
        batch = batch_from_atoms(structures[start:start + batch_size], predictor.graph_settings,
                                 num_elements=predictor.num_elements)
        batch.positions.requires_grad_(True)
        out = predictor(batch)
        grad = torch.autograd.grad(out["energy"].sum(), batch.positions)[0]
        direct.append(out["forces"].detach().numpy())
        gradient.append(-grad.numpy())
    return np.concatenate(direct), np.concatenate(gradient)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mini-jmp")
    parser.add_argument("--model", default="jmp-mini")
    parser.add_argument("--head", default="molecules-gfn2")
    parser.add_argument("--count", type=int, default=200, help="first structures of each test set")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"Error: --data {args.data} is not a folder (the mini-JMP corpus; benchmarks/README.md says "
                         "where it comes from)")
    calc = JMPCalculator.from_jmp_checkpoint(args.model, head=args.head)
    print(f"{args.model}, head {args.head}: forces MAE on the first {args.count} test structures (meV/Å)")
    print(f"{'set':10s} {'zero forces':>12s} {'direct head':>12s} {'-dE/dx of head':>15s}")
    for name, rel in SETS.items():
        structures = ase.io.read(args.data / rel, f":{args.count}")
        reference = np.concatenate([a.calc.results["forces"] for a in structures])
        direct, gradient = forces_both_ways(calc, structures)
        row = [np.abs(reference).mean(), np.abs(direct - reference).mean(), np.abs(gradient - reference).mean()]
        print(f"{name:10s} {row[0] * 1000:12.0f} {row[1] * 1000:12.0f} {row[2] * 1000:15.0f}")


if __name__ == "__main__":
    main()
