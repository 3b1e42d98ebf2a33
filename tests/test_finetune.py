"""jmp_ase.training.finetune and jmp_ase.training.schedules: losses, LLRD, schedule, EMA, a short fine-tuning run."""
import csv
import dataclasses
import math

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from jmp_ase.data.batch import batch_from_atoms
from jmp_ase.calculators.calculator import JMPCalculator
from models import emt_clusters
from jmp_ase.io.model_file import load_model
from jmp_ase.nn.config import DEFAULT_DIHEDRAL_DAMPING, tiny
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.nn.model import FineTunedModel, ModelConfig
from jmp_ase.training.data import DatasetSpec, collate
from jmp_ase.training.ema import EMA
from jmp_ase.training.finetune import ErrorSums, FinetuneConfig, build_model, run_finetune
from jmp_ase.training.finetune_module import split_heads
from jmp_ase.training.losses import compute_losses, energy_loss, force_loss
from jmp_ase.training.scaling import scale_factors
from jmp_ase.training.schedules import WarmupCosineRLP, param_groups_with_llrd, warmup_cosine_factor


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("emt")
    ase.io.write(path / "train.extxyz", emt_clusters(12, 0), format="extxyz")
    ase.io.write(path / "val.extxyz", emt_clusters(4, 1), format="extxyz")
    return path


def base_config(data_dir, out, **kw):
    values = dict(train=str(data_dir / "train.extxyz"), val=str(data_dir / "val.extxyz"), cutoff=4.0,
                  max_neighbors=8, max_epochs=2, batch_size=6, lr=2e-3, warmup_epochs=0.5, cosine_epochs=2,
                  ema_decay=0.5, out=str(out), progress=False, accelerator="cpu")
    values.update(kw)
    return values


def tiny_model(heads=None):
    heads = heads or [HeadSpec("energy")]
    return FineTunedModel(ModelConfig(tiny(), heads, cutoff=4.0, max_neighbors=8))


def test_loss_terms_by_hand():
    e_pred, e_true = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, -1.0, 0.5])
    assert energy_loss(e_pred, e_true).item() == pytest.approx((1 + 1 + 0) / 3)
    f_pred = torch.tensor([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    f_true = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 2.0]])
    assert force_loss(f_pred, f_true).item() == pytest.approx((5 + 1) / 2)
    s_pred, s_true = torch.zeros(1, 3, 3), torch.full((1, 3, 3), 0.1)
    preds = {"energy": e_pred, "forces": f_pred, "stress": s_pred}
    targets = {"energy": e_true, "forces": f_true, "stress": s_true}
    total, terms = compute_losses(preds, targets, {"energy": 2.0, "forces": 10.0, "stress": 1.0},
                                  {"energy": 0.5, "forces": 2.0, "stress": 0.1})
    assert terms["stress"].item() == pytest.approx(0.1)
    assert total.item() == pytest.approx(2 * (2 / 3) / 0.5 + 10 * 3 / 2 + 1 * 0.1 / 0.1)
    # "mse": squared errors over σ² (forces: squared error norms); the logged terms stay MAEs
    total, mse_terms = compute_losses(preds, targets, {"energy": 2.0, "forces": 10.0, "stress": 1.0},
                                      {"energy": 0.5, "forces": 2.0, "stress": 0.1}, kind="mse")
    assert total.item() == pytest.approx(2 * (2 / 3) / 0.25 + 10 * (25 + 1) / 2 / 4 + 1 * 0.01 / 0.01)
    assert {k: v.item() for k, v in mse_terms.items()} == {k: v.item() for k, v in terms.items()}
    with pytest.raises(ValueError, match="loss must be one of"):
        compute_losses(preds, targets, {}, {}, kind="huber")
    sums = ErrorSums()
    sums.add({"forces": f_pred[:1]}, {"forces": f_true[:1]})
    sums.add({"forces": f_pred[1:]}, {"forces": f_true[1:]})
    metrics = sums.metrics({"forces": 1.0}, {"forces": 1.0})
    assert metrics["loss"] == pytest.approx(3.0)  # epoch L2 over atoms, not a mean of batch means
    assert metrics["forces_mae"] == pytest.approx(8 / 6)
    assert metrics["forces_rmse"] == pytest.approx(math.sqrt(26 / 6))


