"""Tests of jmp_ase.data.graphs: JMP's neighbour lists (main / a2a / a2ee2a / qint) against brute force,
nearest-neighbour sub-selection and JMP's reference; tags, batching and input validation are in
test_graph_inputs.py."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111, molecule

from jmp_ase.data import graphs as G
from jmp_ase.data.graphs import (
    GRAPH_TYPES,
    GraphSettings,
    structure_graphs,
    structure_graphs_checked,
    structure_graphs_from_atoms,
)

_FIXTURE_CANDIDATES = (
    Path(__file__).parent / "data" / "jmp-reference" / "structures.extxyz",
    Path("/work/shared/fixtures/jmp-reference/structures.extxyz"),
)
REFERENCE_MAIN_EDGES = {
    "ethanol": 72,
    "benzene": 132,
    "formaldehyde": 12,
    "pt111_co": 432,
    "nacl_bulk": 234,
}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def brute_force_edges(pos, cell, pbc, cutoff):
    """Every (s, t, offset) with 1e-2 < |pos[t] - pos[s] - offset @ cell| <= cutoff (float64).

    Enumerates all images in a box large enough for the cutoff; returns a dict
    {(s, t, ox, oy, oz): distance}.
    """
    pos = np.asarray(pos, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    reps = [0, 0, 0]
    if pbc.any():
        rows = cell[pbc]
        # distance between lattice planes of the periodic sub-lattice
        for axis in np.flatnonzero(pbc):
            others = [cell[k] for k in np.flatnonzero(pbc) if k != axis]
            a = cell[axis]
            if not others:
                height = np.linalg.norm(a)
            elif len(others) == 1:
                b = others[0]
                height = np.linalg.norm(a - (a @ b) / (b @ b) * b)
            else:
                normal = np.cross(others[0], others[1])
                height = abs(a @ normal) / np.linalg.norm(normal)
            span = np.ptp(pos @ np.linalg.pinv(rows)[:, list(np.flatnonzero(pbc)).index(axis)])
            reps[axis] = int(np.ceil(cutoff / height + span)) + 1
    edges = {}
    for off in itertools.product(*(range(-r, r + 1) for r in reps)):
        shift = np.asarray(off, dtype=np.float64) @ cell
        vec = pos[None, :, :] - pos[:, None, :] - shift  # [s, t] = pos[t] - pos[s] - shift
        dist = np.linalg.norm(vec, axis=-1)
        ss, tt = np.nonzero((dist <= cutoff) & (dist > 1e-2))
        for s_, t_ in zip(ss.tolist(), tt.tolist()):
            edges[(s_, t_) + tuple(off)] = float(dist[s_, t_])
    return edges


def edge_set(graphs, graph_type):
    ei = graphs.edge_index[graph_type].numpy()
    off = graphs.cell_offset[graph_type].numpy()
    return {(int(s), int(t)) + tuple(int(x) for x in o) for s, t, o in zip(ei[0], ei[1], off)}


def edge_distances(graphs, graph_type, pos, cell):
    ei = graphs.edge_index[graph_type].numpy()
    off = graphs.cell_offset[graph_type].numpy().astype(np.float64)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    vec = pos[ei[1]] - pos[ei[0]] - off @ cell
    return np.linalg.norm(vec, axis=1)


def symmetrized_count(graphs):
    """Number of edges after JMP's symmetrisation of the main graph."""
    s, t = graphs.edge_index["main"].numpy()
    off = graphs.cell_offset["main"].numpy()
    first_negative = np.zeros(len(s), dtype=bool)
    undecided = np.ones(len(s), dtype=bool)
    for k in range(3):
        first_negative |= undecided & (off[:, k] < 0)
        undecided &= off[:, k] == 0
    kept = (s < t) | ((s == t) & first_negative)
    # every kept edge, then every kept edge reversed with negated offset
    directed = np.concatenate([np.stack([s[kept], t[kept]]), np.stack([t[kept], s[kept]])], axis=1)
    return directed.shape[1]


def triclinic_structure(seed=0):
    rng = np.random.default_rng(seed)
    cell = np.array([[4.1, 0.0, 0.0], [1.3, 3.7, 0.0], [-0.9, 1.1, 4.4]])
    frac = rng.random((7, 3))
    pos = frac @ cell
    pos[0] += np.array([5.0, -3.0, 9.0])  # an atom outside the cell
    return pos, cell


def slab_structure(seed=1, zero_c=True):
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=6.0, orthogonal=False)
    slab.rattle(0.08, seed=seed)
    slab.set_tags(0)  # fcc111 tags atoms by layer; start untagged
    cell = slab.cell.array.copy()
    if zero_c:
        cell[2] = 0.0  # a 2-D slab given only its two lattice vectors
    return slab, cell


def assert_sorted_by_target(graphs):
    for g in GRAPH_TYPES:
        t = graphs.edge_index[g][1]
        assert torch.all(t[1:] >= t[:-1]), g


