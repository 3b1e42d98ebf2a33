"""Tests of jmp_ase.data.graphs around the neighbour lists: tag rules, batching of graphs, edge
cases (single and isolated atoms) and the validation of input structures."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from jmp_ase.data.graphs import (
    GRAPH_TYPES,
    GraphSettings,
    batch_graphs,
    resolve_tags,
    structure_graphs,
    structure_graphs_checked,
    structure_graphs_from_atoms,
    validate_structure,
)
from test_graph import _rattled_crystal, edge_set, slab_structure


# --------------------------------------------------------------------------------------
# tags, batching, edge cases
# --------------------------------------------------------------------------------------


def test_resolve_tags():
    np.testing.assert_array_equal(resolve_tags([0, 0, 0]), [2, 2, 2])
    np.testing.assert_array_equal(resolve_tags([0, 1, 2]), [0, 1, 2])
    np.testing.assert_array_equal(resolve_tags(torch.tensor([1, 1])), [1, 1])
    np.testing.assert_array_equal(resolve_tags(resolve_tags([0, 0])), [2, 2])
    assert resolve_tags([]).shape == (0,)
    assert resolve_tags(np.zeros(3)).dtype == np.int64


def test_batch_graphs_offsets():
    mol = molecule("H2O")
    crystal = _rattled_crystal()
    settings = GraphSettings(cutoff=5.0)
    g1 = structure_graphs(mol.positions, None, False, None, settings)
    g2 = structure_graphs(crystal.positions, crystal.cell.array, True, None, settings)
    batch = batch_graphs([g1, g2], [len(mol), len(crystal)])
    assert set(batch) == set(GRAPH_TYPES)
    for g in GRAPH_TYPES:
        ei, off = batch[g]["edge_index"], batch[g]["cell_offset"]
        e1 = g1.num_edges(g)
        assert torch.equal(ei[:, :e1], g1.edge_index[g])
        assert torch.equal(ei[:, e1:], g2.edge_index[g] + len(mol))
        assert torch.equal(off, torch.cat([g1.cell_offset[g], g2.cell_offset[g]]))
        assert torch.all(ei[1, 1:] >= ei[1, :-1])
    empty = batch_graphs([], [])
    assert empty["main"]["edge_index"].shape == (2, 0)


def test_single_and_isolated_atoms():
    settings = GraphSettings(cutoff=6.0)
    for cell, pbc in ((None, False), (np.eye(3) * 20.0, True)):
        graphs = structure_graphs([[0.0, 0.0, 0.0]], cell, pbc, [0], settings)
        for g in GRAPH_TYPES:
            assert graphs.edge_index[g].shape == (2, 0)
            assert graphs.cell_offset[g].shape == (0, 3)
    # one atom in a small periodic cell: only its own images
    graphs = structure_graphs([[0.5, 0.5, 0.5]], np.eye(3) * 2.9, True, None, settings)
    ei = graphs.edge_index["a2a"]
    assert ei.shape[1] > 0 and torch.all(ei == 0)
    assert graphs.num_edges("main") == 30
    # an isolated atom next to a bonded pair
    pos = [[0.0, 0.0, 0.0], [0.0, 0.0, 1.1], [30.0, 0.0, 0.0]]
    graphs = structure_graphs(pos, None, False, None, settings)
    for g in GRAPH_TYPES:
        assert edge_set(graphs, g) == {(0, 1, 0, 0, 0), (1, 0, 0, 0, 0)}
    far = structure_graphs([[0.0, 0, 0], [10.0, 0, 0]], None, [False] * 3, None, settings)
    assert far.num_edges("a2a") == 0
    nothing = structure_graphs(np.zeros((0, 3)), None, False, None, settings)
    assert nothing.num_edges("main") == 0


def test_structure_graphs_rejects_bad_input():
    with pytest.raises(ValueError, match=r"non-finite.*\[1\]"):
        structure_graphs([[0.0, 0, 0], [np.nan, 0, 0]], None, False, None, GraphSettings())
    with pytest.raises(ValueError, match="entries"):
        structure_graphs([[0.0, 0, 0]], None, False, [1, 2], GraphSettings())
    with pytest.raises(ValueError, match="no cell"):
        structure_graphs([[0.0, 0, 0]], None, True, None, GraphSettings())
    with pytest.raises(ValueError, match="singular"):
        structure_graphs([[0.0, 0, 0]], np.diag([3.0, 3.0, 0.0]), True, None, GraphSettings())


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def test_validate_accepts_good_structures():
    slab, cell = slab_structure(zero_c=True)
    validate_structure(slab.numbers, slab.positions, cell, [True, True, False])
    mol = molecule("CH4")
    validate_structure(mol.numbers, mol.positions, None, False)
    validate_structure(mol.numbers, mol.positions, np.zeros((3, 3)), [False] * 3)
    validate_structure([1], [[0.0, 0.0, 0.0]], None, False)
    crystal = _rattled_crystal()
    validate_structure(crystal.numbers, crystal.positions, crystal.cell.array, True)


def test_validate_unknown_element():
    pos = [[0.0, 0, 0], [1.5, 0, 0], [0, 1.5, 0]]
    with pytest.raises(ValueError, match=r"unknown element.*\b2 \(Z=0\)"):
        validate_structure([1, 6, 0], pos, None, False)
    with pytest.raises(ValueError, match=r"1 \(Z=121\)"):
        validate_structure([1, 121, 8], pos, None, False)
    validate_structure([1, 6, 118], pos, None, False, num_elements=118)
    with pytest.raises(ValueError, match=r"2 \(Z=119\)"):
        validate_structure([1, 6, 119], pos, None, False, num_elements=118)


def test_validate_non_finite_positions():
    pos = np.array([[0.0, 0, 0], [1.5, 0, 0], [0, 1.5, 0]])
    pos[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*1 \(O\)"):
        validate_structure([6, 8, 1], pos, None, False)
    pos[1, 2] = 0.0
    pos[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 \(H\)"):
        validate_structure([6, 8, 1], pos, None, False)


def test_validate_bad_cell():
    z, pos = [11, 17], [[0.0, 0, 0], [2.8, 0, 0]]
    with pytest.raises(ValueError, match="non-finite"):
        validate_structure(z, pos, np.diag([5.6, np.nan, 5.6]), True)
    with pytest.raises(ValueError, match="non-finite"):
        validate_structure(z, pos, np.diag([5.6, np.inf, 5.6]), [True, True, False])
    with pytest.raises(ValueError, match="singular"):
        validate_structure(z, pos, np.diag([5.6, 5.6, 0.0]), True)
    with pytest.raises(ValueError, match="singular"):
        validate_structure(z, pos, [[5.6, 0, 0], [11.2, 0, 0], [0, 0, 5.6]], True)
    with pytest.raises(ValueError, match="no cell"):
        validate_structure(z, pos, None, [True, False, False])
    # a zero vector along a non-periodic direction is fine
    validate_structure(z, pos, np.diag([5.6, 5.6, 0.0]), [True, True, False])


def test_validate_close_atoms_names_them():
    pos = [[0.0, 0, 0], [1.5, 0, 0], [1.55, 0, 0], [0, 3.0, 0]]
    with pytest.raises(ValueError, match=r"atoms 1 \(C\) and 2 \(N\)"):
        validate_structure([1, 6, 7, 8], pos, None, False)
    # across the periodic boundary
    pos = [[0.02, 1.0, 1.0], [4.97, 1.0, 1.0]]
    with pytest.raises(ValueError, match=r"0 \(Na\).*1 \(Cl\).*periodic image"):
        validate_structure([11, 17], pos, np.eye(3) * 5.0, True)
    validate_structure([11, 17], pos, np.eye(3) * 5.0, [False, True, True])
    # an atom with its own image
    with pytest.raises(ValueError, match=r"atoms 0 \(H\) and 0 \(H\)"):
        validate_structure([1], [[0.0, 0, 0]], np.diag([0.05, 5.0, 5.0]), True)
    # the checked constructor validates first
    with pytest.raises(ValueError, match="closer than"):
        structure_graphs_checked([1, 1], [[0.0, 0, 0], [0.01, 0, 0]], None, False)


def test_validate_shape_mismatch():
    with pytest.raises(ValueError, match="entries"):
        validate_structure([1, 1, 1], [[0.0, 0, 0], [1.0, 0, 0]], None, False)


def test_structure_graphs_from_atoms_tags():
    slab, _ = slab_structure(zero_c=False)
    slab.pbc = [True, True, False]
    settings = GraphSettings(cutoff=6.0, tags="oc20")
    untagged = structure_graphs_from_atoms(slab, settings)
    # all-zero ASE tags -> every atom tag 2 -> qint keeps every nearest-8 edge
    assert untagged.num_edges("qint") == 8 * len(slab)
    tags = np.zeros(len(slab), dtype=int)
    tags[-1] = 2
    slab.set_tags(tags)
    tagged = structure_graphs_from_atoms(slab, settings)
    assert 0 < tagged.num_edges("qint") < untagged.num_edges("qint")
    # the default policy ignores tags: the tagged slab has the untagged slab's graphs
    ignored = structure_graphs_from_atoms(slab, GraphSettings(cutoff=6.0))
    assert ignored.num_edges("qint") == untagged.num_edges("qint")
    mol = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=np.eye(3) * 1000.0, pbc=False)
    assert structure_graphs_from_atoms(mol, settings).num_edges("main") == 2
