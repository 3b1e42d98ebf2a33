"""What the example scripts share: command line, output folder, log, calculator, plots.

Every example writes three files into its output folder (``--out``, by default
``md_examples/out/<example>/``): ``<example>.traj`` (ASE trajectory), ``<example>.log``
(run settings, ASE's MD or optimizer log and a summary) and ``<example>.png`` (plot).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
try:
    import jmp_ase  # noqa: F401
except ImportError:  # a clone used without `pip install -e .`: import the package next to us
    sys.path.insert(0, str(HERE.parent))

from ase import Atoms  # noqa: E402
from ase.units import fs as _FS  # noqa: E402
from ase.data import chemical_symbols  # noqa: E402
from ase.io.trajectory import Trajectory  # noqa: E402

MOLECULE_MODEL = "jmp-mini-aspirin"
MATERIALS_MODEL = "jmp-mini-catalysis"  # slabs with adsorbates
BULK_MODEL = "jmp-mini-bulk"  # bulk crystals, trained with stress labels

# Aspirin (Å, centre of mass at the origin): the lowest-energy frame of a GFN1-xTB thermal
# (normal-mode) sample of aspirin, so close to, but not exactly at, a minimum.
_ASPIRIN = [
    ("C", 3.1345, 1.0409, -1.0977), ("C", 2.1623, 0.3223, -0.2262), ("O", 2.0831, 0.2707, 0.9794),
    ("O", 1.1883, -0.2107, -1.0227), ("C", 0.0261, -0.7723, -0.5293), ("C", -0.1229, -2.1821, -0.5078),
    ("C", -1.1880, -2.7571, 0.1669), ("C", -2.1386, -2.0299, 0.8707), ("C", -1.9764, -0.6422, 0.8179),
    ("C", -0.8927, 0.0118, 0.2313), ("C", -0.8778, 1.5065, 0.0874), ("O", 0.0323, 2.1480, -0.3896),
    ("O", -2.0088, 2.0658, 0.6685), ("H", 2.5708, 1.9062, -1.5314), ("H", 3.4152, 0.5347, -1.9055),
    ("H", 3.9435, 1.4864, -0.5261), ("H", 0.5680, -2.7648, -1.0960), ("H", -1.1921, -3.8424, 0.2702),
    ("H", -2.9312, -2.5583, 1.4091), ("H", -2.7620, -0.0479, 1.2757), ("H", -1.8427, 3.0129, 0.5872),
]


def molecule(name: str = "aspirin") -> Atoms:
    """Aspirin (C9H8O4, 21 atoms, not in ASE's collections) or any ``ase.build.molecule`` name."""
    if name.lower() == "aspirin":
        return Atoms([s for s, *_ in _ASPIRIN], positions=[xyz for _, *xyz in _ASPIRIN])
    from ase.build import molecule as ase_molecule

    return ase_molecule(name)


def add_molecule_option(p: argparse.ArgumentParser) -> None:
    """--molecule, shared by the molecule examples (see :func:`molecule`)."""
    p.add_argument("--molecule", default="aspirin", help="aspirin or a name known to ase.build.molecule")


def progress_interval(steps: int) -> int:
    """Print a progress line about ten times per run."""
    return max(1, steps // 10)


def attach_md_outputs(dyn, atoms: Atoms, run: "Run", recorder: "Recorder", interval: int, stress: bool = False) -> None:
    """Record every step; write the trajectory and ASE's MD log every ``interval`` steps; print
    a progress line (time, temperature, energies, largest force) about ten times per run."""
    from ase.md.logger import MDLogger

    dyn.attach(recorder)
    dyn.attach(run.trajectory(atoms).write, interval=interval)
    dyn.attach(MDLogger(dyn, atoms, run.logfile, stress=stress, peratom=True), interval=interval)
    steps = run.args.steps

    def report():
        epot = atoms.get_potential_energy()
        print(f"  step {dyn.nsteps:>6}/{steps}  t {dyn.get_time() / 1000 / _FS:8.3f} ps  "
              f"T {atoms.get_temperature():8.1f} K  Epot {epot:12.4f} eV  "
              f"Etot {epot + atoms.get_kinetic_energy():12.4f} eV  max|F| {fmax(atoms.get_forces()):8.3f} eV/A",
              flush=True)

    dyn.attach(report, interval=progress_interval(steps))


def attach_optimizer_outputs(opt, atoms: Atoms, run: "Run", recorder: "Recorder") -> None:
    """Record every step, write it to the trajectory and print energy and fmax (every step for
    short runs, about ten times otherwise) so a long relaxation shows where it is."""
    opt.attach(recorder)
    opt.attach(run.trajectory(atoms).write)

    def report():
        print(f"  step {opt.nsteps:>5}  E {recorder['energy'][-1]:14.5f} eV  fmax {recorder['fmax'][-1]:10.4f} eV/A",
              flush=True)

    opt.attach(report, interval=1 if run.args.steps <= 50 else progress_interval(run.args.steps))


def add_md_options(p: argparse.ArgumentParser, timestep: float) -> None:
    """Time step (fs) and output interval, shared by the MD examples."""
    p.add_argument("--timestep", type=float, default=timestep, help="time step (fs)")
    p.add_argument("--interval", type=int, default=1, help="write the trajectory and log every N steps")


def parser(name: str, description: str | None, model: str, steps: int, steps_help: str) -> argparse.ArgumentParser:
    """The options every example has; the script adds its own."""
    p = argparse.ArgumentParser(
        prog=f"{name}.py", description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=model, help="jmp-ase model file, or the name of a shipped model")
    p.add_argument("--steps", type=int, default=steps, help=steps_help)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="model precision")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 is fastest for small systems and safe on a shared machine, "
                        "raise it for hundreds of atoms on idle cores")
    p.add_argument("--seed", type=int, default=0, help="random seed (velocities, rattling)")
    p.add_argument("--out", type=Path, default=HERE / "out" / name, help="output folder")
    return p


