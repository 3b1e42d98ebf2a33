"""Small building blocks of GemNet-OC: dense layers, residual layers, scale factors.

Module and parameter names follow JMP's GemNet-OC so that original state dicts
load with ``strict=True`` (e.g. ``Dense.linear.weight``, ``ResidualLayer.dense_mlp``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from jmp_ase.nn.recompute import recompute


_SCALARS: dict = {}


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-d tensor of ``like``'s dtype and device, made once and kept.

    ``x * scalar(c, x)`` is ``x * c`` bit for bit, without the conversion of the Python number
    that every ``x * c`` repeats (three extra operations per multiply, forward and backward).
    """
    key = (value, like.dtype, like.device)
    tensor = _SCALARS.get(key)
    if tensor is None:
        with torch.inference_mode(False):  # a normal tensor, usable wherever autograd records
            tensor = _SCALARS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return tensor


class ScaledSiLU(nn.Module):
    """SiLU scaled by 1/0.6 so that a unit-variance input keeps roughly unit variance."""

    scale = 1.0 / 0.6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(x) * scalar(self.scale, x)


def make_activation(name: str | None) -> nn.Module:
    """Activation by JMP's name: ``scaled_silu`` (default of JMP), ``silu`` or ``None``."""
    if name is None:
        return nn.Identity()
    key = name.lower()
    if key in ("scaled_silu", "scaled_swish"):
        return ScaledSiLU()
    if key in ("silu", "swish"):
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}; use 'scaled_silu' or 'silu'")


def he_orthogonal_init_(weight: torch.Tensor) -> torch.Tensor:
    """Orthogonal init, standardised per output unit and scaled by 1/sqrt(fan_in).

    For a 3-D weight (num_radial, num_spherical, out) the fan-in is the product of
    the first two dimensions, as in GemNet.
    """
    with torch.no_grad():
        nn.init.orthogonal_(weight)
        if weight.dim() == 3:
            dims, fan_in = [0, 1], weight.shape[0] * weight.shape[1]
        else:
            dims, fan_in = [1], weight.shape[1]
        var, mean = torch.var_mean(weight, dim=dims, unbiased=True, keepdim=True)
        weight.copy_((weight - mean) / (var + 1e-6).sqrt() / math.sqrt(fan_in))
    return weight


class Dense(nn.Module):
    """Linear layer (no bias by default) followed by an activation and optional dropout."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        activation: str | None = None,
        dropout: float | None = None,
    ):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        he_orthogonal_init_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.activation(self.linear(x)))


class ResidualLayer(nn.Module):
    """``(x + MLP(x)) / sqrt(2)`` with ``n_layers`` bias-free dense layers."""

    def __init__(self, units: int, n_layers: int = 2, activation: str | None = None, dropout: float | None = None):
        super().__init__()
        self.dense_mlp = nn.Sequential(
            *[Dense(units, units, activation=activation, dropout=dropout) for _ in range(n_layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.dense_mlp(x)) * scalar(1.0 / math.sqrt(2.0), x)


class ScaleFactor(nn.Module):
    """A fitted scalar that keeps activations near unit variance.

    The buffer ``scale_factor`` is 0 until fitted; while it is 0 the layer is the
    identity. :func:`jmp_ase.training.scaling.fit_scale_factors` fits it on real data.

    The forward pass picks the factor with tensor math (``torch.where``), never with a
    Python ``if`` on its value, so it does not wait for the device; ``x * 1`` is
    exactly ``x``, so an unfitted layer still returns its input bit for bit. The picked factor
    is kept until the buffer changes (in place, or replaced), so a pass costs one multiply.
    """

    #: Number of ScaleFactor layers (in any model) whose observer is set; while 0, a forward pass
    #: need not look for observers (a layer collected while observing leaves it high: only slower).
    observing = 0

    def __init__(self):
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(0.0))
        self.observer = None  # set while fitting: callable(x, ref)

    @property
    def observer(self):
        return self.__dict__.get("_observer")

    @observer.setter
    def observer(self, fn):
        ScaleFactor.observing += (fn is not None) - (self.__dict__.get("_observer") is not None)
        self.__dict__["_observer"] = fn

    def __setstate__(self, state):  # a copy (deepcopy, pickle) of an observing layer observes too
        super().__setstate__(state)
        if self.__dict__.get("_observer") is not None:
            ScaleFactor.observing += 1

    @property
    def fitted(self) -> bool:
        return bool(self.scale_factor.item() != 0.0)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        if self.observer is not None:
            self.observer(x, ref)
        return x * self._factor()

    def _factor(self) -> torch.Tensor:
        """The factor to multiply by (1 while unfitted), as a tensor; computed once per value of
        the buffer (kept while the buffer is the same tensor, unmodified, in the same mode)."""
        factor = self.scale_factor
        key = (factor._version, factor.data_ptr(), torch.is_inference_mode_enabled())
        cached = self.__dict__.get("_cached_factor")
        if cached is not None and cached[0] is factor and cached[1] == key:
            return cached[2]
        effective = torch.where(factor != 0.0, factor, torch.ones_like(factor))
        self.__dict__["_cached_factor"] = (factor, key, effective)
        return effective


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` (n, ...) into ``dim_size`` bins given by ``index`` (n,)."""
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)


