"""Write the shipped models of a finished mini-JMP run into the package, provenance inside.

    python benchmarks/mini_jmp/ship.py --run runs/mini-jmp --data ../shared/data/mini-jmp

Reads ``results.json`` (run.py's) and the run folder, then writes to ``--models``
(default ``jmp_ase/models``):

- ``jmp-mini.ckpt``: the pre-trained backbone and its three pre-training heads in JMP's
  checkpoint layout, with the EMA weights as the weights (usable as ``--pretrained jmp-mini``
  and through ``JMPCalculator.from_jmp_checkpoint("jmp-mini", head="molecules-gfn2")``);
- ``jmp-mini-aspirin.ckpt``: the selected fine-tuned aspirin-1000 model;
- ``jmp-mini-catalysis.ckpt``: jmp-mini fine-tuned on catalysis-emt (energy, conservative forces);
- ``jmp-mini-bulk.ckpt`` (``--bulk MODEL``, trained apart: bulk.yaml on bulk_emt.py's data): the
  materials model of the NPT and cell-relaxation examples (energy, forces, stress).

Every file records its data, recipe and test errors: on the full test set and on the first 20
test structures, which are copied to ``--test-data`` so that tests/test_shipped_models.py
can check the recorded numbers without the corpus.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ase.io
import torch

from jmp_ase.calculators.evaluation import labelled_errors

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SLICE = 20
PRETRAIN_SETS = ("catalysis-emt", "molecules-gfn2", "reactions-gfn2")


def test_slice(data: Path, dataset: str, test_data: Path) -> tuple[list, Path]:
    """The first SLICE structures of ``dataset``'s test set, also written to ``test_data``."""
    structures = ase.io.read(data / dataset / "test.extxyz", f":{SLICE}")
    path = test_data / f"{dataset}-test{SLICE}.extxyz"
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, structures, format="extxyz")
    return structures, path


def ema_as_weights(pretrain_ckpt: Path) -> dict:
    """The pre-training checkpoint with its EMA weights as the state dict (no optimizer state)."""
    from jmp_ase.io.pretrained import load_jmp_pretrained

    content = torch.load(pretrain_ckpt, map_location="cpu", weights_only=True)
    model, _ = load_jmp_pretrained(pretrain_ckpt, ema=True)
    state = model.state_dict()
    if set(state) != set(content["state_dict"]):
        raise RuntimeError(f"{pretrain_ckpt}: EMA model keys differ from the file's keys")
    content["state_dict"] = {k: v.detach().clone() for k, v in state.items()}
    content["optimizer_states"] = []
    return content


def ship_pretrained(run: Path, results: dict, data: Path, models: Path, test_data: Path) -> dict:
    from jmp_ase.calculators.calculator import JMPCalculator
    from jmp_ase.training.pretrain import pretrained_provenance

    content = ema_as_weights(run / "pretrain" / "pretrain.ckpt")
    models.mkdir(parents=True, exist_ok=True)
    target = models / "jmp-mini.ckpt"
    torch.save(content, target)  # written first without provenance: the heads are evaluated from it
    tests = {}
    for name in PRETRAIN_SETS:
        calc = JMPCalculator.from_jmp_checkpoint(target, head=name)
        full = ase.io.read(data / name / "test.extxyz", ":")
        structures, path = test_slice(data, name, test_data)
        tests[name] = {"test": labelled_errors(calc, full),
                       "test_slice": {"file": path.name, **labelled_errors(calc, structures)}}
        print(f"jmp-mini head {name}: {tests[name]}")
    content["jmp_ase_provenance"] = pretrained_provenance(content, {
        "name": "jmp-mini", "made_by": "benchmarks/mini_jmp/run.py (pretrain.yaml)",
        "data": {n: f"mini-jmp/{n}/train.extxyz" for n in PRETRAIN_SETS},
        "recipe": "JMP: temperature sampling T=2, structure-wise loss with lambda_F = mean atoms, per-data-set "
                  "references and normalisation, EMA 0.99 (the weights in this file), a2a edge dropout 0.1, "
                  "AdamW (0.9, 0.95) weight decay 0.1, warm-up + cosine, gradient clipping 1",
        "wall_s": results["pretrain"]["wall_s"], "machine": results["machine"],
        "errors": "per head on its data set's test.extxyz: energy MAE eV per structure, forces MAE eV/Å per "
                  "component (direct-force head)",
        "heads": tests})
    torch.save(content, target)
    return tests


def without_machine_paths(provenance: dict) -> dict:
    """A copy of a model's provenance fit to ship: ``parent_path`` and the data of a
    reference refit (``jmp-train refit-references``) reduced to file names."""
    out = dict(provenance)
    if out.get("parent_path"):
        out["parent_path"] = Path(str(out["parent_path"])).name
    if isinstance(out.get("reference_refit"), dict):
        out["reference_refit"] = {**out["reference_refit"], "data": Path(str(out["reference_refit"]["data"])).name}
    return out


