"""Fine-tuning reads its parent first and takes the parent's graph settings (issue 11, outcome 1):
the graphs of training are the graphs the saved model builds at inference."""
from __future__ import annotations

import dataclasses

import ase.io
import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111
from ase.cluster import Icosahedron
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list
from ase.calculators.singlepoint import SinglePointCalculator
from click.testing import CliRunner

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.data.graphs import structure_graphs_from_atoms
from jmp_ase.io.model_file import load_model, save_model
from jmp_ase.nn.config import tiny
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.nn.model import FineTunedModel, ModelConfig
from jmp_ase.training import finetune as F
from jmp_ase.training.cli import main
from models import emt_clusters


def tagged_slabs(n: int, seed: int = 0):
    """O on Cu(111) with OC20 tags (0 sub-surface, 1 surface, 2 adsorbate), rattled, EMT labels."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
        layer = slab.get_tags()  # ASE: 1 = top layer
        add_adsorbate(slab, "O", 1.3, "fcc")
        slab.set_tags(np.concatenate([np.where(layer == 1, 1, 0), [2]]))
        slab.positions += rng.normal(scale=0.05, size=slab.positions.shape)
        slab.calc = EMT()
        slab.calc = SinglePointCalculator(slab, energy=slab.get_potential_energy(), forces=slab.get_forces())
        frames.append(slab)
    return frames


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A jmp-ase model file whose graph settings all differ from the fine-tuning defaults:
    qint_tags (0, 1, 2), tags oc20, cutoff 4 Å, 8 neighbours; trained (it says) on Cu only."""
    root = tmp_path_factory.mktemp("parent")
    torch.manual_seed(0)
    backbone = dataclasses.replace(tiny(), qint_tags=(0, 1, 2), absolute_rbf_cutoff=4.5)
    model = FineTunedModel(ModelConfig(backbone, [HeadSpec("energy")], cutoff=4.0, max_neighbors=8, tags="oc20",
                                       elements=[29]))
    save_model(model, root / "parent.ckpt")
    ase.io.write(root / "train.extxyz", tagged_slabs(6, 0), format="extxyz")
    ase.io.write(root / "val.extxyz", tagged_slabs(2, 1), format="extxyz")
    return root


def _run(root, out, capture, **extra):
    """run_finetune with the parent and no graph settings; returns (summary, the data sets it trained on)."""
    seen = {}

    class Spy(F.FinetuneModule):
        def __init__(self, model, config, scales, datasets, provenance=None, replay=None):
            seen.update(datasets)
            super().__init__(model, config, scales, datasets, provenance, replay)

    capture.setattr(F, "FinetuneModule", Spy)
    summary = F.run_finetune(dict(pretrained=str(root / "parent.ckpt"), train=str(root / "train.extxyz"),
                                  val=str(root / "val.extxyz"), max_epochs=1, batch_size=3, out=str(out),
                                  accelerator="cpu", progress=False, **extra))
    return summary, seen


def test_training_and_inference_graphs_are_identical(parent, tmp_path, monkeypatch, capsys):
    summary, datasets = _run(parent, tmp_path / "run", monkeypatch)
    model = load_model(summary["model"])
    settings = model.graph_settings
    assert (settings.cutoff, settings.max_neighbors, settings.tags, tuple(settings.qint_tags)) == (4.0, 8, "oc20",
                                                                                                 (0, 1, 2))
    inference = JMPCalculator(summary["model"]).graph_settings
    default = dataclasses.replace(inference, qint_tags=(1, 2))
    frames = ase.io.read(parent / "train.extxyz", ":")
    differs = False
    for i in range(len(datasets["train"])):
        sample = datasets["train"][i]
        atoms = frames[sample.source[1]]
        ours = structure_graphs_from_atoms(atoms, inference)
        assert set(ours.edge_index) == set(sample.graphs.edge_index)
        for kind, edges in sample.graphs.edge_index.items():
            assert torch.equal(edges, ours.edge_index[kind]), kind
            assert torch.equal(sample.graphs.cell_offset[kind], ours.cell_offset[kind]), kind
        other = structure_graphs_from_atoms(atoms, default)
        differs |= any(not torch.equal(e, other.edge_index[k]) for k, e in sample.graphs.edge_index.items())
    assert differs, "the data do not tell the parent's qint_tags from the default: the test could not fail"
    err = capsys.readouterr().err
    assert "cutoff 4 Å (parent)" in err and "qint_tags (0, 1, 2) (parent)" in err and "tags oc20 (parent)" in err
    # elements the parent never saw: named at the start and recorded
    assert "warning: elements [8]" in err
    assert model.model_config.provenance["unseen_elements"] == [8]
    assert model.model_config.provenance["graph_settings"]["from"]["qint_tags"] == "parent"