def chunk_bounds(num_rows: int, rows_per_chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(num_rows)`` in pieces of ``rows_per_chunk`` (host ints)."""
    step = max(1, int(rows_per_chunk))
    return [(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def row_chunks(x: torch.Tensor | None, bounds: list[tuple[int, int]]) -> list:
    """Rows ``a:b`` of ``x`` for each ``(a, b)`` of ``bounds`` (from :func:`chunk_bounds`: all rows,
    in order), as one :func:`torch.split`. Its backward assembles the pieces' gradients once;
    slicing each piece (``x[a:b]``) would make autograd allocate and add a gradient of the whole
    ``x`` per chunk, a cost that grows with the square of the system size. ``None`` gives Nones."""
    if x is None:
        return [None] * len(bounds)
    return list(torch.split(x, [stop - start for start, stop in bounds]))


def rows_per_chunk(chunk_size: int, width: int) -> int:
    """Rows of a padded (rows, width, ...) layout that fit ``chunk_size`` slots (at least one)."""
    return max(1, int(chunk_size) // max(1, int(width)))


def padded_slots(idx_outer: torch.Tensor, idx_inner: torch.Tensor, num_rows: int, width: int) -> torch.Tensor:
    """(num_rows, width) int64: entry ``k`` of the ragged index pair (``idx_outer[k]``, ``idx_inner[k]``),
    ``len(idx_outer)`` where a row has fewer than ``width`` entries.

    The index-only counterpart of padding a per-entry tensor to (num_rows, width, ...): a chunk of
    rows of the padded tensor is then a gather ``x_ext[slots[a:b]]`` from ``x_ext`` = the per-entry
    rows plus one zero row, so no padded tensor for the whole system is ever built.
    """
    num = idx_outer.shape[0]
    slots = idx_outer.new_full((num_rows, width), num)
    slots[idx_outer, idx_inner] = torch.arange(num, device=idx_outer.device)
    return slots


def pad_rows(x: torch.Tensor, idx_outer: torch.Tensor, idx_inner: torch.Tensor, num_rows: int,
             width: int) -> torch.Tensor:
    """(num_rows, width, ...) zeros with ``x[k]`` (n, ...) at (``idx_outer[k]``, ``idx_inner[k]``)
    (pairs unique): ``padded[idx_outer, idx_inner] = x`` as one ``index_copy`` on the flattened
    rows, whose backward is an ``index_select`` (faster than advanced indexing both ways)."""
    tail = tuple(x.shape[1:])
    padded = x.new_zeros((num_rows * width,) + tail)
    padded.index_copy_(0, idx_outer * width + idx_inner, x)
    return padded.view((num_rows, width) + tail)


def basis_messages(sph: torch.Tensor, x_padded: torch.Tensor) -> torch.Tensor:
    """``sph @ x_padded``: padded basis (n, S, K) times padded messages (n, K, C) -> (n, S, C).

    Where S > 2 C (the quadruplet basis, S = 49, of small models: 8 message channels) the
    product is taken transposed, x^T @ sph^T -> (n, C, S), and copied back: the per-matrix
    kernels of a batched product are slow with a narrow output (C columns) and fast with
    narrow rows (one thread, forward + backward of this product alone: 2.4x faster at S=49,
    C=8; at S=49, C=32 (JMP-S) no clear gain in the whole model; S=7, C=64 is 2.4x slower
    transposed). Same sums, in another order (round-off only). The transposed result is returned
    as a view (not contiguous): the next product reads it as it is, no copy either way.
    """
    if sph.shape[1] > 2 * x_padded.shape[2]:
        return (x_padded.transpose(1, 2) @ sph.transpose(1, 2)).transpose(1, 2)
    return sph @ x_padded


class _WeightedBasis(torch.autograd.Function):
    """``rad_w @ sph.transpose(1, 2)`` with each product of backward in a fast layout."""

    @staticmethod
    def forward(ctx, rad_w, sph):
        ctx.save_for_backward(rad_w, sph)
        return rad_w @ sph.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):  # differentiable (torch ops only): forces inside a training loss
        rad_w, sph = ctx.saved_tensors
        grad = grad.contiguous()
        grad_rad = grad @ sph if ctx.needs_input_grad[0] else None
        grad_sph = grad.transpose(1, 2) @ rad_w if ctx.needs_input_grad[1] else None
        return grad_rad, grad_sph


def weighted_basis(rad_w: torch.Tensor, sph: torch.Tensor) -> torch.Tensor:
    """Radial weights (n, C, S) times a padded basis (n, K, S) -> (n, C, K).

    Where S > 2 C (the quadruplet basis, S = 49, of small models: C = 8 channels), autograd's
    own backward of the plain product multiplies transposed views of both factors for the
    radial weights' gradient, a layout the batched kernels run several times slower (one
    thread, the quadruplet basis of the shipped aspirin model, n=310, K=254: forward + backward
    with the two blocks' products 20 ms against 40 ms). There every product here reads
    contiguous matrices, and the basis gradient comes out contiguous in the padded layout's
    (n, K, S) order, which :func:`pad_rows`' backward reads without a copy. At C = 32 (JMP-S)
    neither way was clearly faster, so the plain product stays (returned as a transposed view).
    """
    if sph.shape[2] > 2 * rad_w.shape[1]:
        return _WeightedBasis.apply(rad_w, sph)
    return (sph @ rad_w.transpose(1, 2)).transpose(1, 2)


class _OuterProduct(torch.autograd.Function):
    """Row-wise outer product (n, p), (n, q) -> (n, p * q) with a batched-product backward."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.einsum("ni,nj->nij", a, b).reshape(a.shape[0], a.shape[1] * b.shape[1])

    @staticmethod
    def backward(ctx, grad):  # differentiable (torch ops only)
        a, b = ctx.saved_tensors
        grad = grad.reshape(a.shape[0], a.shape[1], b.shape[1])
        grad_a = (grad @ b.unsqueeze(-1)).squeeze(-1) if ctx.needs_input_grad[0] else None
        grad_b = (a.unsqueeze(1) @ grad).squeeze(1) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def outer_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a[:, :, None] * b[:, None, :]).reshape(n, p * q)``, the same numbers, with a faster
    backward: autograd's own broadcasts the gradient against each factor and reduces it, about
    twice as slow as the batched products here (one thread, the quadruplet basis of the shipped
    aspirin model, 61 k rows of 7 x 7: forward + backward 13 ms against 27 ms)."""
    return _OuterProduct.apply(a, b)


def with_zero_row(x: torch.Tensor) -> torch.Tensor:
    """``x`` (n, ...) with one zero row appended (the target of padding slots)."""
    return torch.cat([x, x.new_zeros((1,) + tuple(x.shape[1:]))])


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for an integer ``index`` of any shape: rows of ``x`` (n, ...) -> index.shape + (...).

    Taken by ``index_select``, whose backward (``index_add`` into zeros) is about twice as fast
    on CPU as that of advanced indexing (``index_put`` with accumulation): it matters in lean
    mode, where each chunk's gather from a whole-system tensor pays that backward once."""
    return x.index_select(0, index.reshape(-1)).view(tuple(index.shape) + tuple(x.shape[1:]))


