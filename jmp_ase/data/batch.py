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


class IndexCache:
    """The interaction indices of the last batch, reused while its graphs stay the same.

    In MD or a relaxation the four graphs (edges and cell offsets) of consecutive steps are
    usually identical; the triplet and quadruplet indices depend on nothing else, so comparing
    the graphs (a few integer tensors) replaces rebuilding the indices (for aspirin with
    jmp-mini-aspirin, the larger part of a step's graph time). Holds one entry; the calculator
    keeps one per instance. The indices returned must not be modified (nothing in jmp-ase does).
    """

    def __init__(self):
        self._key: tuple | None = None
        self._indices: InteractionIndices | None = None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key_of(graphs: dict, num_atoms: int) -> tuple:
        return (int(num_atoms),) + tuple(
            (name, graphs[name]["edge_index"], graphs[name]["cell_offset"]) for name in sorted(graphs)
        )

    @staticmethod
    def _same(a: tuple, b: tuple) -> bool:
        if len(a) != len(b) or a[0] != b[0]:
            return False
        for (name_a, ei_a, off_a), (name_b, ei_b, off_b) in zip(a[1:], b[1:]):
            if name_a != name_b or ei_a.shape != ei_b.shape or off_a.shape != off_b.shape:
                return False
            if off_a.dtype != off_b.dtype or not (torch.equal(ei_a, ei_b) and torch.equal(off_a, off_b)):
                return False
        return True

    def indices(self, graphs: dict, num_atoms: int) -> InteractionIndices:
        """:func:`interaction_indices` of ``graphs`` with ``padded_width`` set; the previous
        result when ``graphs`` and ``num_atoms`` equal the previous call's."""
        key = self._key_of(graphs, num_atoms)
        if self._key is not None and self._same(self._key, key):
            self.hits += 1
            return self._indices
        self.misses += 1
        indices = interaction_indices(graphs, num_atoms)
        indices = dataclasses.replace(indices, padded_width=padded_widths(indices))
        self._key, self._indices = key, indices
        return indices


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


def local_frame(arrays: dict, graphs):
    """Positions moved to a local origin and graphs with matching offsets, for one structure.

    Float32 keeps ~7 significant digits of a coordinate, so a molecule at +500 Å (or in the
    middle of a 1000 Å box) loses ~1e-4 Å of every edge vector in the cast, and its float32
    forces are ~100 times worse than at the origin. Here the origin moves, in float64, to
    the structure: a molecule's centroid; in a periodic structure atom 0, with every atom
    first brought (by whole lattice vectors of the periodic directions) to its image nearest
    atom 0, then to the centroid of those images. The integer offsets of every graph change with those images
    (``o' = o + n[s] - n[t]``), so each edge vector ``pos[t] - pos[s] - o @ cell``, hence
    energy, forces and stress, is unchanged; only float32 round-off becomes independent of
    where the structure sits. Returns (positions (N, 3) float64, graphs).
    """
    pos, pbc, cell = arrays["positions"], arrays["pbc"], arrays["cell"]
    if pos.shape[0] == 0:
        return pos, graphs
    if not pbc.any():
        return pos - pos.mean(axis=0), graphs
    rel = pos - pos[0]
    periodic = cell[pbc]  # (P, 3) lattice vectors of the periodic directions
    frac = rel @ np.linalg.pinv(periodic)  # (N, P); exact for any basis of full rank
    images = np.zeros((pos.shape[0], 3), dtype=np.int64)
    images[:, pbc] = np.rint(frac).astype(np.int64)
    local = rel - images[:, pbc] @ periodic
    local -= local.mean(axis=0)
    if not images.any():
        return local, graphs
    offsets = {}
    for graph_type, edge_index in graphs.edge_index.items():
        s, t = edge_index.numpy()
        shift = torch.from_numpy(images[s] - images[t])
        offsets[graph_type] = graphs.cell_offset[graph_type] + shift
    return local, dataclasses.replace(graphs, cell_offset=offsets)


def batch_from_atoms(
    atoms_list: Sequence,
    settings: GraphSettings | Sequence[GraphSettings] | None = None,
    *,
    num_elements: int = 120,
    validate: bool = True,
    dtype: torch.dtype = torch.float32,
    local_origin: bool = False,
    truncated: list | None = None,
    index_cache: IndexCache | None = None,
) -> AtomsBatch:
    """Build an :class:`AtomsBatch` from ASE ``Atoms`` (one settings object, or one per structure).

    ``validate`` raises ``ValueError`` naming the atoms for unknown elements,
    NaN/inf positions or cell, and atoms closer than 0.1 Å. ``local_origin`` moves every
    structure to a local origin before the cast to ``dtype`` (see :func:`local_frame`:
    same energies, forces and stress, float32 round-off independent of where the structure
    sits; the calculator does this). ``truncated``: a list to which the indices of the atoms
    whose neighbours the ``max_neighbors`` limit cut are appended, one array per structure.
    ``index_cache``: an :class:`IndexCache` that reuses the previous call's interaction indices
    while the graphs are unchanged (consecutive MD steps).
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
        graph = structure_graphs(arr["positions"], cell, arr["pbc"], arr["tags"], s)
        if truncated is not None:
            truncated.append(graph.truncated)
        if local_origin:
            positions, graph = local_frame(arr, graph)
            arrays[k] = dict(arr, positions=positions)
        graphs.append(graph)
    return assemble_batch(arrays, graphs, dtype, index_cache=index_cache)


def assemble_batch(arrays: Sequence[dict], graphs: Sequence, dtype: torch.dtype = torch.float32,
                   index_cache: IndexCache | None = None) -> AtomsBatch:
    """Concatenate per-structure arrays (see :func:`atoms_arrays`) and graphs into one batch;
    the interaction indices are computed once for the whole batch (or taken from
    ``index_cache`` when the graphs equal its last ones)."""
    natoms = [len(a["numbers"]) for a in arrays]
    batched = batch_graphs(list(graphs), natoms)
    if index_cache is not None:
        indices = index_cache.indices(batched, sum(natoms))
    else:
        indices = interaction_indices(batched, sum(natoms))
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
