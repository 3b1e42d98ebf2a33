"""Streaming pre-training: lazy selections, one-pass statistics, batch-by-batch sampling, bounded memory."""
from __future__ import annotations

import json
import pickle
import subprocess

import numpy as np
import pytest
import torch

from test_pretrain import MICRO, PYTHON, REPO, subprocess_env, write_datasets

from jmp_ase.training.data import (
    SelectedStructures, StreamingStatistics, atom_counts, dataset_statistics, fit_element_references, open_structures,
    write_lmdb,
)
from jmp_ase.training.sampler import TemperatureBatchSampler, balanced_partition

ELEMENTS = np.array([1, 6, 7, 8])
SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O"}
REFS = {1: -13.6, 6: -1030.0, 7: -1480.0, 8: -2040.0}


def write_molecules(path, n: int, natoms: int = 8, seed: int = 0) -> None:
    """``n`` labelled molecules of ``natoms`` (at most 12) atoms on a rattled 3x2x2 grid 1.5 Å
    apart (all pairs within 4 Å), written as extxyz text (ASE's writer would take most of the
    test's time)."""
    rng = np.random.default_rng(seed)
    grid = 1.5 * np.array([(i, j, k) for i in range(3) for j in range(2) for k in range(2)], dtype=float)[:natoms]
    lines = []
    for _ in range(n):
        numbers = rng.choice(ELEMENTS, size=natoms)
        pos = grid + rng.normal(scale=0.1, size=grid.shape)
        forces = rng.normal(scale=0.5, size=grid.shape)
        energy = sum(REFS[int(z)] for z in numbers) + rng.normal(scale=0.3)
        lines.append(f"{natoms}\nProperties=species:S:1:pos:R:3:forces:R:3 energy={energy:.8f} pbc=\"F F F\"")
        lines.extend(f"{SYMBOLS[int(z)]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f} {f[0]:.6f} {f[1]:.6f} {f[2]:.6f}"
                     for z, p, f in zip(numbers, pos, forces))
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("case", ["mixed", "one-molecule", "late-elements"])
@pytest.mark.parametrize("buffer", [5, 4096])
def test_streaming_statistics_equal_full_fit(case, buffer):
    rng = np.random.default_rng(1)
    pairs = []
    for s in range(600):
        if case == "mixed":
            numbers = rng.choice([1, 6, 8], size=rng.integers(3, 20))
        elif case == "one-molecule":  # references not determined: the minimum-norm solution
            numbers = np.array([6] * 9 + [1] * 8 + [8] * 4)
        else:  # N and O only after the first buffer
            numbers = rng.choice([1, 6, 7, 8] if s > 300 else [1, 6], size=rng.integers(2, 9))
        energy = sum(REFS[int(z)] for z in numbers) + rng.normal(scale=0.3) + 0.01 * len(numbers)
        pairs.append((numbers, {"energy": energy, "forces": rng.normal(size=(len(numbers), 3))}))
    acc = StreamingStatistics(buffer=buffer)
    for numbers, labels in pairs:
        acc.add(numbers, labels)
    refs, stats = acc.result()
    expected_refs = fit_element_references([l["energy"] for _, l in pairs], [n for n, _ in pairs])
    expected = dataset_statistics(pairs, expected_refs)
    assert sorted(refs) == sorted(expected_refs)
    for z, value in expected_refs.items():
        assert refs[z] == pytest.approx(value, rel=1e-9, abs=1e-7), z
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-7, abs=1e-9), key
    assert list(acc.natoms) == [len(n) for n, _ in pairs]