def ship_finetuned(name: str, model_path: Path, dataset: str, extra: dict, data: Path, models: Path,
                   test_data: Path) -> dict:
    from jmp_ase.calculators.calculator import JMPCalculator
    from jmp_ase.io.model_file import load_model, save_model

    model = load_model(model_path)
    model.model_config.provenance = without_machine_paths(model.model_config.provenance)
    full = ase.io.read(data / dataset / "test.extxyz", ":")
    structures, path = test_slice(data, dataset, test_data)
    calc = JMPCalculator(model)
    measured = {"test": labelled_errors(calc, full),
                "test_slice": {"file": path.name, **labelled_errors(calc, structures)}}
    print(f"{name}: {measured}")
    model.model_config.provenance.update({
        "name": name, "status": "mini-JMP: jmp-mini (pre-trained) fine-tuned on " + dataset,
        "parent": "jmp-mini", "made_by": "benchmarks/mini_jmp/run.py (tasks.yaml)",
        "errors": "energy MAE eV per structure, forces MAE eV/Å per component (conservative forces)"
                  + (", stress MAE eV/Å³ per Voigt component" if "stress_mae" in measured["test"] else ""),
        **extra, **measured})
    save_model(model, models / f"{name}.ckpt")
    return measured


def ship_all(run: Path, results: dict, data: Path, models: Path = REPO / "jmp_ase" / "models",
             test_data: Path = REPO / "tests" / "data" / "shipped") -> None:
    """Write jmp-mini, jmp-mini-aspirin and jmp-mini-catalysis from the run folder ``run``."""
    models.mkdir(parents=True, exist_ok=True)
    ship_pretrained(run, results, data, models, test_data)
    task = results["tasks"]["aspirin-1000"]
    aspirin = task["finetune"]
    ship_finetuned("jmp-mini-aspirin", Path(aspirin["model"]), "aspirin-gfn1", {
        "data": "mini-jmp/aspirin-gfn1/train.extxyz (1000, GFN1-xTB E+F), val.extxyz (50)",
        "recipe": f"tasks.yaml aspirin-1000, lr {aspirin['lr']:g} (chosen by validation loss)",
        "improvement_over_scratch": task.get("improvement"), "wall_s": aspirin["wall_s"],
        "machine": results["machine"]}, data, models, test_data)
    ship_finetuned("jmp-mini-catalysis", run / "ship" / "jmp-mini-catalysis" / "model.ckpt", "catalysis-emt", {
        "data": "mini-jmp/catalysis-emt/train.extxyz[::6] (892 EMT slabs with adsorbates), val.extxyz[:60]",
        "recipe": "tasks.yaml ship.catalysis", "machine": results["machine"]}, data, models, test_data)


# ship.py --OPTION MODEL re-ships one fine-tuned model of the corpus: (name, data set, data, default recipe)
SINGLE = {
    "aspirin": ("jmp-mini-aspirin", "aspirin-gfn1",
                "mini-jmp/aspirin-gfn1/train.extxyz (1000, GFN1-xTB E+F), val.extxyz (50)", "see the model's provenance"),
    "catalysis": ("jmp-mini-catalysis", "catalysis-emt",
                  "mini-jmp/catalysis-emt/train.extxyz[::6] (892 EMT slabs with adsorbates), val.extxyz[:60]",
                  "tasks.yaml ship.catalysis"),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "mini-jmp")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mini-jmp")
    parser.add_argument("--models", type=Path, default=REPO / "jmp_ase" / "models")
    parser.add_argument("--test-data", type=Path, default=REPO / "tests" / "data" / "shipped")
    parser.add_argument("--aspirin", type=Path, default=None, metavar="MODEL",
                        help="re-ship only jmp-mini-aspirin, from this fine-tuned model file")
    parser.add_argument("--bulk", type=Path, default=None, metavar="MODEL",
                        help="ship only jmp-mini-bulk, from this model fine-tuned with bulk.yaml; --data is then "
                             "bulk_emt.py's --out folder (it holds bulk-emt/)")
    parser.add_argument("--catalysis", type=Path, default=None, metavar="MODEL",
                        help="re-ship only jmp-mini-catalysis, from this model fine-tuned as tasks.yaml's ship.catalysis")
    parser.add_argument("--recipe", default="", help="with --aspirin, --catalysis or --bulk: how MODEL was made (recorded)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"Error: --data {args.data} is not a folder (the mini-JMP corpus)")
    sys.path.insert(0, str(HERE.parent))
    from backbone_speed import machine

    if args.bulk is not None:
        generation = json.loads((args.data / "bulk-emt" / "generation.json").read_text())
        ship_finetuned("jmp-mini-bulk", args.bulk, "bulk-emt", {
            "data": f"benchmarks/mini_jmp/bulk_emt.py {generation} (70 % train, 10 % val, 20 % test)",
            "recipe": args.recipe or "benchmarks/mini_jmp/bulk.yaml", "machine": machine(),
            "made_by": "benchmarks/mini_jmp/bulk.yaml, shipped by ship.py --bulk"}, args.data, args.models, args.test_data)
        return
    for option, (name, dataset, data, recipe) in SINGLE.items():
        model = getattr(args, option)
        if model is not None:
            ship_finetuned(name, model, dataset, {"data": data, "recipe": args.recipe or recipe, "machine": machine()},
                           args.data, args.models, args.test_data)
            return
    ship_all(args.run, json.loads(args.results.read_text()), args.data, args.models, args.test_data)


if __name__ == "__main__":
    main()
