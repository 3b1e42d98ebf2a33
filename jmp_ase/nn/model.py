"""Networks: atom embedding + GemNet-OC backbone + pre-training or fine-tuning heads.

The pre-trained module tree mirrors JMP's Lightning module, so an original ``state_dict``
(``embedding.atom_embedding.weight``, ``backbone.*``, ``output.out_energy.{i}.*``,
``output.out_forces.{i}.*``) loads with ``strict=True``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from ase import Atoms
from torch import nn

from jmp_ase.nn.backbone import BackboneOutput, GemNetOCBackbone
from jmp_ase.data.batch import AtomsBatch, batch_from_atoms
import jmp_ase.keys as keys
from jmp_ase.keys import RESERVED_NAMES, UNITS
from jmp_ase.nn.config import BackboneConfig
from jmp_ase.nn.derivatives import StrainedInputs
from jmp_ase.data.graphs import GraphSettings
from jmp_ase.nn.heads import HeadInputs, HeadSpec, PretrainOutput, build_head


class AtomEmbedding(nn.Module):
    """Learned vector per element; row Z-1 embeds element Z."""

    def __init__(self, num_elements: int, emb_size: int):
        super().__init__()
        self.atom_embedding = nn.Embedding(num_elements, emb_size)
        nn.init.uniform_(self.atom_embedding.weight, -3**0.5, 3**0.5)

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        """numbers (N,) -> (N, emb_size)."""
        return self.atom_embedding(numbers - 1)


class JMPBackboneModel(nn.Module):
    """Atom embedding + backbone: the part every JMP model shares."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.embedding = AtomEmbedding(config.num_elements, config.emb_size_atom)
        self.backbone = GemNetOCBackbone(config)

    def embed(self, batch: AtomsBatch, positions=None, cell=None, edge_embedding: bool = True) -> BackboneOutput:
        """Backbone output; ``positions`` / ``cell`` override the batch's (e.g. strained copies);
        ``edge_embedding=False`` skips the edge branch that only direct-force heads read."""
        positions = batch.positions if positions is None else positions
        cell = batch.cell if cell is None else cell
        h = self.embedding(batch.numbers)
        return self.backbone(h, positions, cell, batch.atom_batch, batch.indices, edge_embedding=edge_embedding)

    @property
    def memory(self) -> str:
        """Memory mode of the backbone, ``"auto"`` | ``"fast"`` | ``"lean"`` (a runtime setting, not
        saved in model files; see :attr:`jmp_ase.nn.backbone.GemNetOCBackbone.memory`)."""
        return self.backbone.memory

    @memory.setter
    def memory(self, value: str):
        self.backbone.memory = value


