"""Energy head: a per-structure energy in eV as a sum of per-atom contributions; the model
turns it into forces and stress by autograd (:mod:`jmp_ase.nn.derivatives`)."""
from __future__ import annotations

import jmp_ase.keys as keys
from jmp_ase.nn.heads.base import Head, HeadInputs, register_head


@register_head("energy")
class EnergyHead(Head):
    produces = (keys.ENERGY.name, keys.ENERGIES.name)

    def forward(self, inputs: HeadInputs):
        per_atom = self.per_atom(inputs.out.node_embedding, inputs.numbers)
        energy = self.structure_value(per_atom, inputs.atom_batch, inputs.num_structures)
        return {keys.ENERGY.name: energy, keys.ENERGIES.name: per_atom}
