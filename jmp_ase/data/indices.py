"""Interaction indices of GemNet-OC (JMP flavour) in plain PyTorch.

Everything here is pure integer index bookkeeping: no ``torch_sparse`` and no
``torch_scatter``, only sorting, ``bincount``, ``cumsum`` and
``repeat_interleave``.  All index outputs are ``int64`` tensors on the device
of the inputs and never require gradients.

Graph conventions
-----------------
A graph is given by

* ``edge_index``: ``(2, E)`` int64; row 0 is the source atom ``s``, row 1 the
  target atom ``t`` (an edge ``s -> t``).
* ``cell_offset``: ``(E, 3)``, integer valued (any numeric dtype works): the
  periodic image shift of the SOURCE atom.

Atoms of several structures may be concatenated into one disjoint graph, and
the edges may come in any order.  None of the functions below relies on the
edges being sorted.  The order of the produced index tuples is unspecified;
they are meant to be consumed as sets of tuples together with the "inner"
ranks (``out_agg`` etc.), which are always a dense ``0 .. count - 1``
enumeration of the entries that share the same outer index.

Empty inputs (no edges, no triplets, no quadruplets) give correctly shaped
empty tensors.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from jmp_ase.data.index_types import InteractionIndices, Quadruplets, TripletPairs, Triplets

Tensor = torch.Tensor

__all__ = [
    "inner_index",
    "symmetrize_edges",
    "triplets",
    "mixed_triplets",
    "quadruplets",
    "interaction_indices",
]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _is_sorted(x: Tensor) -> bool:
    if x.numel() < 2:
        return True
    return bool((x[1:] >= x[:-1]).all())


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` along dim 0 (``index_select`` is much faster than ``[]`` on CPU)."""
    return x.index_select(0, idx)


def _select(mask: Tensor, *tensors: Tensor) -> Tuple[Tensor, ...]:
    """Apply one boolean mask (dim 0) to several tensors, computing ``nonzero`` once."""
    keep = torch.nonzero(mask).flatten()
    return tuple(x.index_select(0, keep) for x in tensors)


def _group_by_key(
    keys: Tensor, num_keys: int
) -> Tuple[Optional[Tensor], Tensor, Tensor]:
    """Bucket items by an integer key in ``[0, num_keys)`` (atom ids must be
    smaller than the ``num_atoms`` passed to the public functions).

    Returns ``(order, start, count)``: ``order`` lists the item ids sorted by
    key (stable, so ties keep their original order), or is ``None`` when the
    keys are already sorted (identity order); the items with key ``k`` are
    ``order[start[k] : start[k] + count[k]]``.
    """
    if _is_sorted(keys):
        order = None
    else:
        order = torch.sort(keys, stable=True).indices
    count = torch.bincount(keys, minlength=num_keys)
    start = torch.cumsum(count, 0) - count
    return order, start, count


def _expand_matches(
    query_keys: Tensor, item_keys: Tensor, num_keys: int
) -> Tuple[Tensor, Tensor]:
    """All pairs ``(query q, item i)`` with ``query_keys[q] == item_keys[i]``.

    The pairs come out sorted by ``q`` (and, within one ``q``, by ``i`` in
    stable key order).  Returns ``(q, i)``, two int64 tensors of equal length.
    """
    device = query_keys.device
    order, start, count = _group_by_key(item_keys, num_keys)
    n_per_query = _take(count, query_keys)
    total = int(n_per_query.sum()) if n_per_query.numel() > 0 else 0
    q = torch.repeat_interleave(
        torch.arange(query_keys.numel(), device=device, dtype=torch.long),
        n_per_query,
        output_size=total,
    )
    # Pair p of query q sits at position p - block_start[q] of q's block, so
    # its item lives at sorted position p + (start[key[q]] - block_start[q]).
    block_start = torch.cumsum(n_per_query, 0) - n_per_query
    shift = _take(start, query_keys) - block_start
    i = torch.arange(total, device=device, dtype=torch.long) + _take(shift, q)
    if order is not None:
        i = _take(order, i)
    return q, i


