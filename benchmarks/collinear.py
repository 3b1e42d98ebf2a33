"""Collinear atoms: JMP's dihedral against the smooth quadruplet basis, numbers for the README.

1. Forces at exact symmetry and after tiny rattles (float64) of perfect fcc Cu, an ideal
   Cu(111) slab and benzene, for a model with each basis: JMP's function has forces that
   grow as 1/(distance from collinearity) and energies that jump; the smooth one does not.
2. What switching a pre-trained model to the smooth basis *without* fine-tuning does: energy
   differences on the JMP reference fixture's structures (jmp-tiny-pretrain.ckpt, both heads)
   and mini-JMP test errors of jmp-mini's three heads (energy; direct and conservative forces).

    python benchmarks/collinear.py --data ../shared/data/mini-jmp --structures 40
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase.build import bulk, fcc111, molecule

from jmp_ase import JMPCalculator
from jmp_ase.calculators.evaluation import labelled_errors

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "tests" / "data" / "jmp-reference"
HEADS = {"catalysis-emt": "catalysis-emt", "molecules-gfn2": "molecules-gfn2", "reactions-gfn2": "reactions-gfn2"}


def evaluate(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), np.abs(atoms.get_forces()).max()


def rattle_table(model: str) -> None:
    systems = {
        "Cu fcc (32)": (bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2), "catalysis-emt"),
        "Cu(111) slab (36)": (fcc111("Cu", (3, 3, 4), vacuum=8.0), "catalysis-emt"),
        "benzene": (molecule("C6H6"), "molecules-gfn2"),
    }
    print(f"\n## Forces near symmetry ({model} heads, conservative, float64; max |F| eV/Å, "
          "energy change from the exact structure meV)\n")
    print("| system | basis | exact | 1e-7 Å | 1e-6 Å | 1e-4 Å | 1e-2 Å |")
    print("|---|---|---|---|---|---|---|")
    for name, (atoms, head) in systems.items():
        for smooth in (False, True):
            calc = JMPCalculator.from_jmp_checkpoint(model, head=head, forces="conservative", tags="ignore",
                                                     smooth_dihedral=smooth, dtype="float64")
            e0, f0 = evaluate(calc, atoms)
            cells = [f"{f0:.3g}"]
            for amplitude in (1e-7, 1e-6, 1e-4, 1e-2):
                rattled = atoms.copy()
                rattled.rattle(amplitude, seed=1)
                e, f = evaluate(calc, rattled)
                cells.append(f"{f:.3g} ({1000 * (e - e0):+.2g})")
            print(f"| {name} | {'smooth' if smooth else 'JMP'} | " + " | ".join(cells) + " |")


def fixture_table() -> None:
    structures = ase.io.read(FIXTURE / "structures.extxyz", ":")
    print("\n## Pre-trained weights under the smooth basis, no fine-tuning: JMP reference fixture "
          "(jmp-tiny-pretrain.ckpt, normalised units)\n")
    print("| structure | head | energy, JMP basis | energy, smooth basis | difference |")
    print("|---|---|---|---|---|")
    for atoms in structures:
        for head in (0, 1):
            e = []
            for smooth in (False, True):
                calc = JMPCalculator.from_jmp_checkpoint(
                    FIXTURE / "jmp-tiny-pretrain.ckpt", head=head, cutoff=atoms.info["cutoff"],
                    max_neighbors=atoms.info["max_neighbors"], tags="oc20", smooth_dihedral=smooth, dtype="float64")
                e.append(evaluate(calc, atoms)[0])
            print(f"| {atoms.info['name']} | {head} | {e[0]:.4f} | {e[1]:.4f} | {e[1] - e[0]:+.4f} |")


def mini_jmp_table(model: str, data: Path, count: int) -> None:
    print(f"\n## {model} heads on mini-JMP test sets (first {count} structures), no fine-tuning "
          "(MAE: energy meV per structure, forces meV/Å per component)\n")
    print("| head | energy, JMP | energy, smooth | direct forces | -dE/dr, JMP | -dE/dr, smooth |")
    print("|---|---|---|---|---|---|")
    for head in HEADS:
        structures = ase.io.read(data / head / "test.extxyz", f":{count}")
        row = {}
        for label, forces, smooth in (("direct", "direct", False), ("jmp", "conservative", False),
                                      ("smooth", "conservative", True)):
            calc = JMPCalculator.from_jmp_checkpoint(model, head=head, forces=forces, smooth_dihedral=smooth)
            row[label] = labelled_errors(calc, structures)
        print(f"| {head} | {1000 * row['jmp']['energy_mae']:.0f} | {1000 * row['smooth']['energy_mae']:.0f} | "
              f"{1000 * row['direct']['forces_mae']:.0f} | {1000 * row['jmp']['forces_mae']:.0f} | "
              f"{1000 * row['smooth']['forces_mae']:.0f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="jmp-mini", help="a jmp-ase pre-trained checkpoint (default jmp-mini)")
    parser.add_argument("--data", type=Path, default=None, help="the mini-JMP corpus (skipped when not given)")
    parser.add_argument("--structures", type=int, default=40, help="test structures per mini-JMP set")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    rattle_table(args.model)
    fixture_table()
    if args.data is not None:
        mini_jmp_table(args.model, args.data, args.structures)


if __name__ == "__main__":
    main()
