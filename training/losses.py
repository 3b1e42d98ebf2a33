"""JMP's pre-training loss with the structure-wise force reduction (paper eq. 1).

For a batch of B structures, structure b with N_b atoms from data set t(b)::

    L = 1/B Σ_b [ λ_E,t(b) |Ê_b - E_b|  +  λ_F,t(b) (1/N_b) Σ_{i in b} ||F̂_i - F_i||_2 ]

on normalised targets, each structure predicted by its own data set's heads. JMP uses
λ_E = 1 and λ_F = the mean number of atoms per structure of the data set
(``energy_loss_scale`` / ``force_loss_scale`` in ``tasks/pretrain/module.py``; its
``structurewise_loss_reduction=True``, mean reductions, all atoms, fixed ones included).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jmp_ase.layers import scatter_sum


@dataclass
class LossTerms:
    """loss: scalar to minimise; energy / force: its two batch-mean terms;
    per_structure_energy / per_structure_force: (B,) weighted terms of every structure."""

    loss: torch.Tensor
    energy: torch.Tensor
    force: torch.Tensor
    per_structure_energy: torch.Tensor
    per_structure_force: torch.Tensor

    @property
    def per_structure(self) -> torch.Tensor:
        return self.per_structure_energy + self.per_structure_force


def structurewise_loss(energy_pred: torch.Tensor, energy: torch.Tensor, forces_pred: torch.Tensor,
                       forces: torch.Tensor, atom_batch: torch.Tensor, energy_scale: torch.Tensor,
                       force_scale: torch.Tensor) -> LossTerms:
    """Paper eq. 1. energy_* (B,); forces_* (N, 3); atom_batch (N,) structure of each atom;
    energy_scale / force_scale (B,): λ_E and λ_F of each structure's data set."""
    num = energy.shape[0]
    e_term = energy_scale * (energy_pred - energy).abs()
    atom_err = torch.linalg.vector_norm(forces_pred - forces, dim=-1)  # (N,)
    natoms = torch.bincount(atom_batch, minlength=num).to(atom_err.dtype)
    f_term = force_scale * scatter_sum(atom_err, atom_batch, num) / natoms.clamp(min=1)
    energy_loss, force_loss = e_term.mean(), f_term.mean()
    return LossTerms(energy_loss + force_loss, energy_loss, force_loss, e_term, f_term)


def per_task_means(values: torch.Tensor, task: torch.Tensor, num_tasks: int) -> list[torch.Tensor | None]:
    """Mean of ``values`` (B,) over the structures of each task (None where a task is absent)."""
    out: list[torch.Tensor | None] = []
    for t in range(num_tasks):
        mask = task == t
        out.append(values[mask].mean() if bool(mask.any()) else None)
    return out
