"""NVT MD of a molecule with a Langevin thermostat: the temperature settles at the target.

The run starts from Maxwell-Boltzmann velocities at --start-temperature (default: the
target; 0 starts the molecule at rest, so the plot shows the thermostat heating it), then the
temperature fluctuates around --temperature (expected spread sqrt(2/(3N)): about 18 % for 21
atoms). The summary says whether the mean over the second half is within 10 % of the target.
"""
from __future__ import annotations

import _common as common
import numpy as np
from ase import units
from ase.constraints import FixCom
from ase.md.langevin import Langevin

NAME = "nvt_molecule"


def main(argv=None) -> float:
    """Run the example; returns the mean temperature over the second half of the run (K)."""
    p = common.parser(NAME, __doc__, common.MOLECULE_MODEL, 200, "MD steps")
    common.add_molecule_option(p)
    p.add_argument("--temperature", type=float, default=300.0, help="thermostat temperature (K)")
    p.add_argument("--start-temperature", type=float, default=None,
                   help="initial temperature (K); default: --temperature")
    p.add_argument("--friction", type=float, default=0.02, help="Langevin friction (1/fs)")
    common.add_md_options(p, timestep=0.5)
    args = p.parse_args(argv)

    with common.Run(NAME, args) as run:
        atoms = common.molecule(args.molecule)
        atoms.calc = run.calculator(atoms)
        start = args.temperature if args.start_temperature is None else args.start_temperature
        if start > 0:
            common.thermalize(atoms, start, run.rng, rotation=True)

        atoms.set_constraint(FixCom())  # instead of Langevin's fixcm, which is biased for small systems
        dyn = Langevin(atoms, timestep=args.timestep * units.fs, temperature_K=args.temperature,
                       friction=args.friction / units.fs, fixcm=False, rng=run.rng)
        rec = common.Recorder(time=lambda: dyn.get_time() / (1000 * units.fs),
                              temperature=lambda: atoms.get_temperature())
        common.attach_md_outputs(dyn, atoms, run, rec, args.interval)
        dyn.run(args.steps)

        t, temp = rec["time"], rec["temperature"]
        second_half = temp[len(temp) // 2:]
        mean, std = float(np.mean(second_half)), float(np.std(second_half))
        reached = abs(mean - args.temperature) <= 0.1 * args.temperature
        verdict = "reached" if reached else "NOT reached: run longer (--steps) or raise --friction"
        run.log(f"# temperature over the second half: {mean:.1f} +- {std:.1f} K "
                f"(target {args.temperature:g} K, {verdict})")
        window = max(1, len(temp) // 20)
        kernel = np.ones(window)
        running = np.convolve(temp, kernel, mode="same") / np.convolve(np.ones_like(temp), kernel, mode="same")
        common.plot(run.png_path, t, "time (ps)", [
            common.Panel("temperature (K)", {"instantaneous": temp, f"running mean ({window} steps)": running},
                         hline=args.temperature),
        ], title=f"Langevin NVT {atoms.get_chemical_formula()}, target {args.temperature:g} K")
        run.finish(args.steps)
    return mean


if __name__ == "__main__":
    main()