def _inner_index_sorted(index: Tensor, size: int) -> Tensor:
    """``inner_index`` for an index already known to be sorted (no check)."""
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=index.device)
    count = torch.bincount(index, minlength=size)
    start = torch.cumsum(count, 0) - count
    arange = torch.arange(index.numel(), device=index.device, dtype=torch.long)
    return arange - _take(start, index)


def _nonzero_rows(x: Tensor) -> Tensor:
    """Boolean ``(n,)``: whether row ``x[k]`` of an ``(n, 3)`` tensor is not all zero."""
    return (x != 0).any(dim=-1)


def _as_long(x: Tensor) -> Tensor:
    return x if x.dtype == torch.long else x.long()


def _atom_image_codes(
    atoms_a: Tensor, offs_a: Tensor, atoms_b: Tensor, offs_b: Tensor
) -> Optional[Tuple[Tensor, Tensor]]:
    """Encode (atom, integer offset) rows of two sets as comparable int64 scalars.

    ``code_a[i] == code_b[j]`` iff ``atoms_a[i] == atoms_b[j]`` and
    ``offs_a[i] == offs_b[j]`` (all three components).  Returns ``None`` when
    that is not possible (non-integer offsets, or a code would overflow); the
    caller then compares rows directly.
    """
    if offs_a.is_floating_point() or offs_b.is_floating_point():
        both = torch.cat([offs_a.reshape(-1), offs_b.reshape(-1)])
        if not bool(torch.isfinite(both).all()) or not torch.equal(both, both.round()):
            return None
        offs_a = offs_a.round().long()
        offs_b = offs_b.round().long()
    else:
        offs_a = _as_long(offs_a)
        offs_b = _as_long(offs_b)
    if offs_a.numel() + offs_b.numel() == 0:
        return atoms_a.clone(), atoms_b.clone()
    lo = int(torch.cat([offs_a.reshape(-1), offs_b.reshape(-1)]).min())
    hi = int(torch.cat([offs_a.reshape(-1), offs_b.reshape(-1)]).max())
    base = hi - lo + 1
    n_atoms = 1 + max(
        int(atoms_a.max()) if atoms_a.numel() else 0,
        int(atoms_b.max()) if atoms_b.numel() else 0,
    )
    if n_atoms * base**3 >= 2**62:
        return None

    def encode(atoms: Tensor, offs: Tensor) -> Tensor:
        shifted = offs - lo
        return ((atoms * base + shifted[:, 0]) * base + shifted[:, 1]) * base + shifted[
            :, 2
        ]

    return encode(atoms_a, offs_a), encode(atoms_b, offs_b)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
@torch.no_grad()
def inner_index(index: Tensor, size: int) -> Tensor:
    """Rank of every element among the elements with the same value.

    Arguments
    ---------
    index: LongTensor, shape (n,)
        Non-negative group ids, in any order.
    size: int
        Number of groups (upper bound of ``index`` + 1); used as the
        ``minlength`` of the group count.

    Returns
    -------
    LongTensor, shape (n,)
        ``out[k]`` = number of earlier positions ``j < k`` with
        ``index[j] == index[k]`` (0, 1, 2, ... in order of appearance).
        The pairs ``(index[k], out[k])`` are unique and, per group, dense.
    """
    index = _as_long(index)
    if _is_sorted(index):
        return _inner_index_sorted(index, size)
    sorted_vals, order = torch.sort(index, stable=True)
    out = torch.empty_like(index)
    out[order] = _inner_index_sorted(sorted_vals, size)
    return out


