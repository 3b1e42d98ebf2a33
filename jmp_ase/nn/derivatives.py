"""Conservative forces and stress: derivatives of a predicted energy, in one place.

``StrainedInputs.prepare`` makes the positions (and, for stress, a symmetric strain applied
to positions and cell) differentiable; the model computes its energy from the returned
positions and cell; ``StrainedInputs.derivatives`` returns F = -dE/dr (eV/Å) and
σ = (1/V) dE/dε (eV/Å³). A gradient that does not reach the positions or the strain is an
error, never a silent zero force.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class StrainedInputs(NamedTuple):
    """positions (N, 3) leaf that forces are taken against; strain (B, 3, 3) leaf or None;
    model_positions / model_cell: what the model must compute its energy from."""

    positions: torch.Tensor
    strain: torch.Tensor | None
    model_positions: torch.Tensor
    model_cell: torch.Tensor

    @classmethod
    def prepare(cls, positions: torch.Tensor, cell: torch.Tensor, atom_batch: torch.Tensor,
                forces: bool, stress: bool) -> "StrainedInputs":
        """Leaves for the requested derivatives; plain inputs when neither is requested."""
        if forces or stress:
            positions = positions.detach().requires_grad_(True)
        if not stress:
            return cls(positions, None, positions, cell)
        strain = torch.zeros_like(cell, requires_grad=True)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        strained_pos = positions + torch.einsum("ni,nij->nj", positions, sym[atom_batch])
        return cls(positions, strain, strained_pos, cell + torch.bmm(cell, sym))

    def derivatives(self, energy: torch.Tensor, cell: torch.Tensor, forces: bool, stress: bool,
                    create_graph: bool = False, retain_graph: bool = False) -> dict[str, torch.Tensor]:
        """``{"forces": (N, 3), "stress": (B, 3, 3)}`` (those requested) of the energies (B,).

        ``create_graph`` keeps the graph for a loss on the forces (training); ``retain_graph``
        keeps it for further derivatives (of other energies). Raises ``RuntimeError`` when the
        energy does not depend on the positions or the strain.
        """
        inputs = ([self.positions] if forces else []) + ([self.strain] if stress else [])
        if not inputs:
            return {}
        if not energy.requires_grad:
            raise RuntimeError(
                "conservative forces/stress requested, but the energy carries no gradient "
                "(computed under torch.no_grad() or from detached inputs)"
            )
        try:
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph,
                                        retain_graph=create_graph or retain_graph)
        except RuntimeError as err:
            raise RuntimeError(f"the energy does not depend on the positions or the strain: {err}") from err
        out = {}
        if forces:
            out["forces"] = -grads[0]
        if stress:
            volume = torch.linalg.det(cell).abs()
            out["stress"] = grads[-1] / volume[:, None, None]
        return out

    def committee_derivatives(self, members: torch.Tensor, cell: torch.Tensor, stress: bool,
                              create_graph: bool = False) -> dict[str, torch.Tensor]:
        """Forces (and stress) of each committee member's energies ``members`` (K, B): their means
        ``forces`` (N, 3) and ``stress`` (B, 3, 3), ``forces_members`` (K, N, 3) and ``forces_std``
        (N,) = sqrt(mean over members of |F_k - F|²). One backward pass per member."""
        count = members.shape[0]
        parts = [self.derivatives(members[k], cell, True, stress, create_graph, retain_graph=k < count - 1)
                 for k in range(count)]
        forces = torch.stack([p["forces"] for p in parts])
        mean = forces.mean(0)
        out = {"forces": mean, "forces_members": forces,
               "forces_std": ((forces - mean) ** 2).sum(-1).mean(0).sqrt()}
        if stress:
            out["stress"] = torch.stack([p["stress"] for p in parts]).mean(0)
        return out
