"""Tests of jmp_ase.data.indices against slow, obvious brute-force enumerations."""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from jmp_ase.data.indices import (
    inner_index,
    interaction_indices,
    mixed_triplets,
    quadruplets,
    symmetrize_edges,
    triplets,
)

from index_reference import (
    _assert_int64_1d,
    _check_inner,
    _edges_as_tuples,
    _graph_case,
    empty_graph,
    random_graph,
    ref_inner,
    ref_mixed,
    ref_quadruplets,
    ref_symmetrize,
    ref_triplets,
)

SEEDS = list(range(6))


# --------------------------------------------------------------------------
# inner_index
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_inner_index_random(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 10))
    n = int(rng.integers(0, 60))
    idx = torch.from_numpy(rng.integers(0, size, n)).long()
    res = inner_index(idx, size)
    _assert_int64_1d(res, n)
    assert res.tolist() == ref_inner(idx.tolist())
    _check_inner(idx, res)
    # sorted input goes through a different (fast) path
    idx_sorted = idx.sort().values
    res_sorted = inner_index(idx_sorted, size)
    assert res_sorted.tolist() == ref_inner(idx_sorted.tolist())


def test_inner_index_examples_and_empty():
    idx = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    assert inner_index(idx, 3).tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1]
    idx = torch.tensor([2, 0, 2, 1, 0, 2])
    assert inner_index(idx, 5).tolist() == [0, 0, 1, 0, 1, 2]
    e = inner_index(torch.zeros(0, dtype=torch.long), 4)
    assert e.shape == (0,) and e.dtype == torch.long
    e = inner_index(torch.zeros(0, dtype=torch.long), 0)
    assert e.shape == (0,)


# --------------------------------------------------------------------------
# symmetrize_edges
# --------------------------------------------------------------------------
def _check_symmetrized(ei_in, off_in, ei, off, id_swap):
    E = ei.shape[1]
    assert ei.shape == (2, E) and off.shape == (E, 3) and id_swap.shape == (E,)
    assert ei.dtype == torch.long and id_swap.dtype == torch.long
    assert E % 2 == 0
    got = Counter(_edges_as_tuples(ei, off))
    assert got == ref_symmetrize(_edges_as_tuples(ei_in, off_in))
    # id_swap points to the reverse edge, is an involution, no fixed points
    for e in range(E):
        r = int(id_swap[e])
        assert int(ei[0, r]) == int(ei[1, e]) and int(ei[1, r]) == int(ei[0, e])
        assert torch.equal(off[r], -off[e])
        assert r != e
    assert torch.equal(id_swap[id_swap], torch.arange(E))
    assert sorted(id_swap.tolist()) == list(range(E))


@pytest.mark.parametrize("seed", SEEDS)
def test_symmetrize_random(seed):
    rng, sizes, main, _, _ = _graph_case(seed)
    ei_in, off_in, n = random_graph(rng, sizes, main)
    ei, off, id_swap = symmetrize_edges(ei_in, off_in, n)
    _check_symmetrized(ei_in, off_in, ei, off, id_swap)


def test_symmetrize_symmetric_input_is_fixed_point():
    rng = np.random.default_rng(123)
    ei_in, off_in, n = random_graph(rng, [4, 3, 5], [20, 10, 25])
    ei, off, _ = symmetrize_edges(ei_in, off_in, n)
    # output is exactly symmetric; symmetrising again reproduces the same set
    ei2, off2, id2 = symmetrize_edges(ei, off, n)
    _check_symmetrized(ei, off, ei2, off2, id2)
    assert Counter(_edges_as_tuples(ei, off)) == Counter(_edges_as_tuples(ei2, off2))


def test_symmetrize_rule_details():
    # 0->1 kept (+reverse gained), 2->1 (s > t) dropped although its reverse is
    # missing, 3->3 with "earlier" offset kept, 3->3 with later offset dropped,
    # 4->4 zero offset (trivial self-loop) dropped.
    ei = torch.tensor([[0, 2, 3, 3, 4, 3], [1, 1, 3, 3, 4, 3]])
    off = torch.tensor(
        [[0, 0, 1], [1, 0, 0], [0, -1, 1], [0, 1, -1], [0, 0, 0], [0, 0, -1]]
    )
    e, o, sw = symmetrize_edges(ei, off, 5)
    got = Counter(_edges_as_tuples(e, o))
    assert got == Counter(
        {
            (0, 1, (0, 0, 1)): 1,
            (1, 0, (0, 0, -1)): 1,
            (3, 3, (0, -1, 1)): 1,
            (3, 3, (0, 1, -1)): 1,
            (3, 3, (0, 0, -1)): 1,
            (3, 3, (0, 0, 1)): 1,
        }
    )
    _check_symmetrized(ei, off, e, o, sw)


