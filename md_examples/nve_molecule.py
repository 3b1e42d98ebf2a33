"""NVE (velocity Verlet) MD of aspirin: does the model conserve the total energy?

Velocities are drawn from a Maxwell-Boltzmann distribution at --temperature (no net
momentum or rotation). The energy drift is the slope of a linear fit of the total energy
against time, in meV/atom/ps; the largest change of the total energy between two records
(every --interval steps) shows jumps where the potential is not smooth. The plot shows
total, potential and kinetic energy.
"""
from __future__ import annotations

import _common as common
import numpy as np
from ase import units
from ase.md.verlet import VelocityVerlet

NAME = "nve_molecule"


def main(argv=None) -> float:
    """Run the example; returns the energy drift (meV/atom/ps)."""
    p = common.parser(NAME, __doc__, common.MOLECULE_MODEL, 200, "MD steps")
    common.add_molecule_option(p)
    p.add_argument("--temperature", type=float, default=300.0, help="initial temperature (K)")
    common.add_md_options(p, timestep=0.5)
    args = p.parse_args(argv)

    with common.Run(NAME, args) as run:
        atoms = common.molecule(args.molecule)
        atoms.calc = run.calculator(atoms)
        common.thermalize(atoms, args.temperature, run.rng, rotation=True)

        dyn = VelocityVerlet(atoms, timestep=args.timestep * units.fs)
        rec = common.Recorder(
            time=lambda: dyn.get_time() / (1000 * units.fs),
            epot=atoms.get_potential_energy,
            ekin=atoms.get_kinetic_energy,
        )
        common.attach_md_outputs(dyn, atoms, run, rec, args.interval)
        dyn.run(args.steps)

        t, epot, ekin = rec["time"], rec["epot"], rec["ekin"]
        etot = epot + ekin
        drift = common.energy_drift(t, etot, len(atoms))
        spread = 1000 * (etot.max() - etot.min()) / len(atoms)
        jump = 1000 * float(np.abs(np.diff(etot)).max()) if len(etot) > 1 else float("nan")
        run.log(f"# energy drift: {drift:.3f} meV/atom/ps (linear fit over {t[-1]:.3f} ps); "
                f"total energy range {spread:.3f} meV/atom; largest change between records {jump:.3f} meV")
        common.plot(run.png_path, t, "time (ps)", [
            common.Panel("total E - E(0) (eV)", {"total": etot - etot[0]}, hline=0.0),
            common.Panel("E - E(0) (eV)", {"potential": epot - epot[0], "kinetic": ekin - ekin[0]}),
        ], title=f"NVE {atoms.get_chemical_formula()}: energy drift {drift:.2f} meV/atom/ps")
        run.finish(args.steps)
    return drift


if __name__ == "__main__":
    main()
