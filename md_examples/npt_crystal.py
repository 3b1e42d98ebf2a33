"""NPT MD of an fcc metal crystal: the cell volume relaxes from a strained start.

The crystal (--element, --size conventional cells per direction) starts with its lattice
constant scaled by --strain, so the barostat visibly changes the volume. Barostats:
``berendsen`` (default; ASE's NPTBerendsen: weak coupling, smooth and robust, good for
equilibration, but not the exact NPT ensemble) or ``mtk`` (ASE's isotropic
Martyna-Tobias-Klein Nose-Hoover chains: the true NPT ensemble, for production sampling).
Both need the stress, which jmp-ase models with an energy head give (conservative forces).
"""
from __future__ import annotations

import _common as common
import numpy as np
from ase import units
from ase.build import bulk

NAME = "npt_crystal"


def dynamics(atoms, args):
    """The NPT integrator chosen with --barostat."""
    dt = args.timestep * units.fs
    pressure = args.pressure * units.GPa
    if args.barostat == "mtk":
        from ase.md.nose_hoover_chain import IsotropicMTKNPT

        return IsotropicMTKNPT(atoms, timestep=dt, temperature_K=args.temperature, pressure_au=pressure,
                               tdamp=100 * dt, pdamp=1000 * dt)
    from ase.md.nptberendsen import NPTBerendsen

    return NPTBerendsen(atoms, timestep=dt, temperature_K=args.temperature, pressure_au=pressure,
                        taut=50 * dt, taup=100 * dt, compressibility_au=1.0 / (100 * units.GPa))


def main(argv=None) -> float:
    """Run the example; returns the final volume per atom (Å^3)."""
    p = common.parser(NAME, __doc__, common.BULK_MODEL, 100, "MD steps")
    p.add_argument("--element", default="Cu", help="fcc metal (lattice constant from ASE's reference data)")
    p.add_argument("--size", type=int, default=2, help="conventional 4-atom cells per direction")
    p.add_argument("--strain", type=float, default=1.03, help="initial lattice constant / reference value")
    p.add_argument("--temperature", type=float, default=300.0, help="temperature (K)")
    p.add_argument("--pressure", type=float, default=0.0, help="external pressure (GPa)")
    p.add_argument("--barostat", choices=["berendsen", "mtk"], default="berendsen", help="NPT integrator")
    common.add_md_options(p, timestep=2.0)
    args = p.parse_args(argv)

    with common.Run(NAME, args) as run:
        atoms = bulk(args.element, "fcc", cubic=True)
        atoms.set_cell(atoms.cell * args.strain, scale_atoms=True)
        atoms = atoms.repeat(args.size)
        atoms.calc = run.calculator(atoms)
        common.thermalize(atoms, args.temperature, run.rng)

        dyn = dynamics(atoms, args)
        rec = common.Recorder(
            time=lambda: dyn.get_time() / (1000 * units.fs),
            volume=lambda: atoms.get_volume() / len(atoms),
            temperature=lambda: atoms.get_temperature(),
        )
        common.attach_md_outputs(dyn, atoms, run, rec, args.interval, stress=True)
        dyn.run(args.steps)

        t, vol, temp = rec["time"], rec["volume"], rec["temperature"]
        run.log(f"# volume per atom {vol[0]:.3f} -> {vol[-1]:.3f} A^3 ({100 * (vol[-1] / vol[0] - 1):+.2f} %); "
                f"mean temperature {np.mean(temp):.1f} K")
        common.plot(run.png_path, t, "time (ps)", [
            common.Panel("volume per atom (Å³)", {"volume": vol}),
            common.Panel("temperature (K)", {"temperature": temp}, hline=args.temperature),
        ], title=f"NPT ({args.barostat}) {atoms.get_chemical_formula()}, {args.pressure:g} GPa, "
                 f"{args.temperature:g} K")
        run.finish(args.steps)
    return float(vol[-1])


if __name__ == "__main__":
    main()
