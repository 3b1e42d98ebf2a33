"""Labelled structures for training: reading, labels, graph samples, batching, statistics.

Pipeline: a *source* (a list of ``ase.Atoms`` or a lazy reader) -> :class:`StructureDataset`
(one :class:`GraphSample` per structure: arrays, the four JMP graphs and the labels; graphs
are built on first access and cached) -> :func:`collate` (concatenation, then the
interaction indices once per batch) -> ``(AtomsBatch, targets)``.

Labels (ASE units: eV, eV/Å, eV/Å³) are looked up, for target ``name``, in the
calculator results (``atoms.calc.results``, where ``ase.io.read`` puts an extxyz
``energy``/``forces``/``stress``), then ``atoms.info`` (graph-level labels such as
``homo_lumo_gap``), then ``atoms.arrays`` (per-atom labels). ``stress`` is returned as a
full (3, 3) matrix.

Streaming: :class:`LazyExtxyz` indexes the byte offset of every frame of an extxyz file
once and parses one frame per access; :class:`LMDBStructures` (optional ``lmdb``
dependency, ``pip install jmp-ase[lmdb]``) reads an LMDB written by :func:`write_lmdb`
(one extxyz frame per key) by index. Neither holds the structures in memory.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms

from jmp_ase.data.batch import AtomsBatch, assemble_batch, atoms_arrays
from jmp_ase.data.graphs import GraphSettings, StructureGraphs, structure_graphs, validate_structure
from jmp_ase.keys import FORCES, STRESS, is_per_atom

MATRIX_TARGETS = (STRESS.name,)  # per structure, 3x3 (Voigt 6-vectors accepted)
_EXTXYZ = (".extxyz", ".xyz")
_DB = (".db", ".json")


# ----------------------------------------------------------------------------- reading
def detect_format(path) -> str:
    """``extxyz``, ``db`` or ``lmdb`` from the file name (an LMDB is a ``.lmdb`` path or a folder)."""
    p = Path(path)
    if p.suffix.lower() in _EXTXYZ:
        return "extxyz"
    if p.suffix.lower() in _DB:
        return "db"
    if p.suffix.lower() in (".lmdb", ".mdb") or (p.is_dir() and (p / "data.mdb").exists()):
        return "lmdb"
    raise ValueError(f"{path}: cannot tell the format from the name; use .extxyz/.xyz, .db or .lmdb")


def _indices(n: int, index) -> list[int]:
    """Frame numbers selected by an ASE-style index (int, slice or string like ``":"``, ``"10:20"``)."""
    if isinstance(index, str):
        index = ase.io.formats.string2index(index)
    if isinstance(index, (int, np.integer)):
        k = int(index) + (n if index < 0 else 0)
        if not 0 <= k < n:
            raise IndexError(f"index {index} out of range for {n} structures")
        return [k]
    return list(range(n))[index]


def _parse_frame(text: str, path, index: int) -> Atoms:
    try:
        return ase.io.read(io.StringIO(text), index=0, format="extxyz")
    except Exception as err:  # noqa: BLE001 - any parse failure: name the file and frame
        raise ValueError(f"{path}: structure {index} cannot be read: {type(err).__name__}: {err}") from None


class LazyExtxyz(Sequence):
    """An extxyz file read one frame at a time: ``len()`` and ``[i]`` without loading the file.

    The first use scans the file once for the byte offset of each frame (8 bytes per frame).
    """

    def __init__(self, path):
        self.path = str(path)
        self._offsets: np.ndarray | None = None

    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            offsets, pos, line_no = [], 0, 0
            with open(self.path, "rb") as f:
                while True:
                    line = f.readline()
                    line_no += 1
                    if not line:
                        break
                    if not line.strip():
                        pos += len(line)
                        continue
                    try:
                        natoms = int(line.split()[0])
                    except ValueError:
                        raise ValueError(
                            f"{self.path}: line {line_no} should hold the atom count of structure "
                            f"{len(offsets)}, found {line[:60]!r}"
                        ) from None
                    offsets.append(pos)
                    pos += len(line)
                    for _ in range(natoms + 1):
                        line = f.readline()
                        line_no += 1
                        if not line:
                            raise ValueError(f"{self.path}: structure {len(offsets) - 1} is truncated")
                        pos += len(line)
            offsets.append(pos)
            self._offsets = np.asarray(offsets, dtype=np.int64)
        return self._offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def frame_text(self, i: int) -> str:
        start, end = self.offsets[i], self.offsets[i + 1]
        with open(self.path, "rb") as f:
            f.seek(int(start))
            return f.read(int(end - start)).decode()

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        i = _indices(len(self), int(i))[0]
        return _parse_frame(self.frame_text(i), self.path, i)

    def location(self, i: int) -> tuple[str, int]:
        return self.path, int(i)


def _import_lmdb():
    try:
        import lmdb
    except ImportError:
        raise ImportError(
            "reading or writing LMDB datasets needs the optional 'lmdb' package: "
            "pip install 'jmp-ase[lmdb]' (or pip install lmdb)"
        ) from None
    return lmdb


def write_lmdb(path, structures: Sequence[Atoms]) -> None:
    """Write structures (with their labels) to an LMDB: key ``"i"`` -> the i-th extxyz frame."""
    lmdb = _import_lmdb()
    texts = []
    for atoms in structures:
        buf = io.StringIO()
        ase.io.write(buf, atoms, format="extxyz")
        texts.append(buf.getvalue().encode())
    size = max(2 * sum(len(t) for t in texts) + (1 << 20), 1 << 24)
    cached = _LMDB_ENVS.pop((os.path.realpath(str(path)), os.getpid()), None)
    if cached is not None:
        cached.close()
    env = lmdb.open(str(path), map_size=size, subdir=True)
    with env.begin(write=True) as txn:
        for k, text in enumerate(texts):
            txn.put(str(k).encode(), text)
        txn.put(b"length", str(len(texts)).encode())
    env.close()


_LMDB_ENVS: dict = {}


class LMDBStructures(Sequence):
    """Structures stored by :func:`write_lmdb`, read lazily by index (opened per process)."""

    def __init__(self, path):
        self.path = str(path)
        _import_lmdb()
        with self._env().begin() as txn:
            raw = txn.get(b"length")
        if raw is None:
            raise ValueError(f"{path}: not an LMDB written by jmp-ase (no 'length' key)")
        self._len = int(raw)

    def _env(self):
        key = (os.path.realpath(self.path), os.getpid())  # one handle per file and process
        if key not in _LMDB_ENVS:
            _LMDB_ENVS[key] = _import_lmdb().open(self.path, readonly=True, lock=False, subdir=True)
        return _LMDB_ENVS[key]

    def __getstate__(self):
        return {"path": self.path, "_len": self._len}

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        i = _indices(len(self), int(i))[0]
        with self._env().begin() as txn:
            raw = txn.get(str(i).encode())
        if raw is None:
            raise ValueError(f"{self.path}: structure {i} is missing")
        return _parse_frame(raw.decode(), self.path, i)

    def location(self, i: int) -> tuple[str, int]:
        return self.path, int(i)


def _read_db(path, index) -> list[Atoms]:
    import ase.db

    out = []
    rows = list(ase.db.connect(str(path)).select(sort="id"))
    for k in _indices(len(rows), index):
        row = rows[k]
        try:
            atoms = row.toatoms()
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{path}: structure {k} (row id {row.id}) cannot be read: {err}") from None
        atoms.info.update(row.key_value_pairs)
        atoms.info.update(row.get("data", {}) or {})
        out.append(atoms)
    return out


def read_structures(path, index=":", format: str | None = None) -> list[Atoms]:
    """All selected structures of an extxyz/xyz file, ASE database or LMDB, in memory."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such data file: {path}")
    fmt = format or detect_format(path)
    if fmt == "extxyz":
        source = LazyExtxyz(path)
        return [source[k] for k in _indices(len(source), index)]
    if fmt == "db":
        return _read_db(path, index)
    if fmt == "lmdb":
        source = LMDBStructures(path)
        return [source[k] for k in _indices(len(source), index)]
    raise ValueError(f"{path}: unknown format {fmt!r}; use extxyz, db or lmdb")