# ----------------------------------------------------------------------------- lazy selections
@pytest.mark.parametrize("fmt", ["extxyz", "lmdb"])
def test_selected_structures_are_lazy_views(tmp_path, fmt):
    path = tmp_path / "mols.extxyz"
    write_molecules(path, 30, natoms=5)
    if fmt == "lmdb":
        structures = open_structures(str(path))
        path = tmp_path / "mols.lmdb"
        write_lmdb(path, structures)
    source = open_structures(str(path), streaming=True)
    assert not isinstance(source, list)
    view = SelectedStructures.of(source, "3:20:4")
    assert isinstance(view.indices, range) and len(view) == 5
    assert [view.location(k)[1] for k in range(len(view))] == [3, 7, 11, 15, 19]
    assert np.allclose(view[1].positions, source[7].positions)
    assert atom_counts(view).tolist() == [5] * 5 and atom_counts(source).dtype == np.int32
    assert SelectedStructures.of(source, -1).location(0)[1] == 29


def _reference_batches(sampler, epoch):
    """The sampler's batches as the former implementation made them (the whole epoch table first)."""
    items, g = sampler.epoch_items(epoch), sampler.batch_size * sampler.num_replicas
    out = []
    for b in range(len(sampler)):
        chunk = items[b * g:(b + 1) * g]
        if sampler.num_replicas > 1 and sampler.natoms is not None:
            chunk = chunk[balanced_partition(np.array([sampler.natoms[t][i] for t, i, _ in chunk]),
                                             sampler.num_replicas)[sampler.rank]]
        elif sampler.num_replicas > 1:
            chunk = chunk[sampler.rank::sampler.num_replicas]
        out.append([(int(t), int(i)) for t, i, _ in chunk])
    return out


@pytest.mark.parametrize("replicas,balanced", [(1, False), (3, False), (3, True)])
def test_sampler_builds_batches_one_at_a_time(replicas, balanced):
    sizes = [37, 11, 5]
    natoms = [np.arange(n) % 7 + 1 for n in sizes] if balanced else None
    for rank in range(replicas):
        sampler = TemperatureBatchSampler(sizes, 4, 2.0, seed=5, num_replicas=replicas, rank=rank, natoms=natoms)
        for epoch in range(2):
            got = [[(t, i) for t, i, _ in b] for b in sampler]
            assert got == _reference_batches(sampler, epoch)


# ----------------------------------------------------------------------------- pre-training data
def _config(paths, out, **data):
    return {
        "out_dir": str(out), "seed": 0,
        "model": {"backbone": dict(MICRO), "num_mlps": 2, "edge_dropout": 0.1},
        "data": {"batch_size": 4, "temperature": 2.0, **data, "datasets": [
            {"name": "slabs", "train": paths["slabs"], "cutoff": 5.0, "max_neighbors": 30, "tags": "oc20",
             "train_index": "1:"},
            {"name": "mols", "train": paths["mols"], "cutoff": 4.0, "max_neighbors": 30, "val": paths["mols"],
             "val_index": ":6"}]},
        "optim": {"lr": 1.0e-3, "warmup_steps": 2}, "scale_fit": {"num_batches": 1},
        "trainer": {"max_steps": 2, "accelerator": "cpu", "log_every_n_steps": 1},
    }


