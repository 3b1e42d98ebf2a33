"""Full relaxation (atoms and cell) of a strained crystal with FrechetCellFilter.

An fcc crystal is strained (--strain: an isotropic scale and a shear) and its atoms
rattled; ``FrechetCellFilter`` lets the optimizer (FIRE or BFGS) move the cell too, using
the model's stress (models with an energy head: conservative forces). The plot shows
energy and volume at every step.
"""
from __future__ import annotations

import _common as common
import numpy as np
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE

NAME = "relax_cell"
OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS}


def main(argv=None) -> float:
    """Run the example; returns the final volume per atom (Å^3)."""
    p = common.parser(NAME, __doc__, common.BULK_MODEL, 200, "maximum optimizer steps")
    p.add_argument("--element", default="Cu", help="fcc metal (lattice constant from ASE's reference data)")
    p.add_argument("--size", type=int, default=1, help="conventional 4-atom cells per direction")
    p.add_argument("--strain", type=float, default=0.04, help="isotropic strain; half of it is added as shear")
    p.add_argument("--rattle", type=float, default=0.05, help="standard deviation of atomic displacements (Å)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="FIRE")
    p.add_argument("--fmax", type=float, default=0.02, help="convergence: largest force / stress*volume (eV/Å)")
    args = p.parse_args(argv)

    with common.Run(NAME, args) as run:
        atoms = bulk(args.element, "fcc", cubic=True).repeat(args.size)
        reference_volume = atoms.get_volume() / len(atoms)
        strain = np.eye(3) * (1 + args.strain)
        strain[0, 1] = strain[1, 0] = args.strain / 2
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(args.rattle, seed=args.seed)
        atoms.calc = run.calculator(atoms)

        cell_filter = FrechetCellFilter(atoms)
        opt = OPTIMIZERS[args.optimizer](cell_filter, logfile=run.logfile)
        rec = common.Recorder(energy=atoms.get_potential_energy, volume=lambda: atoms.get_volume() / len(atoms),
                              fmax=lambda: common.fmax(cell_filter.get_forces()))
        common.attach_optimizer_outputs(opt, atoms, run, rec)
        converged = opt.run(fmax=args.fmax, steps=args.steps)

        lengths, angles = atoms.cell.cellpar()[:3] / args.size, atoms.cell.cellpar()[3:]
        run.log(f"# {'converged' if converged else 'NOT converged'} after {opt.get_number_of_steps()} steps: "
                f"E = {rec['energy'][-1]:.4f} eV, volume per atom {rec['volume'][0]:.3f} -> {rec['volume'][-1]:.3f}"
                f" A^3 (ASE reference {reference_volume:.3f}); cubic cell lengths {np.round(lengths, 4).tolist()} A,"
                f" angles {np.round(angles, 2).tolist()} deg")
        steps = np.arange(len(rec))
        common.plot(run.png_path, steps, f"{args.optimizer} step", [
            common.Panel("energy (eV)", {"energy": rec["energy"]}),
            common.Panel("volume per atom (Å³)", {"volume": rec["volume"]}, hline=reference_volume),
            common.Panel("max generalised force (eV/Å)", {"fmax": rec["fmax"]}, log=True, hline=args.fmax),
        ], title=f"cell relaxation of strained {atoms.get_chemical_formula()} (dashed: ASE reference volume)")
        run.finish(opt.get_number_of_steps())
    return float(rec["volume"][-1])


if __name__ == "__main__":
    main()
