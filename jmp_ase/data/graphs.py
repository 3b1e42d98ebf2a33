"""Neighbour lists fed to GemNet-OC, built the way JMP's fine-tuning transform builds them.

One radius graph is computed per structure at the "a2a" settings (the cutoff and
``int(max_neighbors * 1000 / 30)`` neighbours per atom); the other graphs are
sub-selections of it:

========  ==========================================================================
``main``    the ``max_neighbors`` nearest sources of every target atom
``a2a``     the ``int(max_neighbors * 1000 / 30)`` nearest sources (the full graph)
``a2ee2a``  the ``int(max_neighbors * 20 / 30)`` nearest sources
``qint``    the ``int(max_neighbors * 8 / 30)`` nearest sources, then only the edges
            with a source or target whose tag is in ``qint_tags``
========  ==========================================================================

Conventions (the same as JMP's):

* An edge is ``(s, t)``: row 0 of ``edge_index`` is the source, row 1 the target.
* ``cell_offset`` holds integer image shifts applied to the *source*: the source sits at
  ``pos[s] + cell_offset @ cell``. The model computes the edge vector
  ``pos[t] - pos[s] - cell_offset @ cell`` (source image -> target) and its length.
* Every pair with ``1e-2 Å < distance <= cutoff`` is an edge (JMP drops ``d² <= 1e-4``,
  which removes the self pair); an atom and its own periodic image are an edge too.
* "Nearest k" is strict: per target atom exactly ``min(k, degree)`` edges are kept, those of
  smallest distance. Distances for this choice are computed in float32 with JMP's own
  formulas and ranked with JMP's padded ``torch.sort``, so exactly tied neighbours (perfect
  crystals, an atom's own images) are chosen as JMP chooses them; this matters for the edge
  count after symmetrisation. As in JMP, a limit ``k <= 0`` (``max_neighbors < 4`` gives
  ``qint`` a limit of 0) means no limit.
* Edges are in JMP's enumeration order: sorted by target atom, then source atom, then
  offset (lexicographic). The main graph is *not* symmetrised here.
* Molecules (no periodic direction) use the same rules; JMP's ``torch_cluster`` path
  keeps an arbitrary (not the nearest) subset when an atom has more than the a2a limit
  (1000 for max_neighbors 30) neighbours, here the nearest are kept.

Only index work happens here (NumPy, no autograd, cost linear in the number of atoms: the
pair search is ``vesin``'s cell list). Geometry needing gradients is recomputed by the model
from ``edge_index`` and ``cell_offset``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from jmp_ase.data.graph_settings import _DEFAULT_TAG, GRAPH_TYPES, TIE_TOLERANCE, GraphSettings, resolve_tags
from jmp_ase.data.neighbors import as_cell, as_pbc, as_positions, periodic_cell_problem, vesin_pairs
from jmp_ase.data.validation import validate_structure

__all__ = [
    "GRAPH_TYPES",
    "GraphSettings",
    "StructureGraphs",
    "batch_graphs",
    "resolve_tags",
    "structure_graphs",
    "structure_graphs_checked",
    "structure_graphs_from_atoms",
    "validate_structure",
]

# JMP drops pairs whose squared distance is at most this (Å²): the self pair and duplicates.
_MIN_DISTANCE_SQ = 1e-4


@dataclass
class StructureGraphs:
    """The four graphs of one structure; atom indices are local to the structure.

    ``edge_index[g]``: LongTensor (2, E_g), row 0 source, row 1 target, sorted by target.
    ``cell_offset[g]``: LongTensor (E_g, 3), integer lattice shift of the source atom.
    ``truncated``: (K,) int64 indices of the atoms that have more neighbours within the
    cutoff than the main graph keeps for them (the ``max_neighbors`` limit cut), ascending.
    """

    edge_index: dict[str, torch.Tensor]
    cell_offset: dict[str, torch.Tensor]
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def num_edges(self, graph_type: str) -> int:
        """Number of edges E of one graph type."""
        return int(self.edge_index[graph_type].shape[1])


# --------------------------------------------------------------------------------------
# Graph construction
# --------------------------------------------------------------------------------------


def _enumeration_order(t: np.ndarray, s: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Permutation sorting edges by (target, source, offset lexicographic).

    This is the order in which JMP's ``radius_graph_pbc`` enumerates pairs; the keys are
    unique, so the result does not depend on the order vesin returned them in.
    """
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo = off.min(axis=0)
    span = (off.max(axis=0) - lo + 1).astype(np.int64)
    n = int(max(t.max(), s.max())) + 1
    if float(n) * float(n) * float(np.prod(span.astype(np.float64))) < 2.0**62:
        rel = off - lo
        code = ((t * n + s) * span[0] + rel[:, 0]) * span[1] + rel[:, 1]
        code = code * span[2] + rel[:, 2]
        return np.argsort(code)
    return np.lexsort((off[:, 2], off[:, 1], off[:, 0], s, t))