def test_llrd_param_groups():
    model = tiny_model()
    groups = param_groups_with_llrd(model, lr=1e-3, decay=0.5, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"top", "block_1", "block_0", "embedding"}  # tiny has 2 blocks
    assert by_name["top"]["lr"] == pytest.approx(1e-3)
    assert by_name["block_1"]["lr"] == pytest.approx(5e-4)
    assert by_name["block_0"]["lr"] == pytest.approx(2.5e-4)
    assert by_name["embedding"]["lr"] == pytest.approx(1.25e-4)
    ids = {name: {id(p) for p in g["params"]} for name, g in by_name.items()}
    params = dict(model.named_parameters())
    assert id(params["embedding.atom_embedding.weight"]) in ids["embedding"]
    assert id(next(p for n, p in params.items() if n.startswith("backbone.int_blocks.1."))) in ids["block_1"]
    assert id(next(p for n, p in params.items() if n.startswith("backbone.out_blocks.0."))) in ids["block_0"]
    assert id(next(p for n, p in params.items() if n.startswith("backbone.out_blocks.2."))) in ids["block_1"]
    assert id(next(p for n, p in params.items() if n.startswith("heads.energy."))) in ids["top"]
    assert sum(len(g["params"]) for g in groups) == len(params)
    with pytest.raises(ValueError, match="decay"):
        param_groups_with_llrd(model, 1e-3, 0.0)


def test_schedule_values():
    assert warmup_cosine_factor(0, 10, 110, 0.1, 0.2) == pytest.approx(0.1)
    assert warmup_cosine_factor(5, 10, 110, 0.1, 0.2) == pytest.approx(0.55)
    assert warmup_cosine_factor(10, 10, 110, 0.1, 0.2) == pytest.approx(1.0)
    assert warmup_cosine_factor(60, 10, 110, 0.1, 0.2) == pytest.approx(0.6)
    assert warmup_cosine_factor(110, 10, 110, 0.1, 0.2) == pytest.approx(0.2)
    assert warmup_cosine_factor(500, 10, 110, 0.1, 0.2) == pytest.approx(0.2)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param], "lr": 1.0}, {"params": [], "lr": 0.5, "lr_scale": 0.5}])
    scheduler = WarmupCosineRLP(optimizer, warmup_steps=2, cosine_steps=4, warmup_start_factor=0.1,
                                min_lr_factor=0.1, rlp_factor=0.5, rlp_patience=1)
    lrs = [scheduler.get_last_lr()]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr())
    assert [round(x[0], 6) for x in lrs] == [0.1, 0.55, 1.0, 0.55, 0.1, 0.1]
    assert lrs[-1][1] == pytest.approx(0.5 * 0.2)  # JMP's floor min_lr_factor / lr_scale for decayed groups
    assert not scheduler.plateau_step(1.0)  # best
    assert not scheduler.plateau_step(1.0)  # 1 bad epoch <= patience
    assert scheduler.plateau_step(1.0)  # 2 bad epochs: reduce
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # the cosine does not undo it
    state = scheduler.state_dict()
    assert state["bad_epochs"] == 0 and state["best"] == 1.0


def test_finetuning_ema_average_and_swap():
    """Fine-tuning uses the pre-training EMA: per optimiser step, over the trained parameters,
    swapped in for validation (the weights of the saved model) and back."""
    from types import SimpleNamespace

    holder = torch.nn.Module()
    holder.model = tiny_model()
    holder.model.backbone.out_mlp_F.requires_grad_(False)  # frozen (outside the loss): not averaged
    trainer = SimpleNamespace(global_step=0)
    ema = EMA(decay=0.75)
    ema.on_fit_start(trainer, holder)
    assert ema.names == [n for n, p in holder.named_parameters() if p.requires_grad]
    assert not any(".out_mlp_F." in n for n in ema.names)
    weight = holder.model.heads.energy.mlp[0].weight
    start = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    ema.on_train_batch_end(trainer, holder, None, None, 0)  # no optimiser step yet: no update
    torch.testing.assert_close(ema.ema[ema.names.index("model.heads.energy.mlp.0.weight")], start)
    trainer.global_step = 1
    ema.on_train_batch_end(trainer, holder, None, None, 0)
    ema.on_validation_start(trainer, holder)
    torch.testing.assert_close(weight.detach(), start + 0.25)
    ema.on_validation_end(trainer, holder)
    torch.testing.assert_close(weight.detach(), start + 1.0)


