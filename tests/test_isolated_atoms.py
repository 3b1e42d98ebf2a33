"""isolated_atom_references: an atom without neighbours has exactly its element reference, so
a molecule pulled apart ends at the sum of its references; forces and stress are unchanged."""
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.data.batch import batch_from_atoms
from jmp_ase.io.model_file import load_model, model_settings, save_model
from jmp_ase.nn.config import tiny
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.nn.model import FineTunedModel, ModelConfig
from jmp_ase.training.finetune import FinetuneConfig, run_finetune
from models import emt_clusters

REFERENCES = {1: -13.6, 8: -432.1, 29: -3.5}


def models(committee=1, seed=0):
    """(plain, pinned): the same weights without and with isolated_atom_references."""
    torch.manual_seed(seed)
    spec = HeadSpec("energy", scale=0.7, shift=0.3, element_references=REFERENCES, committee=committee)
    out = []
    for pinned in (False, True):
        config = ModelConfig(tiny(), [spec], cutoff=4.0, max_neighbors=8, elements=list(REFERENCES),
                             isolated_atom_references=pinned)
        out.append(FineTunedModel(config).double().eval())
    out[1].load_state_dict(out[0].state_dict())
    return out


def water(distance=0.97):
    return Atoms("OH2", positions=[[0, 0, 0], [distance, 0, 0], [-0.25 * distance, 0.94 * distance, 0]])


@pytest.mark.parametrize("committee", [1, 3])
def test_isolated_atom_is_its_reference(committee):
    plain, pinned = models(committee)
    for z, ref in REFERENCES.items():
        batch = batch_from_atoms([Atoms(numbers=[z])], pinned.graph_settings, dtype=torch.float64)
        # to float32 round-off of the reference: the head keeps its references as a float32 buffer
        assert pinned(batch)["energy"].item() == pytest.approx(ref, rel=1e-7, abs=0)
        assert abs(plain(batch)["energy"].item() - ref) > 1e-3  # the plain head's atom is not pinned
    # water pulled apart (20 Å, beyond the cutoff) ends at the sum of its references
    far = batch_from_atoms([water(20.0)], pinned.graph_settings, dtype=torch.float64)
    assert pinned(far)["energy"].item() == pytest.approx(REFERENCES[8] + 2 * REFERENCES[1], rel=1e-7, abs=0)


@pytest.mark.parametrize("atoms", [water(), bulk("Cu", "fcc", a=3.6, cubic=True)], ids=["water", "cu"])
def test_forces_and_stress_unchanged(atoms):
    """The correction depends on the elements alone: the energy moves by a constant per element,
    forces and stress stay those of the same weights without it."""
    plain, pinned = models()
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=1)
    batch = batch_from_atoms([atoms], plain.graph_settings, dtype=torch.float64)
    a, b = plain(batch, compute_stress=atoms.pbc.all()), pinned(batch, compute_stress=atoms.pbc.all())
    torch.testing.assert_close(a["forces"], b["forces"], rtol=0, atol=1e-12)
    if atoms.pbc.all():
        torch.testing.assert_close(a["stress"], b["stress"], rtol=0, atol=1e-12)
    # the shift: per element, the plain model's isolated-atom energy minus the reference
    offset, references = 0.0, plain.heads["energy"].element_references
    for z in atoms.numbers:
        single = batch_from_atoms([Atoms(numbers=[z])], plain.graph_settings, dtype=torch.float64)
        offset += plain(single)["energy"].item() - references[z].item()
    assert (a["energy"] - b["energy"]).item() == pytest.approx(offset, abs=1e-9)


def test_gradients_reach_the_isolated_pass():
    """In training the subtracted isolated-atom output is part of the graph: the loss's gradient
    of the energy head differs from the plain model's."""
    plain, pinned = models()
    batch = batch_from_atoms([water()], plain.graph_settings, dtype=torch.float64)
    grads = []
    for model in (plain, pinned):
        model.train()
        model.zero_grad()
        model(batch)["energy"].sum().backward()
        grads.append(model.embedding.atom_embedding.weight.grad[0].clone())  # hydrogen's embedding row
    assert not torch.allclose(grads[0], grads[1])


def test_model_file_round_trip_and_calculator(tmp_path):
    _, pinned = models()
    path = tmp_path / "pinned.ckpt"
    save_model(pinned, path)
    loaded = load_model(path)
    assert loaded.model_config.isolated_atom_references
    calc = JMPCalculator(path, dtype="float64")
    atoms = Atoms("H")
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(REFERENCES[1], rel=1e-7, abs=0)
    np.testing.assert_allclose(atoms.get_forces(), 0.0, atol=1e-12)


def test_needs_elements():
    with pytest.raises(ValueError, match="elements"):
        ModelConfig(tiny(), [HeadSpec("energy")], isolated_atom_references=True)


def test_finetune_with_given_references(tmp_path):
    """``--element-references`` replace the fitted ones; with ``--isolated-atom-references`` the
    fine-tuned model gives each isolated atom exactly its given energy; a missing element and a
    run without an energy target are refused."""
    train = emt_clusters(6, 0)
    ase.io.write(tmp_path / "train.extxyz", train, format="extxyz")
    ase.io.write(tmp_path / "val.extxyz", emt_clusters(2, 1), format="extxyz")
    given = {"Cu": -0.5, "Pt": -1.5}
    settings = dict(train=str(tmp_path / "train.extxyz"), val=str(tmp_path / "val.extxyz"), scratch=True,
                    backbone="tiny", cutoff=4.0, max_neighbors=8, max_epochs=2, batch_size=3, lr=1e-3,
                    element_references="Cu=-0.5,Pt=-1.5", isolated_atom_references=True,
                    out=str(tmp_path / "run"), progress=False, accelerator="cpu")
    summary = run_finetune(FinetuneConfig.from_dict(settings))
    model = load_model(summary["model"])
    assert model.model_config.isolated_atom_references
    assert "isolated atoms at their element references" in model_settings(summary["model"])[0]  # jmp-train info
    assert model.model_config.heads[0].element_references == {29: -0.5, 78: -1.5}
    calc = JMPCalculator(model, dtype="float64")
    for symbol, energy in given.items():
        assert calc.get_potential_energy(Atoms(symbol)) == pytest.approx(energy, rel=1e-7, abs=0)
    with pytest.raises(ValueError, match=r"lacks training element\(s\) \[78\]"):
        run_finetune(FinetuneConfig.from_dict(dict(settings, element_references={"Cu": -0.5},
                                                   out=str(tmp_path / "run2"))))
    with pytest.raises(ValueError, match="needs an energy head"):
        FinetuneConfig.from_dict(dict(settings, targets=["homo_lumo_gap"]))
