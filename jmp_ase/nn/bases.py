"""Radial, circular and spherical basis functions of GemNet-OC (JMP flavour).

Distances are in Å and are scaled by JMP's *absolute* rbf cutoff (12 Å for
JMP-S/L) before entering the basis, independently of the graph cutoff.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from jmp_ase.data.index_types import InteractionIndices

from jmp_ase.nn.recompute import recompute
from jmp_ase.nn.layers import (
    BasisEmbedding,
    Dense,
    EdgeEmbedding,
    chunk_bounds,
    outer_product,
    padded_slots,
    row_chunks,
    rows_per_chunk,
    scalar,
    weighted_basis,
    with_sentinel,
)


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff ``1 + a x^p + b x^(p+1) + c x^(p+2)`` for x < 1, else 0."""

    def __init__(self, exponent: int = 5):
        super().__init__()
        p = exponent
        self.p = p
        self.a = -(p + 1) * (p + 2) / 2
        self.b = p * (p + 2)
        self.c = -p * (p + 1) / 2

    def forward(self, d_scaled: torch.Tensor) -> torch.Tensor:
        p = self.p
        env = 1 + self.a * d_scaled**p + self.b * d_scaled ** (p + 1) + self.c * d_scaled ** (p + 2)
        return torch.where(d_scaled < 1, env, torch.zeros_like(d_scaled))


