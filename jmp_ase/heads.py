"""Output heads on top of the backbone embeddings.

* :class:`PretrainOutput`: JMP's pre-training heads, one energy and one direct-force
  MLP per pre-training dataset (``output.out_energy.{i}``, ``output.out_forces.{i}``).
* :func:`energy_mlp`: the fine-tuning style energy MLP (no biases).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import make_activation, scatter_sum


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


def energy_mlp(emb_size: int, activation: str = "scaled_silu") -> nn.Sequential:
    """Fine-tuning energy MLP: Linear(d, d, no bias) -> act -> Linear(d, 1, no bias)."""
    return mlp([emb_size, emb_size, 1], activation, bias=False)


def sum_per_structure(per_atom: torch.Tensor, atom_batch: torch.Tensor, num_structures: int) -> torch.Tensor:
    """(N,) per-atom values -> (B,) per-structure sums."""
    return scatter_sum(per_atom, atom_batch, num_structures)


def direct_forces(edge_scalar: torch.Tensor, vector: torch.Tensor, target: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """F_i = sum over edges e with target i of edge_scalar[e] * vector[e]: (N, 3)."""
    return scatter_sum(edge_scalar[:, None] * vector, target, num_atoms)


class PretrainOutput(nn.Module):
    """One energy head (on node embeddings) and one force head (on edge embeddings) per task."""

    def __init__(self, emb_size_atom: int, emb_size_edge: int, num_tasks: int, num_mlps: int = 2,
                 activation: str = "scaled_silu"):
        super().__init__()
        self.out_energy = nn.ModuleList(
            [mlp([emb_size_atom] * num_mlps + [1], activation) for _ in range(num_tasks)]
        )
        self.out_forces = nn.ModuleList(
            [mlp([emb_size_edge] * num_mlps + [1], activation) for _ in range(num_tasks)]
        )

    def forward(self, out, atom_batch: torch.Tensor, num_structures: int, task: int):
        """Energy (B,) and direct forces (N, 3) of pre-training task ``task``.

        ``out`` is a :class:`jmp_ase.backbone.BackboneOutput`. Units are the normalised
        units the task was trained in.
        """
        num_atoms = out.node_embedding.shape[0]
        energy = sum_per_structure(self.out_energy[task](out.node_embedding)[:, 0], atom_batch, num_structures)
        scalar = self.out_forces[task](out.edge_embedding)[:, 0]
        return energy, direct_forces(scalar, out.vector, out.edge_index[1], num_atoms)