def open_structures(path, format: str | None = None, streaming: bool = False):
    """A sequence of structures: lazy (extxyz offset index, LMDB) if ``streaming`` else a list.

    LMDB is always read lazily; ASE databases are always read into memory.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such data file: {path}")
    fmt = format or detect_format(path)
    if fmt == "lmdb":
        return LMDBStructures(path)
    if streaming and fmt == "extxyz":
        return LazyExtxyz(path)
    return read_structures(path, ":", fmt)


# ----------------------------------------------------------------------------- labels
def available_labels(atoms: Atoms) -> list[str]:
    """Names usable as targets: calculator results, numeric ``info`` entries, per-atom arrays."""
    names = set(getattr(atoms.calc, "results", {}) or {})
    names |= {k for k, v in atoms.info.items() if np.asarray(v).dtype.kind in "fiu"}
    names |= set(atoms.arrays) - {"numbers", "positions"}
    return sorted(names)


def extract_labels(atoms: Atoms, targets: Sequence[str], source=("<memory>", 0)) -> dict:
    """Labels of one structure: floats for graph-level targets, arrays for per-atom ones.

    Raises ``ValueError`` naming ``source`` (file, index) and the key for a missing target
    (listing the available ones) or a NaN/inf/ill-shaped value.
    """
    where = f"{source[0]}: structure {source[1]}"
    results = getattr(atoms.calc, "results", {}) or {}
    n = len(atoms)
    out = {}
    for name in targets:
        if name in results:
            value = results[name]
        elif name in atoms.info:
            value = atoms.info[name]
        elif name in atoms.arrays and name not in ("numbers", "positions"):
            value = atoms.arrays[name]
        else:
            raise ValueError(f"{where}: no label {name!r}; available labels: {available_labels(atoms)}")
        try:
            value = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {name!r} is not numeric: {value!r}") from None
        if name == FORCES.name:
            expected = (n, 3)
        elif name in MATRIX_TARGETS:
            if value.shape == (6,):  # Voigt xx yy zz yz xz xy
                xx, yy, zz, yz, xz, xy = value
                value = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            elif value.shape == (9,):
                value = value.reshape(3, 3)
            expected = (3, 3)
        else:
            expected = ()
        if value.shape != expected:
            raise ValueError(f"{where}: label {name!r} has shape {value.shape}, expected {expected}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: label {name!r} is not finite (NaN or inf)")
        out[name] = float(value) if expected == () else value
    return out


# ----------------------------------------------------------------------------- samples
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


class ConcatStructures(Sequence):
    """Several sources behind one index; ``location`` gives each structure's own file and index."""

    def __init__(self, sources: Sequence[Sequence[Atoms]], names: Sequence[str]):
        self.sources, self.names = list(sources), list(names)
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.sources])])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _find(self, i: int) -> tuple[int, int]:
        i = _indices(len(self), int(i))[0]
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return k, i - int(self.starts[k])

    def __getitem__(self, i):
        k, j = self._find(i)
        return self.sources[k][j]

    def location(self, i: int) -> tuple[str, int]:
        k, j = self._find(i)
        return self.names[k], j


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


