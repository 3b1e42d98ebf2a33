"""Interaction and output blocks of GemNet-OC (names and shapes as in JMP)."""
from __future__ import annotations

import math

import torch
from torch import nn

from jmp_ase.data.index_types import InteractionIndices
from jmp_ase.nn.bases import BasisSet

from jmp_ase.nn.recompute import recompute
from jmp_ase.nn.layers import (
    Dense,
    EdgeEmbedding,
    EfficientInteractionBilinear,
    basis_messages,
    gather_rows,
    pad_rows,
    ResidualLayer,
    ScaleFactor,
    chunk_bounds,
    row_chunks,
    rows_per_chunk,
    padded_slots,
    scalar,
    scatter_sum,
    with_sentinel,
    with_zero_row,
)

INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_3 = 1.0 / math.sqrt(3.0)


def _scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x * factor`` (same numbers) without converting the Python number each time."""
    return x * scalar(factor, x)


def _symmetric_output(module: nn.Module, x: torch.Tensor, id_swap: torch.Tensor) -> torch.Tensor:
    """Message to c->a plus the message meant for a->c, swapped onto its reverse edge."""
    return _scaled(module.up_projection_ca(x) + module.up_projection_ac(x).index_select(0, id_swap), INV_SQRT_2)


def _symmetric_rows(module: nn.Module, x_rows: torch.Tensor, x_swapped_rows: torch.Tensor) -> torch.Tensor:
    """:func:`_symmetric_output` for some rows (lean mode), given those rows of ``x`` and of
    ``x[id_swap]`` (the projection is row-wise: swapping before or after it is the same)."""
    return _scaled(module.up_projection_ca(x_rows) + module.up_projection_ac(x_swapped_rows), INV_SQRT_2)


class TripletInteraction(nn.Module):
    """Messages from edges (or atoms) b->a to edges c->a through the angle c-a-b."""

    def __init__(self, emb_size_in, emb_size_out, emb_size_trip_in, emb_size_trip_out, emb_size_rbf,
                 emb_size_cbf, symmetric_mp=True, swap_output=True, activation=None, dropout=None):
        super().__init__()
        self.symmetric_mp = symmetric_mp
        self.swap_output = swap_output
        self.dense_ba = Dense(emb_size_in, emb_size_in, activation=activation, dropout=dropout)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_in, dropout=dropout)
        self.scale_rbf = ScaleFactor()
        self.mlp_cbf = EfficientInteractionBilinear(emb_size_trip_in, emb_size_cbf, emb_size_trip_out, dropout=dropout)
        self.scale_cbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_in, emb_size_trip_in, activation=activation, dropout=dropout)
        self.up_projection_ca = Dense(emb_size_trip_out, emb_size_out, activation=activation, dropout=dropout)
        if symmetric_mp:
            self.up_projection_ac = Dense(emb_size_trip_out, emb_size_out, activation=activation, dropout=dropout)

    def forward(self, m, bases, idx, id_swap, expand_idx=None, idx_agg2=None, idx_agg2_inner=None, agg2_out_size=None,
                agg2_width=None, chunk_size: int | None = None):
        """``chunk_size``: evaluate the per-triplet part that many padded triplet slots at a time
        (see :meth:`EfficientInteractionBilinear.forward_chunked`); None: all at once."""
        x_ba = self.dense_ba(m)
        if expand_idx is not None:
            x_ba = x_ba.index_select(0, expand_idx)
        x_ba = self.scale_rbf(x_ba * self.mlp_rbf(bases.rad), ref=x_ba)
        if chunk_size is None:
            x_ba = self.down_projection(x_ba).index_select(0, idx.in_)
            x = self.mlp_cbf(bases.cir, x_ba, idx.out, idx.out_agg, idx_agg2, idx_agg2_inner, agg2_out_size,
                             agg2_width)
        else:
            x_ba = self.down_projection(x_ba)
            x = self.mlp_cbf.forward_chunked(bases.cir, x_ba, idx.in_, idx.out, idx.out_agg, chunk_size,
                                             idx_agg2, idx_agg2_inner, agg2_out_size, agg2_width)
        x = self.scale_cbf_sum(x, ref=x_ba)
        if self.symmetric_mp:
            return _symmetric_output(self, x, id_swap)
        if self.swap_output:
            x = x.index_select(0, id_swap)
        return self.up_projection_ca(x)


    def source(self, x, rad):
        """Per source row (edge, or atom-edge for a2e after expansion): messages before the triplet
        gather, (rows, emb_size_trip_in). Row-wise: a chunk of rows gives those rows."""
        x_ba = self.scale_rbf(x * self.mlp_rbf(rad), ref=x)
        return self.down_projection(x_ba)

    def aggregate_chunked(self, cir, x_src, idx, chunk_size, idx_agg2=None, idx_agg2_inner=None, agg2_out_size=None,
                          agg2_width=None):
        """Triplet contraction of :meth:`source` messages, scaled: (n_out, emb_size_trip_out)."""
        x = self.mlp_cbf.forward_chunked(cir, x_src, idx.in_, idx.out, idx.out_agg, chunk_size,
                                         idx_agg2, idx_agg2_inner, agg2_out_size, agg2_width)
        return self.scale_cbf_sum(x, ref=None)

    def output_rows(self, x_rows, x_swapped_rows):
        """Rows of the symmetric output, from the same rows of the aggregated ``x`` and of
        ``x[id_swap]`` (see :func:`symmetric_row_chunks`)."""
        return _symmetric_rows(self, x_rows, x_swapped_rows)


class QuadrupletInteraction(nn.Module):
    """Messages from edges d->b to edges c->a through the dihedral c-a-b-d."""

    def __init__(self, emb_size_edge, emb_size_quad_in, emb_size_quad_out, emb_size_rbf, emb_size_cbf,
                 emb_size_sbf, activation=None, dropout=None):
        super().__init__()
        self.dense_db = Dense(emb_size_edge, emb_size_edge, activation=activation, dropout=dropout)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_edge, dropout=dropout)
        self.scale_rbf = ScaleFactor()
        self.mlp_cbf = Dense(emb_size_cbf, emb_size_quad_in, dropout=dropout)
        self.scale_cbf = ScaleFactor()
        self.mlp_sbf = EfficientInteractionBilinear(emb_size_quad_in, emb_size_sbf, emb_size_quad_out, dropout=dropout)
        self.scale_sbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_edge, emb_size_quad_in, activation=activation, dropout=dropout)
        self.up_projection_ca = Dense(emb_size_quad_out, emb_size_edge, activation=activation, dropout=dropout)
        self.up_projection_ac = Dense(emb_size_quad_out, emb_size_edge, activation=activation, dropout=dropout)

    def forward(self, m, bases, quad, id_swap):
        """``bases.sph`` is (radial weights times padded spherical basis, input triplet per padded
        slot), or, in lean mode, a :class:`jmp_ase.nn.bases.QuadrupletBasisChunks` that evaluates
        it per chunk of edges."""
        x_db = self.dense_db(m)
        x_db = self.scale_rbf(x_db * self.mlp_rbf(bases.rad), ref=x_db)
        x_db = self.down_projection(x_db).index_select(0, quad.triplet_in.in_)
        x_db = self.scale_cbf(x_db * self.mlp_cbf(bases.cir), ref=x_db)
        if isinstance(bases.sph, tuple):
            weighted_basis, slots = bases.sph  # (E, emb_size_sbf, Kmax), (E, Kmax)
            # Messages per padded quadruplet slot, gathered in one step (zero row for padding).
            x_pad = with_zero_row(x_db).index_select(0, slots.reshape(-1)).view(slots.shape + x_db.shape[1:])
            # (E, emb_size_sbf, emb_size_quad_in): rad_w @ (sph @ x) reassociated (round-off only)
            x = weighted_basis @ x_pad
            x = self.mlp_sbf.bilinear(x.reshape(x.shape[0], x.shape[1] * x.shape[2]))
            if self.scale_sbf_sum.observer is not None:  # fitting: it observes the per-quadruplet messages
                x_db = x_db[quad.trip_in_to_quad]
        else:
            x = self._chunked(bases.sph, x_db)
        x = self.scale_sbf_sum(x, ref=x_db)
        return _symmetric_output(self, x, id_swap)

    def source(self, m, rad):
        """Per edge d->b: messages before the triplet gather, (rows, emb_size_quad_in); row-wise."""
        x_db = self.dense_db(m)
        x_db = self.scale_rbf(x_db * self.mlp_rbf(rad), ref=x_db)
        return self.down_projection(x_db)

    def aggregate_chunked(self, source, bases, quad):
        """Quadruplet contraction of :meth:`source` messages, scaled: (n_edges, emb_size_quad_out)."""
        x_db = source[quad.triplet_in.in_]
        x_db = self.scale_cbf(x_db * self.mlp_cbf(bases.cir), ref=x_db)
        return self.scale_sbf_sum(self._chunked(bases.sph, x_db), ref=None)

    def output_rows(self, x_rows, x_swapped_rows):
        return _symmetric_rows(self, x_rows, x_swapped_rows)

    def _chunked(self, sph_chunks, x_db):
        """Per-quadruplet part, ``sph_chunks.rows_per_chunk`` target edges at a time: the basis and the
        messages of a chunk's quadruplets are built, contracted and (in backward) rebuilt per chunk."""
        x_ext = with_zero_row(x_db)  # (T_in + 1, emb): messages per input triplet, zero for padding

        def part(start, stop, rad, x_ext, *geometry):
            rad_w, sph, trip_in = sph_chunks(start, stop, rad, *geometry)
            return self.mlp_sbf.finish(rad_w, basis_messages(sph, gather_rows(x_ext, trip_in)))

        bounds = sph_chunks.bounds
        geometry = sph_chunks.geometry
        pieces = [recompute(part, a, b, rad, x_ext, *geometry)
                  for (a, b), rad in zip(bounds, row_chunks(sph_chunks.rad, bounds))]
        return torch.cat(pieces) if pieces else part(0, 0, sph_chunks.rad[:0], x_ext, *geometry)