class JMPPretrainedModel(JMPBackboneModel):
    """The pre-trained network with its per-dataset heads (JMP's checkpoint layout)."""

    def __init__(self, config: BackboneConfig, num_tasks: int, num_mlps: int = 2):
        super().__init__(config)
        self.output = PretrainOutput(config.emb_size_atom, config.emb_size_edge, num_tasks, num_mlps, config.activation)
        # Per head: name, cutoff, max_neighbors, normalisation. Set by load_jmp_pretrained from
        # files written by jmp-ase; None for JMP's own files, which do not say.
        self.task_info: list[dict] | None = None

    def forward(self, batch: AtomsBatch, task: int = 0):
        """Energy (B,) and direct forces (N, 3) of pre-training head ``task`` (normalised units)."""
        out = self.embed(batch)
        return self.output(out, batch.atom_batch, batch.num_structures, task)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a fine-tuned model; saved inside the model file.

    cutoff (Å), max_neighbors, tags (how the atoms' tags are read, see
    :func:`jmp_ase.data.graphs.resolve_tags`; files without it predate the setting and read "auto"),
    neighbor_order (how the nearest max_neighbors are chosen: "canonical" for new models, order
    independent and keeping tied shells whole; files without it read "jmp", the first release's
    rule) and the backbone's qint_tags define the graphs;
    elements: atomic numbers seen in training (empty = not recorded);
    isolated_atom_references: the energy head gives an atom without neighbours exactly its
    element reference (the energy's dissociation limit is the sum of the references; the head
    subtracts each element's isolated-atom output, see :meth:`jmp_ase.nn.heads.base.Head.denormalise`;
    needs ``elements``; files without it read False, JMP's behaviour); provenance:
    record of the parent model, data, jmp-ase version and date (plain Python values);
    units: the units of positions and predictions (fixed, stated for readers of the file).
    """

    backbone: BackboneConfig
    heads: list[HeadSpec]
    cutoff: float = 12.0
    max_neighbors: int = 30
    tags: str = "ignore"
    neighbor_order: str = "canonical"
    elements: list[int] = field(default_factory=list)
    isolated_atom_references: bool = False
    provenance: dict = field(default_factory=dict)
    units: dict = field(default_factory=lambda: dict(UNITS))

    def __post_init__(self):
        self._check_heads()
        self.cutoff = float(self.cutoff)
        self.max_neighbors = int(self.max_neighbors)
        self.elements = sorted({int(z) for z in self.elements})
        self.isolated_atom_references = bool(self.isolated_atom_references)
        if self.isolated_atom_references and not self.elements:
            raise ValueError("isolated_atom_references needs the model's elements")
        bad = [z for z in self.elements if not 1 <= z <= self.backbone.num_elements]
        if bad:
            raise ValueError(f"elements {bad} are outside 1..{self.backbone.num_elements} (num_elements)")
        if dict(self.units) != UNITS:
            raise ValueError(f"units must be {UNITS} (the units jmp-ase computes in), got {self.units}")
        self.units = dict(UNITS)
        self.graph_settings  # noqa: B018 - validates cutoff and max_neighbors

    def _check_heads(self):
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        for kind in ("energy", "direct_forces"):
            if sum(h.kind == kind for h in self.heads) > 1:
                raise ValueError(f"at most one {kind!r} head is allowed")
        if any(h.kind == "direct_forces" for h in self.heads) and not any(h.kind == "energy" for h in self.heads):
            raise ValueError("a direct_forces head needs an energy head beside it")
        if any(h.kind == "direct_forces" for h in self.heads) and any(h.committee > 1 for h in self.heads):
            raise ValueError("a committee energy head needs conservative forces (no direct_forces head)")
        clash = [h.name for h in self.heads if h.kind == "scalar" and h.name in RESERVED_NAMES]
        if clash:
            raise ValueError(f"scalar heads may not be named {clash}: these names are ASE properties")

    @property
    def graph_settings(self) -> GraphSettings:
        return GraphSettings(cutoff=self.cutoff, max_neighbors=self.max_neighbors, qint_tags=self.backbone.qint_tags,
                             tags=self.tags, neighbor_order=self.neighbor_order)

    def to_dict(self) -> dict:
        """Plain-Python dict (safe for ``torch.load(weights_only=True)``)."""
        return {
            "backbone": self.backbone.to_dict(),
            "heads": [h.to_dict() for h in self.heads],
            "cutoff": float(self.cutoff),
            "max_neighbors": int(self.max_neighbors),
            "tags": self.tags,
            "neighbor_order": self.neighbor_order,
            "elements": [int(z) for z in self.elements],
            "isolated_atom_references": self.isolated_atom_references,
            "provenance": dict(self.provenance),
            "units": dict(self.units),
        }

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) - known or not {"backbone", "heads"} <= set(values):
            found = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"model config keys must be among {sorted(known)} (backbone and heads required), "
                             f"found {found}")
        values = dict(values)
        values.setdefault("tags", "auto")  # files of the first release: its tag rule
        values.setdefault("neighbor_order", "jmp")  # files before the setting: JMP's nearest-k rule
        values["backbone"] = BackboneConfig.from_dict(values["backbone"])
        values["heads"] = [HeadSpec.from_dict(h) for h in values["heads"]]
        return cls(**values)


class FineTunedModel(JMPBackboneModel):
    """Backbone + fine-tuning heads; predicts ASE properties in eV, eV/Å, eV/Å³.

    With an ``energy`` head, forces are -dE/dr and stress is (1/V) dE/dε (symmetric
    strain ε applied to positions and cell), both by autograd through the graph geometry.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config.backbone)
        self.model_config = config
        c = config.backbone
        self.heads = nn.ModuleDict(
            {spec.name: build_head(spec, c.emb_size_atom, c.emb_size_edge, c.num_elements, c.activation)
             for spec in config.heads}
        )
        self._isolated_batch = None  # ((device, dtype), AtomsBatch of one isolated atom per element)

    @property
    def graph_settings(self) -> GraphSettings:
        return self.model_config.graph_settings

    @property
    def num_elements(self) -> int:
        return self.config.num_elements

    def _head_of_kind(self, kind: str):
        return next((h for h in self.heads.values() if h.spec.kind == kind), None)

    @property
    def conservative(self) -> bool:
        """True when forces come from -dE/dr (an energy head without a direct-force head)."""
        return self._head_of_kind("energy") is not None and self._head_of_kind("direct_forces") is None

    @property
    def needs_grad(self) -> bool:
        return self._head_of_kind("energy") is not None

    @property
    def elements(self) -> list[int] | None:
        """Atomic numbers seen in training, or None when the model file does not record them."""
        return list(self.model_config.elements) or None

    @property
    def scalar_heads(self) -> list[str]:
        """Names of the graph-level scalar heads (predicted per structure)."""
        return [name for name, h in self.heads.items() if h.spec.kind == "scalar"]

    @property
    def implemented_properties(self) -> list[str]:
        """ASE properties this model predicts, scalar head names included."""
        props = []
        if self._head_of_kind("energy") is not None:
            props += ["energy", "free_energy", "energies", "forces"]
            if self.conservative:
                props.append("stress")
        for head in self.heads.values():  # what every head produces, new kinds included
            props += [name for name in head.outputs() if name not in props]
        return props

    def _isolated_embedding(self, like: torch.Tensor) -> torch.Tensor | None:
        """With ``isolated_atom_references``: the node embedding of each of the model's elements
        as an atom without neighbours, (num_elements + 1, D) with row Z for element Z (zero rows
        elsewhere), from a backbone pass over one isolated atom per element; else None."""
        config = self.model_config
        if not config.isolated_atom_references or self._head_of_kind("energy") is None:
            return None
        key = (like.device, like.dtype)
        if self._isolated_batch is None or self._isolated_batch[0] != key:
            atoms = [Atoms(numbers=[z]) for z in config.elements]
            batch = batch_from_atoms(atoms, self.graph_settings, num_elements=self.num_elements, dtype=like.dtype)
            self._isolated_batch = (key, batch.to(like.device))
        batch = self._isolated_batch[1]
        embedding = self.embed(batch, edge_embedding=False).node_embedding
        table = embedding.new_zeros(self.num_elements + 1, embedding.shape[1])
        return table.index_copy(0, batch.numbers, embedding)

    def forward(self, batch: AtomsBatch, compute_stress: bool = False, compute_forces: bool = True,
                compute_spread: bool = False) -> dict:
        """Predictions for a batch: energy (B,), energies (N,), forces (N, 3), stress (B, 3, 3)
        and one (B,) tensor per scalar head, keyed by head name.

        A committee energy head adds ``energy_std`` (B,); with ``compute_spread`` (one backward
        pass per member) also ``forces_std`` (N,). In training mode it adds each member's
        ``energy_members`` (K, B) and ``forces_members`` (K, N, 3) for the loss."""
        energy_head = self._head_of_kind("energy")
        conservative = self.conservative and compute_forces
        compute_stress = compute_stress and energy_head is not None
        if compute_stress and not self.conservative:
            raise ValueError("this model predicts direct forces: it has no stress")
        inputs = StrainedInputs.prepare(batch.positions, batch.cell, batch.atom_batch, conservative, compute_stress)
        out = self.embed(batch, inputs.model_positions, inputs.model_cell,
                         edge_embedding=self._head_of_kind("direct_forces") is not None)
        head_inputs = HeadInputs(out, batch.numbers, batch.atom_batch, batch.num_structures, compute_forces,
                                 self._isolated_embedding(batch.positions))
        results: dict[str, torch.Tensor] = {}
        for head in self.heads.values():
            results.update(head(head_inputs))
        members = results.pop(keys.ENERGY_MEMBERS.name, None)
        if members is not None and self.training:
            results[keys.ENERGY_MEMBERS.name] = members
        if members is not None and conservative and (self.training or compute_spread):
            results.update(inputs.committee_derivatives(members, batch.cell, compute_stress, self.training))
            if not self.training:
                del results[keys.FORCES_MEMBERS.name]
            return results
        results.update(inputs.derivatives(results.get("energy"), batch.cell, conservative, compute_stress,
                                          create_graph=self.training))
        return results
