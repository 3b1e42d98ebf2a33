"""Move the shipped fine-tuned models to another graph rule without retraining, and record
what it does to their test errors.

    python benchmarks/mini_jmp/regraph.py --data ../shared/data/mini-jmp --neighbor-order canonical

For each of ``jmp-mini-aspirin`` and ``jmp-mini-catalysis``: evaluate the file as it is and
with the new ``neighbor_order`` on the full mini-JMP test set (and on the 20-structure slice in
tests/data/shipped/ that tests/test_shipped_models.py checks), print both, then write the model
back with the new setting, the new test errors and a ``graph_changes`` entry in its provenance.
Weights are untouched. Machine-specific paths in the provenance (``parent_path``) are reduced
to the file name.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
from pathlib import Path

import ase.io

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.calculators.evaluation import labelled_errors
from jmp_ase.io.model_file import MODELS_DIR, load_model, save_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ship import without_machine_paths  # noqa: E402
SLICES = HERE.parents[1] / "tests" / "data" / "shipped"
MODELS = {"jmp-mini-aspirin": "aspirin-gfn1", "jmp-mini-catalysis": "catalysis-emt"}


def errors(model, structures) -> dict:
    return labelled_errors(JMPCalculator(model), structures)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="the mini-JMP corpus (its test sets)")
    p.add_argument("--neighbor-order", default="canonical", choices=["jmp", "canonical"])
    p.add_argument("--models", type=Path, default=MODELS_DIR, help="folder of the model files to rewrite")
    p.add_argument("--dry-run", action="store_true", help="print the errors, write nothing")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"Error: --data {args.data} is not a folder (the mini-JMP corpus; benchmarks/README.md says "
                         "where it comes from)")
    for name, dataset in MODELS.items():
        path = args.models / f"{name}.ckpt"
        model = load_model(path)
        old_order = model.model_config.neighbor_order
        full = ase.io.read(args.data / dataset / "test.extxyz", ":")
        record = model.model_config.provenance
        slice_file = SLICES / record["test_slice"]["file"]
        structures = ase.io.read(slice_file, ":")
        before = errors(model, full)
        model.model_config = dataclasses.replace(model.model_config, neighbor_order=args.neighbor_order)
        after = errors(model, full)
        after_slice = errors(model, structures)
        print(f"{name}: test ({before['structures']} structures) neighbor_order {old_order}: "
              f"energy {1000 * before['energy_mae']:.2f} meV, forces {1000 * before['forces_mae']:.2f} meV/Å; "
              f"{args.neighbor_order}: energy {1000 * after['energy_mae']:.2f} meV, "
              f"forces {1000 * after['forces_mae']:.2f} meV/Å", flush=True)
        if args.dry_run:
            continue
        provenance = without_machine_paths(record)
        provenance.setdefault("graph_changes", []).append({
            "neighbor_order": [old_order, args.neighbor_order], "weights": "unchanged",
            "test_before": before, "made_by": "benchmarks/mini_jmp/regraph.py",
            "machine": f"{platform.machine()}, {platform.system()}"})
        provenance["test"] = after
        provenance["test_slice"] = {"file": slice_file.name, **after_slice}
        model.model_config.provenance = provenance
        save_model(model, path)
        print(f"  wrote {path}")


if __name__ == "__main__":
    main()
