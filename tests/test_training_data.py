"""jmp_ase.training.data: reading, labels, samples, batching, splits, references, statistics, streaming."""
import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from jmp_ase.data.batch import batch_from_atoms
from jmp_ase.data.graphs import GraphSettings
from jmp_ase.training.data import (
    DatasetSpec, LazyExtxyz, StructureDataset, collate, dataset_statistics, extract_labels,
    fit_element_references, read_structures, split_by_fraction,
)

SETTINGS = GraphSettings(cutoff=5.0, max_neighbors=10)



def emt_structures(n=6, seed=0):
    """Small Cu/Pt clusters and one periodic cell, labelled with EMT (and a made-up gap)."""
    rng = np.random.default_rng(seed)
    grid = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5], [2.5, 2.5, 0]], dtype=float)
    out = []
    for k in range(n):
        nat = 3 + k % 3
        atoms = Atoms(rng.choice(["Cu", "Pt"], nat), positions=grid[:nat] + rng.normal(scale=0.1, size=(nat, 3)))
        if k == n - 1:
            atoms.set_cell(np.eye(3) * 5.0 + rng.normal(scale=0.05, size=(3, 3)))
            atoms.pbc = True
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if atoms.pbc.all():
            results["stress"] = atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["gap"] = 0.5 * nat + 0.1 * k
        out.append(atoms)
    return out


@pytest.fixture
def xyz_file(tmp_path):
    path = tmp_path / "data.extxyz"
    ase.io.write(path, emt_structures(), format="extxyz")
    return path


def test_read_extxyz_and_labels(xyz_file):
    originals = emt_structures()
    atoms = read_structures(xyz_file)
    assert len(atoms) == len(originals)
    assert len(read_structures(xyz_file, "2:4")) == 2
    for a, b in zip(atoms, originals):
        labels = extract_labels(a, ["energy", "forces", "gap"])
        assert labels["energy"] == pytest.approx(b.get_potential_energy())
        np.testing.assert_allclose(labels["forces"], b.get_forces(), atol=1e-6)
        assert labels["gap"] == pytest.approx(b.info["gap"])
    stress = extract_labels(atoms[-1], ["stress"])["stress"]
    np.testing.assert_allclose(stress, originals[-1].get_stress(voigt=False), atol=1e-8)
    assert stress.shape == (3, 3)


def test_read_ase_db(tmp_path):
    originals = emt_structures()
    path = tmp_path / "data.db"
    with ase.db.connect(path) as db:
        for a in originals:
            db.write(a, gap=a.info["gap"])
    atoms = read_structures(path)
    assert len(atoms) == len(originals)
    for a, b in zip(atoms, originals):
        labels = extract_labels(a, ["energy", "forces", "gap"])
        assert labels["energy"] == pytest.approx(b.get_potential_energy())
        np.testing.assert_allclose(labels["forces"], b.get_forces(), atol=1e-6)
        assert labels["gap"] == pytest.approx(b.info["gap"])
    assert len(read_structures(path, "1:3")) == 2


def test_bad_labels_name_file_index_and_key(tmp_path):
    structures = emt_structures(4)
    structures[2].calc.results["energy"] = float("nan")
    del structures[3].info["gap"]
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, structures, format="extxyz")
    dataset = DatasetSpec(path, ["energy", "forces"], cutoff=5.0).build()
    dataset[0]
    with pytest.raises(ValueError, match=r"bad\.extxyz: structure 2: label 'energy' is not finite"):
        dataset[2]
    atoms = read_structures(path)
    with pytest.raises(ValueError, match=r"structure 3: no label 'gap'.*available labels: \[.*'energy'"):
        extract_labels(atoms[3], ["gap"], (str(path), 3))
    with pytest.raises(ValueError, match=r"no label 'homo_lumo_gap'; available labels: \['energy', 'forces', 'gap'\]"):
        extract_labels(atoms[0], ["homo_lumo_gap"], (str(path), 0))


def test_bad_frame_names_file(tmp_path):
    path = tmp_path / "broken.extxyz"
    ase.io.write(path, emt_structures(2), format="extxyz")
    path.write_text(path.read_text() + "5\nnot a header\nCu 0 0 0\n")
    with pytest.raises(ValueError, match=r"broken\.extxyz: structure 2 is truncated"):
        read_structures(path)
    close = tmp_path / "close.extxyz"
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0.01, 0, 0]])
    atoms.calc = SinglePointCalculator(atoms, energy=1.0, forces=np.zeros((2, 3)))
    ase.io.write(close, [emt_structures(1)[0], atoms], format="extxyz")
    dataset = DatasetSpec(close, ["energy"]).build()
    with pytest.raises(ValueError, match=r"close\.extxyz: structure 1: "):
        dataset[1]


