"""benchmarks/mini_jmp's scripts without the corpus: a missing --data path is one ``Error:``
line (no traceback), variant.py plans tasks.yaml's runs with its overrides, and make_data.py regenerates a small catalysis-emt set in the corpus's
layout and label conventions (EMT, a few seconds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read

from jmp_ase.training.finetune_config import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "benchmarks" / "mini_jmp"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.mark.parametrize("script", ["run.py", "dihedral_seeds.py", "variant.py"])
def test_missing_corpus_is_one_error_line(script, tmp_path):
    missing = tmp_path / "no-corpus"
    proc = subprocess.run([sys.executable, str(MINI / script), "--data", str(missing), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and str(missing) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_make_data_writes_a_small_catalysis_emt_set(tmp_path):
    proc = subprocess.run([sys.executable, str(MINI / "make_data.py"), "--n", "24", "--max-steps", "8",
                           "--n-xtb", "0", "--out", str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout.splitlines()[-1]
    folder = tmp_path / "catalysis-emt"
    generation = json.loads((folder / "generation.json").read_text())
    assert generation["labeller"] == "ase EMT" and generation["seed"] == 0
    frames = {split: read(folder / f"{split}.extxyz", ":") for split in ("train", "val", "test")}
    assert {k: len(v) for k, v in frames.items()} == generation["counts"]
    assert sum(generation["counts"].values()) == 24 and all(generation["counts"].values())
    parents = {k: {a.info["parent"] for a in v} for k, v in frames.items()}
    assert not (parents["train"] & parents["val"] or parents["train"] & parents["test"] or parents["val"] & parents["test"])
    atoms = frames["train"][0]
    assert atoms.info["config_type"] == "relaxation" and atoms.info["id"] == f"cat-{atoms.info['parent']}-0"
    assert atoms.pbc.tolist() == [True, True, False]
    assert set(atoms.get_tags()) <= {0, 1, 2} and 1 in atoms.get_tags()
    fixed = atoms.constraints[0].index
    assert len(fixed) > 0 and atoms.positions[fixed, 2].max() < atoms.positions[:, 2].min() + 0.5  # the bottom layer
    # labels are EMT's energy and unconstrained forces
    reference = atoms.copy()
    reference.calc = EMT()
    assert np.isclose(atoms.get_potential_energy(), reference.get_potential_energy(), atol=1e-6)
    assert np.allclose(atoms.get_forces(apply_constraint=False), reference.get_forces(apply_constraint=False), atol=1e-5)


def test_make_data_xtb_sets_with_tblite(tmp_path):
    """Only where tblite is installed (it is not a dependency; CI skips this)."""
    pytest.importorskip("tblite.ase")
    proc = subprocess.run([sys.executable, str(MINI / "make_data.py"), "--n", "3", "--max-steps", "1", "--n-xtb", "12",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for kind in ("molecules", "reactions"):
        folder = tmp_path / f"{kind}-gfn2"
        frames = read(folder / "train.extxyz", ":")
        assert frames and not frames[0].pbc.any()
        assert frames[0].info["config_type"].startswith(f"{kind}-sigma") and frames[0].get_forces().shape[1] == 3
        assert json.loads((folder / "generation.json").read_text())["labeller"] == "tblite GFN2-xTB"


def test_bulk_emt_writes_stress_labelled_crystals(tmp_path):
    """bulk_emt.py (the data of jmp-mini-bulk): three splits of 3-D periodic fcc cells whose stored
    energy, forces and stress are EMT's; perfect crystals among them (zero forces)."""
    proc = subprocess.run([sys.executable, str(MINI / "bulk_emt.py"), "--structures", "40", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    frames = {split: read(tmp_path / "bulk-emt" / f"{split}.extxyz", ":") for split in ("train", "val", "test")}
    assert {k: len(v) for k, v in frames.items()} == {"train": 28, "val": 4, "test": 8}
    everything = [a for v in frames.values() for a in v]
    assert all(a.pbc.all() for a in everything)
    assert any(np.abs(a.get_forces()).max() < 1e-8 for a in everything)  # unrattled cells
    assert len({a.get_chemical_formula() for a in everything}) > 5
    for atoms in everything[:5]:
        reference = atoms.copy()
        reference.calc = EMT()
        assert np.isclose(atoms.get_potential_energy(), reference.get_potential_energy(), atol=1e-6)
        assert np.allclose(atoms.get_forces(), reference.get_forces(), atol=1e-5)
        assert np.allclose(atoms.get_stress(), reference.get_stress(), atol=1e-6)
    proc = subprocess.run([sys.executable, str(MINI / "bulk_emt.py"), "--structures", "3", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0 and "--structures" in proc.stderr


def test_run_plan_from_a_given_pretrained_model(tmp_path):
    """run.py --pretrained: no pre-training job, the fine-tuned side starts from the given model
    (its weights, not EMA copies) with the task's parent-only settings; scratch runs never get them."""
    sys.path.insert(0, str(MINI))
    try:
        import run
    finally:
        sys.path.remove(str(MINI))
    spec = run.load_yaml(MINI / "tasks.yaml")
    task = spec["tasks"]["aspirin-50"]
    fine = run.finetune_config(task, spec["common"], tmp_path, tmp_path / "f", 2e-3, False, "jmp-mini")
    scratch = run.finetune_config(task, spec["common"], tmp_path, tmp_path / "s", 2e-3, True, "jmp-mini")
    assert fine["pretrained"] == "jmp-mini" and fine["ema"] is False
    assert fine["init_energy_head"] == "molecules-gfn2" and "init_energy_head" not in scratch
    assert fine["loss"] == scratch["loss"] == "mse" and fine["max_epochs"] == scratch["max_epochs"]
    assert "finetune" not in fine and "learning_rates" not in fine
    for name, each in spec["tasks"].items():  # every task's two runs are valid fine-tuning settings
        for scratch_side in (False, True):
            cfg = run.finetune_config(each, spec["common"], tmp_path, tmp_path / name, 2e-3, scratch_side, "jmp-mini")
            FinetuneConfig.from_dict(cfg)
            assert ("head_epochs" in cfg) == (name == "bulk-modulus" and not scratch_side)
    own = run.finetune_config(task, spec["common"], tmp_path, tmp_path / "o", 2e-3, False,
                              tmp_path / "pretrain" / "pretrain.ckpt")
    assert own["ema"] is True
    proc = subprocess.run([sys.executable, str(MINI / "run.py"), "--pretrained", "jmp-mini", "--ship",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0 and "--ship" in proc.stderr


def test_run_reuses_scratch_runs_only_of_the_same_recipe(tmp_path):
    """--scratch-from links an earlier run's from-scratch runs (they do not depend on the
    pre-trained model) and refuses one whose config differs from the recipe planned now."""
    sys.path.insert(0, str(MINI))
    try:
        import run
    finally:
        sys.path.remove(str(MINI))
    earlier, out = tmp_path / "earlier", tmp_path / "out"
    name = "gap/scratch-lr0.002"
    for folder, lr in ((earlier, 2e-3), (out, 2e-3)):
        (folder / "configs").mkdir(parents=True)
        (folder / "configs" / "gap--scratch-lr0.002.yaml").write_text(f"lr: {lr}\nout: {folder / name}\n")
    (earlier / name).mkdir(parents=True)
    (earlier / name / "model.ckpt").write_bytes(b"")
    (earlier / name / "metrics.csv").write_text("epoch,elapsed_s\n0,12.5\n")
    jobs = [run.Job(name, [], info={"side": "scratch"}), run.Job("gap/finetune-lr0.002", [], info={"side": "finetune"})]
    run.reuse_scratch(jobs, earlier, out)
    assert jobs[0].ok and jobs[0].wall_s == 12.5 and not jobs[1].ok
    assert (out / name).resolve() == (earlier / name).resolve()
    (out / name).unlink()
    (out / "configs" / "gap--scratch-lr0.002.yaml").write_text(f"lr: 0.0005\nout: {out / name}\n")
    with pytest.raises(SystemExit, match="differs"):
        run.reuse_scratch([run.Job(name, [], info={"side": "scratch"})], earlier, out)


def test_variant_plans_the_fine_tuned_runs_with_overrides_and_seeds(tmp_path):
    """variant.py: tasks.yaml's fine-tuned recipe, one config per seed, the --set overrides on top and
    --replay-corpus's data sets under --data (nothing runs here)."""
    sys.path.insert(0, str(MINI))
    try:
        import variant
    finally:
        sys.path.remove(str(MINI))
    args = variant.argparse.Namespace(data=tmp_path / "corpus", out=tmp_path / "out", tasks=["gap"], seeds=[1, 2],
                                      pretrained="jmp-mini", lr=None, set=["replay_weight=0.5", "max_epochs=3"],
                                      replay_corpus=True)
    runs = variant.plan(args)
    assert [r["seed"] for r in runs] == [1, 2] and all(r["lr"] == 2e-3 for r in runs)
    config = variant.yaml.safe_load((runs[1]["out"] / "config.yaml").read_text())
    assert config["seed"] == 2 and config["replay_weight"] == 0.5 and config["max_epochs"] == 3
    assert config["cosine_epochs"] == 3 and config["warmup_epochs"] == pytest.approx(0.3)
    assert config["replay"]["molecules-gfn2"] == str(tmp_path / "corpus" / "molecules-gfn2" / "train.extxyz")
    assert config["pretrained"] == "jmp-mini" and not config.get("scratch")
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        variant.parse_set(["replay_weight"])


def test_forgetting_without_the_corpus_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(MINI / "forgetting.py"), "--data", str(tmp_path / "none")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
