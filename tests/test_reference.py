"""Acceptance test: our GemNet-OC reproduces the original JMP code's outputs.

Reference numbers come from ``tests/data/jmp-reference`` (outputs of facebookresearch/JMP
on a tiny checkpoint, see its README). Tolerance: max|ours - ref| <= 1e-4 max|ref| + 1e-7.
"""
import ase.io
import numpy as np
import pytest
import torch

from jmp_ase.nn.backbone import GemNetOCBackbone
from jmp_ase.data.batch import batch_from_atoms
from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.nn.config import jmp_l, jmp_s
from jmp_ase.data.graphs import GraphSettings
from jmp_ase.nn.heads import energy_mlp
from jmp_ase.nn.layers import scatter_sum
from jmp_ase.nn.model import AtomEmbedding
from jmp_ase.io.pretrained import load_jmp_pretrained

CKPT = "jmp-tiny-pretrain.ckpt"
NAMES = ["ethanol", "benzene", "formaldehyde", "pt111_co", "nacl_bulk"]


def assert_close(ours, ref, what):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    err = np.abs(ours - ref).max()
    bound = 1e-4 * np.abs(ref).max() + 1e-7
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"


@pytest.fixture(scope="module")
def structures(reference_dir):
    return {a.info["name"]: a for a in ase.io.read(reference_dir / "structures.extxyz", ":")}


def settings_of(atoms):
    # The fixture reads tags the OC20 way: the slab's own 0/1/2, all 2 where a structure has none.
    return GraphSettings(cutoff=float(atoms.info["cutoff"]), max_neighbors=int(atoms.info["max_neighbors"]),
                         tags="oc20")


def finetune_head(reference_dir, emb_size):
    head = energy_mlp(emb_size)
    state = torch.load(reference_dir / "finetune-energy-head.pt", weights_only=True)
    head.load_state_dict({k.removeprefix("finetune_energy."): v for k, v in state.items()})
    return head


@pytest.mark.parametrize("ema", [False, True], ids=["raw", "ema"])
@pytest.mark.parametrize("name", NAMES)
def test_backbone_and_heads_match_reference(reference_dir, structures, name, ema):
    ref = np.load(reference_dir / ("reference-ema.npz" if ema else "reference-raw.npz"))
    model, _ = load_jmp_pretrained(reference_dir / CKPT, ema=ema)
    atoms = structures[name]
    batch = batch_from_atoms([atoms], settings_of(atoms))
    with torch.no_grad():
        out = model.embed(batch)
        assert out.edge_index.shape[1] == int(ref[f"{name}/num_main_edges"])
        assert_close(out.node_embedding, ref[f"{name}/node_embedding"], "node embedding")
        summed = scatter_sum(out.edge_embedding, out.edge_index[1], len(atoms))
        assert_close(summed, ref[f"{name}/edge_embedding_sum_by_target"], "edge embedding")
        for task in range(2):
            energy, forces = model(batch, task=task)
            assert_close(energy[0], ref[f"{name}/task{task}_energy"], f"task {task} energy")
            assert_close(forces, ref[f"{name}/task{task}_direct_forces"], f"task {task} forces")


def ema_finetune_head(reference_dir, head):
    """The EMA copy of the fine-tune head that produced reference-ema.npz.

    The fixture ships only the raw head. Its generator drew every EMA tensor as
    ``raw + 0.01 * randn`` from ``torch.manual_seed(1000)`` (this reproduces the
    checkpoint's EMA tuple exactly, checked below) and the head's EMA copy with the
    next two draws of the same stream. We regenerate it the same way.
    """
    from jmp_ase.io.jmp_checkpoint import ema_keys, safe_load

    ckpt = safe_load(reference_dir / CKPT)
    state, ema = ckpt["state_dict"], ckpt["optimizer_states"][0]["ema"]
    generator = torch.Generator().manual_seed(1000)
    for key, tensor in zip(ema_keys(state), ema):
        noise = torch.randn(tensor.shape, generator=generator)
        torch.testing.assert_close(tensor, state[key] + 0.01 * noise, rtol=0, atol=1e-6)
    with torch.no_grad():
        for layer in (head[0], head[2]):
            layer.weight += 0.01 * torch.randn(layer.weight.shape, generator=generator)
    return head


@pytest.mark.parametrize("ema", [False, True], ids=["raw", "ema"])
@pytest.mark.parametrize("name", NAMES)
def test_conservative_finetune_energy_matches_reference(reference_dir, structures, name, ema):
    ref = np.load(reference_dir / ("reference-ema.npz" if ema else "reference-raw.npz"))
    model, _ = load_jmp_pretrained(reference_dir / CKPT, ema=ema)
    head = finetune_head(reference_dir, model.config.emb_size_atom)
    if ema:
        head = ema_finetune_head(reference_dir, head)
    atoms = structures[name]
    batch = batch_from_atoms([atoms], settings_of(atoms))
    batch.positions.requires_grad_(True)
    energy = head(model.embed(batch).node_embedding).sum()
    forces = -torch.autograd.grad(energy, batch.positions)[0]
    assert_close(energy.detach(), ref[f"{name}/finetune_energy"], "fine-tune energy")
    assert_close(forces, ref[f"{name}/finetune_conservative_forces"], "conservative forces")


@pytest.mark.parametrize("name", NAMES)
def test_calculator_from_jmp_checkpoint(reference_dir, structures, name):
    ref = np.load(reference_dir / "reference-raw.npz")
    atoms = structures[name].copy()
    calc = JMPCalculator.from_jmp_checkpoint(
        reference_dir / CKPT, head="task1", cutoff=atoms.info["cutoff"], max_neighbors=atoms.info["max_neighbors"],
        tags="oc20",
    )
    atoms.calc = calc
    assert_close(atoms.get_potential_energy(), ref[f"{name}/task1_energy"], "calculator energy")
    assert_close(atoms.get_forces(), ref[f"{name}/task1_direct_forces"], "calculator forces")


def read_table(path):
    rows = []
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split(",")) if shape else ()))
    return rows


@pytest.mark.parametrize("size,config", [("s", jmp_s), ("l", jmp_l)])
def test_state_dict_tables(reference_dir, size, config):
    with torch.device("meta"):
        cfg = config()
        embedding = AtomEmbedding(cfg.num_elements, cfg.emb_size_atom)
        backbone = GemNetOCBackbone(cfg)
    ours = [("embedding." + k, tuple(v.shape)) for k, v in embedding.state_dict().items()]
    ours += [("backbone." + k, tuple(v.shape)) for k, v in backbone.state_dict().items()]
    assert ours == read_table(reference_dir / f"jmp-{size}-state-dict.tsv")
    expected = {"s": 38_873_088, "l": 216_416_256}[size]
    params = {id(p): p.numel() for m in (embedding, backbone) for p in m.parameters()}
    assert sum(params.values()) == expected