def assert_graph_dtypes(graphs):
    for g in GRAPH_TYPES:
        ei, off = graphs.edge_index[g], graphs.cell_offset[g]
        assert ei.dtype == torch.long and off.dtype == torch.long
        assert ei.ndim == 2 and ei.shape[0] == 2
        assert off.shape == (ei.shape[1], 3)


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------


def test_settings_proportions():
    s = GraphSettings()
    assert (s.cutoff, s.max_neighbors, s.qint_tags) == (12.0, 30, (1, 2))
    assert (s.a2a_max_neighbors, s.a2ee2a_max_neighbors, s.qint_max_neighbors) == (1000, 20, 8)
    s = GraphSettings(cutoff=7.0, max_neighbors=100)
    assert (s.a2a_max_neighbors, s.a2ee2a_max_neighbors, s.qint_max_neighbors) == (3333, 66, 26)
    assert s.max_neighbors_of("main") == 100
    with pytest.raises(ValueError):
        GraphSettings(cutoff=0.0)
    with pytest.raises(ValueError):
        GraphSettings(max_neighbors=0)


# --------------------------------------------------------------------------------------
# a2a graph against brute force
# --------------------------------------------------------------------------------------


def test_a2a_triclinic_matches_brute_force():
    pos, cell = triclinic_structure()
    cutoff = 6.5
    graphs = structure_graphs(pos, cell, True, None, GraphSettings(cutoff=cutoff))
    expected = brute_force_edges(pos, cell, True, cutoff)
    assert len(expected) > 100
    assert edge_set(graphs, "a2a") == set(expected)
    # an atom with its own periodic images is an edge
    assert any(k[0] == k[1] for k in expected)
    assert_sorted_by_target(graphs)
    assert_graph_dtypes(graphs)


@pytest.mark.parametrize("zero_c", [True, False])
def test_a2a_mixed_pbc_slab_matches_brute_force(zero_c):
    slab, cell = slab_structure(zero_c=zero_c)
    pbc = [True, True, False]
    cutoff = 6.0
    graphs = structure_graphs(slab.positions, cell, pbc, None, GraphSettings(cutoff=cutoff))
    expected = brute_force_edges(slab.positions, cell, pbc, cutoff)
    got = edge_set(graphs, "a2a")
    assert got == set(expected)
    assert all(k[4] == 0 for k in got)  # no shift along the non-periodic direction


def test_a2a_molecule_matches_brute_force():
    mol = molecule("C6H6")
    mol.rattle(0.05, seed=3)
    cutoff = 3.0
    for cell in (None, np.zeros((3, 3)), np.eye(3) * 1000.0):
        graphs = structure_graphs(mol.positions, cell, False, None, GraphSettings(cutoff=cutoff))
        expected = brute_force_edges(mol.positions, None, False, cutoff)
        assert edge_set(graphs, "a2a") == set(expected)
        assert not graphs.cell_offset["a2a"].any()


def test_torch_inputs_and_edge_convention():
    pos, cell = triclinic_structure(seed=4)
    g_np = structure_graphs(pos, cell, True, None, GraphSettings(cutoff=5.0))
    g_t = structure_graphs(
        torch.tensor(pos, requires_grad=True), torch.tensor(cell), torch.tensor([True] * 3),
        torch.zeros(len(pos), dtype=torch.long), GraphSettings(cutoff=5.0),
    )
    for g in GRAPH_TYPES:
        assert edge_set(g_np, g) == edge_set(g_t, g)
    d = edge_distances(g_np, "a2a", pos, cell)
    assert d.max() <= 5.0 and d.min() > 1e-2


# --------------------------------------------------------------------------------------
# nearest-neighbour sub-selection
# --------------------------------------------------------------------------------------


def _rattled_crystal():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.1, seed=7)
    return atoms


@pytest.mark.parametrize("max_neighbors", [30, 12])
def test_subgraphs_keep_nearest(max_neighbors):
    atoms = _rattled_crystal()
    pos, cell = atoms.positions, atoms.cell.array
    settings = GraphSettings(cutoff=7.0, max_neighbors=max_neighbors, qint_tags=(0, 1, 2))
    graphs = structure_graphs(pos, cell, True, np.zeros(len(atoms)), settings)
    expected = brute_force_edges(pos, cell, True, settings.cutoff)
    by_target: dict[int, list[float]] = {}
    for key, dist in expected.items():
        by_target.setdefault(key[1], []).append(dist)
    limits = {
        "main": settings.max_neighbors,
        "a2a": settings.a2a_max_neighbors,
        "a2ee2a": settings.a2ee2a_max_neighbors,
        "qint": settings.qint_max_neighbors,  # every tag counts for qint here
    }
    for graph_type, k in limits.items():
        t = graphs.edge_index[graph_type][1].numpy()
        d = edge_distances(graphs, graph_type, pos, cell)
        for atom in range(len(atoms)):
            ref = np.sort(by_target[atom])
            got = np.sort(d[t == atom])
            assert len(got) == min(k, len(ref)), (graph_type, atom)
            np.testing.assert_allclose(got, ref[: len(got)], atol=1e-5)
        # sub-graphs are subsets of a2a
        assert edge_set(graphs, graph_type) <= edge_set(graphs, "a2a")
    assert_sorted_by_target(graphs)