# Elements of one padded (targets x max degree) block sorted at a time in _neighbor_ranks.
_RANK_BLOCK_ELEMENTS = 1 << 22


def _neighbor_ranks(t: np.ndarray, key: torch.Tensor, num_atoms: int, min_limit: int) -> np.ndarray:
    """Rank (0 = nearest) of every edge among the edges of its target, ranked by ``key``.

    Edges must be in enumeration order (sorted by target, then source, then offset).
    Reproduces JMP's ``get_max_neighbors_mask`` exactly, ties included: each target's keys
    are laid out in enumeration order in a row of length max-degree padded with +inf and
    the rows are sorted with ``torch.sort`` (float32). Only targets with more than
    ``min_limit`` edges need ranking (the others keep all their edges under any limit
    >= ``min_limit``); their rows are sorted in blocks, so memory stays linear in the
    number of edges. Returns an (E,) int64 array.
    """
    counts = np.bincount(t, minlength=num_atoms)
    start = np.cumsum(counts) - counts
    rank = np.arange(t.size, dtype=np.int64) - start[t]
    if t.size == 0:
        return rank
    width = int(counts.max())
    heavy = np.flatnonzero(counts > min_limit)
    rows_per_block = max(1, _RANK_BLOCK_ELEMENTS // width)
    for b in range(0, heavy.size, rows_per_block):
        atoms = heavy[b : b + rows_per_block]
        row_counts = counts[atoms]
        row = np.repeat(np.arange(atoms.size), row_counts)
        col = np.arange(row.size) - np.repeat(np.cumsum(row_counts) - row_counts, row_counts)
        edge = start[atoms][row] + col
        row_t, col_t, edge_t = (torch.from_numpy(a) for a in (row, col, edge))
        padded = torch.full((atoms.size, width), float("inf"), dtype=torch.float32)
        padded[row_t, col_t] = key[edge_t]
        order = torch.sort(padded, dim=1).indices
        positions = torch.empty_like(order)
        positions.scatter_(1, order, torch.arange(width).expand(atoms.size, width))
        rank[edge] = positions[row_t, col_t].numpy()
    return rank


def _offset_table(off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct integer offsets (U, 3) and the index (E,) of each edge's offset among them.

    Offsets span a small box, so a dense code replaces a sort of the (E, 3) rows.
    """
    if off.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64)
    lo = off.min(axis=0)
    span = off.max(axis=0) - lo + 1
    rel = off - lo
    code = (rel[:, 0] * span[1] + rel[:, 1]) * span[2] + rel[:, 2]
    size = int(np.prod(span))
    if size <= 4 * off.shape[0] + 1024:
        present = np.zeros(size, dtype=bool)
        present[code] = True
        codes = np.flatnonzero(present)
        lookup = np.cumsum(present) - 1
        inverse = lookup[code]
    else:
        codes, inverse = np.unique(code, return_inverse=True)
    uniq = np.stack(np.unravel_index(codes, tuple(int(x) for x in span)), axis=1) + lo
    return uniq.astype(np.int64), inverse.reshape(-1).astype(np.int64)


def _jmp_squared_distance(pos32, cell32, t, s, uniq, inverse) -> torch.Tensor:
    """Squared distance (float32) computed as JMP's ``radius_graph_pbc`` does.

    ``|pos[t] - (pos[s] + cell^T @ offset)|²``; used for the cutoff test and the a2a limit.
    ``uniq``/``inverse`` come from ``_offset_table``.
    """
    shift = torch.bmm(
        cell32.t().unsqueeze(0), torch.from_numpy(uniq).float().t().unsqueeze(0)
    )[0].t()
    source = pos32[torch.from_numpy(s)] + shift[torch.from_numpy(inverse)]
    return torch.sum((pos32[torch.from_numpy(t)] - source) ** 2, dim=1)


def _jmp_distance(pos32, cell32, t, s, uniq, inverse) -> torch.Tensor:
    """Distance (float32) computed as JMP's ``get_pbc_distances`` does; ranks the subgraphs.

    ``|(pos[s] - pos[t]) + offset @ cell|``.
    """
    shift = torch.from_numpy(uniq).float().view(-1, 1, 3)
    shift = shift.bmm(cell32.expand(uniq.shape[0], 3, 3).contiguous()).view(-1, 3)
    vec = pos32[torch.from_numpy(s)] - pos32[torch.from_numpy(t)]
    vec += shift[torch.from_numpy(inverse)]
    return vec.norm(dim=-1)


def _empty_graphs() -> StructureGraphs:
    return StructureGraphs(
        edge_index={g: torch.zeros((2, 0), dtype=torch.long) for g in GRAPH_TYPES},
        cell_offset={g: torch.zeros((0, 3), dtype=torch.long) for g in GRAPH_TYPES},
    )


def structure_graphs(
    positions,
    cell,
    pbc,
    tags=None,
    settings: GraphSettings | None = None,
) -> StructureGraphs:
    """The main / a2a / a2ee2a / qint graphs of one structure.

    Args:
        positions: (N, 3) Cartesian positions, Å (array-like or tensor; not differentiated).
        cell: (3, 3) lattice vectors as rows, Å, or None for a molecule. Rows of
            non-periodic directions are ignored (they may be zero).
        pbc: bool or (3,) bools. All False (or cell None) = non-periodic molecule.
        tags: (N,) ints or None; read under ``settings.tags`` (see ``resolve_tags``; None means
            every atom is tag 2), then used for the qint filter.
        settings: cutoff and neighbour limits; defaults to ``GraphSettings()``.

    Returns:
        ``StructureGraphs`` with local atom indices; empty (2, 0) graphs when no pair is in
        range (e.g. a single atom in a molecule). Within each graph, edges are sorted by
        target, then source, then offset (JMP's enumeration order).

    Distances used for selection are computed in float32 with JMP's formulas and ranked
    with JMP's padded ``torch.sort``, so even exactly tied neighbours (perfect crystals,
    an atom's own images) are chosen as JMP chooses them. Does not validate the structure
    beyond shapes and the periodic cell: call ``validate_structure`` first, or use
    ``structure_graphs_checked``.
    """
    settings = GraphSettings() if settings is None else settings
    pos = as_positions(positions)
    pbc_arr = as_pbc(pbc)
    if cell is None and pbc_arr.any():
        raise ValueError(f"pbc={pbc_arr.tolist()} is periodic but no cell was given")
    cell_arr = as_cell(cell)
    problem = periodic_cell_problem(cell_arr, pbc_arr)
    if problem is not None:
        raise ValueError(problem)
    n = pos.shape[0]
    bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
    if bad.size:
        raise ValueError(f"non-finite (NaN/inf) positions for atoms {bad[:10].tolist()}")
    tag_arr = np.full(n, _DEFAULT_TAG, dtype=np.int64) if tags is None else resolve_tags(tags, settings.tags)
    if tag_arr.shape[0] != n:
        raise ValueError(f"tags has {tag_arr.shape[0]} entries but there are {n} atoms")
    if n == 0:
        return _empty_graphs()

    cutoff = settings.cutoff
    # Candidates from vesin (exclusive cutoff, float64), searched a little further so that
    # every pair JMP's float32 test accepts is among them.
    search = cutoff * (1.0 + 1e-6) + 1e-3
    i, j, off, _ = vesin_pairs(pos, cell_arr, pbc_arr, search, full=True)
    # vesin pair (i, j, S): vector pos[j] + S @ box - pos[i] -> target i, source j, shift S.
    t, s = i, j
    if settings.neighbor_order == "canonical":
        return _canonical_graphs(pos, np.where(pbc_arr[:, None], cell_arr, 0.0), t, s, off, tag_arr, settings)
    pos32 = torch.from_numpy(pos).float()
    cell32 = torch.from_numpy(np.where(pbc_arr[:, None], cell_arr, 0.0)).float()

    uniq, inverse = _offset_table(off)
    d2 = _jmp_squared_distance(pos32, cell32, t, s, uniq, inverse)
    keep = (torch.le(d2, cutoff * cutoff) & torch.gt(d2, _MIN_DISTANCE_SQ)).numpy()
    t, s, off, inverse = t[keep], s[keep], off[keep], inverse[keep]
    d2 = d2[torch.from_numpy(keep)]
    order = _enumeration_order(t, s, off)
    t, s, off, inverse = t[order], s[order], off[order], inverse[order]
    d2 = d2[torch.from_numpy(order)]
    degree = np.bincount(t, minlength=n)

    # a2a: the radius graph with its own (nearest-first) neighbour limit.
    a2a_limit = settings.a2a_max_neighbors
    if a2a_limit > 0 and t.size and np.bincount(t).max() > a2a_limit:
        m = _neighbor_ranks(t, d2, n, a2a_limit) < a2a_limit
        t, s, off = t[m], s[m], off[m]
    del d2, inverse, uniq, pos32, cell32  # the sub-selection recomputes what it needs: keep the peak low
    return select_subgraphs(pos, np.where(pbc_arr[:, None], cell_arr, 0.0), t, s, off, tag_arr, settings, degree=degree)


def select_subgraphs(pos, box, t, s, off, tags, settings: GraphSettings, degree=None) -> StructureGraphs:
    """The four graphs from the a2a edges ``(t, s, off)`` (target, source, source image offset;
    in enumeration order): main / a2ee2a / qint are the nearest ``max_neighbors_of(graph)`` of
    each target under ``settings.neighbor_order``, qint also filtered by tags.

    The one nearest-k sub-selection: graph building and pre-training's edge dropout both use it.
    ``box``: (3, 3) lattice rows, zero along non-periodic directions; ``tags``: already
    resolved (:func:`resolve_tags`); ``degree``: (N,) neighbours within the cutoff before
    any limit (default: the a2a degree), for ``truncated``.
    """
    n = pos.shape[0]
    degree = np.bincount(t, minlength=n) if degree is None else degree
    if settings.neighbor_order == "canonical":
        d = _edge_distances(pos, box, t, s, off)
        masks = {"a2a": np.ones(t.shape, dtype=bool)}
        for graph_type in ("main", "a2ee2a", "qint"):
            masks[graph_type] = _within_nearest(t, d, n, settings.max_neighbors_of(graph_type))
    else:
        limits = {g: settings.max_neighbors_of(g) for g in ("main", "a2ee2a", "qint")}
        a2a_limit = settings.a2a_max_neighbors
        active = [k for k in limits.values() if 0 < k < a2a_limit or (a2a_limit <= 0 < k)]
        if active and t.size:
            uniq, inverse = _offset_table(off)
            pos32, box32 = torch.from_numpy(pos).float(), torch.from_numpy(np.asarray(box, dtype=np.float64)).float()
            rank = _neighbor_ranks(t, _jmp_distance(pos32, box32, t, s, uniq, inverse), n, min(active))
        else:
            rank = np.zeros(t.shape, dtype=np.int64)
        masks = {"a2a": np.ones(t.shape, dtype=bool)}
        for graph_type, k in limits.items():
            masks[graph_type] = rank < k if k > 0 else np.ones(t.shape, dtype=bool)
    qint_tags = np.asarray(settings.qint_tags, dtype=np.int64)
    masks["qint"] &= np.isin(tags[s], qint_tags) | np.isin(tags[t], qint_tags)
    edges = {g: (s[masks[g]], t[masks[g]], off[masks[g]]) for g in GRAPH_TYPES}
    ms, mt, moff = edges["main"]
    truncated = np.flatnonzero(degree > np.bincount(mt, minlength=n))
    if settings.neighbor_order == "canonical":
        # Union with the reverses, deduplicated and in enumeration order (target, source, offset).
        both = np.concatenate([np.column_stack([mt, ms, moff]), np.column_stack([ms, mt, -moff])])
        both = np.unique(both.reshape(-1, 5), axis=0)
        edges["main"] = (both[:, 1], both[:, 0], both[:, 2:])
    return _as_structure_graphs(edges, truncated)


def _as_structure_graphs(edges: dict, truncated: np.ndarray) -> StructureGraphs:
    """``StructureGraphs`` from ``{graph_type: (source, target, offset)}`` NumPy arrays."""
    edge_index: dict[str, torch.Tensor] = {}
    cell_offset: dict[str, torch.Tensor] = {}
    for graph_type in GRAPH_TYPES:
        s, t, off = edges[graph_type]
        edge_index[graph_type] = torch.from_numpy(np.stack([s, t]).astype(np.int64).reshape(2, -1))
        cell_offset[graph_type] = torch.from_numpy(
            np.ascontiguousarray(off, dtype=np.int64).reshape(-1, 3)
        )
    return StructureGraphs(edge_index=edge_index, cell_offset=cell_offset,
                           truncated=np.asarray(truncated, dtype=np.int64))


def _edge_distances(pos: np.ndarray, box: np.ndarray, t, s, off) -> np.ndarray:
    """Float64 length of every edge, ``|pos[s] + off @ box - pos[t]|``, element by element.

    Written without a matrix product so that every edge's distance is the same bits
    wherever the edge sits in the arrays: an edge's length does not depend on the atom order.
    """
    shift = off[:, 0:1] * box[0] + off[:, 1:2] * box[1] + off[:, 2:3] * box[2]
    vec = (pos[s] + shift) - pos[t]
    return np.sqrt(vec[:, 0] * vec[:, 0] + vec[:, 1] * vec[:, 1] + vec[:, 2] * vec[:, 2])


def _within_nearest(t: np.ndarray, d: np.ndarray, num_atoms: int, k: int) -> np.ndarray:
    """Mask of the edges among the ``k`` nearest of their target, ties with the k-th kept.

    An edge is kept when its length is at most the target's k-th smallest length plus
    :data:`TIE_TOLERANCE`; ``k <= 0`` keeps everything. Depends only on the lengths, not on
    the edge order.
    """
    counts = np.bincount(t, minlength=num_atoms)
    if k <= 0 or t.size == 0 or counts.max() <= k:
        return np.ones(t.shape, dtype=bool)
    order = np.lexsort((d, t))
    start = np.cumsum(counts) - counts
    heavy = np.flatnonzero(counts > k)
    threshold = np.full(num_atoms, np.inf)
    threshold[heavy] = d[order[start[heavy] + k - 1]] + TIE_TOLERANCE
    return d <= threshold[t]


def _canonical_graphs(pos, box, t, s, off, tag_arr, settings: GraphSettings) -> StructureGraphs:
    """The four graphs under ``neighbor_order="canonical"`` (see :class:`GraphSettings`).

    Selection uses float64 edge lengths only, so permuting the atoms permutes the graphs.
    The main graph is closed under reversal (``s -> t`` with offset ``o`` and ``t -> s`` with
    ``-o``): JMP's ``s < t`` symmetrisation downstream then keeps it as it is.
    """
    n = pos.shape[0]
    d = _edge_distances(pos, box, t, s, off)
    keep = (d <= settings.cutoff) & (d * d > _MIN_DISTANCE_SQ)
    t, s, off, d = t[keep], s[keep], off[keep], d[keep]
    order = _enumeration_order(t, s, off)
    t, s, off, d = t[order], s[order], off[order], d[order]
    degree = np.bincount(t, minlength=n)
    m = _within_nearest(t, d, n, settings.a2a_max_neighbors)
    return select_subgraphs(pos, box, t[m], s[m], off[m], tag_arr, settings, degree=degree)


def structure_graphs_checked(
    numbers,
    positions,
    cell,
    pbc,
    tags=None,
    settings: GraphSettings | None = None,
    *,
    num_elements: int = 120,
    min_distance: float = 0.1,
) -> StructureGraphs:
    """``validate_structure`` then ``structure_graphs`` (same arguments; numbers (N,) ints)."""
    validate_structure(
        numbers, positions, cell, pbc, num_elements=num_elements, min_distance=min_distance
    )
    return structure_graphs(positions, cell, pbc, tags, settings)


def structure_graphs_from_atoms(
    atoms,
    settings: GraphSettings | None = None,
    *,
    validate: bool = True,
    num_elements: int = 120,
    min_distance: float = 0.1,
) -> StructureGraphs:
    """Graphs of an ``ase.Atoms`` (positions, cell, pbc and tags read from it).

    A non-periodic ``Atoms`` is treated as a molecule whatever its cell (JMP's 1000 Å box
    plays no role). ``validate=True`` runs ``validate_structure`` first.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=np.float64) if pbc.any() else None
    if validate:
        validate_structure(
            atoms.numbers, atoms.positions, cell, pbc,
            num_elements=num_elements, min_distance=min_distance,
        )
    return structure_graphs(atoms.positions, cell, pbc, atoms.get_tags(), settings)


def batch_graphs(
    per_structure: Sequence[StructureGraphs], num_atoms: Sequence[int]
) -> dict[str, dict[str, torch.Tensor]]:
    """Concatenate per-structure graphs into one batch.

    Atom indices of structure b are shifted by ``sum(num_atoms[:b])``. Returns
    ``{graph_type: {"edge_index": LongTensor (2, E), "cell_offset": LongTensor (E, 3)}}``
    for every graph type in ``GRAPH_TYPES``; edges stay grouped by structure and sorted by
    (batch-global) target.
    """
    if len(per_structure) != len(num_atoms):
        raise ValueError(
            f"{len(per_structure)} graphs but {len(num_atoms)} atom counts were given"
        )
    starts = np.concatenate([[0], np.cumsum(np.asarray(num_atoms, dtype=np.int64))[:-1]])
    out: dict[str, dict[str, torch.Tensor]] = {}
    for graph_type in GRAPH_TYPES:
        indices = [
            g.edge_index[graph_type] + int(start) for g, start in zip(per_structure, starts)
        ]
        offsets = [g.cell_offset[graph_type] for g in per_structure]
        out[graph_type] = {
            "edge_index": torch.cat(indices, dim=1) if indices else torch.zeros((2, 0), dtype=torch.long),
            "cell_offset": torch.cat(offsets, dim=0) if offsets else torch.zeros((0, 3), dtype=torch.long),
        }
    return out
