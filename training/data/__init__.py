"""Labelled structures for training: reading, labels, graph samples, batching, statistics.

* :mod:`~jmp_ase.training.data.readers`: extxyz (whole or streamed), ASE databases, LMDB;
* :mod:`~jmp_ase.training.data.labels`: a structure's labels (ASE units: eV, eV/Å, eV/Å³);
* :mod:`~jmp_ase.training.data.samples`: graph samples, data sets, :class:`DatasetSpec`, :func:`collate`;
* :mod:`~jmp_ase.training.data.statistics`: splits, element references, normalisation statistics.

Every name is importable from ``jmp_ase.training.data`` as well.
"""
from jmp_ase.training.data.labels import MATRIX_TARGETS, available_labels, extract_labels
from jmp_ase.training.data.readers import (
    ConcatStructures, LazyExtxyz, LMDBStructures, SelectedStructures, atom_counts, detect_format, open_structures,
    read_structures, write_lmdb,
)
from jmp_ase.training.data.samples import DatasetSpec, GraphSample, IndexedStructures, StructureDataset, collate
from jmp_ase.training.data.statistics import (
    StreamingStatistics, dataset_statistics, fit_element_references, referenced_energy, split_by_fraction,
)

__all__ = ["MATRIX_TARGETS", "ConcatStructures", "DatasetSpec", "GraphSample", "IndexedStructures", "LMDBStructures",
           "LazyExtxyz", "SelectedStructures", "StreamingStatistics", "StructureDataset", "atom_counts",
           "available_labels", "collate", "dataset_statistics", "detect_format",
           "extract_labels", "fit_element_references", "open_structures", "read_structures", "referenced_energy",
           "split_by_fraction", "write_lmdb"]