def test_heads_carry_normalisation(data_dir):
    config = FinetuneConfig.from_dict(dict(base_config(data_dir, "unused"), scratch=True, backbone="tiny",
                                           targets=["energy", "forces", "gap"], reductions={"gap": "max"}))
    dataset = DatasetSpec(config.train, config.targets, 4.0, 8).build()
    model, info = build_model(config, dataset)
    heads = {h.name: h for h in model.model_config.heads}
    stats, refs = info["statistics"], info["element_references"]
    assert set(refs) == {29, 78}
    assert heads["energy"].element_references == refs
    assert heads["energy"].scale == pytest.approx(stats["force_rms"])
    assert heads["energy"].shift == pytest.approx(stats["energy_mean_per_atom"])
    assert heads["gap"].kind == "scalar" and heads["gap"].reduction == "max"
    assert heads["gap"].shift == pytest.approx(stats["gap_mean"]) and heads["gap"].scale == pytest.approx(stats["gap_std"])
    assert model.model_config.elements == [29, 78]


def test_loss_decreases_on_a_batch(data_dir):
    config = FinetuneConfig.from_dict(dict(base_config(data_dir, "unused"), scratch=True, backbone="tiny"))
    dataset = DatasetSpec(config.train, config.targets, 4.0, 8).build()
    torch.manual_seed(0)
    model, _ = build_model(config, dataset)
    batch, targets = collate([dataset[i] for i in range(6)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss, _ = compute_losses(model(batch), targets, {"energy": 1.0, "forces": 10.0}, {})
        loss.backward()  # forces are -dE/dr with create_graph: the force loss trains the weights
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.fixture(scope="module")
def finetuned(data_dir, reference_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    summary = run_finetune(base_config(data_dir, out, pretrained=str(reference_dir / "jmp-tiny-pretrain.ckpt"),
                                       ema=True, test=str(data_dir / "val.extxyz")))
    return out, summary


def test_finetune_from_jmp_checkpoint(finetuned, data_dir, reference_dir):
    out, summary = finetuned
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for key in ("train_loss", "val_loss", "train_energy_mae", "val_forces_mae", "lr"):
        assert math.isfinite(float(rows[-1][key]))
    assert (out / "last.ckpt").is_file()
    assert summary["best_epoch"] in (0, 1)
    assert "forces: MAE" in summary["text"] and "meV/Å" in summary["text"]
    assert summary["test"]["energy_mae"] == pytest.approx(summary["val"]["val_energy_mae"], rel=1e-4)
    model = load_model(out / "model.ckpt")
    provenance = model.model_config.provenance
    assert provenance["parent"].endswith("jmp-tiny-pretrain.ckpt") and provenance["ema"] is True
    assert provenance["targets"] == ["energy", "forces"]
    assert provenance["best_epoch"] == summary["best_epoch"]
    assert provenance["data"]["train"].endswith("train.extxyz")
    # backbone weights come from the parent (EMA), moved by at most a few steps of training
    from jmp_ase.io.pretrained import load_jmp_pretrained

    parent, _ = load_jmp_pretrained(reference_dir / "jmp-tiny-pretrain.ckpt", ema=True)
    w0 = parent.state_dict()["embedding.atom_embedding.weight"]
    w1 = model.state_dict()["embedding.atom_embedding.weight"]
    assert (w1 - w0).abs().max() < 0.05
    # the saved model predicts eV: the energy error equals the validation MAE of the summary
    atoms = ase.io.read(data_dir / "val.extxyz", ":")
    calc = JMPCalculator(str(out / "model.ckpt"))
    errors = []
    for a in atoms:
        label = a.get_potential_energy()
        a.calc = calc
        errors.append(abs(a.get_potential_energy() - label))
        assert a.get_forces().shape == (len(a), 3)
    assert np.mean(errors) == pytest.approx(summary["val"]["val_energy_mae"], rel=1e-3, abs=1e-5)


def scaled_variance_ratios(model, atoms, batch_size):
    """Per ScaleFactor: mean over batches of var(scaled output) / var(reference input)."""
    ratios = {name: [] for name in scale_factors(model)}

    def observer(name, layer):
        def observe(x, ref):
            var_in = torch.var(ref, dim=0).mean() if ref is not None else torch.tensor(1.0)
            var_out = torch.var(x, dim=0).mean() * layer.scale_factor**2
            ratios[name].append(float(var_out / var_in))
        return observe

    for name, layer in scale_factors(model).items():
        layer.observer = observer(name, layer)
    try:
        with torch.no_grad():
            for start in range(0, len(atoms), batch_size):
                model.embed(batch_from_atoms(atoms[start:start + batch_size], model.graph_settings))
    finally:
        for layer in scale_factors(model).values():
            layer.observer = None
    return {name: float(np.mean(r)) for name, r in ratios.items() if r}


def test_finetune_from_scratch_scalar_target(data_dir, tmp_path):
    summary = run_finetune(base_config(data_dir, tmp_path / "gap", scratch=True, backbone="tiny", targets="gap",
                                       reductions={"gap": "mean"}, units={"gap": "eV"}, max_epochs=1))
    model = load_model(summary["model"])
    assert [h.name for h in model.model_config.heads] == ["gap"]
    assert model.model_config.provenance["parent"] == "scratch"
    assert "gap: MAE" in summary["text"]
    # scratch runs fit the ScaleFactors on training batches first: a fresh model has them all at 0
    # (identity); fitting sets each to a positive value that brings the variance of its output
    # back to that of its reference input on the training data (training moves that only a little)
    factors = scale_factors(model)
    values = torch.stack([m.scale_factor for m in factors.values()])
    assert factors and torch.isfinite(values).all() and (values > 0).all(), values
    ratios = scaled_variance_ratios(model, ase.io.read(data_dir / "train.extxyz", ":"), batch_size=6)
    assert set(ratios) == set(factors)
    assert all(0.5 < r < 2.0 for r in ratios.values()), ratios
    with open(summary["metrics_csv"]) as f:
        elapsed = [float(row["elapsed_s"]) for row in csv.DictReader(f)]
    assert len(elapsed) == 1 and elapsed[0] > 0


def test_cutoff_beyond_radial_basis_is_refused(data_dir, tmp_path):
    backbone = {**tiny().to_dict(), "absolute_rbf_cutoff": 3.0}
    with pytest.raises(ValueError, match="exceeds the backbone's radial-basis cutoff"):
        run_finetune(base_config(data_dir, tmp_path / "x", scratch=True, backbone=backbone, cutoff=4.0))


def test_config_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown fine-tuning setting 'learning_rate'"):
        FinetuneConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="parent model"):
        FinetuneConfig.from_dict({"train": "x.extxyz"})
    with pytest.raises(ValueError, match="cannot resume"):
        run_finetune(base_config(data_dir, tmp_path / "none", scratch=True, backbone="tiny", resume=True))


def test_direct_forces_and_stress_heads_train(tmp_path):
    rng = np.random.default_rng(2)
    cells = []
    for k in range(4):
        atoms = Atoms("Cu2", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 2.9, pbc=True)
        atoms.positions += rng.normal(scale=0.05, size=(2, 3))
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                                           stress=atoms.get_stress())
        cells.append(atoms)
    ase.io.write(tmp_path / "bulk.extxyz", cells, format="extxyz")
    common = dict(train=str(tmp_path / "bulk.extxyz"), scratch=True, backbone="tiny", cutoff=4.0, max_neighbors=8)
    for targets, direct in ((["energy", "forces", "stress"], False), (["energy", "forces"], True)):
        config = FinetuneConfig.from_dict(dict(common, targets=targets, direct_forces=direct))
        dataset = DatasetSpec(config.train, targets, 4.0, 8).build()
        model, _ = build_model(config, dataset)
        batch, labels = collate([dataset[i] for i in range(4)])
        model.train()
        preds = model(batch, compute_stress="stress" in targets)
        assert preds["forces"].shape == (8, 3)
        loss, terms = compute_losses(preds, labels, {}, {})
        assert set(terms) == set(targets)
        loss.backward()
        head = "forces" if direct else "energy"
        assert model.heads[head].mlp[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="direct forces.*stress"):
        FinetuneConfig.from_dict(dict(common, targets=["energy", "forces", "stress"], direct_forces=True))


def test_scratch_takes_the_parents_architecture_not_its_weights(data_dir, reference_dir):
    from jmp_ase.training.finetune import load_parent

    parent = str(reference_dir / "jmp-tiny-pretrain.ckpt")
    config = FinetuneConfig.from_dict(dict(base_config(data_dir, "unused"), pretrained=parent, scratch=True))
    dataset = DatasetSpec(config.train, config.targets, 4.0, 8).build()
    model, _ = build_model(config, dataset)
    backbone, state, _ = load_parent(parent)
    # The parent's architecture, with the smooth quadruplet basis that conservative forces turn on.
    assert model.model_config.backbone == dataclasses.replace(backbone, smooth_dihedral=True,
                                                              dihedral_damping=DEFAULT_DIHEDRAL_DAMPING)
    assert model.model_config.provenance == {"parent": "scratch", "architecture_of": parent}
    ours = model.state_dict()
    assert set(state) <= set(ours)
    weights = [k for k in state if k.endswith("weight")]
    assert weights and all(not torch.equal(ours[k], state[k]) for k in weights)


def test_final_stage_schedule_and_weights():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param], "lr": 1.0}, {"params": [], "lr": 0.5, "lr_scale": 0.5}])
    scheduler = WarmupCosineRLP(optimizer, warmup_steps=1, cosine_steps=3, warmup_start_factor=0.1,
                                min_lr_factor=0.1, rlp_factor=0.5, rlp_patience=0, final_start=3, final_factor=0.2)
    lrs = [scheduler.get_last_lr()]
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr())
    assert [round(x[0], 6) for x in lrs] == [0.1, 1.0, 0.55, 0.2, 0.2]
    assert lrs[-1][1] == pytest.approx(0.5 * 0.2)  # each group's own rate (LLRD) times the factor
    assert not scheduler.plateau_step(1.0) and not scheduler.plateau_step(2.0)  # rests in the final stage
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2)
    config = FinetuneConfig.from_dict({"train": "x.extxyz", "scratch": True, "max_epochs": 3, "final_epochs": 1,
                                       "loss_weights": {"energy": 1.0, "forces": 10.0}})
    assert config.stage_loss_weights(False) == {"energy": 1.0, "forces": 10.0}
    assert config.stage_loss_weights(True) == {"energy": 10.0, "forces": 10.0}
    config.final_loss_weights = {"energy": 100.0}
    assert config.stage_loss_weights(True) == {"energy": 100.0, "forces": 10.0}
    for bad in (3, -1):
        with pytest.raises(ValueError, match="--final-epochs"):
            FinetuneConfig.from_dict({"train": "x.extxyz", "scratch": True, "max_epochs": 3, "final_epochs": bad})


