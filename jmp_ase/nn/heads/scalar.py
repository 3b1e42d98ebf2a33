"""Graph-level scalar head (a HOMO-LUMO gap, a bulk modulus): one value per structure named
after the head, pooled over atoms by sum, mean or max."""
from __future__ import annotations

from jmp_ase.nn.heads.base import Head, HeadInputs, register_head


@register_head("scalar")
class ScalarHead(Head):
    def forward(self, inputs: HeadInputs):
        per_atom = self.per_atom(inputs.out.node_embedding, inputs.numbers)
        return {self.spec.name: self.structure_value(per_atom, inputs.atom_batch, inputs.num_structures)}
