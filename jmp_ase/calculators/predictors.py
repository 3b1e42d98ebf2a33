"""Predictors: modules that map an :class:`~jmp_ase.data.batch.AtomsBatch` to ASE properties.

A predictor carries its graph settings and the properties it implements, so the
calculator stays independent of how a model computes them. The interface (which
:class:`~jmp_ase.nn.model.FineTunedModel` has too): attributes ``graph_settings``,
``num_elements``, ``implemented_properties``, ``needs_grad`` (autograd needed),
``elements`` (atomic numbers seen in training, or None) and
``forward(batch, compute_stress=False) -> dict``. Output units: energy eV (per
structure, (B,)), forces eV/Å (N, 3), stress eV/Å³ (B, 3, 3), energies eV (N,).
"""
from __future__ import annotations

import torch
from torch import nn

from jmp_ase.data.batch import AtomsBatch
from jmp_ase.nn.derivatives import StrainedInputs
from jmp_ase.data.graphs import GraphSettings
from jmp_ase.nn.heads import sum_per_structure
from jmp_ase.nn.model import JMPPretrainedModel

FORCE_MODES = ("direct", "conservative")


class PretrainHeadPredictor(nn.Module):
    """Energy and forces from one pre-training head of a JMP model.

    Energy = sum over atoms of the head. Forces: ``"direct"`` = the head's direct-force MLP
    (as JMP pre-trained it; no stress), ``"conservative"`` = -dE/dr of the head's energy,
    with stress (1/V) dE/dε for 3-D periodic cells, as MD needs. Both are in the
    checkpoint's normalised units unless the caller gives the normalisation:
    ``E = energy_scale * E_head + energy_shift + sum_i element_references[Z_i]`` and, for
    direct forces, ``F = force_scale * F_head``.

    ``elements``: the atomic numbers that have an element reference (the head's training
    elements, as jmp-ase's pre-training files record them), or None when no references are
    given (JMP's own files); the calculator refuses other elements.
    """

    elements = None

    def __init__(self, model: JMPPretrainedModel, task: int, graph_settings: GraphSettings,
                 energy_scale: float = 1.0, energy_shift: float = 0.0, force_scale: float = 1.0,
                 element_references: dict[int, float] | None = None, forces: str = "direct"):
        super().__init__()
        if forces not in FORCE_MODES:
            raise ValueError(f"forces must be one of {FORCE_MODES}, got {forces!r}")
        self.model = model
        self.task = task
        self.graph_settings = graph_settings
        self.forces = forces
        self.num_elements = model.config.num_elements
        self.energy_scale, self.energy_shift, self.force_scale = energy_scale, energy_shift, force_scale
        refs = torch.zeros(self.num_elements + 1, dtype=torch.float64)
        for z, value in (element_references or {}).items():
            refs[int(z)] = float(value)
        self.register_buffer("element_references", refs, persistent=False)
        if element_references:
            self.elements = sorted(int(z) for z in element_references)
        self.eval()

    @property
    def needs_grad(self) -> bool:
        return self.forces == "conservative"

    @property
    def implemented_properties(self) -> tuple[str, ...]:
        props = ("energy", "free_energy", "forces", "energies")
        return props + ("stress",) if self.forces == "conservative" else props

    def forward(self, batch: AtomsBatch, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        conservative = self.forces == "conservative"
        if compute_stress and not conservative:
            raise NotImplementedError("direct-force pre-training heads do not give a stress: "
                                      "use forces='conservative'")
        inputs = StrainedInputs.prepare(batch.positions, batch.cell, batch.atom_batch, conservative, compute_stress)
        out = self.model.embed(batch, inputs.model_positions, inputs.model_cell)
        head = self.model.output
        per_atom = self.energy_scale * head.per_atom_energy(out, self.task)
        per_atom = per_atom + self.element_references.to(per_atom.dtype)[batch.numbers]
        per_atom = per_atom + (self.energy_shift / batch.natoms.to(per_atom.dtype))[batch.atom_batch]
        energy = sum_per_structure(per_atom, batch.atom_batch, batch.num_structures)
        results = {"energy": energy, "energies": per_atom}
        if conservative:
            results.update(inputs.derivatives(energy, batch.cell, True, compute_stress))
        else:
            results["forces"] = self.force_scale * head.forces(out, self.task)
        return results
