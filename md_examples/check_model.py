"""Check a model fine-tuned on make_emt_data.py's frames against EMT, beyond test errors.

Low test errors on frames like the training data do not show that MD will be stable: a
model can be wrong between or beyond its frames. Two checks against EMT, the labeller:

1. Binding curve: the energy of the O atom above the fcc site of the Pt(111) slab at
   --points heights from --min-height to --max-height Å, relative to the highest point,
   for the model and for EMT. Compared: the height of the minimum and the curve's RMS
   difference.
2. Short NVT MD with the model (Langevin, --temperature K, --md-steps steps of --timestep fs)
   from EMT's minimum; EMT recomputes energy and forces on every --every-th frame. Compared:
   the force MAE along the trajectory and the spread of (model - EMT) energy, and whether
   the O atom stayed between 0.5 and 4 Å above the surface (no sinking, no flying off).

Writes check_model.png (both comparisons), check_model.traj (the MD) and check_model.json
(every number) into --out and ends with one line: "check PASSED" or "check FAILED" and why.
The exit status is 0 either way unless --strict is given (then 1 on failure).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as common  # noqa: E402  (imports jmp_ase from the clone when it is not installed)
from make_emt_data import slab_with_oxygen  # noqa: E402


def surface_height(atoms) -> float:
    """Height (Å) of the adsorbate above the mean z of the top metal layer (the top layer's 4 atoms)."""
    z = atoms.positions[:-1, 2]
    return float(atoms.positions[-1, 2] - np.sort(z)[-4:].mean())


def binding_curve(calc, heights, layers: int) -> np.ndarray:
    energies = []
    for h in heights:
        atoms = slab_with_oxygen(float(h), layers)
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
    energies = np.array(energies)
    return energies - energies[-1]


def main(argv=None) -> bool:
    p = argparse.ArgumentParser(prog="check_model.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/emt-tutorial/model/model.ckpt",
                   help="jmp-ase model file or shipped name (default runs/emt-tutorial/model/model.ckpt)")
    p.add_argument("--out", type=Path, default=Path("runs/emt-tutorial/check"),
                   help="output folder (default runs/emt-tutorial/check)")
    p.add_argument("--layers", type=int, default=3, help="metal layers, as in make_emt_data.py (default 3)")
    p.add_argument("--min-height", type=float, default=1.2, help="lowest O height, Å (default 1.2)")
    p.add_argument("--max-height", type=float, default=3.2, help="highest O height, Å (default 3.2)")
    p.add_argument("--points", type=int, default=21, help="binding-curve points (default 21)")
    p.add_argument("--md-steps", type=int, default=200, help="NVT steps with the model (default 200; 0: none)")
    p.add_argument("--temperature", type=float, default=300.0, help="NVT temperature, K (default 300)")
    p.add_argument("--timestep", type=float, default=2.0, help="MD time step, fs (default 2)")
    p.add_argument("--every", type=int, default=5, help="compare with EMT every N MD steps (default 5)")
    p.add_argument("--max-height-error", type=float, default=0.1,
                   help="pass: |minimum height, model - EMT| at most this, Å (default 0.1)")
    p.add_argument("--max-curve-rmse", type=float, default=0.2,
                   help="pass: binding-curve RMS difference at most this, eV (default 0.2)")
    p.add_argument("--max-md-force-mae", type=float, default=0.3,
                   help="pass: force MAE along the MD at most this, eV/Å (default 0.3)")
    p.add_argument("--max-md-energy-spread", type=float, default=0.2,
                   help="pass: standard deviation of (model - EMT) energy along the MD at most this, eV (default 0.2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the MD (default 0)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when the check fails")
    args = p.parse_args(argv)

    import torch
    from ase import units
    from ase.calculators.emt import EMT
    from ase.io.trajectory import Trajectory
    from ase.md.langevin import Langevin

    from jmp_ase import JMPCalculator

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        model = JMPCalculator(args.model)
    except FileNotFoundError as err:
        raise SystemExit(f"Error: {err}") from None
    emt = EMT()

    # 1. binding curve
    heights = np.linspace(args.min_height, args.max_height, args.points)
    print(f"binding curve: O above Pt(111) fcc site at {args.points} heights, {args.min_height}-{args.max_height} Å",
          flush=True)
    e_emt = binding_curve(emt, heights, args.layers)
    e_model = binding_curve(model, heights, args.layers)
    h_emt, h_model = float(heights[e_emt.argmin()]), float(heights[e_model.argmin()])
    curve_rmse = float(np.sqrt(np.mean((e_model - e_emt) ** 2)))
    print(f"  minimum: EMT {h_emt:.2f} Å ({e_emt.min():+.3f} eV), model {h_model:.2f} Å ({e_model.min():+.3f} eV); "
          f"RMS difference {curve_rmse:.3f} eV", flush=True)

    # 2. short NVT MD with the model, EMT on every --every-th frame
    atoms = slab_with_oxygen(h_emt, args.layers)
    atoms.calc = model
    rng = np.random.default_rng(args.seed)
    common.thermalize(atoms, args.temperature, rng)
    dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature, friction=0.01 / units.fs,
                   fixcm=False, rng=rng)  # the fixed bottom layer holds the slab in place
    md = {"time_fs": [], "energy_model": [], "energy_emt": [], "force_mae": [], "height": []}
    traj = Trajectory(args.out / "check_model.traj", "w", atoms)

    def compare():
        ref = atoms.copy()
        ref.calc = emt
        md["time_fs"].append(dyn.nsteps * args.timestep)
        md["energy_model"].append(float(atoms.get_potential_energy()))
        md["energy_emt"].append(float(ref.get_potential_energy()))
        md["force_mae"].append(float(np.abs(atoms.get_forces() - ref.get_forces()).mean()))
        md["height"].append(surface_height(atoms))
        traj.write(atoms)
        if dyn.nsteps % max(args.every, args.md_steps // 10) == 0:
            print(f"  MD step {dyn.nsteps:>5}/{args.md_steps}  T {atoms.get_temperature():7.1f} K  "
                  f"O height {md['height'][-1]:5.2f} Å  E model-EMT {md['energy_model'][-1] - md['energy_emt'][-1]:+8.3f} eV  "
                  f"force MAE {md['force_mae'][-1]:.3f} eV/Å", flush=True)

    if args.md_steps > 0:
        print(f"NVT MD with the model: {args.md_steps} steps of {args.timestep} fs at {args.temperature} K", flush=True)
        dyn.attach(compare, interval=args.every)  # also called at step 0
        dyn.run(args.md_steps)
    traj.close()
    torch.set_num_threads(threads)

    # verdict
    failures = []
    if abs(h_model - h_emt) > args.max_height_error:
        failures.append(f"minimum at {h_model:.2f} Å, EMT {h_emt:.2f} Å")
    if curve_rmse > args.max_curve_rmse:
        failures.append(f"binding curve off by {curve_rmse:.3f} eV RMS")
    if md["time_fs"]:
        force_mae = float(np.mean(md["force_mae"]))
        spread = float(np.std(np.subtract(md["energy_model"], md["energy_emt"])))
        heights_md = np.array(md["height"])
        if force_mae > args.max_md_force_mae:
            failures.append(f"MD force MAE {force_mae:.3f} eV/Å")
        if spread > args.max_md_energy_spread:
            failures.append(f"MD energy error spread {spread:.3f} eV")
        if heights_md.min() < 0.5 or heights_md.max() > 4.0:
            failures.append(f"O left the surface region in MD ({heights_md.min():.2f}-{heights_md.max():.2f} Å)")
        md_text = f"; MD force MAE {force_mae:.3f} eV/Å, energy error spread {spread:.3f} eV"
    else:
        md_text = "; no MD"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if md["time_fs"] else 1, figsize=(11 if md["time_fs"] else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(heights, e_emt, "k-o", ms=3, label="EMT")
    ax.plot(heights, e_model, "C0-s", ms=3, label="model")
    ax.set_xlabel("O height above the surface (Å)")
    ax.set_ylabel(f"E - E({args.max_height:g} Å) (eV)")
    ax.set_title("binding curve, O on Pt(111) fcc site")
    ax.legend()
    if md["time_fs"]:
        ax = axes[0, 1]
        ax.plot(md["time_fs"], np.subtract(md["energy_model"], md["energy_model"][0]), "C0-", label="model")
        ax.plot(md["time_fs"], np.subtract(md["energy_emt"], md["energy_emt"][0]), "k--", label="EMT on the same frames")
        ax.set_xlabel("time (fs)")
        ax.set_ylabel("potential energy - start (eV)")
        ax.set_title(f"NVT MD with the model, {args.temperature:g} K")
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "check_model.png", dpi=120)
    plt.close(fig)

    passed = not failures
    (args.out / "check_model.json").write_text(json.dumps({
        "model": str(args.model), "passed": passed, "failures": failures,
        "heights_A": heights.tolist(), "binding_emt_eV": e_emt.tolist(), "binding_model_eV": e_model.tolist(),
        "minimum_emt_A": h_emt, "minimum_model_A": h_model, "curve_rmse_eV": curve_rmse, "md": md,
    }, indent=1))
    print(f"wrote {args.out / 'check_model.png'}, check_model.traj, check_model.json "
          f"({time.perf_counter() - start:.1f} s)")
    verdict = "check PASSED" if passed else "check FAILED (" + "; ".join(failures) + ")"
    print(f"{verdict}: minimum {h_model:.2f} Å vs EMT {h_emt:.2f} Å, curve RMS {curve_rmse:.3f} eV{md_text}", flush=True)
    if args.strict and not passed:
        raise SystemExit(1)
    return passed


if __name__ == "__main__":
    main()