# ----------------------------------------------------------------------------- batching
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


# ----------------------------------------------------------------------------- splits and statistics
def split_by_fraction(n: int, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Disjoint random index sets of sizes ``floor(f * n)`` (the last one takes the remainder
    when the fractions sum to 1); the same ``seed`` gives the same split."""
    fractions = [float(f) for f in fractions]
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"fractions must be non-negative and sum to at most 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    sizes = [int(math.floor(f * n)) for f in fractions]
    if abs(sum(fractions) - 1) < 1e-9:
        sizes[-1] = n - sum(sizes[:-1])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(perm[bounds[k]:bounds[k + 1]]) for k in range(len(sizes))]


def fit_element_references(energies, numbers_list, elements=None) -> dict[int, float]:
    """Per-element energies by linear least squares, E_s ≈ Σ_Z n_sZ ref_Z (fit on training data).

    With compositions that do not determine every element (e.g. one molecule), the
    minimum-norm solution is returned: the sum over a training composition is still exact.
    """
    energies = np.asarray(energies, dtype=np.float64)
    if elements is None:
        elements = sorted({int(z) for numbers in numbers_list for z in numbers})
    elements = [int(z) for z in elements]
    column = {z: k for k, z in enumerate(elements)}
    counts = np.zeros((len(energies), len(elements)))
    for s, numbers in enumerate(numbers_list):
        for z in numbers:
            if int(z) not in column:
                raise ValueError(f"structure {s} has element {int(z)} not in elements {elements}")
            counts[s, column[int(z)]] += 1
    refs = np.linalg.lstsq(counts, energies, rcond=None)[0]
    return {z: float(refs[column[z]]) for z in elements}


def referenced_energy(energy: float, numbers, references: dict[int, float] | None) -> float:
    """E - Σ_i ref[Z_i] (0 for elements without a reference)."""
    references = references or {}
    return float(energy) - float(sum(references.get(int(z), 0.0) for z in numbers))


def dataset_statistics(data, references: dict[int, float] | None = None) -> dict:
    """Statistics used to normalise targets.

    ``data``: a :class:`StructureDataset` or an iterable of ``(numbers, labels)``.
    Returns ``num_structures``, ``mean_natoms`` and, when present,
    ``energy_mean_per_atom`` = mean over structures of (E - Σ refs) / N;
    ``energy_std`` = std over structures of the referenced energy left after removing
    N * energy_mean_per_atom (for data with one size: the std of the referenced
    per-structure energy, JMP's normalisation); ``force_rms`` = sqrt(mean F_ij²) over all
    components; ``stress_std``; ``{name}_mean`` / ``{name}_std`` / ``{name}_mean_per_atom``
    for every graph-level target.
    """
    if isinstance(data, StructureDataset):
        dataset = data
        data = (dataset.labels(i) for i in range(len(dataset)))
    natoms, energies, scalars = [], [], {}
    force_sq, force_n, stresses = 0.0, 0, []
    for numbers, labels in data:
        n = len(numbers)
        natoms.append(n)
        for name, value in labels.items():
            if name == "energy":
                energies.append(referenced_energy(value, numbers, references))
            elif name == "forces":
                force_sq += float(np.sum(np.square(value)))
                force_n += np.size(value)
            elif name == "stress":
                stresses.append(np.asarray(value))
            else:
                scalars.setdefault(name, []).append((float(value), n))
    if not natoms:
        raise ValueError("cannot compute statistics of an empty data set")
    natoms_arr = np.asarray(natoms, dtype=np.float64)
    stats = {"num_structures": len(natoms), "mean_natoms": float(natoms_arr.mean())}
    if energies:
        e = np.asarray(energies)
        stats["energy_mean_per_atom"] = float(np.mean(e / natoms_arr))
        stats["energy_std"] = float(np.std(e - natoms_arr * stats["energy_mean_per_atom"]))
    if force_n:
        stats["force_rms"] = math.sqrt(force_sq / force_n)
    if stresses:
        stats["stress_std"] = float(np.std(np.stack(stresses)))
    for name, pairs in scalars.items():
        values = np.asarray([v for v, _ in pairs])
        counts = np.asarray([c for _, c in pairs], dtype=np.float64)
        stats[f"{name}_mean"] = float(values.mean())
        stats[f"{name}_std"] = float(values.std())
        stats[f"{name}_mean_per_atom"] = float(np.mean(values / counts))
    return stats