def test_linear_probe_start_moves_only_the_heads_first(data_dir):
    """head_epochs (LP-FT): before start_step every group but the heads' is at rate 0 and its weights
    stay exactly as they were (AdamW's decay scales with the rate); then they warm up on their own."""
    torch.manual_seed(0)
    model = tiny_model()
    groups = split_heads(param_groups_with_llrd(model, 1e-2, 0.8, 0.1), model.heads.parameters(), 2, 1e-2, 0.1)
    assert groups[0]["name"] == "heads" and {id(p) for p in groups[0]["params"]} == {id(p) for p in model.heads.parameters()}
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-2)
    scheduler = WarmupCosineRLP(optimizer, warmup_steps=1, cosine_steps=6, warmup_start_factor=0.1)
    dataset = DatasetSpec(str(data_dir / "train.extxyz"), ["energy", "forces"], 4.0, 8).build()
    batch, targets = collate([dataset[i] for i in range(4)])
    heads = {id(p) for p in model.heads.parameters()}

    def snapshot():
        return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in heads}, \
            torch.cat([p.detach().flatten().clone() for p in model.heads.parameters()])

    for step in range(4):
        rates = scheduler.get_last_lr()
        assert rates[0] > 0
        if step < 2:
            assert all(r == 0.0 for r in rates[1:])
        else:
            assert all(r > 0 for r in rates[1:])
        if step == 2:  # the parent's layers start their own warmup at start_step
            assert rates[1:] == pytest.approx([0.1 * g["lr_scale"] * 1e-2 for g in optimizer.param_groups[1:]])
        before, head_before = snapshot()
        optimizer.zero_grad()
        loss, _ = compute_losses(model(batch), targets, {"energy": 1.0, "forces": 10.0}, {})
        loss.backward()
        optimizer.step()
        scheduler.step()
        after, head_after = snapshot()
        assert not torch.equal(head_before, head_after)
        still = all(torch.equal(before[n], after[n]) for n in before)
        assert still == (step < 2), step
    for bad, match in (({"scratch": True}, "pre-trained parent"), ({"head_epochs": 3}, "head_epochs must be"),
                       ({"cosine_epochs": 1}, "below 1, the epochs of the cosine")):
        with pytest.raises(ValueError, match=match):
            FinetuneConfig.from_dict({"train": "x.extxyz", "pretrained": "jmp-mini", "max_epochs": 4,
                                      "final_epochs": 1, "head_epochs": 1, **bad})