class Run:
    """One example run: output files, a log that also echoes to stdout, and the calculator.

    Use as a context manager so the log and the trajectory are closed even on errors.
    """

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.traj_path = self.out / f"{name}.traj"
        self.log_path = self.out / f"{name}.log"
        self.png_path = self.out / f"{name}.png"
        self.logfile = open(self.log_path, "w")
        self.rng = np.random.default_rng(args.seed)
        self._traj: Trajectory | None = None
        self._threads = None
        if args.threads:
            import torch

            self._threads = torch.get_num_threads()
            torch.set_num_threads(args.threads)
        self._start = time.perf_counter()
        self.log(f"# {name}: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(vars(args).items())))
        self.log(f"# python {platform.python_version()}, {platform.machine()}")

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc):
        self.close()

    def log(self, message: str) -> None:
        print(message, flush=True)
        self.logfile.write(message + "\n")
        self.logfile.flush()

    def calculator(self, atoms: Atoms):
        """A :class:`JMPCalculator` for ``--model`` (logged with the elements it was trained on)."""
        from jmp_ase.calculators.calculator import JMPCalculator

        try:
            calc = JMPCalculator(self.args.model, device=self.args.device, dtype=self.args.dtype)
        except FileNotFoundError as err:
            raise SystemExit(f"{err}\nPass a model file with --model PATH (see md_examples/README.md).") from None
        config = getattr(calc.predictor, "model_config", None)
        trained = [chemical_symbols[z] for z in (getattr(config, "elements", None) or [])]
        self.log(f"# model {self.args.model} on {self.args.device} ({self.args.dtype}), trained on "
                 f"{' '.join(trained) or 'unknown elements'}")
        self.log(f"# {len(atoms)} atoms ({atoms.get_chemical_formula()}), pbc {atoms.pbc.tolist()}")
        return calc

    def trajectory(self, atoms: Atoms) -> Trajectory:
        """The run's trajectory file (written with ``traj.write()``, closed by the run)."""
        if self._traj is None:
            self._traj = Trajectory(self.traj_path, "w", atoms)
        return self._traj

    def finish(self, steps: int) -> None:
        """Log the wall time per step."""
        seconds = time.perf_counter() - self._start
        per_step = f", {1000 * seconds / steps:.1f} ms/step" if steps else ""
        self.log(f"# {steps} steps in {seconds:.1f} s{per_step}")
        self.log(f"# wrote {self.traj_path}, {self.log_path}, {self.png_path}")

    def close(self) -> None:
        if self._traj is not None:
            self._traj.close()
            self._traj = None
        if not self.logfile.closed:
            self.logfile.close()
        if self._threads is not None:  # leave the process as we found it (tests run in-process)
            import torch

            torch.set_num_threads(self._threads)
            self._threads = None


class Recorder:
    """Call it (e.g. attached to a dynamics or optimizer) to append one value per quantity.

    ``Recorder(time=lambda: ..., energy=lambda: ...)``; ``rec["energy"]`` is a numpy array.
    """

    def __init__(self, **quantities):
        self.quantities = quantities
        self.values: dict[str, list[float]] = {k: [] for k in quantities}

    def __call__(self) -> None:
        for key, get in self.quantities.items():
            self.values[key].append(float(get()))

    def __getitem__(self, key: str) -> np.ndarray:
        return np.asarray(self.values[key])

    def __len__(self) -> int:
        return len(next(iter(self.values.values()), []))


def thermalize(atoms: Atoms, temperature: float, rng: np.random.Generator, rotation: bool = False) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` K without net momentum (nor rotation if asked)."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):  # ase >= 3.29
        vd.thermalize_momenta(atoms, temperature, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    vd.Stationary(atoms)
    if rotation:
        vd.ZeroRotation(atoms)


def fmax(forces: np.ndarray) -> float:
    """Largest force norm (eV/Å), the quantity ASE optimizers converge on."""
    return float(np.sqrt((np.asarray(forces) ** 2).sum(axis=1)).max())


def energy_drift(time_ps: np.ndarray, total_energy_eV: np.ndarray, natoms: int) -> float:
    """Slope of a linear fit of the total energy in meV/atom/ps (NaN with fewer than 2 points)."""
    if len(time_ps) < 2:
        return float("nan")
    slope = np.polyfit(np.asarray(time_ps), np.asarray(total_energy_eV) * 1000.0 / natoms, 1)[0]
    return float(slope)


class Panel(NamedTuple):
    """One subplot: y label, curves {label: y values}, optional log scale and reference line."""

    ylabel: str
    curves: dict
    log: bool = False
    hline: float | None = None


def plot(path: Path, x: np.ndarray, xlabel: str, panels: list[Panel], title: str = "") -> None:
    """Stacked panels sharing the x axis, saved as PNG with matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.2 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    marker = "o" if len(x) <= 30 else None
    for ax, panel in zip(axes, panels):
        for label, y in panel.curves.items():
            ax.plot(x, y, marker=marker, ms=3, label=label)
        if panel.hline is not None:
            ax.axhline(panel.hline, color="grey", ls="--", lw=1)
        if panel.log and all(np.all(np.asarray(y) > 0) for y in panel.curves.values()):
            ax.set_yscale("log")
        ax.set_ylabel(panel.ylabel)
        if len(panel.curves) > 1:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(xlabel)
    if np.issubdtype(np.asarray(x).dtype, np.integer):  # step numbers
        from matplotlib.ticker import MaxNLocator

        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        axes[0].set_title(title)
    fig.savefig(path, dpi=110)
