"""The models shipped in jmp_ase/models/ load, say how they were made, and reproduce the test
errors recorded inside them on the 20-structure test slices in tests/data/shipped/.

The slices and the recorded numbers were written together by benchmarks/mini_jmp/ship.py, so
these tests need no mini-JMP corpus; a model file changed without re-running ship.py fails here.
"""
from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress
from ase.constraints import FixAtoms

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.io.model_file import MODELS_DIR, load_model, model_provenance, shipped_models
from jmp_ase.calculators.evaluation import labelled_errors

SLICES = Path(__file__).parent / "data" / "shipped"
PRETRAIN_HEADS = ("catalysis-emt", "molecules-gfn2", "reactions-gfn2")
RTOL = 2e-3  # float32 sums on another CPU; a different model moves these numbers by far more


def acetic_acid() -> Atoms:
    return molecule("CH3COOH")  # H, C, O only: the aspirin model's elements


def cu_slab_with_o() -> Atoms:
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    layer = slab.get_tags()  # 1 (top) .. 3 (bottom)
    add_adsorbate(slab, Atoms("O"), 1.2, position="fcc")
    tags = np.full(len(slab), 2)
    tags[: len(layer)] = np.where(layer == 1, 1, 0)
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(indices=np.flatnonzero(layer == 3)))
    return slab


def cu3au_rattled() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.symbols[0] = "Au"
    atoms = atoms.repeat(2)
    atoms.rattle(0.05, seed=1)
    return atoms


FINETUNED = {"jmp-mini-aspirin": acetic_acid, "jmp-mini-catalysis": cu_slab_with_o, "jmp-mini-bulk": cu3au_rattled}


def recorded_slice(record: dict) -> tuple[list, dict]:
    structures = ase.io.read(SLICES / record["test_slice"]["file"], ":")
    return structures, record["test_slice"]


def assert_reproduces(calc, record: dict) -> None:
    structures, expected = recorded_slice(record)
    assert len(structures) == expected["structures"] == 20
    found = labelled_errors(calc, structures)
    assert set(found) == set(expected) - {"file"}
    for key in ("energy_mae", "forces_mae", "stress_mae"):
        if key in expected:
            assert found[key] == pytest.approx(expected[key], rel=RTOL), key


def test_shipped_names_and_size():
    assert {"jmp-mini", *FINETUNED} <= set(shipped_models())
    total = sum(p.stat().st_size for p in MODELS_DIR.glob("*.ckpt"))
    assert total <= 25 * 1024 * 1024


@pytest.mark.parametrize("name", ["jmp-mini", *sorted(FINETUNED)])
def test_provenance(name):
    provenance = model_provenance(name)
    for key in ("name", "data", "recipe", "machine", "made_by"):
        assert provenance.get(key), key
    assert provenance["name"] == name
    assert "interim" not in str(provenance.get("status", "")).lower()
    records = provenance["heads"].values() if name == "jmp-mini" else [provenance]
    for record in records:
        for split in ("test", "test_slice"):
            assert record[split]["energy_mae"] > 0 and record[split]["forces_mae"] > 0


@pytest.mark.parametrize("name", sorted(FINETUNED))
def test_finetuned_reproduces_recorded_test_error(name):
    assert_reproduces(JMPCalculator(name), model_provenance(name))


@pytest.mark.parametrize("head", PRETRAIN_HEADS)
def test_pretrained_head_reproduces_recorded_test_error(head):
    record = model_provenance("jmp-mini")["heads"][head]
    assert_reproduces(JMPCalculator.from_jmp_checkpoint("jmp-mini", head=head), record)


@pytest.mark.parametrize("name", sorted(FINETUNED))
def test_predicts_finite_in_its_domain(name):
    atoms = FINETUNED[name]()
    assert set(atoms.numbers) <= set(load_model(name).model_config.elements)
    atoms.calc = JMPCalculator(name)
    assert np.isfinite(atoms.get_potential_energy())
    forces = atoms.get_forces()
    assert forces.shape == (len(atoms), 3) and np.isfinite(forces).all()


