"""Graph samples of labelled structures and their batches.

Pipeline: a *source* (a list of ``ase.Atoms`` or a lazy reader,
:mod:`jmp_ase.training.data.readers`) -> :class:`StructureDataset` (one :class:`GraphSample` per
structure: arrays, the four JMP graphs and the labels; graphs are built on first access and
cached) -> :func:`collate` (concatenation, then the interaction indices once per batch) ->
``(AtomsBatch, targets)``. :class:`DatasetSpec` says where a data set is and which graphs it gets.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from jmp_ase.data.batch import AtomsBatch, assemble_batch, atoms_arrays
from jmp_ase.data.graphs import GraphSettings, StructureGraphs, structure_graphs, validate_structure
from jmp_ase.keys import is_per_atom
from jmp_ase.training.data.labels import extract_labels
from jmp_ase.training.data.readers import ConcatStructures, open_structures


@dataclass
class GraphSample:
    """One structure ready for batching: arrays (as :func:`jmp_ase.data.batch.atoms_arrays`),
    its four graphs, its labels and where it came from (file, index)."""

    arrays: dict
    graphs: StructureGraphs
    labels: dict
    source: tuple = ("<memory>", 0)

    @property
    def natoms(self) -> int:
        return len(self.arrays["numbers"])


class StructureDataset(torch.utils.data.Dataset):
    """Graph samples of a sequence of structures (a list or a lazy reader).

    ``structures[i]`` is read and its graphs are built on first access; with ``cache``
    (default True; use False for data larger than memory) the sample is kept.
    ``locations`` (one ``(file, index)`` per structure) name structures in errors.
    """

    def __init__(self, structures: Sequence[Atoms], targets: Sequence[str], settings: GraphSettings | None = None,
                 *, locations: Sequence[tuple] | None = None, cache: bool = True, num_elements: int = 120,
                 name: str = ""):
        self.structures = structures
        self.targets = list(targets)
        self.settings = settings or GraphSettings()
        self.locations = locations
        self.cache = cache
        self.num_elements = num_elements
        self.name = name
        self._samples: dict[int, GraphSample] = {}

    def __len__(self) -> int:
        return len(self.structures)

    def location(self, i: int) -> tuple:
        if self.locations is not None:
            return tuple(self.locations[i])
        if hasattr(self.structures, "location"):
            return self.structures.location(i)
        return ("<memory>", int(i))

    def atoms(self, i: int) -> Atoms:
        return self.structures[i]

    def labels(self, i: int) -> tuple[np.ndarray, dict]:
        """(atomic numbers, labels) of structure i without building graphs."""
        if i in self._samples:
            return self._samples[i].arrays["numbers"], self._samples[i].labels
        atoms = self.structures[i]
        return np.asarray(atoms.numbers), extract_labels(atoms, self.targets, self.location(i))

    def __getitem__(self, i: int) -> GraphSample:
        i = int(i)
        sample = self._samples.get(i)
        if sample is None:
            sample = self._build(i)
            if self.cache:
                self._samples[i] = sample
        return sample

    def subset(self, indices) -> "StructureDataset":
        """The structures ``indices`` of this data set (same settings; errors name the original file and index)."""
        return StructureDataset(IndexedStructures(self, indices), self.targets, self.settings, cache=self.cache,
                                num_elements=self.num_elements, name=self.name)

    def _build(self, i: int) -> GraphSample:
        atoms = self.structures[i]
        where = self.location(i)
        labels = extract_labels(atoms, self.targets, where)
        arr = atoms_arrays(atoms)
        cell = arr["cell"] if arr["pbc"].any() else None
        try:
            validate_structure(arr["numbers"], arr["positions"], cell, arr["pbc"], num_elements=self.num_elements)
            graphs = structure_graphs(arr["positions"], cell, arr["pbc"], arr["tags"], self.settings)
        except ValueError as err:
            raise ValueError(f"{where[0]}: structure {where[1]}: {err}") from None
        return GraphSample(arrays=arr, graphs=graphs, labels=labels, source=where)


class IndexedStructures(Sequence):
    """Selected structures of a :class:`StructureDataset`, keeping their locations."""

    def __init__(self, dataset: StructureDataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset.atoms(self.indices[i])

    def location(self, i: int) -> tuple:
        return self.dataset.location(self.indices[i])


@dataclass
class DatasetSpec:
    """Where a data set is and how to turn it into graph samples.

    paths: one file or several (concatenated); format: ``extxyz``/``db``/``lmdb`` or None
    (from the name); targets: label names (``energy``, ``forces``, ``stress`` or graph-level
    keys such as ``homo_lumo_gap``); cutoff (Å) / max_neighbors / tags / neighbor_order:
    graph settings (use :meth:`for_model` to take them from a model's GraphSettings);
    streaming: read extxyz lazily and do not cache samples (LMDB is always lazy).
    """

    paths: list = field(default_factory=list)
    targets: list = field(default_factory=lambda: ["energy", "forces"])
    cutoff: float = 12.0
    max_neighbors: int = 30
    name: str = ""
    format: str | None = None
    streaming: bool = False
    tags: str = "ignore"
    neighbor_order: str = "canonical"

    @classmethod
    def for_model(cls, paths, targets, settings: GraphSettings, **kwargs) -> "DatasetSpec":
        """A spec whose graphs are the model's (``settings``: its GraphSettings)."""
        return cls(paths, targets, settings.cutoff, settings.max_neighbors, tags=settings.tags,
                   neighbor_order=settings.neighbor_order, **kwargs)

    def __post_init__(self):
        if isinstance(self.paths, (str, os.PathLike)):
            self.paths = [self.paths]
        self.paths = [str(p) for p in self.paths]
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        self.name = self.name or (Path(self.paths[0]).parent.name if self.paths else "")

    def graph_settings(self, qint_tags=(1, 2)) -> GraphSettings:
        return GraphSettings(cutoff=self.cutoff, max_neighbors=self.max_neighbors, qint_tags=tuple(qint_tags),
                             tags=self.tags, neighbor_order=self.neighbor_order)

    def build(self, qint_tags=(1, 2), num_elements: int = 120) -> StructureDataset:
        """The :class:`StructureDataset` of this spec."""
        if not self.paths:
            raise ValueError(f"dataset {self.name!r} has no paths")
        sources = [open_structures(p, self.format, self.streaming) for p in self.paths]
        return StructureDataset(
            ConcatStructures(sources, self.paths), self.targets, self.graph_settings(qint_tags),
            cache=not self.streaming, num_elements=num_elements, name=self.name,
        )


def collate(samples: Sequence[GraphSample], dtype: torch.dtype = torch.float32) -> tuple[AtomsBatch, dict]:
    """Samples -> (AtomsBatch, targets): energy (B,), forces (N, 3), stress (B, 3, 3), scalars (B,)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch = assemble_batch([s.arrays for s in samples], [s.graphs for s in samples], dtype)
    batch.sources = tuple(s.source for s in samples)
    targets = {}
    for name in samples[0].labels:
        values = [np.asarray(s.labels[name]) for s in samples]
        stacked = np.concatenate(values) if is_per_atom(name) else np.stack(values)
        targets[name] = torch.from_numpy(stacked).to(dtype)
    return batch, targets