def test_split_is_reproducible_and_disjoint():
    a = split_by_fraction(103, [0.8, 0.1, 0.1], seed=7)
    b = split_by_fraction(103, [0.8, 0.1, 0.1], seed=7)
    c = split_by_fraction(103, [0.8, 0.1, 0.1], seed=8)
    assert [len(x) for x in a] == [82, 10, 11]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert sorted(np.concatenate(a).tolist()) == list(range(103))
    assert [len(x) for x in split_by_fraction(10, [0.5, 0.2])] == [5, 2]


def test_element_references_recover_known_values():
    rng = np.random.default_rng(0)
    refs = {1: -13.6, 6: -1029.8, 8: -2041.3}
    numbers = [rng.choice([1, 6, 8], size=rng.integers(2, 12)) for _ in range(40)]
    energies = [sum(refs[int(z)] for z in n) + rng.normal(scale=1e-3) for n in numbers]
    fitted = fit_element_references(energies, numbers, [1, 6, 8])
    for z, value in refs.items():
        assert fitted[z] == pytest.approx(value, abs=1e-2)


def test_dataset_statistics_by_hand():
    refs = {1: -1.0, 8: -10.0}
    data = [
        (np.array([8, 1, 1]), {"energy": -13.0, "forces": np.array([[1.0, 0, 0], [0, 2, 0], [0, 0, 2]]), "gap": 2.0}),
        (np.array([8, 1]), {"energy": -10.0, "forces": np.array([[0.0, 0, 0], [0, 0, 0]]), "gap": 4.0}),
    ]
    stats = dataset_statistics(data, refs)
    # referenced energies: -1 (3 atoms), +1 (2 atoms) -> per atom -1/3, +1/2
    mean_pa = (-1 / 3 + 1 / 2) / 2
    assert stats["energy_mean_per_atom"] == pytest.approx(mean_pa)
    assert stats["energy_std"] == pytest.approx(np.std([-1 - 3 * mean_pa, 1 - 2 * mean_pa]))
    assert stats["force_rms"] == pytest.approx(np.sqrt(9 / 15))
    assert stats["mean_natoms"] == 2.5
    assert stats["gap_mean"] == 3.0 and stats["gap_std"] == 1.0
    assert stats["gap_mean_per_atom"] == pytest.approx((2 / 3 + 2) / 2)


def test_collate_matches_batch_from_atoms(xyz_file):
    atoms = read_structures(xyz_file)
    dataset = StructureDataset(atoms, ["energy", "forces", "gap"], SETTINGS)
    batch, targets = collate([dataset[i] for i in range(len(dataset))])
    reference = batch_from_atoms(atoms, SETTINGS)
    for key in ("numbers", "positions", "cell", "pbc", "tags", "atom_batch", "natoms"):
        assert torch.equal(getattr(batch, key), getattr(reference, key)), key
    assert torch.equal(batch.indices.main_edge_index, reference.indices.main_edge_index)
    assert torch.equal(batch.indices.quad.out, reference.indices.quad.out)
    assert targets["energy"].shape == (len(atoms),)
    assert targets["forces"].shape == (int(batch.natoms.sum()), 3)
    assert targets["gap"].shape == (len(atoms),)
    assert dataset[1] is dataset[1]  # cached


def test_streaming_equals_in_memory(xyz_file):
    lazy = LazyExtxyz(xyz_file)
    eager = read_structures(xyz_file)
    assert len(lazy) == len(eager)
    for i in (0, 3, -1):
        a, b = lazy[i], eager[i]
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()
    streamed = DatasetSpec(xyz_file, ["energy", "forces"], 5.0, 10, streaming=True).build()
    memory = DatasetSpec(xyz_file, ["energy", "forces"], 5.0, 10).build()
    assert streamed[2] is not streamed[2] and memory[2] is memory[2]
    b1, t1 = collate([streamed[i] for i in range(len(streamed))])
    b2, t2 = collate([memory[i] for i in range(len(memory))])
    assert torch.equal(b1.positions, b2.positions)
    assert torch.equal(b1.indices.main_edge_index, b2.indices.main_edge_index)
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    assert streamed.location(4) == (str(xyz_file), 4)


def test_lmdb_round_trip(tmp_path, xyz_file):
    pytest.importorskip("lmdb")
    from jmp_ase.training.data import LMDBStructures, write_lmdb

    structures = read_structures(xyz_file)
    path = tmp_path / "data.lmdb"
    write_lmdb(path, structures)
    lazy = LMDBStructures(path)
    assert len(lazy) == len(structures)
    assert len(read_structures(path, "1:3")) == 2
    dataset = DatasetSpec(path, ["energy", "forces"], 5.0, 10).build()
    memory = StructureDataset(structures, ["energy", "forces"], SETTINGS)
    for i in range(len(structures)):
        assert dataset[i].labels["energy"] == memory[i].labels["energy"]
        np.testing.assert_array_equal(dataset[i].arrays["positions"], memory[i].arrays["positions"])