def test_streaming_and_cached_data_give_the_same_batches_and_statistics(tmp_path):
    from jmp_ase.training.data import read_structures
    from jmp_ase.training.pretrain import backbone_config
    from jmp_ase.training.pretrain_config import PretrainConfig
    from jmp_ase.training.pretrain_data import PretrainData

    paths = write_datasets(tmp_path, n_slabs=7, n_mols=9)
    made = {}
    for streaming in (False, True):
        cfg = PretrainConfig.from_dict(_config(paths, tmp_path / "run", streaming=streaming))
        bb = backbone_config(cfg)
        made[streaming] = data = PretrainData(cfg, bb.qint_tags, bb.num_elements)
        assert [d.cache for d in data.train] == [not streaming] * 2
        assert [len(d) for d in data.train] == [6, 9] and len(data.val[1]) == 6
    a, b = made[False], made[True]
    assert a.task_info == b.task_info
    # the former statistics: every structure in memory, dataset_statistics + fit_element_references
    slabs = read_structures(paths["slabs"], "1:")
    pairs = [(s.numbers, {"energy": s.get_potential_energy(), "forces": s.get_forces()}) for s in slabs]
    refs = fit_element_references([l["energy"] for _, l in pairs], [n for n, _ in pairs])
    stats = dataset_statistics(pairs, refs)
    info = b.task_info[0]
    assert info["energy_std"] == pytest.approx(stats["energy_std"], rel=1e-8)
    assert info["force_rms"] == pytest.approx(stats["force_rms"], rel=1e-12)
    for z, value in refs.items():
        assert info["element_references"][z] == pytest.approx(value + stats["energy_mean_per_atom"], rel=1e-9)
    assert [n.tolist() for n in b.natoms] == [[len(s) for s in slabs], [len(s) for s in read_structures(paths["mols"])]]
    assert b.train[0].location(0) == (paths["slabs"], 1)
    for x, y in zip(a.train_loader(), b.train_loader()):
        assert torch.equal(x[0].positions, y[0].positions) and x[1]["ids"] == y[1]["ids"]
        assert torch.equal(x[1]["energy"], y[1]["energy"]) and torch.equal(x[1]["forces"], y[1]["forces"])
        assert torch.equal(x[0].indices.main_edge_index, y[0].indices.main_edge_index)
        assert torch.equal(x[0].indices.qint_edge_index, y[0].indices.qint_edge_index)
    assert not b.train[0]._samples and len(a.train[0]._samples) == 6


# ----------------------------------------------------------------------------- bounded memory
CHILD = r"""
import resource, sys
import yaml
from jmp_ase.training.pretrain import run_pretrain
for path in sys.argv[1:]:  # the small data set, then the large one: the peak can only rise
    run_pretrain(yaml.safe_load(open(path)))
    print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def test_streaming_pretraining_memory_does_not_grow_with_the_data(tmp_path):
    """Pre-training on 4x more structures costs (almost) no more memory: the rise of the peak
    RSS of a process that pre-trains on the small data set, then on the large one, is a small
    fraction of what the extra structures and their graphs take once materialised (measured
    here as their pickled size, a lower bound)."""
    import yaml

    from jmp_ase.data.graphs import GraphSettings
    from jmp_ase.training.data import StructureDataset

    sizes, configs = (1000, 4000), []
    for n in sizes:
        path = tmp_path / f"mols-{n}.extxyz"
        write_molecules(path, n, natoms=12, seed=n)
        cfg = {
            "out_dir": str(tmp_path / f"run-{n}"), "seed": 0,
            "model": {"backbone": dict(MICRO), "num_mlps": 1, "edge_dropout": 0.1},
            "data": {"batch_size": 4, "streaming": True, "datasets": [
                {"name": "mols", "train": str(path), "cutoff": 4.0, "max_neighbors": 30}]},
            "optim": {"warmup_steps": 1}, "ema": None, "scale_fit": {"num_batches": 1},
            "trainer": {"max_steps": 3, "accelerator": "cpu", "log_every_n_steps": 1,
                        "checkpoint_every_n_steps": 0},
        }
        configs.append(tmp_path / f"{n}.yaml")
        configs[-1].write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([PYTHON, "-c", CHILD, *map(str, configs)], cwd=REPO, env=subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    small, large = (1024 * int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB"))
    dataset = StructureDataset(open_structures(str(tmp_path / f"mols-{sizes[1]}.extxyz"), streaming=True),
                               ["energy", "forces"], GraphSettings(4.0, 30))
    per_structure = np.mean([len(pickle.dumps((dataset.atoms(i), dataset[i]))) for i in range(0, sizes[1], 200)])
    materialised = (sizes[1] - sizes[0]) * per_structure
    print(json.dumps({"peak_rss_mb": [round(small / 2**20, 1), round(large / 2**20, 1)],
                      "extra_materialised_mb": round(materialised / 2**20, 1)}))
    assert materialised > 40 * 2**20  # the test means something: tens of MB if kept
    assert large - small < 0.15 * materialised, (small, large, materialised)  # the former code: 0.3
