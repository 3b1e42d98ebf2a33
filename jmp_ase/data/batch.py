"""Turn ASE ``Atoms`` into the batched tensors the model consumes.

This is the data transform of the pipeline: validation, the four JMP graphs of every
structure (:mod:`jmp_ase.data.graphs`), concatenation, and the interaction indices
(:mod:`jmp_ase.data.indices`) computed once for the whole batch, together with the padded
widths of their ragged dimensions (:func:`padded_widths`), so that the model's forward
pass never reads an index tensor's value back to the host.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from jmp_ase.data.graphs import GraphSettings, batch_graphs, structure_graphs, validate_structure
from jmp_ase.data.index_types import InteractionIndices, PaddedWidths, map_tensors
from jmp_ase.data.indices import interaction_indices


@dataclass
class AtomsBatch:
    """A batch of B structures with N atoms in total.

    numbers (N,) atomic numbers; positions (N, 3) Å; cell (B, 3, 3) Å (rows are lattice
    vectors, zero for molecules); pbc (B, 3); tags (N,); atom_batch (N,) structure index
    of each atom; natoms (B,); indices: graphs and interaction indices
    (:class:`~jmp_ase.data.index_types.InteractionIndices`, ``padded_width`` filled in);
    sources: where each structure came from, for error messages (training data).
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    tags: torch.Tensor
    atom_batch: torch.Tensor
    natoms: torch.Tensor
    indices: InteractionIndices = field(repr=False)
    sources: tuple = field(default=(), repr=False)  # (file, index) per structure when known

    @property
    def num_structures(self) -> int:
        return int(self.natoms.shape[0])

    def to(self, device=None, dtype=None) -> "AtomsBatch":
        """Move to a device; ``dtype`` applies to the floating tensors (positions, cell)."""
        def move(x):
            if torch.is_floating_point(x):
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)

        return AtomsBatch(
            numbers=move(self.numbers), positions=move(self.positions), cell=move(self.cell),
            pbc=move(self.pbc), tags=move(self.tags), atom_batch=move(self.atom_batch),
            natoms=move(self.natoms), indices=map_tensors(self.indices, move), sources=self.sources,
        )


def padded_widths(indices: InteractionIndices) -> PaddedWidths:
    """Largest inner rank + 1 (0 when empty) of every ragged dimension, as plain ints.

    The model pads triplets, quadruplets and atom neighbours to these widths; computing them
    here, once per batch while the indices are still on the CPU, keeps device-to-host reads
    out of its forward pass.
    """
    def width(inner: torch.Tensor) -> int:
        return int(inner.max()) + 1 if inner.numel() > 0 else 0

    return PaddedWidths(
        trip_e2e=width(indices.trip_e2e.out_agg), trip_a2e=width(indices.trip_a2e.out_agg),
        trip_e2a=width(indices.trip_e2a.out_agg), quad=width(indices.quad.out_agg),
        a2ee2a=width(indices.a2ee2a_target_inner), a2a=width(indices.a2a_target_inner),
    )


def atoms_arrays(atoms) -> dict:
    """Numbers, positions, cell (zero if not periodic), pbc and tags (as the Atoms have them;
    the graph settings decide how they are read) of one ``Atoms``."""
    pbc = np.asarray(atoms.pbc, dtype=bool).reshape(3)
    cell = np.asarray(atoms.cell.array, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    return {
        "numbers": np.asarray(atoms.numbers, dtype=np.int64),
        "positions": np.asarray(atoms.positions, dtype=np.float64),
        "cell": cell,
        "pbc": pbc,
        "tags": np.asarray(atoms.get_tags(), dtype=np.int64).reshape(-1),
    }


def batch_from_atoms(
    atoms_list: Sequence,
    settings: GraphSettings | Sequence[GraphSettings] | None = None,
    *,
    num_elements: int = 120,
    validate: bool = True,
    dtype: torch.dtype = torch.float32,
) -> AtomsBatch:
    """Build an :class:`AtomsBatch` from ASE ``Atoms`` (one settings object, or one per structure).

    ``validate`` raises ``ValueError`` naming the atoms for unknown elements,
    NaN/inf positions or cell, and atoms closer than 0.1 Å.
    """
    if len(atoms_list) == 0:
        raise ValueError("cannot build a batch from an empty list of structures")
    if settings is None or isinstance(settings, GraphSettings):
        settings = [settings or GraphSettings()] * len(atoms_list)
    arrays = [atoms_arrays(a) for a in atoms_list]
    graphs = []
    for k, (arr, s) in enumerate(zip(arrays, settings)):
        cell = arr["cell"] if arr["pbc"].any() else None
        if validate:
            try:
                validate_structure(arr["numbers"], arr["positions"], cell, arr["pbc"], num_elements=num_elements)
            except ValueError as err:
                prefix = f"structure {k}: " if len(atoms_list) > 1 else ""
                raise ValueError(prefix + str(err)) from None
        graphs.append(structure_graphs(arr["positions"], cell, arr["pbc"], arr["tags"], s))
    return assemble_batch(arrays, graphs, dtype)


def assemble_batch(arrays: Sequence[dict], graphs: Sequence, dtype: torch.dtype = torch.float32) -> AtomsBatch:
    """Concatenate per-structure arrays (see :func:`atoms_arrays`) and graphs into one batch;
    the interaction indices are computed once for the whole batch."""
    natoms = [len(a["numbers"]) for a in arrays]
    indices = interaction_indices(batch_graphs(list(graphs), natoms), sum(natoms))
    indices = dataclasses.replace(indices, padded_width=padded_widths(indices))
    return AtomsBatch(
        numbers=torch.from_numpy(np.concatenate([a["numbers"] for a in arrays])),
        positions=torch.from_numpy(np.concatenate([a["positions"] for a in arrays])).to(dtype),
        cell=torch.from_numpy(np.stack([a["cell"] for a in arrays])).to(dtype),
        pbc=torch.from_numpy(np.stack([a["pbc"] for a in arrays])),
        tags=torch.from_numpy(np.concatenate([a["tags"] for a in arrays])),
        atom_batch=torch.repeat_interleave(torch.arange(len(natoms)), torch.tensor(natoms)),
        natoms=torch.tensor(natoms),
        indices=indices,
    )