class GaussianBasis(nn.Module):
    """Gaussians with fixed centres ``offset`` on [start, stop] and widths ``temps``."""

    def __init__(self, start: float = 0.0, stop: float = 1.0, num_gaussians: int = 50):
        super().__init__()
        offset = torch.linspace(start, stop, num_gaussians)
        self.register_buffer("offset", offset)
        temp = 0.5 / ((stop - start) / (num_gaussians - 1)) ** 2
        self.register_buffer("temps", torch.full_like(offset, temp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (n,) -> (n, num_gaussians)."""
        diff = x[:, None] - self.offset[None, :]
        return torch.exp(diff.square() * -(self.temps.abs()))


class RadialBasis(nn.Module):
    """Envelope x Gaussian basis of d / cutoff: (n,) Å -> (n, num_radial)."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5):
        super().__init__()
        self.cutoff = cutoff
        self.envelope = PolynomialEnvelope(envelope_exponent)
        self.rbf = GaussianBasis(0.0, 1.0, num_radial)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        d_scaled = distance / self.cutoff
        return self.envelope(d_scaled)[:, None] * self.rbf(d_scaled)


def legendre_basis(cos_angle: torch.Tensor, num_spherical: int, scale_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Real spherical harmonics with m = 0: Y_l0 = sqrt((2l+1)/4pi) P_l(cos), l < num_spherical.

    With ``scale_sq`` = s (n,), the homogeneous form s^(l/2) P_l(x / sqrt(s)) of x = ``cos_angle``
    is returned instead: a polynomial in x and s, so it has no singularity where s -> 0.
    cos_angle (n,) -> (n, num_spherical).
    """
    polys = [torch.ones_like(cos_angle)]
    if num_spherical > 1:
        polys.append(cos_angle)
    for l in range(2, num_spherical):
        previous = polys[l - 2] if scale_sq is None else scale_sq * polys[l - 2]
        # ((2l - 1) x P_{l-1} - (l - 1) P_{l-2}) / l, the constants as 0-d tensors (same numbers)
        polys.append((cos_angle * scalar(2 * l - 1, cos_angle) * polys[l - 1]
                      - previous * scalar(l - 1, cos_angle)) / scalar(l, cos_angle))
    norms = [math.sqrt((2 * l + 1) / (4 * math.pi)) for l in range(num_spherical)]
    return torch.stack(polys, dim=1) * cos_angle.new_tensor(norms)


class CircularBasisLayer(nn.Module):
    """Radial basis of the edge distance and Legendre basis of one angle."""

    def __init__(self, num_spherical: int, radial_basis: RadialBasis):
        super().__init__()
        self.num_spherical = num_spherical
        self.radial_basis = radial_basis

    def forward(self, distance: torch.Tensor, cos_angle: torch.Tensor):
        """-> (n_edges, num_radial), (n_triplets, num_spherical)."""
        return self.radial_basis(distance), legendre_basis(cos_angle, self.num_spherical)


class SphericalBasisLayer(nn.Module):
    """Radial basis and the outer product of Legendre bases of two angles ("legendre_outer").

    The angles of a quadruplet c->a<-b<-d are θ = angle(c-a-b) and the dihedral φ between
    the normals n_cab = v_ca × v_ba and n_abd = v_db × v_ba (unit v, so |n| = sin of the
    triplet's angle). JMP's basis is Y_l0(cos θ) Y_m0(cos φ). φ is undefined where a normal
    vanishes (three collinear atoms: crystals, slabs, aromatic rings), and the energy jumps
    there. With ``smooth`` the m-th dihedral term is weighted by (sin θ_cab sin θ_abd)^m, as in
    real spherical harmonics: Y_m0 is evaluated on its homogeneous form in n_cab·n_abd and
    |n_cab|²|n_abd|², a polynomial in the unit vectors, so energy and forces are smooth
    everywhere and the m = 0 terms are all that remain at collinearity. ``damping`` = ε > 0
    first maps each normal to n / sqrt(|n|² + ε²) (a smooth map), so the weight becomes
    (sin θ / sqrt(sin² θ + ε²))^m per normal: close to 1, and the basis close to JMP's, unless a
    triplet is within about ε radians of collinear.
    """

    def __init__(self, num_spherical: int, radial_basis: RadialBasis, smooth: bool = False,
                 damping: float = 0.0):
        super().__init__()
        self.num_spherical = num_spherical
        self.radial_basis = radial_basis
        self.smooth = smooth
        self.damping = float(damping)

    def forward(self, distance: torch.Tensor, cos_angle: torch.Tensor, normal_cab: torch.Tensor,
                normal_abd: torch.Tensor):
        """distance (E,) Å; cos_angle (Q,) of c-a-b; the two normals (Q, 3) of each quadruplet
        -> (E, num_radial), (Q, num_spherical**2)."""
        return self.radial_basis(distance), self.angular(cos_angle, normal_cab, normal_abd)

    def angular(self, cos_angle: torch.Tensor, normal_cab: torch.Tensor, normal_abd: torch.Tensor,
                first: torch.Tensor | None = None) -> torch.Tensor:
        """The angular part alone: (Q,), (Q, 3), (Q, 3) -> (Q, num_spherical**2); ``first``: the
        Legendre basis of ``cos_angle`` when already computed (then ``cos_angle`` is not read)."""
        if first is None:
            first = legendre_basis(cos_angle, self.num_spherical)
        if self.smooth:
            if self.damping > 0:
                normal_cab = damp_normal(normal_cab, self.damping)
                normal_abd = damp_normal(normal_abd, self.damping)
            scale_sq = normal_cab.square().sum(-1) * normal_abd.square().sum(-1)
            second = legendre_basis((normal_cab * normal_abd).sum(-1), self.num_spherical, scale_sq)
        else:
            second = legendre_basis(torch.cos(dihedral_angle(normal_cab, normal_abd)), self.num_spherical)
        return outer_product(first, second)


class QuadrupletBasisChunks:
    """The quadruplet basis of lean mode, evaluated for a chunk of target edges on demand.

    ``chunks(start, stop, rad)`` returns, for target (main) edges ``start:stop`` (``rad``: their
    rows of the radial basis), the same
    (radial weights (c, emb_sbf, S²), padded spherical basis (c, S², Kmax)) that
    :meth:`BasisEmbedding.forward_padded` gives for those rows, plus (c, Kmax) indices of each
    padded quadruplet's input triplet (``T_in`` for padding, whose basis is zero). Only
    per-edge and per-triplet tensors are kept for the whole system, never a per-quadruplet one.
    """

    def __init__(self, layer: SphericalBasisLayer, embedding: BasisEmbedding, rad: torch.Tensor,
                 cos_cab: torch.Tensor, normal_cab: torch.Tensor, normal_abd: torch.Tensor, quad: dict,
                 width: int, chunk_size: int):
        self.layer, self.embedding, self.rad = layer, embedding, rad
        self.cos_cab, self.normal_cab, self.normal_abd = cos_cab, normal_cab, normal_abd
        self.num_rows = rad.shape[0]
        self.width = width
        self.rows_per_chunk = rows_per_chunk(chunk_size, width)
        self.slots = padded_slots(quad.out, quad.out_agg, self.num_rows, width)
        num_quad = quad.out.shape[0]
        self.trip_out = with_sentinel(quad.trip_out_to_quad, cos_cab.shape[0])
        self.trip_in = with_sentinel(quad.trip_in_to_quad, normal_abd.shape[0])
        self.num_quad = num_quad
        self.bounds = chunk_bounds(self.num_rows, self.rows_per_chunk)  # the chunks of target edges

    @property
    def geometry(self) -> tuple:
        """(cos_cab, normal_cab, normal_abd): the per-triplet tensors a chunk's basis is built from."""
        return self.cos_cab, self.normal_cab, self.normal_abd

    def __call__(self, start: int, stop: int, rad: torch.Tensor, cos_cab: torch.Tensor, normal_cab: torch.Tensor,
                 normal_abd: torch.Tensor):
        """``rad``: rows ``start:stop`` of the radial basis (from :func:`row_chunks`, so that the
        backward of taking them is not one whole-system gradient per chunk); the rest:
        :attr:`geometry`, passed in so that a recomputed chunk differentiates through them."""
        slots = self.slots[start:stop]  # (c, K) quadruplet ids, num_quad = padding
        valid = slots < self.num_quad
        trip_out = self.trip_out[slots]
        trip_in = self.trip_in[slots]
        shape = slots.shape
        # Padding slots read the last real triplet (any valid geometry) and are zeroed below.
        t_out = trip_out.clamp(max=max(cos_cab.shape[0] - 1, 0)).reshape(-1)
        t_in = trip_in.clamp(max=max(normal_abd.shape[0] - 1, 0)).reshape(-1)
        if cos_cab.shape[0] == 0 or normal_abd.shape[0] == 0:
            sph = rad.new_zeros(shape + (self.layer.num_spherical ** 2,))
        else:
            sph = self.layer.angular(cos_cab.index_select(0, t_out), normal_cab.index_select(0, t_out),
                                     normal_abd.index_select(0, t_in))
            sph = torch.where(valid.reshape(-1, 1), sph, torch.zeros_like(sph)).reshape(shape + (-1,))
        rad_w = self.embedding.radial(rad, sph.shape[-1])
        return rad_w, sph.transpose(1, 2), trip_in


def damp_normal(normal: torch.Tensor, epsilon: float) -> torch.Tensor:
    """n / sqrt(|n|² + ε²) for (n, 3) normals: smooth in n, length below 1, about n / |n| when
    |n| >> ε and about n / ε near 0."""
    return normal * torch.rsqrt(normal.square().sum(-1, keepdim=True) + epsilon * epsilon)


def cos_between(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cosine of the angle between unit vectors (n, 3), clamped to [-1, 1]."""
    return (u * v).sum(-1).clamp(-1.0, 1.0)


def angle_between(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle in [0, pi] between (not necessarily unit) vectors, stable gradient at 0."""
    x = (u * v).sum(-1)
    y = torch.linalg.cross(u, v).norm(dim=-1).clamp(min=1e-9)
    return torch.atan2(y, x)


def degenerate_normal_tolerance(dtype: torch.dtype) -> float:
    """Length below which a triplet normal (the sine of its angle) counts as vanished:
    sqrt(machine epsilon), well above the round-off of collinear unit vectors."""
    return math.sqrt(torch.finfo(dtype).eps)


def dihedral_angle(normal_1: torch.Tensor, normal_2: torch.Tensor) -> torch.Tensor:
    """JMP's dihedral: the angle in [0, pi] between two triplet normals (Q, 3).

    Where either normal vanishes (|n| below :func:`degenerate_normal_tolerance`) the angle is
    undefined; JMP's formula gives pi/2 at an exactly vanishing normal with a gradient of
    order 1e9 (and round-off decides the value just above it). Here such quadruplets get
    pi/2 with zero gradient, so forces and stress are defined on perfect crystals, ideal
    slabs and planar or linear molecules; everywhere else the value is JMP's.
    """
    tol = degenerate_normal_tolerance(normal_1.dtype)
    degenerate = (normal_1.norm(dim=-1) < tol) | (normal_2.norm(dim=-1) < tol)
    mask = degenerate[:, None]
    # Two fixed orthogonal vectors stand in for degenerate pairs: their angle is pi/2 and
    # nothing flows back to the positions through them.
    basis = torch.eye(3, dtype=normal_1.dtype, device=normal_1.device)
    safe_1 = torch.where(mask, basis[0], normal_1)
    safe_2 = torch.where(mask, basis[1], normal_2)
    return angle_between(safe_1, safe_2)


def _refresh_radial_twins(module: "Bases", incompatible_keys) -> None:
    """Load hook (a module-level function, so a model can still be pickled and deep-copied)."""
    module._find_radial_twins()


class InteractionBasis(NamedTuple):
    """The bases one interaction reads: ``rad`` (E, emb_size_rbf) radial weights per edge;
    ``cir`` the circular (triplet) part, in the layout its interaction contracts (padded
    (radial weights, basis) pair, or per triplet); ``sph`` the quadruplet basis: (radial weights
    times padded basis (E, emb_size_sbf, Kmax), input triplet of each padded slot (E, Kmax)), or
    in lean mode a :class:`QuadrupletBasisChunks` evaluated per chunk of edges."""

    rad: torch.Tensor
    cir: Any
    sph: Any = None


class BasisSet(NamedTuple):
    """Everything :meth:`Bases.forward` computes once per pass, for every block.

    ``m`` (E_main, emb_size_edge) initial edge embeddings; ``atom_update`` / ``output``
    (E_main, emb_size_rbf) radial weights of the atom-update and output blocks; one
    :class:`InteractionBasis` per interaction (``e2e`` triplets, ``qint`` quadruplets, ``a2e``
    atom-to-edge, ``e2a`` edge-to-atom); ``a2a_rad`` the padded (N, emb_size_rbf, K_a2a) radial
    weights of the atom-to-atom interaction."""

    m: torch.Tensor
    atom_update: torch.Tensor
    output: torch.Tensor
    qint: InteractionBasis
    e2e: InteractionBasis
    a2e: InteractionBasis
    e2a: InteractionBasis
    a2a_rad: torch.Tensor


class Bases(nn.Module):
    """All basis functions and their shared embeddings, plus the initial edge embedding ``m``.

    Attribute names and their order follow JMP's ``Bases`` module exactly.
    """

    def __init__(self, config):
        super().__init__()
        c = config
        self.num_spherical = c.num_spherical

        def radial():
            return RadialBasis(c.num_radial, c.absolute_rbf_cutoff, c.envelope_exponent)

        def circular():
            return CircularBasisLayer(c.num_spherical, radial())

        self.radial_basis = radial()
        self.cbf_basis_qint = circular()
        self.sbf_basis_qint = SphericalBasisLayer(c.num_spherical, radial(), smooth=c.smooth_dihedral,
                                                  damping=c.dihedral_damping)
        self.radial_basis_aeaint = radial()
        self.cbf_basis_aeint = circular()
        self.cbf_basis_eaint = circular()
        self.radial_basis_aint = radial()
        self.cbf_basis_tint = circular()

        nr, ns, do = c.num_radial, c.num_spherical, c.dropout
        self.mlp_rbf_qint = Dense(nr, c.emb_size_rbf, dropout=do)
        self.mlp_cbf_qint = BasisEmbedding(nr, c.emb_size_cbf, ns)
        self.mlp_sbf_qint = BasisEmbedding(nr, c.emb_size_sbf, ns**2)
        self.mlp_rbf_aeint = Dense(nr, c.emb_size_rbf, dropout=do)
        self.mlp_cbf_aeint = BasisEmbedding(nr, c.emb_size_cbf, ns)
        self.mlp_rbf_eaint = Dense(nr, c.emb_size_rbf, dropout=do)
        self.mlp_cbf_eaint = BasisEmbedding(nr, c.emb_size_cbf, ns)
        self.mlp_rbf_aint = BasisEmbedding(nr, c.emb_size_rbf)
        self.mlp_rbf_tint = Dense(nr, c.emb_size_rbf, dropout=do)
        self.mlp_cbf_tint = BasisEmbedding(nr, c.emb_size_cbf, ns)
        self.mlp_rbf_h = Dense(nr, c.emb_size_rbf, dropout=do)
        self.mlp_rbf_out = Dense(nr, c.emb_size_rbf, dropout=do)
        self.edge_emb = EdgeEmbedding(c.emb_size_atom, nr, c.emb_size_edge, activation=c.activation, dropout=do)
        self._find_radial_twins()
        self.register_load_state_dict_post_hook(_refresh_radial_twins)

    #: layers whose radial basis reads the main graph's (resp. a2ee2a graph's) distances
    _MAIN_RADIAL = ("cbf_basis_tint", "sbf_basis_qint", "cbf_basis_aeint")
    _AEA_RADIAL = ("cbf_basis_eaint",)

    def _find_radial_twins(self) -> None:
        """Which layers' radial bases equal ``radial_basis`` (main graph) or
        ``radial_basis_aeaint`` (a2ee2a graph): their evaluation on the same distances is then
        shared, not repeated (JMP keeps one copy per layer; they are equal in every checkpoint
        seen, but a file may differ, so it is checked whenever weights are loaded)."""
        def same(a: RadialBasis, b: RadialBasis) -> bool:
            if a.cutoff != b.cutoff or a.envelope.p != b.envelope.p:
                return False
            if a.rbf.offset.is_meta:  # shapes only (no values, nothing is computed)
                return True
            return torch.equal(a.rbf.offset, b.rbf.offset) and torch.equal(a.rbf.temps, b.rbf.temps)

        self._radial_twin = {name: same(self.radial_basis, getattr(self, name).radial_basis)
                             for name in self._MAIN_RADIAL}
        self._radial_twin.update({name: same(self.radial_basis_aeaint, getattr(self, name).radial_basis)
                                  for name in self._AEA_RADIAL})
        # One function for the four graphs' distances: evaluated once on all of them.
        self._one_radial = all(same(self.radial_basis, other) for other in (
            self.radial_basis_aeaint, self.radial_basis_aint, self.cbf_basis_qint.radial_basis))

    @staticmethod
    def quadruplet_angles(v_main: torch.Tensor, v_qint: torch.Tensor, quad: dict):
        """Angles of quadruplets c->a<-b<-d (main c->a, qint b->a, main d->b).

        Returns cos(c-a-b) per triplet_out, cos(a-b-d) per triplet_in and, per quadruplet,
        the normals n_cab = v_ca × v_ba and n_abd = v_db × v_ba whose angle is the dihedral
        c-a-b-d (see :class:`SphericalBasisLayer`).
        """
        cos_cab, cos_abd, normal_cab, normal_abd = Bases.triplet_angles(v_main, v_qint, quad)
        return (cos_cab, cos_abd, normal_cab.index_select(0, quad.trip_out_to_quad),
                normal_abd.index_select(0, quad.trip_in_to_quad))

    @staticmethod
    def triplet_angles(v_main: torch.Tensor, v_qint: torch.Tensor, quad: dict):
        """As :meth:`quadruplet_angles`, with both normals per triplet (triplet_out, triplet_in)."""
        v_ba_in = v_qint.index_select(0, quad.triplet_in.out)
        v_db = v_main.index_select(0, quad.triplet_in.in_)
        cos_abd = cos_between(v_ba_in, v_db)
        normal_abd = torch.linalg.cross(v_db, v_ba_in)

        v_ca = v_main.index_select(0, quad.triplet_out.out)
        v_ba_out = v_qint.index_select(0, quad.triplet_out.in_)
        cos_cab = cos_between(v_ca, v_ba_out)
        normal_cab = torch.linalg.cross(v_ca, v_ba_out)
        return cos_cab, cos_abd, normal_cab, normal_abd

    def _a2a_radial(self, distance: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        """Radial weights (E_a2a, emb_rbf) of the a2a graph; in chunks of ``chunk_size`` edges
        (recomputed in backward) when given: the raw (E_a2a, num_radial) basis is the largest
        per-edge tensor of the model (about 600 a2a edges per atom at 12 Å)."""
        def part(d):
            return self.mlp_rbf_aint.radial(self.radial_basis_aint(d))

        if chunk_size is None:
            return part(distance)
        pieces = [recompute(part, d) for d in row_chunks(distance, chunk_bounds(distance.shape[0], chunk_size))]
        return torch.cat(pieces) if pieces else part(distance)

    def _graph_radials(self, geom: dict, chunk_size: int | None) -> dict | None:
        """Radial bases of the four graphs from one evaluation on their distances laid end to end
        (``geom["all"]``, see :meth:`GemNetOCBackbone.geometry`), when one function serves all four;
        None otherwise, or in lean mode (the a2a basis is then evaluated in chunks)."""
        every = geom.get("all")
        if chunk_size is not None or every is None or not self._one_radial:
            return None
        pieces = self.radial_basis(every["distance"]).split(every["sizes"])
        return dict(zip(every["graphs"], pieces))

    def forward(self, h: torch.Tensor, geom: dict, idx: InteractionIndices, num_atoms: int, chunk_size: int | None = None) -> BasisSet:
        """Compute every basis used by the interaction and output blocks.

        ``geom[g]`` holds ``distance`` (E_g,) Å and ``vector`` (E_g, 3) unit vectors
        for graph g in main/a2a/a2ee2a/qint; ``idx`` is :func:`jmp_ase.data.indices.interaction_indices`
        with ``idx.padded_width`` (:func:`jmp_ase.data.batch.padded_widths`).
        ``chunk_size`` (lean memory mode): the quadruplet basis becomes a
        :class:`QuadrupletBasisChunks` evaluated per chunk of edges by the interaction blocks, and
        the a2a radial basis is computed in chunks; None: everything at once.
        """
        main, a2a, aea, qint = geom["main"], geom["a2a"], geom["a2ee2a"], geom["qint"]
        trip, t_a2e, t_e2a, quad = idx.trip_e2e, idx.trip_a2e, idx.trip_e2a, idx.quad

        rad = self._graph_radials(geom, chunk_size)
        rad_main = rad["main"] if rad else self.radial_basis(main["distance"])
        rad_aea = rad["a2ee2a"] if rad else self.radial_basis_aeaint(aea["distance"])

        def radial(name: str, shared: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
            return shared if self._radial_twin[name] else getattr(self, name).radial_basis(distance)

        rad_cir_e2e = radial("cbf_basis_tint", rad_main, main["distance"])
        cos_e2e = cos_between(main["vector"].index_select(0, trip.out), main["vector"].index_select(0, trip.in_))
        cos_a2e = cos_between(main["vector"].index_select(0, t_a2e.out), aea["vector"].index_select(0, t_a2e.in_))
        cos_e2a = cos_between(aea["vector"].index_select(0, t_e2a.out), main["vector"].index_select(0, t_e2a.in_))
        width = idx.padded_width
        lean = chunk_size is not None
        cos_cab_q, cos_abd, normal_cab, normal_abd = (self.triplet_angles if lean else self.quadruplet_angles)(
            main["vector"], qint["vector"], quad)
        # The Legendre bases of every triplet angle in one evaluation (elementwise: same numbers).
        cosines = [cos_e2e, cos_a2e, cos_e2a, cos_abd] + ([] if lean else [cos_cab_q])
        legendre = legendre_basis(torch.cat(cosines), self.num_spherical).split([c.shape[0] for c in cosines])
        cir_e2e, cir_a2e, cir_e2a, cir_qint = legendre[:4]
        if not lean:
            rad_sph_qint = radial("sbf_basis_qint", rad_main, main["distance"])
            sph_qint = self.sbf_basis_qint.angular(None, normal_cab, normal_abd,
                                                   first=legendre[4].index_select(0, quad.trip_out_to_quad))
            rad_w, sph = self.mlp_sbf_qint.forward_padded(rad_sph_qint, sph_qint, quad.out, quad.out_agg,
                                                          width.quad)
            # Radial weights times basis (rad_w @ sph): the same for every block, so taken
            # once per pass (each block then contracts it with its messages, Kmax x emb_size_quad_in
            # per edge, instead of the basis with them, S² x Kmax). Per padded quadruplet slot, its
            # input triplet (T_in for padding): the blocks gather their messages straight into the
            # padded layout.
            slots = padded_slots(quad.out, quad.out_agg, rad_sph_qint.shape[0], width.quad)
            # (E, emb_size_sbf, Kmax), with a backward whose products all read contiguous matrices.
            weighted = weighted_basis(rad_w, sph.transpose(1, 2))
            sph_qint = (weighted, with_sentinel(quad.trip_in_to_quad, quad.triplet_in.in_.shape[0])[slots])
        else:
            sph_qint = QuadrupletBasisChunks(
                self.sbf_basis_qint, self.mlp_sbf_qint, radial("sbf_basis_qint", rad_main, main["distance"]),
                cos_cab_q, normal_cab, normal_abd, quad, width.quad, chunk_size,
            )
        rad_cir_qint = rad["qint"] if rad else self.cbf_basis_qint.radial_basis(qint["distance"])
        rad_cir_a2e = radial("cbf_basis_aeint", rad_main, main["distance"])
        rad_cir_e2a = radial("cbf_basis_eaint", rad_aea, aea["distance"])
        aea_target = idx.a2ee2a_edge_index[1]
        e2a_rad_w, e2a_sph = self.mlp_cbf_eaint.forward_padded(
            rad_cir_e2a, cir_e2a, t_e2a.out, t_e2a.out_agg, width.trip_e2a
        )
        a2a_rad_w = self.mlp_rbf_aint.radial(rad["a2a"]) if rad else self._a2a_radial(a2a["distance"], chunk_size)
        return BasisSet(
            m=self.edge_emb(h, rad_main, idx.main_edge_index),
            atom_update=self.mlp_rbf_h(rad_main),
            output=self.mlp_rbf_out(rad_main),
            qint=InteractionBasis(
                rad=self.mlp_rbf_qint(rad_main),
                cir=self.mlp_cbf_qint.forward_gathered(rad_cir_qint, cir_qint, quad.triplet_in.out),
                sph=sph_qint,
            ),
            e2e=InteractionBasis(
                rad=self.mlp_rbf_tint(rad_main),
                cir=self.mlp_cbf_tint.forward_padded(rad_cir_e2e, cir_e2e, trip.out, trip.out_agg, width.trip_e2e),
            ),
            a2e=InteractionBasis(
                rad=self.mlp_rbf_aeint(rad_aea),
                cir=self.mlp_cbf_aeint.forward_padded(rad_cir_a2e, cir_a2e, t_a2e.out, t_a2e.out_agg,
                                                      width.trip_a2e),
            ),
            e2a=InteractionBasis(
                rad=self.mlp_rbf_eaint(rad_main),
                cir=(self.mlp_cbf_eaint.pad_radial_by_atom(e2a_rad_w, aea_target, idx.a2ee2a_target_inner,
                                                           num_atoms, width.a2ee2a), e2a_sph),
            ),
            a2a_rad=self.mlp_rbf_aint.pad_radial_by_atom(a2a_rad_w, idx.a2a_edge_index[1], idx.a2a_target_inner,
                                                         num_atoms, width.a2a),
        )