def test_symmetrize_empty():
    ei, off = empty_graph()
    e, o, sw = symmetrize_edges(ei, off, 3)
    assert e.shape == (2, 0) and o.shape == (0, 3) and sw.shape == (0,)
    # only dropped edges -> empty as well
    ei = torch.tensor([[1, 2], [0, 2]])
    off = torch.tensor([[0, 0, 0], [0, 0, 0]])
    e, o, sw = symmetrize_edges(ei, off, 3)
    assert e.shape == (2, 0) and o.shape == (0, 3) and sw.shape == (0,)


# --------------------------------------------------------------------------
# triplets
# --------------------------------------------------------------------------
def _check_trip_result(res, n_out):
    assert field_names(res) == {"in_", "out", "out_agg"}
    T = res.in_.numel()
    for k in ("in_", "out", "out_agg"):
        _assert_int64_1d(getattr(res, k), T)
    pairs = list(zip(res.in_.tolist(), res.out.tolist()))
    assert len(set(pairs)) == len(pairs)
    if T:
        assert int(res.out.max()) < n_out
    _check_inner(res.out, res.out_agg)
    return set(pairs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sym", [False, True])
def test_triplets_random(seed, sym):
    rng, sizes, main, _, _ = _graph_case(seed)
    ei, off, n = random_graph(rng, sizes, main)
    if sym:
        ei, off, _ = symmetrize_edges(ei, off, n)
    res = triplets(ei, n)
    assert _check_trip_result(res, ei.shape[1]) == ref_triplets(ei)


def test_triplets_empty():
    ei, _ = empty_graph()
    res = triplets(ei, 4)
    assert _check_trip_result(res, 0) == set()
    assert res.in_.shape == (0,)
    # edges but no triplets (every target has a single edge)
    ei = torch.tensor([[0, 1], [1, 2]])
    res = triplets(ei, 3)
    assert _check_trip_result(res, 2) == set()
    # zero atoms
    res = triplets(torch.zeros(2, 0, dtype=torch.long), 0)
    assert res.out.shape == (0,)


# --------------------------------------------------------------------------
# mixed_triplets
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("to_outedge", [False, True])
def test_mixed_triplets_random(seed, to_outedge):
    rng, sizes, main, qint, _ = _graph_case(seed)
    ei_a, off_a, n = random_graph(rng, sizes, main)
    # second graph on the same atoms
    ei_b, off_b, n_b = random_graph(rng, sizes, qint)
    assert n == n_b
    ei_a, off_a, _ = symmetrize_edges(ei_a, off_a, n)
    for (gi, oi), (go, oo) in [
        ((ei_a, off_a), (ei_b, off_b)),
        ((ei_b, off_b), (ei_a, off_a)),
        ((ei_a, off_a), (ei_a, off_a)),
    ]:
        res = mixed_triplets(gi, oi, go, oo, n, to_outedge=to_outedge)
        got = _check_trip_result(res, go.shape[1])
        assert got == ref_mixed(gi, oi, go, oo, to_outedge)


def test_mixed_triplets_backforth_filter():
    # in edge 0->1 with offset (1,0,0); out edge 1->0 with offset (-1,0,0):
    # to_outedge=True would be the back-and-forth path 0->1->0 (same image).
    ei_in = torch.tensor([[0], [1]])
    off_in = torch.tensor([[1, 0, 0]])
    ei_out = torch.tensor([[1, 1], [0, 0]])
    off_out = torch.tensor([[-1, 0, 0], [0, 0, 0]])
    res = mixed_triplets(ei_in, off_in, ei_out, off_out, 2, to_outedge=True)
    assert set(zip(res.in_.tolist(), res.out.tolist())) == {(0, 1)}
    # to_outedge=False: in 0->1 and out 0->1 with identical offset is dropped
    ei_out = torch.tensor([[0, 0], [1, 1]])
    off_out = torch.tensor([[1, 0, 0], [0, 1, 0]])
    res = mixed_triplets(ei_in, off_in, ei_out, off_out, 2, to_outedge=False)
    assert set(zip(res.in_.tolist(), res.out.tolist())) == {(0, 1)}


@pytest.mark.parametrize("to_outedge", [False, True])
def test_mixed_triplets_empty(to_outedge):
    ei, off = empty_graph()
    ei2 = torch.tensor([[0, 1], [1, 0]])
    off2 = torch.zeros(2, 3, dtype=torch.long)
    for a, b in [((ei, off), (ei, off)), ((ei, off), (ei2, off2)), ((ei2, off2), (ei, off))]:
        res = mixed_triplets(a[0], a[1], b[0], b[1], 2, to_outedge=to_outedge)
        assert _check_trip_result(res, b[0].shape[1]) == set()
        assert res.in_.shape == (0,)


def field_names(obj) -> set:
    return {f.name for f in dataclasses.fields(obj)}


# --------------------------------------------------------------------------
# quadruplets
# --------------------------------------------------------------------------
QUAD_KEYS = {"triplet_in", "triplet_out", "out", "trip_out_to_quad", "trip_in_to_quad", "out_agg"}


def _quad_tuples(res, m_ei, q_ei):
    assert field_names(res) == QUAD_KEYS
    assert field_names(res.triplet_in) == {"in_", "out"}
    assert field_names(res.triplet_out) == {"in_", "out"}
    N = res.out.numel()
    for k in ("out", "trip_out_to_quad", "trip_in_to_quad", "out_agg"):
        _assert_int64_1d(getattr(res, k), N)
    tin, tout = res.triplet_in, res.triplet_out
    for d in (tin, tout):
        _assert_int64_1d(d.in_)
        _assert_int64_1d(d.out, d.in_.numel())
    _check_inner(res.out, res.out_agg)
    tuples = []
    for k in range(N):
        ca = int(res.out[k])
        jo = int(res.trip_out_to_quad[k])
        ji = int(res.trip_in_to_quad[k])
        ba = int(tout.in_[jo])
        assert int(tout.out[jo]) == ca
        assert int(tin.out[ji]) == ba
        db = int(tin.in_[ji])
        # geometry: c->a, b->a, d->b
        assert int(m_ei[1, ca]) == int(q_ei[1, ba])
        assert int(m_ei[1, db]) == int(q_ei[0, ba])
        tuples.append((ca, ba, db))
    assert len(set(tuples)) == len(tuples)
    return set(tuples)


@pytest.mark.parametrize("seed", SEEDS + [10, 11, 12])
def test_quadruplets_random(seed):
    rng, sizes, main, qint, _ = _graph_case(seed)
    m_ei, m_off, n = random_graph(rng, sizes, main)
    q_ei, q_off, _ = random_graph(rng, sizes, qint)
    m_ei, m_off, _ = symmetrize_edges(m_ei, m_off, n)
    res = quadruplets(m_ei, m_off, q_ei, q_off, n)
    # the two triplet sets
    tin = set(zip(res.triplet_in.in_.tolist(), res.triplet_in.out.tolist()))
    tout = set(zip(res.triplet_out.in_.tolist(), res.triplet_out.out.tolist()))
    assert tin == ref_mixed(m_ei, m_off, q_ei, q_off, True)
    assert tout == ref_mixed(q_ei, q_off, m_ei, m_off, False)
    assert len(tin) == res.triplet_in.in_.numel()
    assert len(tout) == res.triplet_out.in_.numel()
    assert _quad_tuples(res, m_ei, q_ei) == ref_quadruplets(m_ei, m_off, q_ei, q_off)


def test_quadruplets_cd_filter():
    # Atoms 0 (a), 1 (b), 2 (c = d). Main: 2->0 (c->a), 2->1 (d->b), and
    # a second image 2->1 with offset (0,0,1). qint: 1->0 (b->a), offset 0.
    m_ei = torch.tensor([[2, 2, 2], [0, 1, 1]])
    m_off = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 1]])
    q_ei = torch.tensor([[1], [0]])
    q_off = torch.tensor([[0, 0, 0]])
    res = quadruplets(m_ei, m_off, q_ei, q_off, 3)
    got = _quad_tuples(res, m_ei, q_ei)
    # (c->a=0, b->a=0, d->b=1) has c == d in the same image -> dropped;
    # d->b=2 is a different image of c -> kept.
    assert got == {(0, 0, 2)}
    assert got == ref_quadruplets(m_ei, m_off, q_ei, q_off)