@torch.no_grad()
def symmetrize_edges(
    edge_index: Tensor, cell_offset: Tensor, num_atoms: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """Make the main graph exactly symmetric (JMP's rule).

    An input edge ``s -> t`` with offset ``o`` is kept when ``s < t``, or when
    ``s == t`` and ``o`` is "earlier" than zero (first nonzero component
    negative).  All other input edges are discarded (in particular an edge
    with ``s > t`` is dropped; its counterpart is regenerated from the kept
    ``t -> s`` edge if that one exists).  The output is the K kept edges
    (input order) followed by their K reverses ``t -> s`` with offset ``-o``.

    Arguments
    ---------
    edge_index: LongTensor, shape (2, E)
    cell_offset: Tensor, shape (E, 3)
    num_atoms: int
        Total number of atoms (kept for API symmetry; not needed).

    Returns
    -------
    edge_index: LongTensor, shape (2, 2K)
    cell_offset: Tensor, shape (2K, 3), same dtype as the input offsets.
    id_swap: LongTensor, shape (2K,)
        ``id_swap[e]`` is the index of the reverse edge of ``e`` (atoms
        swapped, negated offset); an involution without fixed points.
    """
    del num_atoms
    edge_index = _as_long(edge_index)
    s, t = edge_index[0], edge_index[1]
    off = cell_offset
    earlier = (
        (off[:, 0] < 0)
        | ((off[:, 0] == 0) & (off[:, 1] < 0))
        | ((off[:, 0] == 0) & (off[:, 1] == 0) & (off[:, 2] < 0))
    )
    keep = (s < t) | ((s == t) & earlier)
    kept = torch.nonzero(keep).flatten()
    ei_dir = edge_index[:, kept]
    off_dir = _take(off, kept)
    new_edge_index = torch.cat([ei_dir, ei_dir.flip(0)], dim=1)
    new_offset = torch.cat([off_dir, -off_dir], dim=0)
    k = kept.numel()
    ar = torch.arange(k, device=edge_index.device, dtype=torch.long)
    id_swap = torch.cat([ar + k, ar])
    return new_edge_index, new_offset, id_swap


@torch.no_grad()
def triplets(edge_index: Tensor, num_atoms: int) -> Triplets:
    """Edge-to-edge triplets ``b -> a <- c`` of one graph.

    Every ordered pair of distinct edges (by edge id; ``b == c`` is allowed
    when the two edges come from different images) sharing the target ``a``.

    Arguments
    ---------
    edge_index: LongTensor, shape (2, E)
    num_atoms: int

    Returns
    -------
    :class:`~jmp_ase.data.index_types.Triplets` with
        ``in_``: LongTensor (T,), edge id of ``b -> a``;
        ``out``: LongTensor (T,), edge id of ``c -> a``;
        ``out_agg``: LongTensor (T,), ``inner_index(out, E)``.
    """
    edge_index = _as_long(edge_index)
    t = edge_index[1]
    num_edges = t.numel()
    # query: out edge (its target), items: in edges (their target)
    out, inn = _expand_matches(t, t, num_atoms)
    out, inn = _select(inn != out, out, inn)
    # out is sorted by construction (queries come out in order)
    return Triplets(in_=inn, out=out, out_agg=_inner_index_sorted(out, num_edges))


@torch.no_grad()
def mixed_triplets(
    edge_index_in: Tensor,
    cell_offset_in: Tensor,
    edge_index_out: Tensor,
    cell_offset_out: Tensor,
    num_atoms: int,
    to_outedge: bool = False,
) -> Triplets:
    """Triplets between two graphs on the same atoms (JMP's ``get_mixed_triplets``).

    For every out edge ``s_o -> t_o`` take every in edge ``s_i -> t_i`` with
    ``t_i == t_o`` (``to_outedge=False``) or ``t_i == s_o``
    (``to_outedge=True``).  Back-and-forth pairs are dropped:

    * ``to_outedge=False``: ``s_i == s_o`` and ``o_out - o_in == 0``;
    * ``to_outedge=True``:  ``s_i == t_o`` and ``o_out + o_in == 0``.

    Arguments
    ---------
    edge_index_in: LongTensor (2, E_in); cell_offset_in: (E_in, 3)
    edge_index_out: LongTensor (2, E_out); cell_offset_out: (E_out, 3)
    num_atoms: int
    to_outedge: bool

    Returns
    -------
    :class:`~jmp_ase.data.index_types.Triplets` with
        ``in_``: LongTensor (T,), index into the in graph's edges;
        ``out``: LongTensor (T,), index into the out graph's edges;
        ``out_agg``: LongTensor (T,), ``inner_index(out, E_out)``.
    """
    edge_index_in = _as_long(edge_index_in)
    edge_index_out = _as_long(edge_index_out)
    s_in, t_in = edge_index_in[0], edge_index_in[1]
    s_out, t_out = edge_index_out[0], edge_index_out[1]
    num_out = s_out.numel()
    key_out = s_out if to_outedge else t_out
    out, inn = _expand_matches(key_out, t_in, num_atoms)
    # The in edge's source must not be the same atom image as the out edge's
    # other end: (s_i, o_i) vs (s_o, o_o), or vs (t_o, -o_o) for to_outedge.
    atom_out = t_out if to_outedge else s_out
    off_out = -cell_offset_out if to_outedge else cell_offset_out
    codes = _atom_image_codes(s_in, cell_offset_in, atom_out, off_out)
    if codes is not None:
        code_in, code_out = codes
        mask = _take(code_in, inn) != _take(code_out, out)
    else:
        same_atom = _take(s_in, inn) == _take(atom_out, out)
        off_diff = _take(off_out, out) - _take(cell_offset_in, inn)
        mask = ~same_atom | _nonzero_rows(off_diff)
    out, inn = _select(mask, out, inn)
    # out is sorted by construction (queries come out in order)
    return Triplets(in_=inn, out=out, out_agg=_inner_index_sorted(out, num_out))


@torch.no_grad()
def quadruplets(
    main_edge_index: Tensor,
    main_cell_offset: Tensor,
    qint_edge_index: Tensor,
    qint_cell_offset: Tensor,
    num_atoms: int,
) -> Quadruplets:
    """Quadruplets ``d -> b -> a <- c`` (JMP's ``get_quadruplets``).

    ``c -> a`` and ``d -> b`` are main-graph edges, ``b -> a`` is a
    quadruplet-interaction (qint) edge.

    Arguments
    ---------
    main_edge_index: LongTensor (2, E) (symmetrised main graph)
    main_cell_offset: (E, 3)
    qint_edge_index: LongTensor (2, Q)
    qint_cell_offset: (Q, 3)
    num_atoms: int

    Returns
    -------
    :class:`~jmp_ase.data.index_types.Quadruplets` with
        ``triplet_in``: (``in_``: (T_in,) main edge ``d -> b``,
            ``out``: (T_in,) qint edge ``b -> a``)
            = ``mixed_triplets(in=main, out=qint, to_outedge=True)``;
        ``triplet_out``: (``in_``: (T_out,) qint edge ``b -> a``,
            ``out``: (T_out,) main edge ``c -> a``)
            = ``mixed_triplets(in=qint, out=main, to_outedge=False)``;
        ``out``: LongTensor (N_quad,), main edge ``c -> a`` of each quadruplet;
        ``trip_out_to_quad``: LongTensor (N_quad,), index into ``triplet_out``;
        ``trip_in_to_quad``: LongTensor (N_quad,), index into ``triplet_in``;
        ``out_agg``: LongTensor (N_quad,), ``inner_index(out, E)``.

    A quadruplet joins one ``triplet_out`` entry ``(b -> a, c -> a)`` with
    every ``triplet_in`` entry ``(d -> b, b -> a)`` on the same qint edge;
    those with ``c == d`` and ``o(d->b) + o(b->a) - o(c->a) == 0`` are dropped.
    """
    main_edge_index = _as_long(main_edge_index)
    qint_edge_index = _as_long(qint_edge_index)
    num_main = main_edge_index.shape[1]
    num_qint = qint_edge_index.shape[1]
    t_in = mixed_triplets(
        main_edge_index, main_cell_offset, qint_edge_index, qint_cell_offset,
        num_atoms, to_outedge=True,
    )
    t_out = mixed_triplets(
        qint_edge_index, qint_cell_offset, main_edge_index, main_cell_offset,
        num_atoms, to_outedge=False,
    )
    # For every output triplet (query, key = its qint edge), all input
    # triplets on that qint edge (items, key = their out qint edge).
    trip_out_to_quad, trip_in_to_quad = _expand_matches(
        t_out.in_, t_in.out, num_qint
    )
    out = _take(t_out.out, trip_out_to_quad)
    s_main = main_edge_index[0]
    # Drop c == d (same atom, same image): d's image relative to a's cell is
    # o(d->b) + o(b->a), c's is o(c->a).  Both sides only depend on one
    # triplet, so encode them per triplet and compare scalars per quadruplet.
    edge_db = t_in.in_
    codes = _atom_image_codes(
        _take(s_main, edge_db),
        _take(main_cell_offset, edge_db),
        _take(s_main, t_out.out),
        _take(main_cell_offset, t_out.out) - _take(qint_cell_offset, t_out.in_),
    )
    if codes is not None:
        code_d, code_c = codes
        mask = _take(code_d, trip_in_to_quad) != _take(code_c, trip_out_to_quad)
    else:
        inter = _take(t_out.in_, trip_out_to_quad)
        db = _take(edge_db, trip_in_to_quad)
        same_atom = _take(s_main, out) == _take(s_main, db)
        off_cd = (
            _take(main_cell_offset, db)
            + _take(qint_cell_offset, inter)
            - _take(main_cell_offset, out)
        )
        mask = ~same_atom | _nonzero_rows(off_cd)
    out, trip_out_to_quad, trip_in_to_quad = _select(
        mask, out, trip_out_to_quad, trip_in_to_quad
    )
    return Quadruplets(
        triplet_in=TripletPairs(in_=t_in.in_, out=t_in.out),
        triplet_out=TripletPairs(in_=t_out.in_, out=t_out.out),
        out=out,
        trip_out_to_quad=trip_out_to_quad,
        trip_in_to_quad=trip_in_to_quad,
        # t_out.out and trip_out_to_quad are sorted, hence so is out
        out_agg=_inner_index_sorted(out, num_main),
    )


@torch.no_grad()
def interaction_indices(graphs: Dict[str, Dict[str, Tensor]], num_atoms: int) -> InteractionIndices:
    """Everything GemNet-OC's backbone needs (JMP's ``get_graphs_and_indices``).

    Arguments
    ---------
    graphs: dict
        ``{"main" | "a2a" | "a2ee2a" | "qint": {"edge_index": (2, E_g),
        "cell_offset": (E_g, 3)}}``; ``main`` is NOT yet symmetrised.
    num_atoms: int
        Total number of atoms (all structures together).

    Returns
    -------
    :class:`~jmp_ase.data.index_types.InteractionIndices` (``padded_width`` not yet set):
    the symmetrised main graph with ``id_swap``, the triplets ``trip_e2e`` =
    ``triplets(main)``, ``trip_a2e`` = ``mixed_triplets(in=a2ee2a, out=main)``, ``trip_e2a`` =
    ``mixed_triplets(in=main, out=a2ee2a)`` (both ``to_outedge=False``), ``quad`` =
    ``quadruplets(main_sym, qint)``, the inner ranks of the a2ee2a and a2a targets (JMP's
    ``target_neighbor_idx``) and the a2a, a2ee2a and qint graphs passed through.
    """
    main = graphs["main"]
    a2a = graphs["a2a"]
    a2ee2a = graphs["a2ee2a"]
    qint = graphs["qint"]

    main_ei, main_off, id_swap = symmetrize_edges(
        main["edge_index"], main["cell_offset"], num_atoms
    )
    ae_ei = _as_long(a2ee2a["edge_index"])
    ae_off = a2ee2a["cell_offset"]
    aa_ei = _as_long(a2a["edge_index"])
    q_ei = _as_long(qint["edge_index"])
    q_off = qint["cell_offset"]

    return InteractionIndices(
        main_edge_index=main_ei,
        main_cell_offset=main_off,
        id_swap=id_swap,
        trip_e2e=triplets(main_ei, num_atoms),
        trip_a2e=mixed_triplets(
            ae_ei, ae_off, main_ei, main_off, num_atoms, to_outedge=False
        ),
        trip_e2a=mixed_triplets(
            main_ei, main_off, ae_ei, ae_off, num_atoms, to_outedge=False
        ),
        quad=quadruplets(main_ei, main_off, q_ei, q_off, num_atoms),
        a2ee2a_target_inner=inner_index(ae_ei[1], num_atoms),
        a2a_target_inner=inner_index(aa_ei[1], num_atoms),
        a2a_edge_index=aa_ei,
        a2a_cell_offset=a2a["cell_offset"],
        a2ee2a_edge_index=ae_ei,
        a2ee2a_cell_offset=ae_off,
        qint_edge_index=q_ei,
        qint_cell_offset=q_off,
    )
