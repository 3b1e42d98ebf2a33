"""Make a small labelled data set with ASE's EMT: an O atom above a Pt(111) slab.

The stand-in for your own DFT data in README.rst's tutorial ("From your DFT data to MD").
Each frame is a 2x2 Pt(111) slab (--layers layers, the bottom one fixed) with one O atom
above the fcc hollow site at a random height between --min-height and --max-height Å
(the range the binding curve of ``check_model.py`` covers), moved sideways by up to
--lateral Å, with the Pt atoms rattled by --rattle Å (Gaussian). EMT's energy (eV) and
forces (eV/Å) are stored as calculator results, so ``ase.io.read(path, ":")`` gives
``get_potential_energy()`` and ``get_forces()`` and ``jmp-train finetune`` reads them as
labels. Writes train.extxyz, val.extxyz and test.extxyz (70 / 15 / 15 % of --frames) into
--out. Fixed seed: the same options give the same files.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.io import write


def slab_with_oxygen(height: float, layers: int = 3, vacuum: float = 6.0, element: str = "Pt",
                     adsorbate: str = "O") -> Atoms:
    """2x2 fcc(111) slab with the adsorbate ``height`` Å above the fcc site; bottom layer fixed."""
    slab = fcc111(element, size=(2, 2, layers), vacuum=vacuum)
    bottom = slab.get_tags() == layers  # ASE numbers the layers 1 (top) .. layers (bottom)
    add_adsorbate(slab, adsorbate, height, position="fcc")
    del slab.info["adsorbate_info"]  # ASE's bookkeeping for add_adsorbate; extxyz cannot store it
    slab.set_constraint(FixAtoms(mask=np.append(bottom, False)))
    return slab


def labelled(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` with EMT's energy and forces stored as calculator results."""
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    return out


def frames(n: int, seed: int, args) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    result = []
    for i in range(n):
        height = rng.uniform(args.min_height, args.max_height)
        atoms = slab_with_oxygen(height, args.layers, element=args.element, adsorbate=args.adsorbate)
        metal = np.arange(len(atoms) - 1)
        atoms.positions[metal] += rng.normal(0.0, args.rattle, (len(metal), 3))
        angle, radius = rng.uniform(0, 2 * np.pi), args.lateral * np.sqrt(rng.uniform())
        atoms.positions[-1, :2] += radius * np.array([np.cos(angle), np.sin(angle)])
        result.append(labelled(atoms))
        if (i + 1) % max(1, n // 5) == 0 or i + 1 == n:
            print(f"  {i + 1:>5}/{n} frames labelled", flush=True)
    return result


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(prog="make_emt_data.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=60, help="frames in all (default 60)")
    p.add_argument("--out", type=Path, default=Path("runs/emt-tutorial/data"),
                   help="output folder (default runs/emt-tutorial/data)")
    p.add_argument("--element", default="Pt", help="fcc metal of the slab (EMT: Al Cu Ag Au Ni Pd Pt; default Pt)")
    p.add_argument("--adsorbate", default="O", help="adsorbed atom (EMT: H C N O; default O)")
    p.add_argument("--layers", type=int, default=3, help="metal layers (default 3)")
    p.add_argument("--min-height", type=float, default=1.2, help="lowest adsorbate height, Å (default 1.2)")
    p.add_argument("--max-height", type=float, default=3.2, help="highest adsorbate height, Å (default 3.2)")
    p.add_argument("--lateral", type=float, default=0.4, help="largest sideways offset from the site, Å (default 0.4)")
    p.add_argument("--rattle", type=float, default=0.05, help="Gaussian rattle of the metal atoms, Å (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = p.parse_args(argv)
    if args.frames < 7:
        p.error("--frames must be at least 7 (train, val and test each need one)")
    if not 0 < args.min_height < args.max_height:
        p.error("need 0 < --min-height < --max-height")

    start = time.perf_counter()
    print(f"labelling {args.frames} frames of {args.adsorbate} on {args.element}(111) with EMT", flush=True)
    data = frames(args.frames, args.seed, args)
    n_val = n_test = max(1, round(0.15 * len(data)))
    splits = {"train": data[:len(data) - n_val - n_test], "val": data[len(data) - n_val - n_test:len(data) - n_test],
              "test": data[len(data) - n_test:]}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        write(args.out / f"{name}.extxyz", part, format="extxyz")
    energies = np.array([a.get_potential_energy() for a in data])
    forces = np.concatenate([a.get_forces() for a in data])
    print(f"wrote {args.out}/train.extxyz, val.extxyz, test.extxyz ({len(splits['train'])} / {len(splits['val'])} / "
          f"{len(splits['test'])} frames of {len(data[0])} atoms; energy {energies.min():.2f} to "
          f"{energies.max():.2f} eV, largest |force component| {np.abs(forces).max():.2f} eV/Å) "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    return args.out


if __name__ == "__main__":
    main()
