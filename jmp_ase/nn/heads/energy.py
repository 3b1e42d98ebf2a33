"""Energy head: a per-structure energy in eV as a sum of per-atom contributions; the model
turns it into forces and stress by autograd (:mod:`jmp_ase.nn.derivatives`).

A committee head (``HeadSpec.committee`` = K > 1) has K MLPs on the same node embedding:
``mlp`` (member 0, the state-dict keys of a single head) and ``members.0 .. members.{K-2}``.
The energy is the members' mean and ``energy_std`` their spread; one backbone pass serves all.
"""
from __future__ import annotations

import torch
from torch import nn

import jmp_ase.keys as keys
from jmp_ase.nn.heads.base import Head, HeadInputs, energy_mlp, register_head


@register_head("energy")
class EnergyHead(Head):
    produces = (keys.ENERGY.name, keys.ENERGIES.name)

    def __init__(self, spec, emb_size: int, num_elements: int, activation: str = "scaled_silu"):
        super().__init__(spec, emb_size, num_elements, activation)
        if spec.committee > 1:
            self.members = nn.ModuleList(energy_mlp(emb_size, activation, bias=spec.mlp_bias)
                                         for _ in range(spec.committee - 1))
            self.produces = self.produces + (keys.ENERGY_STD.name, keys.FORCES_STD.name)

    def forward(self, inputs: HeadInputs):
        if self.spec.committee == 1:
            per_atom = self.per_atom(inputs.out.node_embedding, inputs.numbers, inputs.isolated)
            energy = self.structure_value(per_atom, inputs.atom_batch, inputs.num_structures)
            return {keys.ENERGY.name: energy, keys.ENERGIES.name: per_atom}
        x = inputs.out.node_embedding
        raw = self._member_outputs(x)  # (K, N)
        raw_isolated = None if inputs.isolated is None else self._member_outputs(inputs.isolated)
        per_atom = self.denormalise(raw, inputs.numbers, raw_isolated)
        members = torch.stack([self.structure_value(p, inputs.atom_batch, inputs.num_structures) for p in per_atom])
        return {keys.ENERGY.name: members.mean(0), keys.ENERGIES.name: per_atom.mean(0),
                keys.ENERGY_STD.name: members.std(0, correction=0), keys.ENERGY_MEMBERS.name: members}

    def _member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(K, rows) raw outputs of the K members on node embeddings x (rows, D)."""
        return torch.stack([self.mlp(x)[:, 0]] + [m(x)[:, 0] for m in self.members])
