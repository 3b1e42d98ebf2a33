"""JMP's pre-trained network: atom embedding + GemNet-OC backbone + pre-training heads.

The module tree mirrors JMP's Lightning module, so an original ``state_dict``
(``embedding.atom_embedding.weight``, ``backbone.*``, ``output.out_energy.{i}.*``,
``output.out_forces.{i}.*``) loads with ``strict=True``.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone import BackboneOutput, GemNetOCBackbone
from .batch import AtomsBatch
from .config import BackboneConfig
from .heads import PretrainOutput


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

    def embed(self, batch: AtomsBatch, positions=None, cell=None) -> BackboneOutput:
        """Backbone output; ``positions`` / ``cell`` override the batch's (e.g. strained copies)."""
        positions = batch.positions if positions is None else positions
        cell = batch.cell if cell is None else cell
        h = self.embedding(batch.numbers)
        return self.backbone(h, positions, cell, batch.atom_batch, batch.indices)


class JMPPretrainedModel(JMPBackboneModel):
    """The pre-trained network with its per-dataset heads (JMP's checkpoint layout)."""

    def __init__(self, config: BackboneConfig, num_tasks: int, num_mlps: int = 2):
        super().__init__(config)
        self.output = PretrainOutput(config.emb_size_atom, config.emb_size_edge, num_tasks, num_mlps, config.activation)

    def forward(self, batch: AtomsBatch, task: int = 0):
        """Energy (B,) and direct forces (N, 3) of pre-training head ``task`` (normalised units)."""
        out = self.embed(batch)
        return self.output(out, batch.atom_batch, batch.num_structures, task)


def _resolve_config(config, inferred: BackboneConfig) -> BackboneConfig:
    """``config`` may be None (use ``inferred``), a name, a dict or a BackboneConfig."""
    from .config import named_config

    if config is None:
        return inferred
    if isinstance(config, str):
        return named_config(config)
    if isinstance(config, dict):
        return BackboneConfig.from_dict(config)
    if isinstance(config, BackboneConfig):
        return config
    raise TypeError(f"config must be None, a name, a dict or a BackboneConfig, not {type(config).__name__}")


def load_jmp_pretrained(path, ema: bool = False, config=None) -> tuple[JMPPretrainedModel, list[str] | None]:
    """Build :class:`JMPPretrainedModel` from an original JMP checkpoint (``jmp-s.pt``, ...).

    Tensors are read without executing foreign code (:mod:`jmp_ase.jmp_checkpoint`).
    Returns the model (eval mode) and the pre-training task names if the file has them.
    Raises ``ValueError`` when ``config`` does not fit the file's tensors.
    """
    from .jmp_checkpoint import read_jmp_checkpoint

    ckpt = read_jmp_checkpoint(path, ema=ema)
    cfg = _resolve_config(config, ckpt.backbone_config())
    num_mlps = len([k for k in ckpt.energy_heads[0] if k.endswith("weight")]) if ckpt.energy_heads else 2
    model = JMPPretrainedModel(cfg, max(ckpt.num_tasks, 1), num_mlps=num_mlps)
    state = {"embedding.atom_embedding.weight": ckpt.atom_embedding}
    state.update({f"backbone.{k}": v for k, v in ckpt.backbone.items()})
    for kind, heads in (("out_energy", ckpt.energy_heads), ("out_forces", ckpt.force_heads)):
        for i, head in enumerate(heads):
            state.update({f"output.{kind}.{i}.{k}": v for k, v in head.items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the checkpoint does not fit backbone config {cfg}:\n{err}") from None
    return model.eval(), ckpt.task_names