def test_explicit_settings_override_the_parent(parent, tmp_path, monkeypatch, capsys):
    summary, datasets = _run(parent, tmp_path / "run", monkeypatch, cutoff=3.5, max_neighbors=6, tags="ignore",
                             qint_tags="1,2")
    settings = load_model(summary["model"]).graph_settings
    assert (settings.cutoff, settings.max_neighbors, settings.tags, tuple(settings.qint_tags)) == (3.5, 6, "ignore",
                                                                                                 (1, 2))
    assert datasets["train"].settings == settings
    assert "cutoff 3.5 Å (option)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="exceeds the backbone's radial-basis cutoff 4.5"):
        _run(parent, tmp_path / "too-far", monkeypatch, cutoff=5.0)


def icosahedra(n: int, seed: int = 0):
    """Rattled Cu13 icosahedra (the centre has 12 neighbours within 5 Å) with EMT labels and a made-up gap."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = Icosahedron("Cu", 2)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        atoms.info["gap"] = 1.0 + 0.1 * rng.normal()
        frames.append(atoms)
    return frames


def test_cli_jmp_mini_without_graph_options(tmp_path):
    """Molecules and clusters (no periodic structure) with an energy target: untruncated by default
    where that exceeds the parent's limit, so the model's energy is continuous; a graph-level
    target keeps the parent's 16 neighbours, as do periodic data
    (test_training_and_inference_graphs_are_identical)."""
    ase.io.write(tmp_path / "small.extxyz", emt_clusters(10, 0), format="extxyz")
    ase.io.write(tmp_path / "icosahedra.extxyz", icosahedra(10), format="extxyz")

    def run(out, data, targets):
        result = CliRunner().invoke(main, ["finetune", "--pretrained", "jmp-mini", "--train",
                                           str(tmp_path / data), "--targets", targets,
                                           "--max-epochs", "1", "--batch-size", "5", "--accelerator", "cpu",
                                           "--out", str(tmp_path / out), "--no-progress"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output, load_model(tmp_path / out / "model.ckpt").model_config

    output, config = run("ico", "icosahedra.extxyz", "energy,forces")
    assert "cutoff 5 Å (parent), max_neighbors 45 (untruncated: up to 12 neighbours within 5 Å in the " \
           "training data (default for molecules))" in output
    assert (config.cutoff, config.max_neighbors) == (5.0, 45)
    output, config = run("small", "small.extxyz", "energy,forces")
    assert "max_neighbors 16 (parent, which truncates no training structure)" in output
    assert config.max_neighbors == 16
    output, config = run("gap", "icosahedra.extxyz", "gap")
    assert "cutoff 5 Å (parent), max_neighbors 16 (parent)," in output
    assert (config.cutoff, config.max_neighbors) == (5.0, 16)


def test_untruncated_max_neighbors_keeps_every_neighbour_of_the_training_data(parent, tmp_path, monkeypatch, capsys):
    """max_neighbors: untruncated -> the smallest limit under which no training structure loses a
    neighbour in any of the four graphs (the quadruplet graph's 8/30 share binds)."""
    summary, datasets = _run(parent, tmp_path / "run", monkeypatch, max_neighbors="untruncated")
    settings = load_model(summary["model"]).graph_settings
    frames = ase.io.read(parent / "train.extxyz", ":")
    counts = [np.bincount(neighbor_list("i", a, settings.cutoff), minlength=len(a)).max() for a in frames]
    assert settings.qint_max_neighbors >= max(counts) > int((settings.max_neighbors - 1) * 8 / 30)
    assert "untruncated: up to" in capsys.readouterr().err
    for atoms in frames:
        graphs = structure_graphs_from_atoms(atoms, settings)
        assert len(graphs.truncated) == 0
        full = structure_graphs_from_atoms(atoms, dataclasses.replace(settings, max_neighbors=10_000))
        assert {g: graphs.num_edges(g) for g in graphs.edge_index} == {g: full.num_edges(g) for g in full.edge_index}
    with pytest.raises(ValueError, match="a number or 'untruncated'"):
        F.FinetuneConfig.from_dict(dict(pretrained="jmp-mini", train="x", targets=["energy"], out="o",
                                        max_neighbors="all"))
