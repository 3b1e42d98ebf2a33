"""Direct-force head: forces (eV/Å) as a sum over edges of a learned scalar times the edge's
unit vector, as JMP pre-trains them. Not a derivative of any energy (no stress, no energy
conservation); for very large systems where -dE/dr does not fit."""
from __future__ import annotations

import jmp_ase.keys as keys
from jmp_ase.nn.heads.base import Head, HeadInputs, direct_forces, register_head


@register_head("direct_forces")
class DirectForcesHead(Head):
    embedding = "edge"
    produces = (keys.FORCES.name,)

    def forward(self, inputs: HeadInputs):
        if not inputs.compute_forces:
            return {}
        out = inputs.out
        scalar = self.mlp(out.edge_embedding)[:, 0]
        forces = direct_forces(scalar, out.vector, out.edge_index[1], out.node_embedding.shape[0])
        return {keys.FORCES.name: self.spec.scale * forces}