class PairInteraction(nn.Module):
    """Atom-to-atom messages over the long-range a2a graph."""

    def __init__(self, emb_size_atom, emb_size_pair_in, emb_size_pair_out, emb_size_rbf, activation=None, dropout=None):
        super().__init__()
        self.emb_size_pair_in = emb_size_pair_in
        self.bilinear = Dense(emb_size_rbf * emb_size_pair_in, emb_size_pair_out, dropout=dropout)
        self.scale_rbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_atom, emb_size_pair_in, activation=activation, dropout=dropout)
        self.up_projection = Dense(emb_size_pair_out, emb_size_atom, activation=activation, dropout=dropout)

    def forward(self, h, rad_basis, edge_index, target_inner, width: int, chunk_size: int | None = None):
        """rad_basis (n_atoms, emb_rbf, Kmax) from :meth:`BasisEmbedding.pad_radial_by_atom`;
        ``width`` = Kmax, the largest ``target_inner`` + 1. ``chunk_size``: padded neighbour slots
        evaluated at once (None: all atoms at once)."""
        num_atoms = h.shape[0]
        if chunk_size is not None:
            return self._chunked(h, rad_basis, edge_index, target_inner, width, chunk_size)
        x_ba = self.down_projection(h).index_select(0, edge_index[0])
        padded = pad_rows(x_ba, edge_index[1], target_inner, num_atoms, width)
        out = self.bilinear((rad_basis @ padded).reshape(num_atoms, -1))
        out = self.scale_rbf_sum(out, ref=x_ba)
        return self.up_projection(out)

    def _chunked(self, h, rad_basis, edge_index, target_inner, width, chunk_size):
        num_atoms = h.shape[0]
        x_ext = with_zero_row(self.down_projection(h))  # (n_atoms + 1, emb_in); row n_atoms pads
        sources = with_sentinel(edge_index[0], num_atoms)[padded_slots(edge_index[1], target_inner, num_atoms, width)]

        def part(rad_c, sources_c, x_ext):
            return self.bilinear((rad_c @ gather_rows(x_ext, sources_c)).reshape(rad_c.shape[0], -1))

        bounds = chunk_bounds(num_atoms, rows_per_chunk(chunk_size, width))
        pieces = [recompute(part, rad_c, sources[a:b], x_ext)
                  for (a, b), rad_c in zip(bounds, row_chunks(rad_basis, bounds))]
        out = torch.cat(pieces) if pieces else part(rad_basis[:0], sources[:0], x_ext)
        out = self.scale_rbf_sum(out, ref=None)
        return self.up_projection(out)