def test_a_run_with_a_head_alone_start(data_dir, tmp_path):
    """head_epochs reaches the optimiser of a real run: the heads' group first, every other group
    waiting for one epoch of steps (12 structures in batches of 6)."""
    run_finetune(base_config(data_dir, tmp_path / "run", pretrained="jmp-mini", max_epochs=2, head_epochs=1))
    state = torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=False)
    groups = state["optimizer_states"][0]["param_groups"]
    assert groups[0]["name"] == "heads" and groups[0]["start_step"] == 0
    assert len(groups) > 1 and all(g["start_step"] == 2 for g in groups[1:])
    assert state["lr_schedulers"][0]["start_steps"] == [0] + [2] * (len(groups) - 1)


def test_final_stage_run(data_dir, tmp_path):
    """The last epoch trains with the final weights at the constant final rate, and the saved model is
    the best of that stage although earlier epochs had a lower val_loss (weighted differently)."""
    summary = run_finetune(base_config(data_dir, tmp_path / "run", scratch=True, backbone="tiny", max_epochs=3,
                                       final_epochs=1, final_lr_factor=0.05, loss_weights={"energy": 1, "forces": 10},
                                       final_loss_weights={"energy": 1000}))
    with open(tmp_path / "run" / "steps.csv") as f:
        steps = list(csv.DictReader(f))
    final = [float(r["lr"]) for r in steps if r["epoch"] == "2"]
    assert final and all(lr == pytest.approx(2e-3 * 0.05) for lr in final)
    assert all(float(r["lr"]) != pytest.approx(2e-3 * 0.05) for r in steps if r["epoch"] != "2")
    with open(tmp_path / "run" / "metrics.csv") as f:
        val_loss = [float(row["val_loss"]) for row in csv.DictReader(f)]
    assert val_loss[2] > min(val_loss[:2])  # energy x1000: the final stage's val_loss is on another scale
    assert summary["best_epoch"] == 2
    assert load_model(summary["model"]).model_config.provenance["best_epoch"] == 2
