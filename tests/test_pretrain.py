"""Multi-domain pre-training: sampler, loss, EMA, scale factors, edge dropout, export, NaN stop."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import ase.io
import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from torch import nn

from jmp_ase.data.batch import batch_from_atoms
from jmp_ase.nn.heads import direct_forces
from jmp_ase.io.jmp_checkpoint import ema_keys
from jmp_ase.nn.layers import ScaleFactor
from jmp_ase.io.pretrained import load_jmp_pretrained
from jmp_ase.training.ema import EMA, ema_update_
from jmp_ase.training.losses import structurewise_loss
from jmp_ase.training.sampler import TemperatureBatchSampler, balanced_partition, expanded_sizes, temperature_probabilities
from jmp_ase.training.scaling import fit_scale_factors, scale_factors

REPO = Path(__file__).resolve().parents[1]

# A backbone small enough for CPU tests (all four interaction types still present).
MICRO = dict(num_spherical=7, num_radial=8, num_blocks=1, emb_size_atom=16, emb_size_edge=16, emb_size_trip_in=8,
             emb_size_trip_out=8, emb_size_quad_in=4, emb_size_quad_out=4, emb_size_aint_in=8, emb_size_aint_out=8,
             emb_size_rbf=4, emb_size_cbf=4, emb_size_sbf=4, num_before_skip=1, num_after_skip=1, num_concat=1,
             num_atom=1, num_output_afteratom=1, num_atom_emb_layers=1, num_global_out_layers=1)


# ----------------------------------------------------------------------------- helpers (also used by
# test_resume.py and test_ddp.py)
def _labelled(atoms):
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def write_datasets(folder, n_slabs: int = 12, n_mols: int = 20) -> dict:
    """EMT-labelled periodic slabs with OC20 tags and molecules: two small pre-training sets."""
    folder = Path(folder)
    rng = np.random.default_rng(0)
    slabs = []
    for k in range(n_slabs):
        slab = fcc111(["Cu", "Ag", "Pt"][k % 3], size=(2, 2, 2), vacuum=4.0)
        slab.set_tags([1 if t == 1 else 0 for t in slab.get_tags()])  # ASE tags layers from the top
        add_adsorbate(slab, ["O", "H", "C"][k % 3], 1.8, "fcc")
        tags = slab.get_tags()
        tags[-1] = 2
        slab.set_tags(tags)
        slab.info.pop("adsorbate_info", None)
        slab.rattle(0.05, seed=int(rng.integers(1 << 30)))
        slabs.append(_labelled(slab))
    mols = []
    for k in range(n_mols):
        mol = molecule(["CH4", "H2O", "NH3", "CO2", "C2H2"][k % 5])
        mol.rattle(0.05, seed=int(rng.integers(1 << 30)))
        mols.append(_labelled(mol))
    paths = {"slabs": folder / "slabs.extxyz", "mols": folder / "mols.extxyz"}
    ase.io.write(paths["slabs"], slabs)
    ase.io.write(paths["mols"], mols)
    return {k: str(v) for k, v in paths.items()}


def pretrain_config(paths: dict, out, val: bool = False, **trainer) -> dict:
    """Micro pre-training run; ``val`` adds validation on the first structures every 2 steps."""
    cfg = {
        "out_dir": str(out), "seed": 0,
        "model": {"backbone": dict(MICRO), "num_mlps": 2, "edge_dropout": 0.1},
        "data": {"batch_size": 4, "temperature": 2.0, "datasets": [
            {"name": "slabs", "train": paths["slabs"], "cutoff": 5.0, "max_neighbors": 30},
            {"name": "mols", "train": paths["mols"], "cutoff": 4.0, "max_neighbors": 30}]},
        "optim": {"lr": 1.0e-3, "warmup_steps": 2},
        "scale_fit": {"num_batches": 1},
        "trainer": {"max_steps": 3, "accelerator": "cpu", "checkpoint_every_n_steps": 2, "log_every_n_steps": 1,
                    **trainer},
    }
    if val:
        for spec in cfg["data"]["datasets"]:
            spec.update(val=spec["train"], val_index=":5")
        cfg["trainer"].setdefault("val_every_n_steps", 2)
    return cfg


def subprocess_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("LOCAL_RANK", None)
    return env


PYTHON = sys.executable



@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return write_datasets(tmp_path_factory.mktemp("pretrain-data"))


# ----------------------------------------------------------------------------- sampler
def test_temperature_probabilities():
    sizes = [5351, 7488, 1130]
    p = temperature_probabilities(sizes, 2.0)
    expected = np.sqrt(np.array(sizes) / sum(sizes))
    assert np.allclose(p, expected / expected.sum())
    assert np.allclose(temperature_probabilities(sizes, 1.0), np.array(sizes) / sum(sizes))
    assert np.allclose(temperature_probabilities(sizes, 1e9), 1 / 3, atol=1e-6)
    n = expanded_sizes(sizes, p)  # JMP's merged_dataset: proportional to p, none shrunk
    assert all(a >= b for a, b in zip(n, sizes)) and min(a / b for a, b in zip(n, sizes)) == 1.0
    assert np.allclose(np.array(n) / sum(n), p, atol=2e-4)


def test_sampler_frequencies_match_p():
    from scipy.stats import chisquare

    sizes, epochs = [400, 60, 15], 4
    sampler = TemperatureBatchSampler(sizes, batch_size=8, temperature=2.0, seed=3)
    p = temperature_probabilities(sizes, 2.0)
    counts = np.zeros(3)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        seen = [set() for _ in sizes]
        for batch in sampler:
            for task, index, _ in batch:
                counts[task] += 1
                seen[task].add(index)
        assert [len(s) for s in seen] == sizes  # every item of every data set each epoch
    assert chisquare(counts, p * counts.sum()).pvalue > 0.05
    assert np.allclose(counts / counts.sum(), p, atol=0.01)
    mixed = [len({t for t, _, _ in b}) > 1 for b in TemperatureBatchSampler(sizes, 8, 2.0, seed=3)]
    assert np.mean(mixed) > 0.5  # batches mix data sets, as in JMP


@pytest.mark.parametrize("balanced", [False, True])
def test_sampler_ranks_disjoint_and_reproducible(balanced):
    sizes = [50, 23]
    natoms = [list(range(1, 51)), list(range(3, 26))] if balanced else None
    ranks = [TemperatureBatchSampler(sizes, 4, 2.0, seed=1, num_replicas=3, rank=r, natoms=natoms) for r in range(3)]
    assert len({len(s) for s in ranks}) == 1
    seeds = [[item[2] for b in s for item in b] for s in ranks]
    flat = sum(seeds, [])
    assert len(flat) == len(set(flat)) == ranks[0].per_replica * 3  # disjoint shares, padded epoch covered
    again = TemperatureBatchSampler(sizes, 4, 2.0, seed=1, num_replicas=3, rank=1, natoms=natoms)
    assert [item[2] for b in again for item in b] == seeds[1]  # same seed and epoch: same batches
    assert [item[2] for b in ranks[1] for item in b] != seeds[1]  # a finished pass moves to the next epoch


def test_balanced_partition():
    parts = balanced_partition(np.array([10, 9, 3, 3, 2, 1]), 2)
    totals = sorted(sum([10, 9, 3, 3, 2, 1][i] for i in p) for p in parts)
    assert totals == [14, 14]


def test_sampler_resumes_mid_epoch():
    s = TemperatureBatchSampler([30, 7], 4, 2.0, seed=5)
    s.set_epoch(2)
    full = list(s)
    state = s.state_dict(batches_done=3)
    resumed = TemperatureBatchSampler([30, 7], 4, 2.0, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning sets the same epoch again: the position stays
    assert list(resumed) == full[3:]
    nxt = TemperatureBatchSampler([30, 7], 4, 2.0, seed=5)
    nxt.set_epoch(3)
    assert list(resumed) == list(nxt)  # the next pass is the whole next epoch
    assert s.state_dict(batches_done=len(s)) == {"epoch": 3, "start_batch": 0, "seed": 5}
    assert s.state_dict(batches_done=2) == {"epoch": 2, "start_batch": 2, "seed": 5}


# ----------------------------------------------------------------------------- loss
def test_structurewise_loss_by_hand():
    torch.manual_seed(0)
    atom_batch = torch.tensor([0, 0, 1, 1, 1])
    e_pred, e_true = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0])
    f_pred, f_true = torch.randn(5, 3), torch.randn(5, 3)
    lam_e, lam_f = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 3.0])  # λ_F = <N> of each data set
    terms = structurewise_loss(e_pred, e_true, f_pred, f_true, atom_batch, lam_e, lam_f)
    energy = (1.0 * 0.5 + 1.0 * 3.0) / 2
    per_atom = [math.sqrt(sum((f_pred[i, k].item() - f_true[i, k].item()) ** 2 for k in range(3))) for i in range(5)]
    force = (2.0 * sum(per_atom[:2]) / 2 + 3.0 * sum(per_atom[2:]) / 3) / 2
    assert terms.energy.item() == pytest.approx(energy)
    assert terms.force.item() == pytest.approx(force, rel=1e-6)
    assert terms.loss.item() == pytest.approx(energy + force, rel=1e-6)
    assert terms.per_structure[1].item() == pytest.approx(3.0 + 3.0 * sum(per_atom[2:]) / 3, rel=1e-6)


# ----------------------------------------------------------------------------- EMA
def test_ema_update_math():
    ema, p = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -2.0])]
    ema_update_(ema, p, 0.99)
    assert torch.allclose(ema[0], torch.tensor([0.99 * 1 + 0.01 * 3, 0.99 * 2 - 0.01 * 2]))


def test_ema_callback_follows_steps_and_checkpoints():
    module = nn.Linear(2, 1)
    trainer = SimpleNamespace(global_step=0)
    cb = EMA(decay=0.9, every_n_steps=1)
    cb.on_fit_start(trainer, module)
    expected = [p.detach().clone() for p in module.parameters()]
    for step in range(1, 4):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(float(step))
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, None, step - 1)
        cb.on_train_batch_end(trainer, module, None, None, step - 1)  # no new step: no update
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, module.parameters())]
    assert all(torch.allclose(a, b) for a, b in zip(cb.ema, expected))
    ckpt = {"optimizer_states": [{"state": {}, "param_groups": []}], "callbacks": {cb.state_key: cb.state_dict()}}
    cb.on_save_checkpoint(trainer, module, ckpt)
    assert len(ckpt["optimizer_states"][0]["ema"]) == len(list(module.parameters()))
    other = EMA(decay=0.5)
    other.on_load_checkpoint(trainer, module, ckpt)
    other.load_state_dict(ckpt["callbacks"]["EMA"])
    other.on_fit_start(trainer, module)
    assert "ema" not in ckpt["optimizer_states"][0] and other.decay == 0.9
    assert all(torch.allclose(a, b) for a, b in zip(other.ema, expected))
    raw = [p.detach().clone() for p in module.parameters()]
    with other.averaged_weights(module):
        assert all(torch.allclose(p, e) for p, e in zip(module.parameters(), expected))
    assert all(torch.equal(p, r) for p, r in zip(module.parameters(), raw))


# ----------------------------------------------------------------------------- scale factors
class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = ScaleFactor(), ScaleFactor()

    def forward(self, x):
        y = self.first(3.0 * x, ref=x)
        return self.second(torch.cat([2.0 * y, y], dim=1))


def test_fit_scale_factors_formula_and_order():
    torch.manual_seed(0)
    batches = [torch.randn(50, 4), torch.randn(70, 4)]
    values = fit_scale_factors(_Toy(), batches)
    assert list(values) == ["first", "second"]
    assert values["first"] == pytest.approx(1 / 3, rel=1e-5)
    # the second factor is fitted with the first in effect: its input has y = x (ref-free: var_in = 1)
    var_out = sum(torch.var(torch.cat([2 * b, b], 1), dim=0).mean().item() * len(b) for b in batches) / 120
    assert values["second"] == pytest.approx(1 / math.sqrt(var_out), rel=1e-5)


def test_scale_factor_order_is_jmps(reference_dir):
    from jmp_ase.nn.config import BackboneConfig
    from jmp_ase.nn.model import JMPPretrainedModel

    keys = [line.split("\t")[0] for line in (reference_dir / "jmp-s-state-dict.tsv").read_text().splitlines()]
    jmp_order = [k[: -len(".scale_factor")] for k in keys if k.endswith(".scale_factor")]
    small_jmp_s = BackboneConfig.from_dict({**MICRO, "num_blocks": 4})  # JMP-S layout, small sizes
    assert list(scale_factors(JMPPretrainedModel(small_jmp_s, 1))) == jmp_order


# ----------------------------------------------------------------------------- data preparation
def _data(datasets, tmp_path, **overrides):
    from jmp_ase.training.pretrain import backbone_config
    from jmp_ase.training.pretrain_config import PretrainConfig
    from jmp_ase.training.pretrain_data import PretrainData

    cfg = PretrainConfig.from_dict({**pretrain_config(datasets, tmp_path / "run"), **overrides})
    bb = backbone_config(cfg)
    return cfg, bb, PretrainData(cfg, bb.qint_tags, bb.num_elements)


def test_edge_dropout_resubselects_graphs(datasets, tmp_path):
    from jmp_ase.training.pretrain_data import drop_edges

    _, _, data = _data(datasets, tmp_path)
    for task in (0, 1):
        sample, settings = data.train[task][0], data.settings[task]
        same = drop_edges(sample, settings, 0.0, np.random.default_rng(0))
        for g in ("main", "a2a", "a2ee2a", "qint"):
            assert torch.equal(same.graphs.edge_index[g], sample.graphs.edge_index[g]), g
        dropped = drop_edges(sample, settings, 0.5, np.random.default_rng(1))
        def edges(graphs):
            return {tuple(e) for e in torch.cat([graphs.edge_index["a2a"].T, graphs.cell_offset["a2a"]], 1).tolist()}

        kept = dropped.graphs.edge_index["a2a"]
        assert 0 < kept.shape[1] < sample.graphs.num_edges("a2a") and edges(dropped.graphs) < edges(sample.graphs)
        degree = torch.bincount(kept[1], minlength=sample.natoms)
        main_degree = torch.bincount(dropped.graphs.edge_index["main"][1], minlength=sample.natoms)
        assert torch.equal(main_degree, degree.clamp(max=settings.max_neighbors))
        again = drop_edges(sample, settings, 0.5, np.random.default_rng(1))
        assert torch.equal(again.graphs.edge_index["main"], dropped.graphs.edge_index["main"])


def test_collate_normalises_per_data_set(datasets, tmp_path):
    _, _, data = _data(datasets, tmp_path)
    info = data.task_info
    assert [t["name"] for t in info] == ["slabs", "mols"]
    assert info[0]["force_loss_scale"] == pytest.approx(9.0) and info[1]["energy_loss_scale"] == 1.0
    items = [(t, i, 7, data.train[t][i]) for t, i in ((0, 1), (1, 2), (1, 3))]
    batch, targets = data._collate(True)(items)
    for b, (t, i, _, sample) in enumerate(items):
        refs = info[t]["element_references"]
        expected = (sample.labels["energy"] - sum(refs[int(z)] for z in sample.arrays["numbers"])) / info[t]["energy_std"]
        assert targets["energy"][b].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        atoms = batch.atom_batch == b
        assert torch.allclose(targets["forces"][atoms] * info[t]["force_rms"],
                              torch.as_tensor(sample.labels["forces"], dtype=torch.float32), atol=1e-5)
        assert targets["ids"][b][:2] == (info[t]["name"], i)
    assert targets["task"].tolist() == [0, 1, 1]
    assert targets["force_scale"].tolist() == pytest.approx([info[0]["force_loss_scale"]] + [info[1]["mean_natoms"]] * 2)


# ----------------------------------------------------------------------------- end to end
def test_pretrain_exports_jmp_checkpoint(datasets, tmp_path):
    from jmp_ase.training.pretrain import pretrained_calculator, run_pretrain

    out = run_pretrain(pretrain_config(datasets, tmp_path / "run", val=True))
    assert out == tmp_path / "run" / "pretrain.ckpt" and (tmp_path / "run" / "last.ckpt").is_file()
    content = torch.load(out, map_location="cpu", weights_only=True)
    hp = content["hyper_parameters"]
    assert [t["name"] for t in hp["tasks"]] == ["slabs", "mols"] and content["global_step"] == 3
    assert {1, 6, 7, 8} <= set(hp["tasks"][1]["element_references"])
    state = content["state_dict"]
    assert all(k.split(".")[0] in ("embedding", "backbone", "output") for k in state)
    assert all(v.item() != 0 for k, v in state.items() if k.endswith("scale_factor"))  # fitted before training
    ema = content["optimizer_states"][0]["ema"]
    assert len(ema) == len(ema_keys(state))
    raw, names = load_jmp_pretrained(out)
    averaged, _ = load_jmp_pretrained(out, ema=True)
    assert names == ["slabs", "mols"] and len(raw.output.out_energy) == 2
    assert torch.equal(raw.state_dict()["output.out_forces.1.0.weight"], state["output.out_forces.1.0.weight"])
    assert not torch.equal(averaged.embedding.atom_embedding.weight, raw.embedding.atom_embedding.weight)
    load_jmp_pretrained(tmp_path / "run" / "last.ckpt", ema=True)  # the Lightning checkpoint has JMP's layout too
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in lines[0] and "train/mols/force_loss" in lines[0] and len(lines) >= 4
    assert "val/slabs/energy_mae" in lines[0] and "val/mols/forces_mae" in lines[0] and "val/loss" in lines[0]
    units = json.loads((tmp_path / "run" / "metrics_units.json").read_text())
    assert set(lines[0].split(",")) <= set(units)  # a unit for every column
    assert units["val/slabs/energy_mae"] == "eV" and units["val/mols/forces_mae"] == "eV/Å"
    # The exported head predicts eV and eV/Å: its normalised outputs times the data set's statistics,
    # plus its element references, all as the file states them (computed here by hand).
    mols = hp["tasks"][1]
    assert abs(mols["energy_std"] - 1) > 0.1 and abs(mols["force_rms"] - 1) > 0.1  # units tell apart
    calc = pretrained_calculator(out, "mols")
    for atoms in ase.io.read(datasets["mols"], ":3"):
        batch = batch_from_atoms([atoms], calc.graph_settings)
        with torch.no_grad():
            emb = averaged.embed(batch)
            energy_head = averaged.output.out_energy[1](emb.node_embedding)[:, 0].sum().item()
            force_head = direct_forces(averaged.output.out_forces[1](emb.edge_embedding)[:, 0], emb.vector,
                                       emb.edge_index[1], len(atoms)).numpy()
        energy = mols["energy_std"] * energy_head + sum(mols["element_references"][int(z)] for z in atoms.numbers)
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-5, abs=1e-5 * mols["energy_std"])
        np.testing.assert_allclose(atoms.get_forces(), mols["force_rms"] * force_head, rtol=1e-4,
                                   atol=1e-5 * mols["force_rms"])


def test_nan_loss_stops_with_clear_message(datasets, tmp_path):
    import lightning.pytorch as pl

    from jmp_ase.training.pretrain import NonFiniteLossError, PretrainModule

    cfg, bb, data = _data(datasets, tmp_path)
    hp = {"backbone": bb.to_dict(), "num_mlps": 2, "tasks": data.task_info, "optim": dataclasses.asdict(cfg.optim)}
    module = PretrainModule(hp, data)
    with torch.no_grad():
        module.output.out_energy[1][0].weight.fill_(float("nan"))  # only the molecules' head breaks
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(module)
    message = str(err.value)
    assert "non-finite loss" in message and "data set 'mols' structures" in message and "slabs" not in message
    assert datasets["mols"] in message and "step 0" in message
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).any() for k in before)


def test_config_errors_name_the_key(datasets, tmp_path):
    from jmp_ase.training.pretrain_config import PretrainConfig

    cfg = pretrain_config(datasets, tmp_path)
    with pytest.raises(ValueError, match="unknown pre-training setting trainer.'max_step'"):
        PretrainConfig.from_dict({**cfg, "trainer": {"max_step": 3}})
    with pytest.raises(ValueError, match=r"data.datasets\[0\].'cutof'"):
        PretrainConfig.from_dict({**cfg, "data": {"datasets": [{"name": "x", "train": datasets["mols"], "cutof": 5}]}})
    resolved = PretrainConfig.from_dict({**cfg, "ema": None})
    assert resolved.ema is None and resolved.optim.betas == [0.9, 0.95]