def _mlp(units_in, units, n_hidden, activation, dropout) -> nn.ModuleList:
    layers = [Dense(units_in, units, activation=activation, dropout=dropout)] if units_in != units else []
    layers += [ResidualLayer(units, activation=activation, dropout=dropout) for _ in range(n_hidden)]
    return nn.ModuleList(layers)


def _run(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


class AtomUpdateBlock(nn.Module):
    """Aggregate edge embeddings (weighted by a radial basis) onto their target atoms."""

    def __init__(self, emb_size_atom, emb_size_edge, emb_size_rbf, n_hidden, activation=None, dropout=None):
        super().__init__()
        self.dense_rbf = Dense(emb_size_rbf, emb_size_edge, dropout=dropout)
        self.scale_sum = ScaleFactor()
        self.layers = _mlp(emb_size_edge, emb_size_atom, n_hidden, activation, dropout)

    def aggregate(self, m, basis_rad, idx_atom, num_atoms):
        """sum over edges into target atoms, (n_atoms, emb_size_edge), scaled."""
        return scatter_sum(m * self.dense_rbf(basis_rad), idx_atom, num_atoms)

    def forward(self, h, m, basis_rad, idx_atom):
        x = self.aggregate(m, basis_rad, idx_atom, h.shape[0])
        return _run(self.layers, self.scale_sum(x, ref=m))


def edge_rows(num_edges: int, chunk_size: int) -> list[tuple[int, int]]:
    """Chunks of edges for the row-wise (per-edge MLP) stages of lean mode: ``chunk_size`` / 64
    edges at a time (a few MB per 512-wide tensor)."""
    return chunk_bounds(num_edges, max(1, chunk_size // 64))


def symmetric_row_chunks(x: torch.Tensor, id_swap: torch.Tensor, bounds: list) -> tuple[list, list]:
    """Chunks of rows of an aggregated interaction output ``x`` and of ``x[id_swap]`` (its rows for
    the reversed edges), for :meth:`TripletInteraction.output_rows` in lean mode; both by
    :func:`row_chunks`, so their backward is one pass over ``x`` instead of one per chunk."""
    return row_chunks(x, bounds), row_chunks(x.index_select(0, id_swap), bounds)


def _cat(pieces: list, empty):
    return torch.cat(pieces) if pieces else empty()


class OutputBlock(AtomUpdateBlock):
    """Per-block atom (energy) and edge (force) outputs."""

    def __init__(self, emb_size_atom, emb_size_edge, emb_size_rbf, n_hidden, n_hidden_afteratom,
                 activation=None, edge_dropout=None, dropout=None):
        super().__init__(emb_size_atom, emb_size_edge, emb_size_rbf, n_hidden, activation, dropout)
        self.edge_dropout = edge_dropout
        self.seq_energy_pre = self.layers
        self.seq_energy2 = (
            _mlp(emb_size_atom, emb_size_atom, n_hidden_afteratom, activation, dropout) if n_hidden_afteratom >= 1 else None
        )
        self.scale_rbf_F = ScaleFactor()
        self.seq_forces = _mlp(emb_size_edge, emb_size_edge, n_hidden, activation, dropout)
        self.dense_rbf_F = Dense(emb_size_rbf, emb_size_edge, dropout=dropout)

    def forward(self, h, m, basis_rad, idx_atom, with_forces: bool = True):
        """-> x_E (n_atoms, emb_size_atom), x_F (n_edges, emb_size_edge) (None without ``with_forces``)."""
        x_e = self.aggregate(m, basis_rad, idx_atom, h.shape[0])
        if self.training and self.edge_dropout:
            x_e = x_e / (1 - self.edge_dropout)
        x_e = _run(self.seq_energy_pre, self.scale_sum(x_e, ref=m))
        if self.seq_energy2 is not None:
            x_e = _run(self.seq_energy2, _scaled(x_e + h, INV_SQRT_2))
        if not with_forces:
            return x_e, None
        x_f = _run(self.seq_forces, m)
        x_f = self.scale_rbf_F(x_f * self.dense_rbf_F(basis_rad), ref=x_f)
        return x_e, x_f

    def forward_lean(self, h, m, basis_rad, idx_atom, chunk_size: int, with_forces: bool = True):
        """:meth:`forward` with the per-edge work in chunks of edges, recomputed in backward."""
        bounds = edge_rows(m.shape[0], chunk_size)
        m_rows, basis_rows = row_chunks(m, bounds), row_chunks(basis_rad, bounds)
        weighted = _cat([recompute(_weighted_rows, self.dense_rbf, m_c, basis_c) for m_c, basis_c in zip(m_rows, basis_rows)],
                        lambda: m * self.dense_rbf(basis_rad))
        x_e = scatter_sum(weighted, idx_atom, h.shape[0])
        if self.training and self.edge_dropout:
            x_e = x_e / (1 - self.edge_dropout)
        x_e = _run(self.seq_energy_pre, self.scale_sum(x_e, ref=None))
        if self.seq_energy2 is not None:
            x_e = _run(self.seq_energy2, _scaled(x_e + h, INV_SQRT_2))
        if not with_forces:
            return x_e, None

        def forces(m_c, basis_c):
            x_f = _run(self.seq_forces, m_c)
            return self.scale_rbf_F(x_f * self.dense_rbf_F(basis_c), ref=None)

        x_f = _cat([recompute(forces, m_c, basis_c) for m_c, basis_c in zip(m_rows, basis_rows)],
                   lambda: forces(m, basis_rad))
        return x_e, x_f


def _weighted_rows(dense_rbf, m, basis_rad):
    return m * dense_rbf(basis_rad)


class InteractionBlock(nn.Module):
    """One GemNet-OC interaction: edge-to-edge (triplet, quadruplet, atom-to-edge) and
    atom updates (edge-to-atom, atom-to-atom), then residual mixing."""

    def __init__(self, c):
        super().__init__()
        act, do = c.activation, c.dropout
        self.dense_ca = Dense(c.emb_size_edge, c.emb_size_edge, activation=act, dropout=do)
        trip = dict(emb_size_trip_in=c.emb_size_trip_in, emb_size_trip_out=c.emb_size_trip_out,
                    emb_size_rbf=c.emb_size_rbf, emb_size_cbf=c.emb_size_cbf, activation=act, dropout=do)
        self.trip_interaction = TripletInteraction(c.emb_size_edge, c.emb_size_edge, **trip)
        self.quad_interaction = QuadrupletInteraction(
            c.emb_size_edge, c.emb_size_quad_in, c.emb_size_quad_out, c.emb_size_rbf, c.emb_size_cbf,
            c.emb_size_sbf, activation=act, dropout=do,
        )
        self.atom_edge_interaction = TripletInteraction(c.emb_size_atom, c.emb_size_edge, **trip)
        self.edge_atom_interaction = TripletInteraction(
            c.emb_size_edge, c.emb_size_atom, symmetric_mp=False, swap_output=False, **trip
        )
        self.atom_interaction = PairInteraction(
            c.emb_size_atom, c.emb_size_aint_in, c.emb_size_aint_out, c.emb_size_rbf, activation=act, dropout=do
        )
        self.layers_before_skip = nn.ModuleList(
            [ResidualLayer(c.emb_size_edge, activation=act, dropout=do) for _ in range(c.num_before_skip)]
        )
        self.layers_after_skip = nn.ModuleList(
            [ResidualLayer(c.emb_size_edge, activation=act, dropout=do) for _ in range(c.num_after_skip)]
        )
        self.atom_emb_layers = nn.ModuleList(
            [ResidualLayer(c.emb_size_atom, activation=act, dropout=do) for _ in range(c.num_atom_emb_layers)]
        )
        self.atom_update = AtomUpdateBlock(c.emb_size_atom, c.emb_size_edge, c.emb_size_rbf, c.num_atom, act, do)
        self.concat_layer = EdgeEmbedding(c.emb_size_atom, c.emb_size_edge, c.emb_size_edge, activation=act, dropout=do)
        self.residual_m = nn.ModuleList(
            [ResidualLayer(c.emb_size_edge, activation=act, dropout=do) for _ in range(c.num_concat)]
        )

    def forward(self, h, m, bases: BasisSet, idx: InteractionIndices, chunk_size: int | None = None):
        """h (n_atoms, emb_size_atom), m (n_edges, emb_size_edge) -> updated (h, m).

        ``chunk_size``: evaluate the triplet and atom-pair interactions that many padded slots at
        a time (lean memory mode); None: all at once. Same numbers either way.
        """
        num_atoms = h.shape[0]
        id_swap = idx.id_swap
        aea_index = idx.a2ee2a_edge_index
        x_skip = self.dense_ca(m)
        x_e2e = self.trip_interaction(m, bases.e2e, idx.trip_e2e, id_swap, chunk_size=chunk_size)
        x_qint = self.quad_interaction(m, bases.qint, idx.quad, id_swap)
        x_a2e = self.atom_edge_interaction(h, bases.a2e, idx.trip_a2e, id_swap, expand_idx=aea_index[0],
                                           chunk_size=chunk_size)
        width = idx.padded_width
        h_e2a = self.edge_atom_interaction(
            m, bases.e2a, idx.trip_e2a, id_swap,
            idx_agg2=aea_index[1], idx_agg2_inner=idx.a2ee2a_target_inner, agg2_out_size=num_atoms,
            agg2_width=width.a2ee2a, chunk_size=chunk_size,
        )
        h_a2a = self.atom_interaction(
            h, bases.a2a_rad, idx.a2a_edge_index, idx.a2a_target_inner, width.a2a, chunk_size=chunk_size
        )
        x = _scaled(x_skip + x_e2e + x_qint + x_a2e, 0.5)
        h = _scaled(h + h_e2a + h_a2a, INV_SQRT_3)
        x = _run(self.layers_before_skip, x)
        m = _run(self.layers_after_skip, _scaled(m + x, INV_SQRT_2))
        h = _run(self.atom_emb_layers, h)
        h = _scaled(h + self.atom_update(h, m, bases.atom_update, idx.main_edge_index[1]), INV_SQRT_2)
        m2 = _run(self.residual_m, self.concat_layer(h, m, idx.main_edge_index))
        return h, _scaled(m + m2, INV_SQRT_2)

    def forward_lean(self, h, m, bases: BasisSet, idx: InteractionIndices, chunk_size: int):
        """:meth:`forward` (same numbers) for lean mode: the per-edge MLPs run over chunks of
        edges, the triplet, quadruplet and atom-pair contractions over chunks of padded slots, each
        chunk recomputed in backward; only a few (n_edges, emb_size_edge) tensors are kept."""
        num_atoms, num_edges = h.shape[0], m.shape[0]
        trip, quad = self.trip_interaction, self.quad_interaction
        a2e, e2a = self.atom_edge_interaction, self.edge_atom_interaction
        id_swap = idx.id_swap
        aea_index = idx.a2ee2a_edge_index
        width = idx.padded_width
        bounds = edge_rows(num_edges, chunk_size)

        def sources(m_c, rad_e2e, rad_q, rad_e2a):
            return (trip.source(trip.dense_ba(m_c), rad_e2e), quad.source(m_c, rad_q),
                    e2a.source(e2a.dense_ba(m_c), rad_e2a))

        rads = (bases.e2e.rad, bases.qint.rad, bases.e2a.rad)
        m_rows = row_chunks(m, bounds)
        pieces = [recompute(sources, *rows) for rows in zip(m_rows, *(row_chunks(r, bounds) for r in rads))]
        pieces = pieces or [sources(m, *rads)]
        src_e2e, src_q, src_e2a = (torch.cat(p) for p in zip(*pieces))

        x_e2e = trip.aggregate_chunked(bases.e2e.cir, src_e2e, idx.trip_e2e, chunk_size)
        x_qint = quad.aggregate_chunked(src_q, bases.qint, idx.quad)
        src_a2e = a2e.source(a2e.dense_ba(h)[aea_index[0]], bases.a2e.rad)
        x_a2e = a2e.aggregate_chunked(bases.a2e.cir, src_a2e, idx.trip_a2e, chunk_size)
        h_e2a = e2a.up_projection_ca(e2a.aggregate_chunked(
            bases.e2a.cir, src_e2a, idx.trip_e2a, chunk_size, aea_index[1], idx.a2ee2a_target_inner,
            num_atoms, width.a2ee2a,
        ))
        h_a2a = self.atom_interaction(
            h, bases.a2a_rad, idx.a2a_edge_index, idx.a2a_target_inner, width.a2a, chunk_size=chunk_size
        )

        def edge_update(m_c, e2e_c, e2e_swapped_c, qint_c, qint_swapped_c, a2e_c, a2e_swapped_c):
            x = (self.dense_ca(m_c) + trip.output_rows(e2e_c, e2e_swapped_c)
                 + quad.output_rows(qint_c, qint_swapped_c)
                 + a2e.output_rows(a2e_c, a2e_swapped_c)) * scalar(0.5, m_c)
            x = _run(self.layers_before_skip, x)
            return _run(self.layers_after_skip, _scaled(m_c + x, INV_SQRT_2))

        rows = [symmetric_row_chunks(x, id_swap, bounds) for x in (x_e2e, x_qint, x_a2e)]
        m = _cat([recompute(edge_update, m_c, *chunk) for m_c, *chunk in zip(m_rows, *(r for pair in rows for r in pair))],
                 lambda: edge_update(m, x_e2e, x_e2e[id_swap], x_qint, x_qint[id_swap], x_a2e, x_a2e[id_swap]))

        h = _scaled(h + h_e2a + h_a2a, INV_SQRT_3)
        h = _run(self.atom_emb_layers, h)
        update = self.atom_update
        basis = bases.atom_update
        m_rows = row_chunks(m, bounds)
        weighted = _cat([recompute(_weighted_rows, update.dense_rbf, m_c, basis_c)
                         for m_c, basis_c in zip(m_rows, row_chunks(basis, bounds))],
                        lambda: m * update.dense_rbf(basis))
        x = scatter_sum(weighted, idx.main_edge_index[1], num_atoms)
        h = _scaled(h + _run(update.layers, update.scale_sum(x, ref=None)), INV_SQRT_2)

        edge_index = idx.main_edge_index

        def edge_final(m_c, edge_index_c, h):
            m2 = _run(self.residual_m, self.concat_layer(h, m_c, edge_index_c))
            return _scaled(m_c + m2, INV_SQRT_2)

        m = _cat([recompute(edge_final, m_c, edge_index[:, a:b], h) for (a, b), m_c in zip(bounds, m_rows)],
                 lambda: edge_final(m, edge_index, h))
        return h, m
