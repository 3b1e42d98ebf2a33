"""Relax an adsorbate (CO or O) on an fcc(111) metal slab with BFGS.

The slab is built with ``ase.build.fcc111`` (ideal layers) and the adsorbate placed with
``add_adsorbate``; the bottom --fixed-layers layers are held by ``FixAtoms``. Tags are left
as ASE writes them (layer numbers): the shipped models ignore tags (``jmp-train info``
shows a model's tag policy). The summary gives the adsorbate's distance to the surface and,
for CO, the C-O bond length, so a dissociated molecule does not pass unnoticed. The plot
shows the largest force (log scale) and the energy at every BFGS step.
"""
from __future__ import annotations

import _common as common
import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.build import molecule as ase_molecule
from ase.constraints import FixAtoms
from ase.optimize import BFGS

NAME = "relax_adsorbate"
ADSORBATES = {"CO": ("CO", 1, 1.85), "O": ("O", 0, 1.2)}  # molecule, index of the binding atom, height (Å)
# A bond of the adsorbate longer than this factor x its starting length counts as broken.
BROKEN_BOND = 1.3


def build(args):
    """Slab + adsorbate, the bottom layers fixed."""
    slab = fcc111(args.element, size=(args.size, args.size, args.layers), vacuum=args.vacuum)
    layer = slab.get_tags()  # ASE numbers the layers 1 (top) .. layers (bottom)
    name, index, height = ADSORBATES[args.adsorbate]
    adsorbate = ase_molecule(name) if len(name) > 1 else Atoms(name)
    add_adsorbate(slab, adsorbate, height, position=args.site, mol_index=index)
    slab.set_constraint(FixAtoms(indices=np.flatnonzero(layer > args.layers - args.fixed_layers)))
    return slab, len(layer)


def adsorbate_bond(atoms, n_slab: int) -> float | None:
    """Length of the adsorbate's first bond (C-O of CO, Å), None for a single atom."""
    return float(atoms.get_distance(n_slab, n_slab + 1, mic=True)) if len(atoms) > n_slab + 1 else None


def main(argv=None) -> float:
    """Run the example; returns the final energy (eV)."""
    p = common.parser(NAME, __doc__, common.MATERIALS_MODEL, 200, "maximum BFGS steps")
    p.add_argument("--element", default="Pt", help="fcc metal of the slab")
    p.add_argument("--adsorbate", choices=sorted(ADSORBATES), default="CO")
    p.add_argument("--site", default="ontop", help="ontop, bridge, fcc or hcp")
    p.add_argument("--size", type=int, default=2, help="surface cells along each in-plane direction")
    p.add_argument("--layers", type=int, default=4, help="metal layers")
    p.add_argument("--fixed-layers", type=int, default=2, help="bottom layers held fixed")
    p.add_argument("--vacuum", type=float, default=8.0, help="vacuum on each side of the slab (Å)")
    p.add_argument("--fmax", type=float, default=0.05, help="convergence: largest force (eV/Å)")
    args = p.parse_args(argv)

    with common.Run(NAME, args) as run:
        atoms, n_slab = build(args)
        start_bond = adsorbate_bond(atoms, n_slab)
        atoms.calc = run.calculator(atoms)
        opt = BFGS(atoms, logfile=run.logfile)
        rec = common.Recorder(energy=atoms.get_potential_energy, fmax=lambda: common.fmax(atoms.get_forces()))
        common.attach_optimizer_outputs(opt, atoms, run, rec)
        converged = opt.run(fmax=args.fmax, steps=args.steps)

        binding = n_slab + ADSORBATES[args.adsorbate][1]
        nearest = np.min(atoms.get_distances(binding, range(n_slab), mic=True))
        bond = adsorbate_bond(atoms, n_slab)
        bond_text = ""
        if bond is not None:
            pair = "-".join(atoms[n_slab:n_slab + 2].get_chemical_symbols())
            state = "BROKEN" if bond > BROKEN_BOND * start_bond else "intact"
            bond_text = f", {pair} bond {start_bond:.3f} -> {bond:.3f} A ({state})"
        run.log(f"# {'converged' if converged else 'NOT converged'} after {opt.get_number_of_steps()} steps: "
                f"E = {rec['energy'][-1]:.4f} eV, fmax {rec['fmax'][0]:.3g} -> {rec['fmax'][-1]:.4f} eV/A, "
                f"{atoms[binding].symbol}-{args.element} distance {nearest:.3f} A{bond_text}")
        steps = np.arange(len(rec))
        common.plot(run.png_path, steps, "BFGS step", [
            common.Panel("max force (eV/Å)", {"fmax": rec["fmax"]}, log=True, hline=args.fmax),
            common.Panel("energy (eV)", {"energy": rec["energy"]}),
        ], title=f"{args.adsorbate} on {args.element}(111), {args.site} site")
        run.finish(opt.get_number_of_steps())
    return float(rec["energy"][-1])


if __name__ == "__main__":
    main()
