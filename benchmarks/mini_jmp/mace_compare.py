"""JMP fine-tuned vs MACE trained from scratch on the same mini-JMP files, side by side.

    python benchmarks/mini_jmp/mace_compare.py --data ../shared/data/mini-jmp \\
        --mace-python /path/to/mace-venv/bin/python --tasks aspirin-1000 aspirin-50 \\
        --jmp aspirin-1000=jmp-mini-aspirin

MACE runs as a user would run it: ``mace_run_train`` in its own virtual environment
(``python -m venv mace-venv && mace-venv/bin/pip install torch==2.13.0 mace-torch``; it is
never a dependency of jmp-ase), with the settings of ``--mace-*`` (by default a small model:
32 scalar channels, L = 0, r = 5 Å, 2 interactions, a final stage with a higher energy
weight), one thread. Each jmp-ase model is either a given model file (``--jmp TASK=MODEL``)
or fine-tuned here from ``jmp-mini`` by tasks.yaml's recipe. Both meet the task's test file
through the same MAE: energy per structure (meV), forces per component (meV/Å).

Tasks are those of tasks.yaml (``aspirin-1000``, ``aspirin-50``, ``peptide``, ...) and
``catalysis``, the recipe of the shipped ``jmp-mini-catalysis`` (compare that model with
``--jmp catalysis=jmp-mini-catalysis``; labels of fixed slab atoms count, as in jmp-ase's own
training and evaluation). ``--mace-epochs`` and ``--jmp-epochs`` set the two budgets; each side's
runs are kept in --out and reused when asked again.

Prints one row per task and model with its wall time, and writes ``mace_compare.json`` and
``mace_compare.md`` to --out (a scratch folder unless you point it elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from backbone_speed import machine  # noqa: E402
from dihedral_seeds import run_one  # noqa: E402
from run import evaluate, finetune_config, load_yaml, task_spec  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Evaluated inside the MACE venv: a model file and a test file -> the two MAEs (eV, eV/Å).
MACE_EVAL = """
import json, sys
import ase.io, numpy as np, torch
torch.set_num_threads(1)
from mace.calculators import MACECalculator
calc = MACECalculator(model_paths=sys.argv[1], device="cpu", default_dtype="float64")
de, df = [], []
for atoms in ase.io.read(sys.argv[2], ":"):
    e, f = atoms.info["REF_energy"], atoms.arrays["REF_forces"]
    atoms.calc = calc
    de.append(abs(atoms.get_potential_energy() - e))
    df.append(np.abs(atoms.get_forces() - f).ravel())
print(json.dumps({"energy_mae": float(np.mean(de)), "forces_mae": float(np.concatenate(df).mean())}))
"""


def mace_files(data: Path, task: dict, folder: Path) -> dict:
    """The task's train/val/test files (``train_slice`` / ``val_slice`` applied, as jmp-ase's
    runs apply them) with labels under REF_energy / REF_forces (the keys MACE reads without
    clashing with a calculator's results). Forces are the raw labels of every atom, constraints
    dropped: fixed slab atoms keep their labels, as in jmp-ase's training and evaluation."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "val", "test"):
        path = folder / f"{split}.extxyz"
        if not path.exists():
            frames = []
            for atoms in ase.io.read(data / task[split], task.get(f"{split}_slice", ":")):
                energy, forces = atoms.calc.results["energy"], atoms.calc.results["forces"]
                atoms.calc = None
                atoms.set_constraint()
                atoms.info["REF_energy"] = energy
                atoms.arrays["REF_forces"] = forces
                frames.append(atoms)
            ase.io.write(path, frames, format="extxyz")
        out[split] = path
    return out


def train_mace(python: str, files: dict, folder: Path, args) -> dict:
    """mace_run_train with the --mace-* settings; returns the model path and wall time."""
    model = folder / "mace.model"
    wall = None
    folder.mkdir(parents=True, exist_ok=True)
    if not model.exists():
        cmd = [python, "-m", "mace.cli.run_train", "--name", "mace", "--train_file", str(files["train"]),
               "--valid_file", str(files["val"]), "--energy_key", "REF_energy", "--forces_key", "REF_forces",
               "--E0s", "average", "--model", "MACE", "--hidden_irreps", args.mace_irreps,
               "--r_max", str(args.mace_r_max), "--num_interactions", "2", "--batch_size", str(args.mace_batch),
               "--max_num_epochs", str(args.mace_epochs), "--swa", "--start_swa", str(max(1, args.mace_epochs - 2)),
               "--device", "cpu", "--default_dtype", "float64", "--seed", str(args.seed),
               "--model_dir", str(folder), "--checkpoints_dir", str(folder / "checkpoints"),
               "--results_dir", str(folder / "results"), "--log_dir", str(folder / "logs")]
        start = time.perf_counter()
        with open(folder / "mace_train.log", "w") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD})
        wall = round(time.perf_counter() - start, 1)
        if done.returncode != 0 or not model.exists():
            raise SystemExit(f"Error: MACE training failed (exit {done.returncode}), see {folder / 'mace_train.log'}")
    # mace.model is the stage-one model (its energies can be eV off); the final one is stage two
    final = folder / "mace_stagetwo.model"
    return {"model": final if final.exists() else model, "wall_s": wall}


