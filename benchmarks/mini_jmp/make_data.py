"""Regenerate a small version of the mini-JMP corpus from engines on PyPI.

    python benchmarks/mini_jmp/make_data.py --n 300 --out runs/mini-jmp-small

catalysis-emt (ASE's EMT, always made): relaxation trajectories of fcc(111) and fcc(100)
slabs (2x2x4 or 3x3x3) of Cu Ag Au Ni Pd Pt Al, a third of them binary alloys (a second
metal on random sites, Vegard's-law lattice constant), with 0-2 adsorbates from H O N C OH
CO NH CH2 N2 on random sites, 8 Å of vacuum on each side. Every atom but the fixed bottom
layer is rattled (Gaussian, --rattle Å), then BFGS relaxes the slab with EMT to 0.05 eV/Å
or --max-steps steps, and every step is a frame. Same layout and conventions as the corpus:
``catalysis-emt/{train,val,test}.extxyz`` split by relaxation (about 89 / 5 / 6 % of the
frames; no relaxation spans two splits), EMT energy (eV) and forces (eV/Å, the fixed atoms'
too) as calculator results, OC20 tags (0 sub-surface, 1 surface, 2 adsorbate), the bottom
layer fixed (FixAtoms, written as ``move_mask``), ``pbc`` T T F, ``info``: ``id``
(``cat-<relaxation>-<step>``), ``config_type`` (relaxation) and ``parent`` (the relaxation),
and a ``generation.json``. --n frames in all (the last relaxation is cut to fit), fixed
--seed: the same options give the same files. It is a small stand-in with the same recipe,
not the corpus's exact structures.

molecules-gfn2 and reactions-gfn2 (made only when ``import tblite`` works: GFN2-xTB comes
from ``tblite``, ``pip install tblite``, not a jmp-ase dependency; without it the script says
so and makes catalysis-emt alone): the corpus drew its 131 molecules from RDKit conformers;
here the closed-shell molecules of ASE's G2 collection with C H N O and at most 9 heavy atoms
(rMD17's benzene and ethanol left out) at G2's geometries stand in. molecules-gfn2: Gaussian
displacements of sigma 0.01-0.07 Å; reactions-gfn2: sigma 0.15-0.35 Å plus one bond
stretched 1.3-2.2x, frames with a force above 40 eV/Å dropped. GFN2-xTB energy and forces
as calculator results, ``pbc`` F F F without a cell, ``info``: ``id``
(``molecules-<molecule>-0-<frame>``), ``name`` (G2 name; the corpus has ``smiles``) and
``config_type`` (``molecules-sigma0.03``); split by molecule. --n-xtb frames per set.
aspirin-gfn1, peptide-gfn1 and gap-gfn2 (RDKit, normal modes) and bulk-modulus-chgnet (CHGNet)
are not made.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
ADSORBATES = ("H", "O", "N", "C", "OH", "CO", "NH", "CH2", "N2")
SITES = {"111": ("ontop", "bridge", "fcc", "hcp"), "100": ("ontop", "bridge", "hollow")}
SPLITS = (("train", 0.89), ("val", 0.05), ("test", 0.06))


def lattice_constant(symbol: str) -> float:
    from ase.data import atomic_numbers, reference_states

    return float(reference_states[atomic_numbers[symbol]]["a"])


def adsorbate(name: str):
    """The adsorbate as Atoms, binding atom first (index 0), bonds along +z."""
    from ase import Atoms

    bond = {"OH": 0.97, "CO": 1.15, "NH": 1.03, "N2": 1.12}
    if len(name) == 1:
        return Atoms(name)
    if name == "CH2":
        return Atoms("CH2", positions=[(0, 0, 0), (0.94, 0, 0.63), (-0.94, 0, 0.63)])
    return Atoms(name, positions=[(0, 0, 0), (0, 0, bond[name])])


def build_slab(rng: np.random.Generator):
    """A random slab with OC20 tags, the bottom layer fixed, and 0-2 adsorbates."""
    from ase.build import add_adsorbate, fcc100, fcc111
    from ase.constraints import FixAtoms

    facet = str(rng.choice(["111", "100"]))
    size = (2, 2, 4) if rng.uniform() < 0.5 else (3, 3, 3)
    host = str(rng.choice(METALS))
    guest = str(rng.choice([m for m in METALS if m != host])) if rng.uniform() < 1 / 3 else None
    fraction = rng.uniform(0.2, 0.4) if guest else 0.0
    a = (1 - fraction) * lattice_constant(host) + fraction * (lattice_constant(guest) if guest else 0.0)
    slab = (fcc111 if facet == "111" else fcc100)(host, size=size, a=a, vacuum=8.0)
    layer = slab.get_tags()  # ASE: 1 (top) .. size[2] (bottom)
    if guest:
        symbols = np.array(slab.get_chemical_symbols())
        symbols[rng.uniform(size=len(slab)) < fraction] = guest
        slab.set_chemical_symbols(symbols.tolist())
    n_metal = len(slab)
    names = rng.choice(ADSORBATES, size=int(rng.integers(0, 3)), replace=False)
    for offset, name in zip(((0, 0), (1, 1)), names):  # a second adsorbate one surface cell along the diagonal
        add_adsorbate(slab, adsorbate(str(name)), float(rng.uniform(1.4, 2.0)),
                      position=str(rng.choice(SITES[facet])), offset=offset)
    slab.info.pop("adsorbate_info", None)
    tags = np.full(len(slab), 2)
    tags[:n_metal] = np.where(layer == 1, 1, 0)
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(indices=np.flatnonzero(layer == size[2])))
    return slab, f"{host}{'-' + guest if guest else ''}({facet})"


def relaxation(slab, rng: np.random.Generator, rattle: float, max_steps: int, fmax: float) -> list:
    """Frames (copies with EMT energy and unconstrained forces) of a BFGS relaxation from a rattled start."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.optimize import BFGS

    free = np.ones(len(slab), bool)
    free[slab.constraints[0].index] = False
    slab.positions[free] += rng.normal(0.0, rattle, (int(free.sum()), 3))
    slab.calc = EMT()
    frames = []

    def record():
        frame = slab.copy()
        frame.calc = SinglePointCalculator(frame, energy=slab.get_potential_energy(),
                                           forces=slab.get_forces(apply_constraint=False))
        frames.append(frame)

    opt = BFGS(slab, logfile=None)
    opt.attach(record)
    opt.run(fmax=fmax, steps=max_steps)
    return frames


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(prog="make_data.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="catalysis-emt frames in all (default 300; the corpus has 6,000)")
    p.add_argument("--out", type=Path, default=Path("runs/mini-jmp-small"),
                   help="output folder; catalysis-emt/ is written inside (default runs/mini-jmp-small)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0, as the corpus)")
    p.add_argument("--rattle", type=float, default=0.1, help="Gaussian rattle of the free atoms, Å (default 0.1)")
    p.add_argument("--max-steps", type=int, default=35, help="BFGS steps per relaxation at most (default 35)")
    p.add_argument("--fmax", type=float, default=0.05, help="BFGS convergence, eV/Å (default 0.05)")
    p.add_argument("--n-xtb", type=int, default=100,
                   help="frames of molecules-gfn2 and of reactions-gfn2, made only with tblite (default 100; 0: none)")
    args = p.parse_args(argv)
    if args.n < 3:
        p.error("--n must be at least 3 (train, val and test each need a frame)")
    from ase.io import write

    try:
        import tblite.ase  # noqa: F401
        xtb = args.n_xtb > 0
        print("tblite found: making catalysis-emt, then molecules-gfn2 and reactions-gfn2" if xtb else
              "--n-xtb 0: making catalysis-emt only")
    except ImportError:
        xtb = False
        print("tblite is not installed (pip install tblite): the xTB sets are not made; making catalysis-emt only")

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    relaxations = []
    total = 0
    print(f"catalysis-emt: EMT relaxations until {args.n} frames", flush=True)
    while total < args.n:
        slab, name = build_slab(rng)
        cap = min(args.n - total, max(1, args.n // 3))  # at least 3 relaxations: one each for train, val, test
        frames = relaxation(slab, rng, args.rattle, args.max_steps, args.fmax)[:cap]
        parent = len(relaxations)
        for step, frame in enumerate(frames):
            frame.info.update(id=f"cat-{parent}-{step}", config_type="relaxation", parent=parent)
        relaxations.append(frames)
        total += len(frames)
        print(f"  relaxation {parent:>4}: {name:<14} {len(frames[0]):>3} atoms, {len(frames):>3} frames "
              f"({total}/{args.n}, {time.perf_counter() - start:.0f} s)", flush=True)

    # split by relaxation: val and test get whole relaxations, at least one each
    order = rng.permutation(len(relaxations))
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for index in order:
        counts = {k: sum(len(r) for r in v) for k, v in splits.items()}
        want = {k: share * total - counts[k] for k, share in SPLITS}
        empty = [k for k in ("val", "test") if not splits[k]]
        target = empty[0] if empty else max(want, key=want.get)
        splits[target].append(relaxations[index])
    folder = args.out / "catalysis-emt"
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, parts in splits.items():
        frames = [f for r in sorted(parts, key=lambda r: r[0].info["parent"]) for f in r]
        counts[name] = len(frames)
        if frames:
            write(folder / f"{name}.extxyz", frames, format="extxyz")
    (folder / "generation.json").write_text(json.dumps({
        "labeller": "ase EMT", "counts": counts, "seed": args.seed, "made_by": "benchmarks/mini_jmp/make_data.py",
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }, indent=1))
    print(f"wrote {folder}/train.extxyz, val.extxyz, test.extxyz ({counts['train']} / {counts['val']} / "
          f"{counts['test']} frames from {len(relaxations)} relaxations) and generation.json "
          f"in {time.perf_counter() - start:.0f} s", flush=True)
    if xtb:
        for kind in ("molecules", "reactions"):
            xtb_set(kind, args.n_xtb, args.out, args.seed)
    return folder


def g2_molecules() -> list[str]:
    """Closed-shell C/H/N/O molecules of ASE's G2 set with 2-9 heavy atoms, rMD17's left out."""
    from ase.build import molecule
    from ase.collections import g2

    names = []
    for name in g2.names:
        atoms = molecule(name)
        z = atoms.numbers
        if (set(atoms.get_chemical_symbols()) <= {"C", "H", "N", "O"} and 2 <= (z > 1).sum() <= 9
                and z.sum() % 2 == 0 and name not in ("C6H6", "CH3CH2OH") and len(atoms) > 2):
            names.append(name)
    return names


def stretch_bond(atoms, rng: np.random.Generator) -> None:
    """Move one end of a random bonded pair (< 1.7 Å) so the bond is 1.3-2.2x longer."""
    d = atoms.get_all_distances()
    i, j = np.argwhere(np.triu((d > 0) & (d < 1.7)))[rng.integers(0, int(np.triu((d > 0) & (d < 1.7)).sum()))]
    vector = atoms.positions[j] - atoms.positions[i]
    atoms.positions[j] += vector * (rng.uniform(1.3, 2.2) - 1.0)


def xtb_set(kind: str, n: int, out: Path, seed: int) -> None:
    """molecules-gfn2 or reactions-gfn2 with GFN2-xTB labels (tblite), split by molecule."""
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write
    from tblite.ase import TBLite

    start = time.perf_counter()
    rng = np.random.default_rng(seed + (1 if kind == "molecules" else 2))
    names = list(rng.permutation(g2_molecules()))
    sigma = (0.01, 0.07) if kind == "molecules" else (0.15, 0.35)
    per_molecule = max(1, n // len(names) + 1)
    print(f"{kind}-gfn2: GFN2-xTB on {len(names)} G2 molecules until {n} frames", flush=True)
    by_molecule, total, dropped = [], 0, 0
    for index, name in enumerate(names):
        frames = []
        for k in range(per_molecule):
            if total >= n:
                break
            atoms = molecule(name)
            s = round(float(rng.uniform(*sigma)), 2)
            atoms.positions += rng.normal(0.0, s, atoms.positions.shape)
            if kind == "reactions":
                stretch_bond(atoms, rng)
            atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
            try:
                energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            except Exception:  # SCF not converged far from equilibrium: leave the frame out
                dropped += 1
                continue
            if kind == "reactions" and np.abs(forces).max() > 40.0:
                dropped += 1
                continue
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
            frame.info.update(id=f"{kind}-{index}-0-{k}", name=name, config_type=f"{kind}-sigma{s:.2f}")
            frames.append(frame)
            total += 1
        if frames:
            by_molecule.append(frames)
        if total >= n:
            break
    order = list(range(len(by_molecule)))
    n_small = max(1, round(0.055 * len(order))) if len(order) >= 3 else 0
    parts = {"val": order[:n_small], "test": order[n_small:2 * n_small], "train": order[2 * n_small:]}
    folder = out / f"{kind}-gfn2"
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, indices in parts.items():
        frames = [f for i in indices for f in by_molecule[i]]
        counts[split] = len(frames)
        if frames:
            write(folder / f"{split}.extxyz", frames, format="extxyz")
    (folder / "generation.json").write_text(json.dumps({
        "labeller": "tblite GFN2-xTB", "counts": counts, "seed": seed, "molecules": "ASE G2 (see make_data.py)",
        "made_by": "benchmarks/mini_jmp/make_data.py"}, indent=1))
    print(f"wrote {folder}/train.extxyz, val.extxyz, test.extxyz ({counts['train']} / {counts['val']} / "
          f"{counts['test']} frames; {dropped} dropped) in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