def test_a2a_limit_applies_nearest():
    atoms = _rattled_crystal()
    # max_neighbors=3 -> a2a limit 100, a2ee2a 2, qint 0 (= no limit, as in JMP)
    settings = GraphSettings(cutoff=9.0, max_neighbors=3)
    graphs = structure_graphs(atoms.positions, atoms.cell.array, True, None, settings)
    expected = brute_force_edges(atoms.positions, atoms.cell.array, True, 9.0)
    assert len(expected) > 100 * len(atoms)
    t = graphs.edge_index["a2a"][1].numpy()
    d = edge_distances(graphs, "a2a", atoms.positions, atoms.cell.array)
    for atom in range(len(atoms)):
        ref = np.sort([v for k, v in expected.items() if k[1] == atom])
        got = np.sort(d[t == atom])
        assert len(got) == 100
        np.testing.assert_allclose(got, ref[:100], atol=1e-5)
    assert edge_set(graphs, "qint") == edge_set(graphs, "a2a")
    assert graphs.num_edges("a2ee2a") == 2 * len(atoms)


def test_qint_tag_filter():
    slab, _ = slab_structure(zero_c=False)
    tags = np.zeros(len(slab), dtype=int)
    tags[-4:] = 1
    tags[-1] = 2
    cell, pbc = slab.cell.array, [True, True, False]
    settings = GraphSettings(cutoff=6.0, max_neighbors=30, tags="oc20")
    graphs = structure_graphs(slab.positions, cell, pbc, tags, settings)
    all_tags = GraphSettings(cutoff=6.0, max_neighbors=30, qint_tags=(0, 1, 2), tags="oc20")
    unfiltered = structure_graphs(slab.positions, cell, pbc, tags, all_tags)
    expected = {e for e in edge_set(unfiltered, "qint") if tags[e[0]] in (1, 2) or tags[e[1]] in (1, 2)}
    got = edge_set(graphs, "qint")
    assert got == expected
    assert 0 < len(got) < len(edge_set(unfiltered, "qint"))
    # the other graphs ignore tags
    for g in ("main", "a2a", "a2ee2a"):
        assert edge_set(graphs, g) == edge_set(unfiltered, g)
    # only tag-0 atoms selected: no qint edge at all
    none = structure_graphs(slab.positions, cell, pbc, tags, GraphSettings(6.0, 30, (7,), tags="oc20"))
    assert none.num_edges("qint") == 0


def test_rank_blocks_do_not_change_result(monkeypatch):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # perfect crystal: many exact ties
    ref = structure_graphs(atoms.positions, atoms.cell.array, True, None, GraphSettings())
    monkeypatch.setattr(G, "_RANK_BLOCK_ELEMENTS", 1)
    small = structure_graphs(atoms.positions, atoms.cell.array, True, None, GraphSettings())
    for g in GRAPH_TYPES:
        assert torch.equal(ref.edge_index[g], small.edge_index[g])
        assert torch.equal(ref.cell_offset[g], small.cell_offset[g])


def test_repeatable():
    atoms = _rattled_crystal()
    a = structure_graphs(atoms.positions, atoms.cell.array, True, None, GraphSettings(cutoff=6.0))
    b = structure_graphs(atoms.positions, atoms.cell.array, True, None, GraphSettings(cutoff=6.0))
    for g in GRAPH_TYPES:
        assert torch.equal(a.edge_index[g], b.edge_index[g])
        assert torch.equal(a.cell_offset[g], b.cell_offset[g])


# --------------------------------------------------------------------------------------
# JMP reference fixture
# --------------------------------------------------------------------------------------


def _fixture_path():
    for path in _FIXTURE_CANDIDATES:
        if path.exists():
            return path
    pytest.skip("JMP reference structures.extxyz not available")


def test_fixture_main_edge_counts():
    import ase.io

    structures = ase.io.read(_fixture_path(), ":")
    assert {a.info["name"] for a in structures} == set(REFERENCE_MAIN_EDGES)
    for atoms in structures:
        name = atoms.info["name"]
        settings = GraphSettings(
            cutoff=float(atoms.info["cutoff"]), max_neighbors=int(atoms.info["max_neighbors"])
        )
        tags = atoms.arrays["tags"] if "tags" in atoms.arrays else np.full(len(atoms), 2)
        if name in ("ethanol", "benzene", "formaldehyde"):
            assert not atoms.pbc.any()
        cell = atoms.cell.array if atoms.pbc.any() else None
        graphs = structure_graphs_checked(
            atoms.numbers, atoms.positions, cell, atoms.pbc, tags, settings
        )
        assert symmetrized_count(graphs) == REFERENCE_MAIN_EDGES[name], name
        via_atoms = structure_graphs_from_atoms(atoms, settings)
        assert symmetrized_count(via_atoms) == REFERENCE_MAIN_EDGES[name], name
