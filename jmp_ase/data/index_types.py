"""Typed containers for GemNet-OC's interaction indices (what :mod:`jmp_ase.data.indices`
computes and the backbone consumes).

Shapes use E = symmetrised main edges, E_aa = atom-to-atom edges, E_ae = atom-to-edge
(a2ee2a) edges, E_q = quadruplet-interaction edges, T = triplets, Q = quadruplets. Every
tensor is int64 (``cell_offset``: integer-valued, any numeric dtype) and never requires
gradients. ``padded_width`` holds plain Python ints computed while the indices are still on
the host, so the model's forward pass never reads an index tensor back.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch

Tensor = torch.Tensor


def map_tensors(obj, fn):
    """``obj`` (one of the dataclasses here, nested) with ``fn`` applied to every tensor;
    plain ints and ``None`` are kept."""
    if torch.is_tensor(obj):
        return fn(obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj)})
    return obj


@dataclasses.dataclass(frozen=True)
class Triplets:
    """Pairs of edges that share an atom: edge ``in_`` (b->a) feeds edge ``out``.

    in_: (T,) index of the incoming edge; out: (T,) index of the outgoing edge;
    out_agg: (T,) rank of the triplet among those with the same ``out`` (0 .. count - 1).
    """

    in_: Tensor
    out: Tensor
    out_agg: Tensor


@dataclasses.dataclass(frozen=True)
class TripletPairs:
    """Triplets of a quadruplet's two halves (no aggregation rank): in_ (T,), out (T,)."""

    in_: Tensor
    out: Tensor


@dataclasses.dataclass(frozen=True)
class Quadruplets:
    """Quadruplets d->b->a<-c built from a qint edge b->a (see :func:`jmp_ase.data.indices.quadruplets`).

    triplet_in: (T_in,) pairs (main edge d->b, qint edge b->a); triplet_out: (T_out,) pairs
    (qint edge b->a, main edge c->a); out: (Q,) main edge c->a of each quadruplet;
    trip_out_to_quad / trip_in_to_quad: (Q,) its entry in triplet_out / triplet_in;
    out_agg: (Q,) rank among the quadruplets with the same ``out``.
    """

    triplet_in: TripletPairs
    triplet_out: TripletPairs
    out: Tensor
    trip_out_to_quad: Tensor
    trip_in_to_quad: Tensor
    out_agg: Tensor


class PaddedWidths(NamedTuple):
    """Dense widths (largest inner rank + 1, 0 when empty) the model pads ragged dimensions to."""

    trip_e2e: int
    trip_a2e: int
    trip_e2a: int
    quad: int
    a2ee2a: int
    a2a: int


@dataclasses.dataclass(frozen=True)
class InteractionIndices:
    """Everything GemNet-OC's backbone needs besides positions and cells (JMP's
    ``get_graphs_and_indices``), for a batch of structures concatenated into one graph.

    Graphs (edge_index (2, E_g): row 0 source, row 1 target; cell_offset (E_g, 3): image
    shift of the source atom): ``main_*`` (symmetrised), ``a2a_*``, ``a2ee2a_*``, ``qint_*``.
    id_swap (E,): index of each main edge's reverse. trip_e2e: main->main triplets;
    trip_a2e: a2ee2a edge -> main edge; trip_e2a: main edge -> a2ee2a edge; quad: quadruplets.
    a2ee2a_target_inner (E_ae,) / a2a_target_inner (E_aa,): rank of each edge among those
    with the same target atom. padded_width: see :class:`PaddedWidths` (``None`` until
    :func:`jmp_ase.data.batch.padded_widths` has filled it in).
    """

    main_edge_index: Tensor
    main_cell_offset: Tensor
    id_swap: Tensor
    trip_e2e: Triplets
    trip_a2e: Triplets
    trip_e2a: Triplets
    quad: Quadruplets
    a2ee2a_target_inner: Tensor
    a2a_target_inner: Tensor
    a2a_edge_index: Tensor
    a2a_cell_offset: Tensor
    a2ee2a_edge_index: Tensor
    a2ee2a_cell_offset: Tensor
    qint_edge_index: Tensor
    qint_cell_offset: Tensor
    padded_width: Optional[PaddedWidths] = None

    def graph(self, name: str) -> tuple[Tensor, Tensor]:
        """(edge_index, cell_offset) of graph ``name`` in main / a2a / a2ee2a / qint."""
        if name not in ("main", "a2a", "a2ee2a", "qint"):
            raise KeyError(f"no graph {name!r}: main, a2a, a2ee2a or qint")
        return getattr(self, f"{name}_edge_index"), getattr(self, f"{name}_cell_offset")

    def to(self, device=None) -> "InteractionIndices":
        """The same indices on ``device`` (padded widths stay host ints)."""
        return map_tensors(self, lambda x: x.to(device=device))
