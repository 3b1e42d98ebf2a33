"""Committee energy heads: K MLPs on one backbone pass; energy = their mean, energy_std and
forces_std their spread; each member trained on the labels; the spread grows off the data."""
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.data.batch import batch_from_atoms
from jmp_ase.io.model_file import load_model, model_settings
from jmp_ase.nn.config import tiny
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.nn.model import FineTunedModel, ModelConfig
from jmp_ase.training.finetune import FinetuneConfig, run_finetune
from jmp_ase.training.losses import compute_losses
from models import emt_clusters


def committee_model(k=3, seed=0):
    torch.manual_seed(seed)
    spec = HeadSpec("energy", scale=0.7, shift=0.1, element_references={29: -1.0, 78: -2.0}, committee=k)
    return FineTunedModel(ModelConfig(tiny(), [spec], cutoff=4.0, max_neighbors=8)).double()


def cluster():
    return Atoms("Cu2Pt", positions=[[0, 0, 0], [2.4, 0.1, 0], [0.2, 2.3, 0.3]])


def test_members_mean_and_spread():
    model = committee_model().eval()
    batch = batch_from_atoms([cluster(), cluster()[:2]], model.graph_settings, dtype=torch.float64)
    out = model(batch, compute_spread=True)
    head = model.heads["energy"]
    assert len(head.members) == 2 and "members.0.0.weight" in head.state_dict()
    # each member as a single head: the state of member k moved into `mlp`
    energies, forces = [], []
    for k in range(3):
        single = FineTunedModel(ModelConfig(tiny(), [HeadSpec("energy", scale=0.7, shift=0.1,
                                                             element_references={29: -1.0, 78: -2.0})],
                                            cutoff=4.0, max_neighbors=8)).double().eval()
        state = {n: v for n, v in model.state_dict().items() if "heads." not in n}
        mlp = head.mlp if k == 0 else head.members[k - 1]
        state.update({f"heads.energy.mlp.{n}": v for n, v in mlp.state_dict().items()})
        state["heads.energy.element_references"] = head.element_references
        single.load_state_dict(state)
        o = single(batch)
        energies.append(o["energy"].detach())
        forces.append(o["forces"])
    energies, forces = torch.stack(energies), torch.stack(forces)
    torch.testing.assert_close(out["energy"].detach(), energies.mean(0))
    torch.testing.assert_close(out["energy_std"].detach(), energies.std(0, correction=0))
    torch.testing.assert_close(out["forces"], forces.mean(0))
    spread = ((forces - forces.mean(0)) ** 2).sum(-1).mean(0).sqrt()
    torch.testing.assert_close(out["forces_std"], spread)
    assert (out["energy_std"] > 0).all() and (out["forces_std"] > 0).all()
    # without compute_spread: the same forces from one backward pass of the mean energy, no forces_std
    plain = model(batch)
    torch.testing.assert_close(plain["forces"], out["forces"])
    assert "forces_std" not in plain and "forces_members" not in plain


def test_single_head_files_are_unchanged():
    model = FineTunedModel(ModelConfig(tiny(), [HeadSpec("energy")], cutoff=4.0, max_neighbors=8))
    assert not [n for n in model.state_dict() if "members" in n]
    assert "energy_std" not in model.implemented_properties
    with pytest.raises(ValueError, match="committee"):
        HeadSpec("gap", "scalar", "mean", committee=2)
    with pytest.raises(ValueError, match="committee"):
        ModelConfig(tiny(), [HeadSpec("energy", committee=2), HeadSpec("forces", "direct_forces")])


def test_training_loss_is_the_members_mean():
    model = committee_model().train()
    batch = batch_from_atoms([cluster()], model.graph_settings, dtype=torch.float64)
    out = model(batch)
    assert out["energy_members"].shape == (3, 1) and out["forces_members"].shape == (3, 3, 3)
    targets = {"energy": torch.tensor([-4.0], dtype=torch.float64), "forces": torch.zeros(3, 3, dtype=torch.float64)}
    loss, terms = compute_losses(out, targets, {"energy": 1.0, "forces": 10.0}, {})
    members = [compute_losses({"energy": out["energy_members"][k], "forces": out["forces_members"][k]}, targets,
                              {"energy": 1.0, "forces": 10.0}, {})[0] for k in range(3)]
    torch.testing.assert_close(loss, sum(members) / 3)
    torch.testing.assert_close(terms["energy"], (out["energy"] - targets["energy"]).abs().mean())
    loss.backward()  # every member learns
    head = model.heads["energy"]
    assert all(m[0].weight.grad.abs().sum() > 0 for m in [head.mlp, *head.members])


def test_committee_finetune_and_calculator(tmp_path):
    """Four members fine-tuned together on 8 EMT clusters for 30 steps: on the training clusters they
    agree (forces_std 0.07 eV/Å when written), on the same clusters compressed to 75 % they do not
    (0.58 eV/Å; energy_std 0.07 -> 0.15 eV)."""
    train = emt_clusters(8, 0)
    ase.io.write(tmp_path / "train.extxyz", train, format="extxyz")
    ase.io.write(tmp_path / "val.extxyz", emt_clusters(2, 1), format="extxyz")
    torch.manual_seed(0)
    config = FinetuneConfig.from_dict(dict(
        train=str(tmp_path / "train.extxyz"), val=str(tmp_path / "val.extxyz"), scratch=True, backbone="tiny",
        cutoff=4.0, max_neighbors=8, max_epochs=30, batch_size=8, lr=5e-3, warmup_epochs=1, cosine_epochs=30,
        ema_decay=0.5, committee=4, loss_weights={"energy": 1.0, "forces": 10.0}, out=str(tmp_path / "run"),
        progress=False, accelerator="cpu"))
    summary = run_finetune(config)
    model = load_model(summary["model"])
    assert model.model_config.heads[0].committee == 4
    assert "heads energy (energy, committee of 4)" in model_settings(summary["model"])[0]  # jmp-train info
    calc = JMPCalculator(model, dtype="float64")
    assert {"energy_std", "forces_std"} <= set(calc.implemented_properties)
    inside = train[0].copy()
    e_std, f_std = calc.get_property("energy_std", inside), calc.get_property("forces_std", inside)
    assert np.isfinite(e_std) and f_std.shape == (len(inside),) and np.isfinite(f_std).all()
    near = [t.copy() for t in train[:4]]
    far = [t.copy() for t in near]
    for a in far:
        a.positions *= 0.75
    forces_std = {name: np.mean([r["forces_std"].mean() for r in calc.predict(group, properties=["forces_std"])])
                  for name, group in (("near", near), ("far", far))}
    energy_std = {name: np.mean([r["energy_std"] for r in calc.predict(group)])
                  for name, group in (("near", near), ("far", far))}
    assert forces_std["far"] > 3 * forces_std["near"], forces_std
    assert energy_std["far"] > 1.5 * energy_std["near"], energy_std
