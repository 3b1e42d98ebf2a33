"""What every output head shares: its saved description (:class:`HeadSpec`), the small
interface the model calls (:class:`Head`), the registry of head kinds and the building blocks
(MLPs, pooling, direct forces).

A new head kind is one file in this package: a :class:`Head` subclass decorated with
``@register_head("kind")``, imported in ``heads/__init__.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from jmp_ase.nn.layers import make_activation, scatter_sum

#: kind -> Head subclass; filled by :func:`register_head`.
HEAD_TYPES: dict[str, type["Head"]] = {}
REDUCTIONS = ("sum", "mean", "max")


def register_head(kind: str):
    """Class decorator: make ``cls`` the head built for ``HeadSpec(kind=kind)``."""
    def decorate(cls):
        if kind in HEAD_TYPES:
            raise ValueError(f"head kind {kind!r} is registered twice ({HEAD_TYPES[kind].__name__}, {cls.__name__})")
        cls.kind = kind
        HEAD_TYPES[kind] = cls
        return cls
    return decorate


def head_kinds() -> tuple[str, ...]:
    return tuple(HEAD_TYPES)


@dataclass
class HeadSpec:
    """What one fine-tuning head predicts; saved inside every model file.

    kind: ``energy`` (per-structure energy in eV, forces/stress by autograd),
    ``scalar`` (a graph-level target named ``name``, pooled with ``reduction``) or
    ``direct_forces`` (forces predicted per edge, for very large systems; no stress).
    Predictions are de-normalised as ``value = scale * raw + shift`` per atom for
    sum-pooled targets (``shift`` then is per atom), per structure otherwise, plus
    ``sum_i element_references[Z_i]`` for energy and sum-pooled scalars.
    """

    name: str
    kind: str = "energy"
    reduction: str = "sum"
    scale: float = 1.0
    shift: float = 0.0
    element_references: dict[int, float] = field(default_factory=dict)
    units: str = "eV"
    mlp_bias: bool = False
    """A bias on the MLP's first layer, as JMP's pre-training energy heads have (set when the
    head starts from one of them); new heads have none, as in JMP's fine-tuning."""
    committee: int = 1
    """Energy heads: the number of MLPs (members) on the same node embedding, each trained on the
    labels. The energy is their mean; their spread gives ``energy_std`` and ``forces_std``."""

    def __post_init__(self):
        if self.kind not in HEAD_TYPES:
            raise ValueError(f"head {self.name!r}: kind must be one of {head_kinds()}, got {self.kind!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"head {self.name!r}: reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.kind == "energy" and self.reduction != "sum":
            raise ValueError(f"head {self.name!r}: an energy head must be sum-pooled")
        self.committee = int(self.committee)
        if self.committee < 1 or (self.committee > 1 and self.kind != "energy"):
            raise ValueError(f"head {self.name!r}: committee must be 1, or more for an energy head, "
                             f"got {self.committee} ({self.kind})")
        self.element_references = {int(k): float(v) for k, v in self.element_references.items()}
        self.name, self.units = str(self.name), str(self.units)
        self.scale, self.shift = float(self.scale), float(self.shift)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "HeadSpec":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) - known or "name" not in values:
            found = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"head spec keys must be among {sorted(known)} (name required), found {found}")
        return cls(**values)


class HeadInputs(NamedTuple):
    """What a head may read: the backbone's output and the batch it came from.

    out: :class:`jmp_ase.nn.backbone.BackboneOutput` (node_embedding (N, D_atom),
    edge_embedding (E, D_edge), vector (E, 3), edge_index (2, E)); numbers (N,);
    atom_batch (N,); num_structures B; compute_forces: whether forces are wanted;
    isolated: for models with ``isolated_atom_references``, the node embedding of each element
    as an isolated atom (num_elements + 1, D_atom), row Z for element Z (rows of elements the
    model does not know are zero); None otherwise.
    """

    out: object
    numbers: torch.Tensor
    atom_batch: torch.Tensor
    num_structures: int
    compute_forces: bool
    isolated: torch.Tensor | None = None


