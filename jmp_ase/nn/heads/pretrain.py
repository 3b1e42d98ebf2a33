"""JMP's pre-training heads: one energy MLP (on node embeddings) and one direct-force MLP (on
edge embeddings) per pre-training dataset (``output.out_energy.{i}``, ``output.out_forces.{i}``)."""
from __future__ import annotations

import torch
from torch import nn

from jmp_ase.nn.heads.base import direct_forces, mlp, sum_per_structure


class PretrainOutput(nn.Module):
    """One energy head and one force head per task, in the task's normalised units."""

    def __init__(self, emb_size_atom: int, emb_size_edge: int, num_tasks: int, num_mlps: int = 2,
                 activation: str = "scaled_silu"):
        super().__init__()
        self.out_energy = nn.ModuleList(
            [mlp([emb_size_atom] * num_mlps + [1], activation) for _ in range(num_tasks)]
        )
        self.out_forces = nn.ModuleList(
            [mlp([emb_size_edge] * num_mlps + [1], activation) for _ in range(num_tasks)]
        )

    def per_atom_energy(self, out, task: int) -> torch.Tensor:
        """(N,) per-atom energy of task ``task`` from a :class:`jmp_ase.nn.backbone.BackboneOutput`."""
        return self.out_energy[task](out.node_embedding)[:, 0]

    def energy(self, out, atom_batch: torch.Tensor, num_structures: int, task: int) -> torch.Tensor:
        """(B,) energy of task ``task``."""
        return sum_per_structure(self.per_atom_energy(out, task), atom_batch, num_structures)

    def forces(self, out, task: int) -> torch.Tensor:
        """(N, 3) direct forces of task ``task``."""
        scalar = self.out_forces[task](out.edge_embedding)[:, 0]
        return direct_forces(scalar, out.vector, out.edge_index[1], out.node_embedding.shape[0])

    def forward(self, out, atom_batch: torch.Tensor, num_structures: int, task: int):
        """Energy (B,) and direct forces (N, 3) of pre-training task ``task``."""
        return self.energy(out, atom_batch, num_structures, task), self.forces(out, task)

    def per_structure_task(self, out, atom_batch: torch.Tensor, num_structures: int, task: torch.Tensor):
        """Energy (B,) and forces (N, 3) of every structure's own task (``task``: (B,) indices),
        as multi-task pre-training needs them: every head runs, each structure keeps its own."""
        n = out.node_embedding.shape[0]
        energies = torch.stack([self.energy(out, atom_batch, num_structures, t) for t in range(len(self.out_energy))],
                               dim=1)
        forces = torch.stack([self.forces(out, t) for t in range(len(self.out_forces))], dim=1)
        return (energies.gather(1, task[:, None])[:, 0],
                forces[torch.arange(n, device=forces.device), task[atom_batch]])