def test_quadruplets_empty():
    ei, off = empty_graph()
    ei2 = torch.tensor([[0, 1], [1, 0]])
    off2 = torch.zeros(2, 3, dtype=torch.long)
    for (m, mo), (q, qo) in [((ei, off), (ei, off)), ((ei2, off2), (ei, off)), ((ei, off), (ei2, off2))]:
        res = quadruplets(m, mo, q, qo, 2)
        assert _quad_tuples(res, m, q) == set()
        assert res.out.shape == (0,)
    # triplets exist but no quadruplet survives: a 2-atom chain
    m = torch.tensor([[0, 1], [1, 0]])
    mo = torch.zeros(2, 3, dtype=torch.long)
    q = torch.tensor([[0], [1]])
    qo = torch.zeros(1, 3, dtype=torch.long)
    res = quadruplets(m, mo, q, qo, 2)
    assert _quad_tuples(res, m, q) == ref_quadruplets(m, mo, q, qo) == set()


# --------------------------------------------------------------------------
# interaction_indices
# --------------------------------------------------------------------------
TOP_KEYS = {
    "main_edge_index", "main_cell_offset", "id_swap", "trip_e2e", "trip_a2e",
    "trip_e2a", "quad", "a2ee2a_target_inner", "a2a_target_inner",
    "a2a_edge_index", "a2a_cell_offset", "a2ee2a_edge_index",
    "a2ee2a_cell_offset", "qint_edge_index", "qint_cell_offset", "padded_width",
}


