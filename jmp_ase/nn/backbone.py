"""The GemNet-OC backbone as JMP uses it: atom embeddings in, node and edge embeddings out."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from jmp_ase.data.index_types import InteractionIndices
from jmp_ase.nn.bases import Bases
from jmp_ase.nn.config import BackboneConfig
from jmp_ase.nn.interactions import InteractionBlock, OutputBlock
from jmp_ase.nn.layers import Dense, ResidualLayer

GRAPH_TYPES = ("main", "a2a", "a2ee2a", "qint")


def edge_geometry(positions, cell, atom_batch, edge_index, cell_offset):
    """Distances (E,) in Å and unit vectors (E, 3) from source image to target.

    positions (N, 3) Å; cell (B, 3, 3) rows are lattice vectors; atom_batch (N,)
    structure of each atom; edge_index (2, E) [source, target]; cell_offset (E, 3)
    integer image shift of the source. Differentiable w.r.t. positions and cell.
    """
    source, target = edge_index
    shift = torch.einsum("ei,eij->ej", cell_offset.to(positions.dtype), cell[atom_batch[source]])
    vec = positions[target] - positions[source] - shift
    dist = vec.norm(dim=-1)
    return dist, vec / dist[:, None]


class FinalMLP(nn.Module):
    """Concatenated per-block outputs -> one embedding (``out_mlp`` as in JMP)."""

    def __init__(self, emb_size, num_blocks, num_global_out_layers, activation=None, dropout=None):
        super().__init__()
        self.out_mlp = nn.Sequential(
            Dense(emb_size * (num_blocks + 1), emb_size, activation=activation, dropout=dropout),
            *[ResidualLayer(emb_size, activation=activation, dropout=dropout) for _ in range(num_global_out_layers)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_mlp(x)


@dataclass
class BackboneOutput:
    """node_embedding (N, emb_size_atom); edge_embedding (E_main, emb_size_edge);
    edge_index (2, E_main) of the symmetrised main graph; vector (E_main, 3) unit
    vectors source->target; distance (E_main,) Å."""

    node_embedding: torch.Tensor
    edge_embedding: torch.Tensor
    edge_index: torch.Tensor
    vector: torch.Tensor
    distance: torch.Tensor


class GemNetOCBackbone(nn.Module):
    """GemNet-OC with quadruplet, atom-edge, edge-atom and atom-atom interactions."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        c = self.config = config
        self.bases = Bases(c)
        self.int_blocks = nn.ModuleList([InteractionBlock(c) for _ in range(c.num_blocks)])
        self.out_blocks = nn.ModuleList(
            [
                OutputBlock(c.emb_size_atom, c.emb_size_edge, c.emb_size_rbf, c.num_atom, c.num_output_afteratom,
                            activation=c.activation, edge_dropout=c.edge_dropout, dropout=c.dropout)
                for _ in range(c.num_blocks + 1)
            ]
        )
        self.out_mlp_E = FinalMLP(c.emb_size_atom, c.num_blocks, c.num_global_out_layers, c.activation)
        self.out_mlp_F = FinalMLP(c.emb_size_edge, c.num_blocks, c.num_global_out_layers, c.activation, c.dropout)

    def geometry(self, positions, cell, atom_batch, idx) -> dict:
        """Distances and unit vectors of the four graphs (see :func:`edge_geometry`)."""
        out = {}
        for g in GRAPH_TYPES:
            dist, vec = edge_geometry(positions, cell, atom_batch, *idx.graph(g))
            out[g] = {"distance": dist, "vector": vec}
        return out

    def forward(self, h, positions, cell, atom_batch, idx: InteractionIndices) -> BackboneOutput:
        """h (N, emb_size_atom) atom embeddings; idx with ``padded_width`` filled in, as
        ``AtomsBatch.indices`` has it (:func:`jmp_ase.data.batch.padded_widths`).

        The forward pass never reads a tensor's value back to the host: the padded widths
        of the ragged dimensions come in as plain ints.
        """
        if idx.padded_width is None:
            raise ValueError("idx lacks padded_width: build batches with jmp_ase.data.batch.batch_from_atoms or "
                             "assemble_batch, or use dataclasses.replace(idx, padded_width=padded_widths(idx))")
        num_atoms = h.shape[0]
        geom = self.geometry(positions, cell, atom_batch, idx)
        bases = self.bases(h, geom, idx, num_atoms)
        m = bases["m"]
        target = idx.main_edge_index[1]
        x_e, x_f = self.out_blocks[0](h, m, bases["output"], target)
        xs_e, xs_f = [x_e], [x_f]
        for block, out_block in zip(self.int_blocks, self.out_blocks[1:]):
            h, m = block(h, m, bases, idx)
            x_e, x_f = out_block(h, m, bases["output"], target)
            xs_e.append(x_e)
            xs_f.append(x_f)
        return BackboneOutput(
            node_embedding=self.out_mlp_E(torch.cat(xs_e, dim=-1)),
            edge_embedding=self.out_mlp_F(torch.cat(xs_f, dim=-1)),
            edge_index=idx.main_edge_index,
            vector=geom["main"]["vector"],
            distance=geom["main"]["distance"],
        )