def evaluate_mace(python: str, model: Path, test: Path) -> dict:
    done = subprocess.run([python, "-c", MACE_EVAL, str(model), str(test)], capture_output=True, text=True,
                          env={**os.environ, **ONE_THREAD})
    if done.returncode != 0:
        raise SystemExit(f"Error: MACE evaluation failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def jmp_row(name: str, given: dict, data: Path, spec: dict, folder: Path, epochs: int | None = None) -> dict:
    """Test errors of the given model file for the task, else of a fine-tune of jmp-mini by
    tasks.yaml's recipe, for ``epochs`` instead of the recipe's where given (the schedule
    follows; dihedral_seeds.run_one: one thread, skipped when already done)."""
    task = task_spec(spec, name)
    test = str(data / task["test"])
    if name in given:
        metrics = evaluate(given[name], test, folder / "eval", threads=1)
        return {"model": f"jmp-ase ({Path(given[name]).name})", "wall_s": None,
                "energy_mae": metrics["energy_mae"], "forces_mae": metrics["forces_mae"]}
    if name not in spec["tasks"]:
        raise SystemExit(f"Error: {name!r} is a shipped model's recipe: compare its model, e.g. "
                         f"--jmp {name}={task['name']}")
    if epochs is not None:
        task, folder = {**task, "max_epochs": epochs}, folder.with_name(f"{folder.name}-{epochs}epochs")
    cfg = finetune_config(task, spec["common"], data, folder, task.get("lr", spec["learning_rates"][-1]),
                          False, "jmp-mini")
    result = run_one(cfg, folder, test)
    if "error" in result:
        raise SystemExit(f"Error: fine-tuning failed: {result['error']}")
    return {"model": f"jmp-ase (fine-tuned from jmp-mini, {task['max_epochs']} epochs)", **result}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the mini-JMP corpus")
    p.add_argument("--mace-python", required=True, help="python of a venv with mace-torch installed")
    p.add_argument("--tasks", nargs="+", default=["aspirin-1000", "aspirin-50"], help="tasks of tasks.yaml")
    p.add_argument("--jmp", nargs="*", default=[], metavar="TASK=MODEL",
                   help="use this jmp-ase model file (or shipped name) for TASK instead of fine-tuning")
    p.add_argument("--mace-epochs", type=int, default=8)
    p.add_argument("--jmp-epochs", type=int, help="fine-tune for this many epochs instead of tasks.yaml's")
    p.add_argument("--mace-irreps", default="32x0e", help="MACE hidden irreps (32x0e: L = 0, 32 channels)")
    p.add_argument("--mace-r-max", type=float, default=5.0, help="MACE cutoff (Å)")
    p.add_argument("--mace-batch", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/mace-compare"))
    args = p.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"Error: --data {args.data} is not a folder (the mini-JMP corpus)")
    given = dict(item.split("=", 1) for item in args.jmp)
    spec = load_yaml(HERE / "tasks.yaml")
    data = args.data.resolve()
    rows = []
    torch.set_num_threads(1)  # every model here trains and is tested with one thread (the machine line says so)
    print(f"# machine: {machine()}", flush=True)
    for name in args.tasks:
        task = task_spec(spec, name)
        folder = args.out / name
        files = mace_files(data, task, folder / "mace-data")
        mace = train_mace(args.mace_python, files, folder / "mace", args)
        rows.append({"task": name, "model": "MACE from scratch", "wall_s": mace["wall_s"],
                     **evaluate_mace(args.mace_python, mace["model"], files["test"])})
        rows.append({"task": name, **jmp_row(name, given, data, spec, folder / "jmp", args.jmp_epochs)})
        for row in rows[-2:]:
            print(f"{row['task']:>14}  {row['model']:<34} energy {1000 * row['energy_mae']:8.1f} meV  "
                  f"forces {1000 * row['forces_mae']:7.1f} meV/Å  wall {row['wall_s']} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"mace_epochs": args.mace_epochs, "mace_irreps": args.mace_irreps, "mace_r_max": args.mace_r_max,
                "mace_batch": args.mace_batch, "seed": args.seed, "tasks": args.tasks, "jmp": given,
                "jmp_epochs": args.jmp_epochs}
    (args.out / "mace_compare.json").write_text(json.dumps({"machine": machine(), "settings": settings, "rows": rows},
                                                           indent=1))
    lines = ["| task | model | energy MAE (meV) | forces MAE (meV/Å) | wall (s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['model']} | {1000 * r['energy_mae']:.1f} | {1000 * r['forces_mae']:.1f} | "
              f"{r['wall_s'] if r['wall_s'] is not None else '-'} |" for r in rows]
    (args.out / "mace_compare.md").write_text(f"machine: {machine()}\n\nsettings: {json.dumps(settings)}\n\n"
                                              + "\n".join(lines) + "\n")
    print(f"wrote {args.out / 'mace_compare.md'}", flush=True)


if __name__ == "__main__":
    main()
