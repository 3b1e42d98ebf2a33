"""Random graphs and slow, obvious brute-force enumerations that tests/test_indices.py
compares jmp_ase.data.indices against."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import torch

# --------------------------------------------------------------------------
# random graphs
# --------------------------------------------------------------------------
def _random_structure_edges(rng, n_atoms, n_edges, p_self=0.15):
    """Distinct random edges (s, t, offset) of one structure.

    Offsets in {-1, 0, 1}^3; includes self-image edges (s == t, nonzero
    offset) and never the trivial self loop (s == t, offset 0).
    """
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=3)]
    edges = set()
    tries = 0
    while len(edges) < n_edges and tries < 50 * n_edges:
        tries += 1
        s = int(rng.integers(n_atoms))
        if rng.random() < p_self:
            t = s
        else:
            t = int(rng.integers(n_atoms))
        o = offsets[int(rng.integers(len(offsets)))]
        if s == t and o == (0, 0, 0):
            continue
        edges.add((s, t, o))
        # often also add the counter edge, as a radius graph would
        if rng.random() < 0.6:
            edges.add((t, s, tuple(-x for x in o)))
    return sorted(edges)


def random_graph(rng, sizes, edges_per_structure):
    """Several structures concatenated, edges shuffled.

    Returns (edge_index (2, E) int64, cell_offset (E, 3) int64, num_atoms).
    """
    all_edges = []
    shift = 0
    for n, m in zip(sizes, edges_per_structure):
        for s, t, o in _random_structure_edges(rng, n, m):
            all_edges.append((s + shift, t + shift, o))
        shift += n
    perm = rng.permutation(len(all_edges))
    all_edges = [all_edges[i] for i in perm]
    if all_edges:
        ei = torch.tensor([[e[0] for e in all_edges], [e[1] for e in all_edges]])
        off = torch.tensor([e[2] for e in all_edges], dtype=torch.long)
    else:
        ei = torch.zeros(2, 0, dtype=torch.long)
        off = torch.zeros(0, 3, dtype=torch.long)
    return ei.long(), off, shift


def empty_graph():
    return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long)


def _graph_case(seed):
    rng = np.random.default_rng(seed)
    n_struct = int(rng.integers(1, 4))
    sizes = [int(rng.integers(1, 6)) for _ in range(n_struct)]
    main = [int(rng.integers(0, 25)) for _ in sizes]
    qint = [int(rng.integers(0, 12)) for _ in sizes]
    ae = [int(rng.integers(0, 15)) for _ in sizes]
    return rng, sizes, main, qint, ae


def _tup(off_row):
    return tuple(int(x) for x in off_row)


def _edges_as_tuples(ei, off):
    return [
        (int(ei[0, k]), int(ei[1, k]), _tup(off[k])) for k in range(ei.shape[1])
    ]


def _check_inner(outer, inner):
    """(outer, inner) pairs unique and dense 0..count-1 per outer value."""
    outer = outer.tolist()
    inner = inner.tolist()
    assert len(outer) == len(inner)
    pairs = list(zip(outer, inner))
    assert len(set(pairs)) == len(pairs)
    cnt = Counter(outer)
    assert set(pairs) == {(o, k) for o, c in cnt.items() for k in range(c)}


def _assert_int64_1d(x, n=None):
    assert x.dtype == torch.long
    assert x.dim() == 1
    if n is not None:
        assert x.numel() == n


# --------------------------------------------------------------------------
# brute force references
# --------------------------------------------------------------------------
def ref_inner(values):
    seen = {}
    out = []
    for v in values:
        out.append(seen.get(v, 0))
        seen[v] = seen.get(v, 0) + 1
    return out


def _earlier(o):
    return o[0] < 0 or (o[0] == 0 and o[1] < 0) or (o[0] == 0 and o[1] == 0 and o[2] < 0)


def ref_symmetrize(edges):
    out = Counter()
    for s, t, o in edges:
        if s < t or (s == t and _earlier(o)):
            out[(s, t, o)] += 1
            out[(t, s, tuple(-x for x in o))] += 1
    return out


def ref_triplets(ei):
    E = ei.shape[1]
    res = set()
    for e_out in range(E):
        for e_in in range(E):
            if e_in != e_out and int(ei[1, e_in]) == int(ei[1, e_out]):
                res.add((e_in, e_out))
    return res


def ref_mixed(ei_in, off_in, ei_out, off_out, to_outedge):
    res = set()
    for o in range(ei_out.shape[1]):
        s_o, t_o = int(ei_out[0, o]), int(ei_out[1, o])
        for i in range(ei_in.shape[1]):
            s_i, t_i = int(ei_in[0, i]), int(ei_in[1, i])
            if to_outedge:
                if t_i != s_o:
                    continue
                back = s_i == t_o and all(
                    int(off_out[o, k]) + int(off_in[i, k]) == 0 for k in range(3)
                )
            else:
                if t_i != t_o:
                    continue
                back = s_i == s_o and all(
                    int(off_out[o, k]) - int(off_in[i, k]) == 0 for k in range(3)
                )
            if not back:
                res.add((i, o))
    return res


def ref_quadruplets(m_ei, m_off, q_ei, q_off):
    """Set of (c->a main edge, b->a qint edge, d->b main edge)."""
    res = set()
    E, Q = m_ei.shape[1], q_ei.shape[1]
    for ca in range(E):
        c, a = int(m_ei[0, ca]), int(m_ei[1, ca])
        for ba in range(Q):
            b, a2 = int(q_ei[0, ba]), int(q_ei[1, ba])
            if a2 != a:
                continue
            # triplet_out filter: c == b and o(c->a) - o(b->a) == 0
            if c == b and all(int(m_off[ca, k]) - int(q_off[ba, k]) == 0 for k in range(3)):
                continue
            for db in range(E):
                d, b2 = int(m_ei[0, db]), int(m_ei[1, db])
                if b2 != b:
                    continue
                # triplet_in filter: d == a and o(b->a) + o(d->b) == 0
                if d == a and all(
                    int(q_off[ba, k]) + int(m_off[db, k]) == 0 for k in range(3)
                ):
                    continue
                # quadruplet filter: c == d and o(d->b)+o(b->a)-o(c->a) == 0
                if c == d and all(
                    int(m_off[db, k]) + int(q_off[ba, k]) - int(m_off[ca, k]) == 0
                    for k in range(3)
                ):
                    continue
                res.add((ca, ba, db))
    return res

