"""Relax a pymatgen Structure with a JMP model, through ASE and back.

Builds L1_2 Cu3Au as a pymatgen ``Structure`` (lattice constant scaled by --strain, sites
perturbed by --perturb Å), converts it with ``pymatgen.io.ase.AseAtomsAdaptor``, relaxes
it with FIRE or BFGS (positions only, or with --cell positions and cell through
``FrechetCellFilter``), converts the result back to a ``Structure`` and prints it with its
space group. The plot shows energy and largest force per step.
"""
from __future__ import annotations

import _common as common
import numpy as np
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

NAME = "pymatgen_relax"
OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS}


def cu3au(lattice_constant: float) -> Structure:
    """The L1_2 ordered Cu3Au alloy (space group Pm-3m), 4 atoms per cubic cell."""
    return Structure(Lattice.cubic(lattice_constant), ["Au", "Cu", "Cu", "Cu"],
                     [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def main(argv=None) -> Structure:
    """Run the example; returns the relaxed pymatgen Structure."""
    p = common.parser(NAME, __doc__, common.BULK_MODEL, 200, "maximum optimizer steps")
    p.add_argument("--lattice", type=float, default=3.75, help="Cu3Au lattice constant before straining (Å)")
    p.add_argument("--strain", type=float, default=1.02, help="lattice constant scale of the start")
    p.add_argument("--supercell", type=int, default=1, help="cubic cells per direction")
    p.add_argument("--perturb", type=float, default=0.1, help="random displacement of every site (Å)")
    p.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="FIRE")
    p.add_argument("--fmax", type=float, default=0.02, help="convergence: largest force (eV/Å)")
    args = p.parse_args(argv)

    with common.Run(NAME, args) as run:
        structure = cu3au(args.lattice * args.strain)
        structure.make_supercell(args.supercell)
        structure.perturb(args.perturb, min_distance=args.perturb / 2, seed=args.seed)
        run.log(f"# start: {structure.composition.reduced_formula}, {len(structure)} sites, "
                f"space group {SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_symbol()} (symprec 0.01)")

        atoms = AseAtomsAdaptor.get_atoms(structure, msonable=False)
        atoms.calc = run.calculator(atoms)
        target = FrechetCellFilter(atoms) if args.cell else atoms
        opt = OPTIMIZERS[args.optimizer](target, logfile=run.logfile)
        rec = common.Recorder(energy=atoms.get_potential_energy, fmax=lambda: common.fmax(target.get_forces()))
        common.attach_optimizer_outputs(opt, atoms, run, rec)
        converged = opt.run(fmax=args.fmax, steps=args.steps)

        atoms.calc = None  # the Structure gets geometry only
        relaxed = AseAtomsAdaptor.get_structure(atoms)
        symbol = SpacegroupAnalyzer(relaxed, symprec=0.05).get_space_group_symbol()
        run.log(f"# {'converged' if converged else 'NOT converged'} after {opt.get_number_of_steps()} steps: "
                f"E = {rec['energy'][-1]:.4f} eV, fmax = {rec['fmax'][-1]:.4f} eV/A, space group {symbol} "
                "(symprec 0.05)")
        run.log(str(relaxed))
        steps = np.arange(len(rec))
        common.plot(run.png_path, steps, f"{args.optimizer} step", [
            common.Panel("energy (eV)", {"energy": rec["energy"]}),
            common.Panel("max force (eV/Å)", {"fmax": rec["fmax"]}, log=True, hline=args.fmax),
        ], title=f"pymatgen {relaxed.composition.reduced_formula} ({len(relaxed)} sites) relaxed with "
                 f"{args.optimizer}{' + cell' if args.cell else ''}")
        run.finish(opt.get_number_of_steps())
    return relaxed


if __name__ == "__main__":
    main()