class Head(nn.Module):
    """An MLP on node (``embedding = "node"``) or edge (``"edge"``) embeddings plus its
    de-normalisation. Subclasses implement :meth:`forward` returning ``{key: tensor}`` in
    the shapes of :mod:`jmp_ase.keys`.

    State-dict keys (``mlp.*``, ``element_references``) are the model file's format.
    """

    kind: str = ""
    embedding: str = "node"
    #: keys of :mod:`jmp_ase.keys` this head produces (scalar heads: their own name)
    produces: tuple[str, ...] = ()

    def __init__(self, spec: HeadSpec, emb_size: int, num_elements: int, activation: str = "scaled_silu"):
        super().__init__()
        self.spec = spec
        self.mlp = energy_mlp(emb_size, activation, bias=spec.mlp_bias)
        refs = torch.zeros(num_elements + 1)
        for z, value in spec.element_references.items():
            refs[z] = value
        self.register_buffer("element_references", refs)

    def outputs(self) -> tuple[str, ...]:
        return self.produces or (self.spec.name,)

    def forward(self, inputs: HeadInputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- shared de-normalisation of node heads
    def per_atom(self, node_embedding: torch.Tensor, numbers: torch.Tensor,
                 isolated: torch.Tensor | None = None) -> torch.Tensor:
        """De-normalised per-atom contributions (N,) for sum pooling, raw (N,) otherwise;
        ``isolated``: see :meth:`denormalise` (``HeadInputs.isolated``)."""
        raw_isolated = None if isolated is None else self.mlp(isolated)[:, 0]
        return self.denormalise(self.mlp(node_embedding)[:, 0], numbers, raw_isolated)

    def denormalise(self, raw: torch.Tensor, numbers: torch.Tensor,
                    raw_isolated: torch.Tensor | None = None) -> torch.Tensor:
        """``raw`` (..., N) MLP outputs -> per-atom contributions (sum pooling), else unchanged.

        ``raw_isolated`` (..., num_elements + 1): the MLP's output for each element as an
        isolated atom. Given, an atom contributes ``scale * (raw - raw_isolated[Z]) + ref[Z]``,
        so an atom without neighbours has exactly its element reference."""
        spec = self.spec
        if spec.reduction != "sum":
            return raw
        references = self.element_references.to(raw.dtype)[numbers]
        if raw_isolated is not None:
            return spec.scale * (raw - raw_isolated[..., numbers]) + references
        return spec.scale * raw + spec.shift + references

    def structure_value(self, per_atom, atom_batch, num_structures):
        """(B,) pooled and de-normalised prediction."""
        pooled = pool(per_atom, atom_batch, num_structures, self.spec.reduction)
        if self.spec.reduction == "sum":
            return pooled
        return self.spec.scale * pooled + self.spec.shift


def build_head(spec: HeadSpec, emb_size_atom: int, emb_size_edge: int, num_elements: int,
               activation: str = "scaled_silu") -> Head:
    """The registered head for ``spec.kind``, sized for the embedding it reads."""
    cls = HEAD_TYPES[spec.kind]
    return cls(spec, emb_size_edge if cls.embedding == "edge" else emb_size_atom, num_elements, activation)


def mlp(sizes: list[int], activation: str = "scaled_silu", bias: bool = True) -> nn.Sequential:
    """Linear -> act -> ... -> Linear(no bias) as in JMP's heads.

    ``sizes = [d, d, 1]`` gives keys ``0.weight``, ``0.bias``, ``2.weight``.
    """
    layers: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = k == len(sizes) - 2
        layers.append(nn.Linear(n_in, n_out, bias=bias and not last))
        if not last:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


def energy_mlp(emb_size: int, activation: str = "scaled_silu", bias: bool = False) -> nn.Sequential:
    """Fine-tuning energy MLP: Linear(d, d, no bias unless ``bias``) -> act -> Linear(d, 1, no bias)."""
    return mlp([emb_size, emb_size, 1], activation, bias=bias)


def sum_per_structure(per_atom: torch.Tensor, atom_batch: torch.Tensor, num_structures: int) -> torch.Tensor:
    """(N,) per-atom values -> (B,) per-structure sums."""
    return scatter_sum(per_atom, atom_batch, num_structures)


def pool(per_atom: torch.Tensor, atom_batch: torch.Tensor, num_structures: int, reduction: str) -> torch.Tensor:
    """(N,) -> (B,) by sum, mean or max over the atoms of each structure."""
    if reduction == "sum":
        return sum_per_structure(per_atom, atom_batch, num_structures)
    if reduction == "mean":
        counts = torch.bincount(atom_batch, minlength=num_structures).to(per_atom.dtype)
        return sum_per_structure(per_atom, atom_batch, num_structures) / counts
    out = per_atom.new_full((num_structures,), float("-inf"))
    return out.scatter_reduce(0, atom_batch, per_atom, reduce="amax", include_self=True)


def direct_forces(edge_scalar: torch.Tensor, vector: torch.Tensor, target: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """F_i = sum over edges e with target i of edge_scalar[e] * vector[e]: (N, 3)."""
    return scatter_sum(edge_scalar[:, None] * vector, target, num_atoms)