def test_jmp_mini_needs_a_head():
    with pytest.raises(ValueError, match="from_jmp_checkpoint"):
        JMPCalculator("jmp-mini")


def test_finetune_from_jmp_mini_by_name(tmp_path):
    from jmp_ase.training.finetune import load_parent, run_finetune

    backbone, state, info = load_parent("jmp-mini")
    assert backbone.absolute_rbf_cutoff == 5.0  # declared in the file, not visible in the shapes
    assert backbone.edge_dropout is None  # a pre-training regulariser, off for fine-tuning
    assert info["parent"] == "jmp-mini"
    data = ase.io.read(SLICES / "aspirin-gfn1-test20.extxyz", ":")
    ase.io.write(tmp_path / "train.extxyz", data[:8])
    ase.io.write(tmp_path / "val.extxyz", data[8:12])
    summary = run_finetune({"pretrained": "jmp-mini", "train": str(tmp_path / "train.extxyz"),
                            "val": str(tmp_path / "val.extxyz"), "cutoff": 5.0, "max_neighbors": 16,
                            "max_epochs": 1, "batch_size": 4, "out": str(tmp_path / "run"),
                            "accelerator": "cpu", "progress": False})
    model = load_model(summary["model"])
    assert model.model_config.provenance["parent"] == "jmp-mini"
    assert model.model_config.backbone.absolute_rbf_cutoff == 5.0


def test_cli_info_reports_provenance():
    from click.testing import CliRunner

    from jmp_ase.training.cli import main

    result = CliRunner().invoke(main, ["info", "jmp-mini"])
    assert result.exit_code == 0, result.output
    assert '"molecules-gfn2"' in result.output and '"test_slice"' in result.output
    listing = CliRunner().invoke(main, ["info"])
    assert "jmp-mini-aspirin" in listing.output
    missing = CliRunner().invoke(main, ["info", "no-such-model"])
    assert missing.exit_code != 0 and "shipped models" in missing.output


def test_bulk_model_stress_follows_emt_under_strain():
    """jmp-mini-bulk was fitted to EMT's stress: along an isotropic strain path of Cu, its
    pressure changes sign where EMT's does (within 1 % of the lattice constant) and has EMT's
    slope (the bulk modulus) within 25 %; its stress is -dE/dε (the energy's strain derivative)."""
    calc = JMPCalculator("jmp-mini-bulk", dtype="float64")
    scales = np.linspace(0.97, 1.03, 7)
    pressures = {}
    for name, c in (("model", calc), ("emt", EMT())):
        values = []
        for s in scales:
            atoms = bulk("Cu", "fcc", a=3.6 * s, cubic=True)
            atoms.calc = c
            values.append(-atoms.get_stress()[:3].mean())
        pressures[name] = np.array(values)
    zero = {k: np.interp(0.0, -v, scales) for k, v in pressures.items()}  # pressure falls as the cell grows
    assert abs(zero["model"] - zero["emt"]) < 0.01, zero
    slopes = {k: np.polyfit(scales, v, 1)[0] for k, v in pressures.items()}
    assert slopes["model"] == pytest.approx(slopes["emt"], rel=0.25), slopes
    atoms = cu3au_rattled()
    atoms.calc = calc
    numeric = calculate_numerical_stress(atoms, eps=1e-5, voigt=False)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), numeric, atol=1e-6)


def test_labelled_errors_report_stress_only_where_the_model_predicts_it():
    structures = ase.io.read(SLICES / "bulk-emt-test20.extxyz", ":4")  # periodic, with EMT stress labels
    direct = labelled_errors(JMPCalculator.from_jmp_checkpoint("jmp-mini", head="catalysis-emt"), structures)
    conservative = labelled_errors(JMPCalculator("jmp-mini-bulk"), structures)
    assert "stress_mae" not in direct and 0 < conservative["stress_mae"] < 0.01