def with_sentinel(index: torch.Tensor, sentinel: int) -> torch.Tensor:
    """``index`` (n,) with ``sentinel`` appended, so that ``index_ext[slots]`` maps padding to it."""
    return torch.cat([index, index.new_full((1,), sentinel)])


class EdgeEmbedding(nn.Module):
    """Edge features from ``[h_source, h_target, m]`` through one dense layer."""

    def __init__(self, atom_features: int, edge_features: int, out_features: int, activation=None, dropout=None):
        super().__init__()
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation=activation, dropout=dropout)

    def forward(self, h: torch.Tensor, m: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """h (n_atoms, F_a), m (n_edges, F_e), edge_index (2, n_edges) -> (n_edges, out)."""
        return self.dense(torch.cat([h.index_select(0, edge_index[0]), h.index_select(0, edge_index[1]), m], dim=-1))


class BasisEmbedding(nn.Module):
    """Radial (x angular) basis embedding with the "efficient" GemNet layout.

    ``weight`` is (emb, num_radial) for a radial-only basis or
    (num_radial, num_spherical, emb) for a radial x angular basis.
    """

    def __init__(self, num_radial: int, emb_size: int, num_spherical: int | None = None):
        super().__init__()
        self.num_spherical = num_spherical
        shape = (emb_size, num_radial) if num_spherical is None else (num_radial, num_spherical, emb_size)
        self.weight = nn.Parameter(torch.empty(shape))
        he_orthogonal_init_(self.weight)

    def radial(self, rad_basis: torch.Tensor, num_angular: int | None = None) -> torch.Tensor:
        """rad_basis (n, num_radial) -> (n, emb) or (n, emb, num_angular)."""
        if self.num_spherical is None:
            return rad_basis @ self.weight.T
        flat = rad_basis @ self.weight.reshape(self.weight.shape[0], -1)
        return flat.reshape(rad_basis.shape[0], flat.shape[1] // num_angular, num_angular)

    def forward_gathered(self, rad_basis, sph_basis, idx_outer):
        """Per-triplet contraction: (n_trip, emb) = W(rad)[idx_outer] @ sph (n_trip, num_sph)."""
        rad_w = self.radial(rad_basis, sph_basis.shape[-1]).index_select(0, idx_outer)
        return (rad_w @ sph_basis[:, :, None]).squeeze(-1)

    def forward_padded(self, rad_basis, sph_basis, idx_sph_outer, idx_sph_inner, width: int):
        """Returns (W(rad) (n_edges, emb, num_sph), sph padded (n_edges, num_sph, Kmax)).

        ``width`` = Kmax, the largest ``idx_sph_inner`` + 1 (``AtomsBatch.indices.padded_width``).
        """
        n_edges = rad_basis.shape[0]
        rad_w = self.radial(rad_basis, sph_basis.shape[-1])
        sph = pad_rows(sph_basis, idx_sph_outer, idx_sph_inner, n_edges, width)
        return rad_w, sph.transpose(1, 2)

    def pad_radial_by_atom(self, rad_w: torch.Tensor, idx_outer, idx_inner, num_atoms: int,
                           width: int) -> torch.Tensor:
        """Arrange per-edge radial weights (n_edges, emb[, num_sph]) per target atom.

        Returns (num_atoms, emb, Kmax * num_sph) (or Kmax for a radial-only basis), where
        ``width`` = Kmax is the largest ``idx_inner`` + 1.
        """
        padded = pad_rows(rad_w, idx_outer, idx_inner, num_atoms, width)
        return padded.transpose(1, 2).reshape(num_atoms, rad_w.shape[1], -1)


class EfficientInteractionBilinear(nn.Module):
    """Bilinear interaction of basis and messages, aggregated per output edge (or atom)."""

    def __init__(self, emb_size_in: int, emb_size_interm: int, emb_size_out: int, dropout=None):
        super().__init__()
        self.emb_size_in = emb_size_in
        self.bilinear = Dense(emb_size_in * emb_size_interm, emb_size_out, dropout=dropout)

    def forward(self, basis, m, idx_agg_outer, idx_agg_inner, idx_agg2_outer=None, idx_agg2_inner=None,
                agg2_out_size=None, agg2_width=None):
        """basis = (rad_w (n_out, interm, S[*K2]), sph (n_edges, S, K)); m (n_trip, emb_in).

        A second aggregation (edges onto ``agg2_out_size`` atoms) pads to ``agg2_width`` = K2,
        the largest ``idx_agg2_inner`` + 1.
        """
        rad_w, sph = basis
        n_edges = sph.shape[0]
        m_padded = pad_rows(m, idx_agg_outer, idx_agg_inner, n_edges, sph.shape[2])
        sph_m = basis_messages(sph, m_padded)  # (n_edges, S, emb_in)
        if idx_agg2_outer is not None:
            sph_m_padded = pad_rows(sph_m, idx_agg2_outer, idx_agg2_inner, agg2_out_size, agg2_width)
            sph_m = sph_m_padded.reshape(agg2_out_size, -1, sph_m.shape[-1])
        return self.finish(rad_w, sph_m)

    def finish(self, rad_w: torch.Tensor, sph_m: torch.Tensor) -> torch.Tensor:
        """(n_out, interm, S') @ (n_out, S', emb_in) -> bilinear -> (n_out, emb_out)."""
        out = rad_w @ sph_m  # (n_out, interm, emb_in)
        return self.bilinear(out.reshape(out.shape[0], out.shape[1] * out.shape[2]))

    def forward_chunked(self, basis, x_src, idx_src, idx_agg_outer, idx_agg_inner, chunk_size: int,
                        idx_agg2_outer=None, idx_agg2_inner=None, agg2_out_size=None, agg2_width=None):
        """Same result as ``forward(basis, x_src[idx_src], idx_agg_outer, ...)`` without the per-triplet
        messages or their padded layout for the whole system: output rows are evaluated
        ``chunk_size`` padded slots at a time (recomputed in backward while autograd records).

        x_src (n_src, emb_in) messages per source row; idx_src (n_trip,) source row of each triplet.
        """
        rad_w, sph = basis
        n_rows, _, width = sph.shape
        slots = with_sentinel(idx_src, x_src.shape[0])[padded_slots(idx_agg_outer, idx_agg_inner, n_rows, width)]
        x_ext = with_zero_row(x_src)
        final = idx_agg2_outer is None

        def part(rad_w_c, sph_c, slots_c, x_ext):
            sph_m = basis_messages(sph_c, gather_rows(x_ext, slots_c))  # (c, S, emb_in)
            return self.finish(rad_w_c, sph_m) if final else sph_m

        bounds = chunk_bounds(n_rows, rows_per_chunk(chunk_size, width))
        pieces = [recompute(part, rad_c, sph_c, slots[a:b], x_ext)
                  for (a, b), rad_c, sph_c in zip(bounds, row_chunks(rad_w if final else None, bounds),
                                                   row_chunks(sph, bounds))]
        if not pieces:
            pieces = [part(rad_w[:0] if final else None, sph[:0], slots[:0], x_ext)]
        sph_m = torch.cat(pieces)
        if final:
            return sph_m
        sph_m_padded = pad_rows(sph_m, idx_agg2_outer, idx_agg2_inner, agg2_out_size, agg2_width)
        return self.finish(rad_w, sph_m_padded.reshape(agg2_out_size, -1, sph_m.shape[-1]))