def _make_graphs(rng, sizes, main, qint, ae, a2a):
    g = {}
    n = None
    for name, counts in (("main", main), ("qint", qint), ("a2ee2a", ae), ("a2a", a2a)):
        ei, off, n = random_graph(rng, sizes, counts)
        g[name] = {"edge_index": ei, "cell_offset": off}
    return g, n


@pytest.mark.parametrize("seed", SEEDS)
def test_interaction_indices_random(seed):
    rng, sizes, main, qint, ae = _graph_case(seed)
    a2a = [int(rng.integers(0, 30)) for _ in sizes]
    graphs, n = _make_graphs(rng, sizes, main, qint, ae, a2a)
    out = interaction_indices(graphs, n)
    assert field_names(out) == TOP_KEYS

    m_ei, m_off = out.main_edge_index, out.main_cell_offset
    _check_symmetrized(
        graphs["main"]["edge_index"], graphs["main"]["cell_offset"], m_ei, m_off, out.id_swap
    )
    ae_ei, ae_off = graphs["a2ee2a"]["edge_index"], graphs["a2ee2a"]["cell_offset"]
    q_ei, q_off = graphs["qint"]["edge_index"], graphs["qint"]["cell_offset"]
    aa_ei = graphs["a2a"]["edge_index"]

    assert _check_trip_result(out.trip_e2e, m_ei.shape[1]) == ref_triplets(m_ei)
    # a2e: in = a2ee2a edges, out = main edges
    assert _check_trip_result(out.trip_a2e, m_ei.shape[1]) == ref_mixed(
        ae_ei, ae_off, m_ei, m_off, False
    )
    # e2a: in = main edges, out = a2ee2a edges
    assert _check_trip_result(out.trip_e2a, ae_ei.shape[1]) == ref_mixed(
        m_ei, m_off, ae_ei, ae_off, False
    )
    assert _quad_tuples(out.quad, m_ei, q_ei) == ref_quadruplets(m_ei, m_off, q_ei, q_off)

    assert out.a2ee2a_target_inner.tolist() == ref_inner(ae_ei[1].tolist())
    assert out.a2a_target_inner.tolist() == ref_inner(aa_ei[1].tolist())
    _check_inner(ae_ei[1], out.a2ee2a_target_inner)
    _check_inner(aa_ei[1], out.a2a_target_inner)
    for name in ("a2a", "a2ee2a", "qint"):
        edge_index, cell_offset = out.graph(name)
        assert torch.equal(edge_index, graphs[name]["edge_index"])
        assert torch.equal(cell_offset, graphs[name]["cell_offset"])


def test_interaction_indices_empty():
    ei, off = empty_graph()
    graphs = {k: {"edge_index": ei, "cell_offset": off} for k in ("main", "a2a", "a2ee2a", "qint")}
    for n in (0, 3):
        out = interaction_indices(graphs, n)
        assert field_names(out) == TOP_KEYS
        assert out.main_edge_index.shape == (2, 0)
        assert out.main_cell_offset.shape == (0, 3)
        assert out.id_swap.shape == (0,)
        for k in ("trip_e2e", "trip_a2e", "trip_e2a"):
            for kk in ("in_", "out", "out_agg"):
                got = getattr(getattr(out, k), kk)
                assert got.shape == (0,) and got.dtype == torch.long
        for kk in ("out", "trip_out_to_quad", "trip_in_to_quad", "out_agg"):
            assert getattr(out.quad, kk).shape == (0,)
        assert out.a2a_target_inner.shape == (0,)
        assert out.a2ee2a_target_inner.shape == (0,)


