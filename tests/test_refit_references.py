"""jmp-train refit-references: per-element energy offsets fitted on labelled structures and
added to a model's element references. The energy error on those structures goes down (here
the MAE too; least squares promises it for the squared error), each energy moves by the sum of its atoms' offsets, forces do not change, and bad
input is one clear error."""
import ase.io
import numpy as np
from ase import Atoms
from click.testing import CliRunner

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.io.model_file import load_model, model_provenance, save_model
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.training.cli import main
from models import emt_clusters, tiny_model


def energies_forces(model, structures):
    calc = JMPCalculator(model, dtype="float64")
    out = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        out.append((atoms.get_potential_energy(), atoms.get_forces()))
    return out


def test_refit_lowers_the_energy_error_and_leaves_forces(tmp_path):
    model = tiny_model(elements=[29, 78])
    save_model(model, tmp_path / "model.ckpt")
    structures = emt_clusters(12, 0, gap=False)
    ase.io.write(tmp_path / "train.extxyz", structures)
    result = CliRunner().invoke(main, ["refit-references", str(tmp_path / "model.ckpt"), str(tmp_path / "train.extxyz"),
                                       "--out", str(tmp_path / "refit.ckpt")])
    assert result.exit_code == 0, result.output
    fit = model_provenance(tmp_path / "refit.ckpt")["reference_refit"]
    assert fit["structures"] == 12 and set(fit["offsets_eV"]) == {"Cu", "Pt"}
    assert fit["energy_mae_after"] < 0.5 * fit["energy_mae_before"]
    before = energies_forces(tmp_path / "model.ckpt", structures)
    after = energies_forces(tmp_path / "refit.ckpt", structures)
    labels = np.array([a.get_potential_energy() for a in structures])
    for atoms, (e0, f0), (e1, f1) in zip(structures, before, after):
        shift = sum(fit["offsets_eV"][s] for s in atoms.get_chemical_symbols())
        np.testing.assert_allclose(e1 - e0, shift, atol=1e-5)
        np.testing.assert_allclose(f1, f0, atol=1e-10)
    mae = np.abs(np.array([e for e, _ in after]) - labels).mean()
    np.testing.assert_allclose(mae, fit["energy_mae_after"], atol=1e-4)
    # the input is never overwritten
    again = CliRunner().invoke(main, ["refit-references", str(tmp_path / "model.ckpt"), str(tmp_path / "train.extxyz"),
                                      "--out", str(tmp_path / "refit.ckpt")])
    assert again.exit_code != 0 and "exists" in again.output


def test_refit_refuses_structures_without_energy_and_models_without_an_energy_head(tmp_path):
    save_model(tiny_model(elements=[29, 78]), tmp_path / "model.ckpt")
    ase.io.write(tmp_path / "bare.extxyz", [Atoms("Cu2", positions=[[0, 0, 0], [2.4, 0, 0]])])
    result = CliRunner().invoke(main, ["refit-references", str(tmp_path / "model.ckpt"), str(tmp_path / "bare.extxyz"),
                                       "--out", str(tmp_path / "a.ckpt")])
    assert result.exit_code != 0 and "energy" in result.output and "Traceback" not in result.output
    gap_only = tiny_model(elements=[29, 78], heads=[HeadSpec("gap", kind="scalar", reduction="mean")])
    save_model(gap_only, tmp_path / "gap.ckpt")
    ase.io.write(tmp_path / "train.extxyz", emt_clusters(2, 0, gap=False))
    result = CliRunner().invoke(main, ["refit-references", str(tmp_path / "gap.ckpt"), str(tmp_path / "train.extxyz"),
                                       "--out", str(tmp_path / "b.ckpt")])
    assert result.exit_code != 0 and "no energy head" in result.output
    assert not (tmp_path / "a.ckpt").exists() and not (tmp_path / "b.ckpt").exists()
    assert load_model(tmp_path / "model.ckpt") is not None
