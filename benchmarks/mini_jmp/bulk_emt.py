"""Bulk fcc metals and alloys labelled by EMT with energy, forces and stress: the data of
the shipped materials model ``jmp-mini-bulk``.

    python benchmarks/mini_jmp/bulk_emt.py --out runs/bulk-emt          # ~1 min, 800 structures

Each structure is an fcc cell of one or two of EMT's metals (Cu Ag Au Ni Pd Pt Al: the metals
of jmp-mini's catalysis pre-training set, there only as slabs), built by ``ase.build.bulk``
and repeated to 1-32 atoms (primitive 1x1x1 to 2x2x2, conventional 1x1x1 to 2x2x2), with a
random element occupation for alloys and the lattice constant of the composition's mean
(Vegard's law), then deformed and rattled:

* strain: isotropic part uniform in +-``--strain`` (default 6 %, the range the NPT and cell
  relaxation examples start in), shear components Gaussian with sigma ``--shear``;
* rattle: Gaussian displacements with sigma uniform in [0, ``--rattle``] Å; a quarter of the
  structures are left unrattled (perfect crystals, where forces vanish by symmetry);
* a vacancy in 10 % of the cells with 8 or more atoms.

Labels (ASE units, stored as calculator results): energy (eV), forces (eV/Å) and stress
(eV/Å³, Voigt order, ASE's sign: positive under tension). Writes train.extxyz, val.extxyz and
test.extxyz into ``--out``/bulk-emt (70 / 10 / 20 % of ``--structures``). Fixed seed: the same
options give the same files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers, reference_states
from ase.io import write

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
CELLS = (("primitive", (1, 1, 1)), ("primitive", (2, 1, 1)), ("primitive", (2, 2, 2)),
         ("cubic", (1, 1, 1)), ("cubic", (2, 1, 1)), ("cubic", (2, 2, 1)), ("cubic", (2, 2, 2)))
SPLITS = (("train", 0.7), ("val", 0.1), ("test", 0.2))


def lattice_constant(symbol: str) -> float:
    return float(reference_states[atomic_numbers[symbol]]["a"])


def random_structure(rng: np.random.Generator, strain: float, shear: float, rattle: float) -> Atoms:
    """One deformed fcc cell of one metal or a random binary alloy."""
    kind, repeat = CELLS[rng.integers(len(CELLS))]
    pair = rng.choice(METALS, size=2, replace=False)
    alloy = rng.random() < 0.5
    atoms = bulk(str(pair[0]), "fcc", a=1.0, cubic=kind == "cubic").repeat(repeat)
    symbols = [str(pair[0])] * len(atoms)
    if alloy and len(atoms) > 1:
        second = rng.random(len(atoms)) < rng.uniform(0.2, 0.8)
        symbols = [str(pair[1]) if s else str(pair[0]) for s in second]
    atoms.set_chemical_symbols(symbols)
    a = float(np.mean([lattice_constant(s) for s in symbols]))
    deformation = np.eye(3) * (1.0 + rng.uniform(-strain, strain))
    off = rng.normal(0.0, shear, size=3)
    deformation += np.array([[0, off[0], off[1]], [off[0], 0, off[2]], [off[1], off[2], 0]])
    atoms.set_cell(atoms.cell.array * a @ deformation, scale_atoms=True)
    if len(atoms) >= 8 and rng.random() < 0.1:
        del atoms[int(rng.integers(len(atoms)))]
    if rng.random() >= 0.25:
        atoms.positions += rng.normal(0.0, rng.uniform(0.0, rattle), size=atoms.positions.shape)
    return atoms


def labelled(atoms: Atoms) -> Atoms:
    """``atoms`` with EMT's energy, forces and stress as stored calculator results."""
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
               "stress": atoms.get_stress(voigt=True)}
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def make(out: Path, structures: int = 800, seed: int = 0, strain: float = 0.06, shear: float = 0.02,
         rattle: float = 0.1) -> dict[str, Path]:
    """Write the three splits; returns their paths."""
    rng = np.random.default_rng(seed)
    frames = [labelled(random_structure(rng, strain, shear, rattle)) for _ in range(structures)]
    folder = out / "bulk-emt"
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for k, (split, share) in enumerate(SPLITS):
        stop = structures if k == len(SPLITS) - 1 else start + int(round(share * structures))
        paths[split] = folder / f"{split}.extxyz"
        write(paths[split], frames[start:stop], format="extxyz")
        start = stop
    (folder / "generation.json").write_text(json.dumps(
        {"script": "benchmarks/mini_jmp/bulk_emt.py", "structures": structures, "seed": seed, "strain": strain,
         "shear": shear, "rattle": rattle, "metals": METALS, "labels": "EMT (ase.calculators.emt) E, F, stress"},
        indent=1))
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder; the files go to OUT/bulk-emt/")
    p.add_argument("--structures", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strain", type=float, default=0.06, help="largest isotropic strain (fraction)")
    p.add_argument("--shear", type=float, default=0.02, help="sigma of the shear strain components")
    p.add_argument("--rattle", type=float, default=0.1, help="largest rattle sigma (Å)")
    args = p.parse_args(argv)
    if args.structures < 10:
        p.error("--structures must be at least 10 (three splits)")
    paths = make(args.out, args.structures, args.seed, args.strain, args.shear, args.rattle)
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