def test_interaction_indices_float_offsets():
    """JMP stores cell offsets as floats; integer-valued floats must work too."""
    rng = np.random.default_rng(7)
    graphs, n = _make_graphs(rng, [4, 3], [15, 10], [6, 4], [8, 6], [12, 9])
    out_i = interaction_indices(graphs, n)
    graphs_f = {
        k: {"edge_index": v["edge_index"], "cell_offset": v["cell_offset"].double()}
        for k, v in graphs.items()
    }
    out_f = interaction_indices(graphs_f, n)
    assert torch.equal(out_i.main_edge_index, out_f.main_edge_index)
    assert torch.equal(out_i.quad.out, out_f.quad.out)
    assert torch.equal(out_i.quad.trip_in_to_quad, out_f.quad.trip_in_to_quad)
    assert torch.equal(out_i.trip_e2a.in_, out_f.trip_e2a.in_)


class TorchWork(TorchFunctionMode):
    """Counts torch calls and the elements of the tensors they return: a deterministic
    measure of the work a function does (unlike a wall-clock time, it does not flake)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.elements = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        self.elements += _numel(out)
        return out


def _numel(out) -> int:
    """Elements of a tensor, or of the tensors in a (nested) tuple or list (e.g. torch.sort's)."""
    if isinstance(out, torch.Tensor):
        return out.numel()
    if isinstance(out, (tuple, list)):
        return sum(_numel(x) for x in out)
    return 0


def _work(graphs, n):
    with TorchWork() as work:
        out = interaction_indices(graphs, n)
    return work, out


def test_interaction_indices_cost_is_vectorised_and_linear():
    """100 atoms, 3,000 main edges, and the same graph twice (two disjoint copies): the
    indices take the same number of torch calls (no per-edge or per-atom Python loop) and
    produce twice the elements (no all-pairs step), exactly as the outputs double."""
    gen = torch.Generator().manual_seed(0)
    n = 100

    def rand_graph(m):
        ei = torch.randint(0, n, (2, m), generator=gen)
        off = torch.randint(-1, 2, (m, 3), generator=gen)
        return {"edge_index": ei, "cell_offset": off}

    graphs = {
        "main": rand_graph(3000),
        "a2ee2a": rand_graph(2000),
        "qint": rand_graph(800),
        "a2a": rand_graph(5000),
    }
    twice = {
        k: {"edge_index": torch.cat([g["edge_index"], g["edge_index"] + n], dim=1),
            "cell_offset": torch.cat([g["cell_offset"], g["cell_offset"]])}
        for k, g in graphs.items()
    }
    once, out = _work(graphs, n)
    double, out2 = _work(twice, 2 * n)
    assert out.quad.out.numel() > 0
    for key in ("trip_e2e", "trip_a2e", "trip_e2a", "quad"):
        assert getattr(out2, key).out.numel() == 2 * getattr(out, key).out.numel()
    assert double.calls == once.calls
    assert double.elements <= 2 * once.elements + 1000, (once.elements, double.elements)


def _scaled(off, scale):
    return off.double() * scale if scale < 1 else off * scale


@pytest.mark.parametrize("scale", [0.5, 2**40])
@pytest.mark.parametrize("seed", SEEDS + [10, 11, 12])
def test_offset_encoding_fallback(scale, seed):
    """Non-integer or huge offsets take the row-comparison path.  Equality
    relations between offsets are invariant under scaling, so the brute force
    on the unscaled integer graph is still the reference."""
    rng, sizes, main, qint, _ = _graph_case(seed)
    m_ei, m_off, n = random_graph(rng, sizes, main)
    q_ei, q_off, _ = random_graph(rng, sizes, qint)
    m_ei, m_off, _ = symmetrize_edges(m_ei, m_off, n)
    ms, qs = _scaled(m_off, scale), _scaled(q_off, scale)
    res = quadruplets(m_ei, ms, q_ei, qs, n)
    assert _quad_tuples(res, m_ei, q_ei) == ref_quadruplets(m_ei, m_off, q_ei, q_off)
    for to_outedge in (False, True):
        res = mixed_triplets(q_ei, qs, m_ei, ms, n, to_outedge=to_outedge)
        got = _check_trip_result(res, m_ei.shape[1])
        assert got == ref_mixed(q_ei, q_off, m_ei, m_off, to_outedge)
