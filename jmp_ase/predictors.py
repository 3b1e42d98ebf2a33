"""Predictors: modules that map an :class:`~jmp_ase.batch.AtomsBatch` to ASE properties.

A predictor carries its graph settings and the properties it implements, so the
calculator stays independent of how a model computes them. The interface (which
:class:`~jmp_ase.model.FineTunedModel` has too): attributes ``graph_settings``,
``num_elements``, ``implemented_properties``, ``needs_grad`` (autograd needed),
``elements`` (atomic numbers seen in training, or None) and
``forward(batch, compute_stress=False) -> dict``. Output units: energy eV (per
structure, (B,)), forces eV/Å (N, 3), stress eV/Å³ (B, 3, 3), energies eV (N,).
"""
from __future__ import annotations

import torch
from torch import nn

from .batch import AtomsBatch
from .graph import GraphSettings
from .heads import direct_forces, sum_per_structure
from .model import JMPPretrainedModel


class PretrainHeadPredictor(nn.Module):
    """Energy and direct forces from one pre-training head of a JMP model.

    Energy = sum over atoms of the head, forces = the direct-force head. Both are in the
    checkpoint's normalised units unless the caller gives the normalisation:
    ``E = energy_scale * E_head + energy_shift + sum_i element_references[Z_i]`` and
    ``F = force_scale * F_head``.
    """

    implemented_properties = ("energy", "free_energy", "forces", "energies")
    needs_grad = False
    elements = None

    def __init__(self, model: JMPPretrainedModel, task: int, graph_settings: GraphSettings,
                 energy_scale: float = 1.0, energy_shift: float = 0.0, force_scale: float = 1.0,
                 element_references: dict[int, float] | None = None):
        super().__init__()
        self.model = model
        self.task = task
        self.graph_settings = graph_settings
        self.num_elements = model.config.num_elements
        self.energy_scale, self.energy_shift, self.force_scale = energy_scale, energy_shift, force_scale
        refs = torch.zeros(self.num_elements + 1, dtype=torch.float64)
        for z, value in (element_references or {}).items():
            refs[int(z)] = float(value)
        self.register_buffer("element_references", refs, persistent=False)
        self.eval()

    def forward(self, batch: AtomsBatch, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        if compute_stress:
            raise NotImplementedError("direct-force pre-training heads do not give a stress")
        out = self.model.embed(batch)
        head = self.model.output
        per_atom = self.energy_scale * head.out_energy[self.task](out.node_embedding)[:, 0]
        per_atom = per_atom + self.element_references.to(per_atom.dtype)[batch.numbers]
        per_atom = per_atom + (self.energy_shift / batch.natoms.to(per_atom.dtype))[batch.atom_batch]
        scalar = head.out_forces[self.task](out.edge_embedding)[:, 0]
        forces = direct_forces(scalar, out.vector, out.edge_index[1], per_atom.shape[0])
        return {
            "energy": sum_per_structure(per_atom, batch.atom_batch, batch.num_structures),
            "energies": per_atom,
            "forces": self.force_scale * forces,
        }
