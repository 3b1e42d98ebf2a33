"""Reading labelled structures: extxyz (whole or streamed), ASE databases, LMDB.

Streaming: :class:`LazyExtxyz` indexes the byte offset of every frame of an extxyz file
once and parses one frame per access; :class:`LMDBStructures` (optional ``lmdb``
dependency, ``pip install jmp-ase[lmdb]``) reads an LMDB written by :func:`write_lmdb`
(one extxyz frame per key) by index. Neither holds the structures in memory.
:class:`ConcatStructures` puts several sources behind one index and names each structure's
own file and frame.
"""
from __future__ import annotations

import io
import os
from array import array
from collections.abc import Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

_EXTXYZ = (".extxyz", ".xyz")
_DB = (".db", ".json")


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

    The first use scans the file once for the byte offset and atom count of each frame
    (12 bytes per frame).
    """

    def __init__(self, path):
        self.path = str(path)
        self._offsets: np.ndarray | None = None
        self._natoms: np.ndarray | None = None

    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._scan()
        return self._offsets

    def atom_counts(self) -> np.ndarray:
        """Atoms of every frame (int32), read from the frame headers by the offset scan."""
        if self._natoms is None:
            self._scan()
        return self._natoms

    def _scan(self) -> None:
        offsets, counts, pos, line_no = array("q"), array("i"), 0, 0  # 12 bytes per frame
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
                counts.append(natoms)
                pos += len(line)
                for _ in range(natoms + 1):
                    line = f.readline()
                    line_no += 1
                    if not line:
                        raise ValueError(f"{self.path}: structure {len(offsets) - 1} is truncated")
                    pos += len(line)
        offsets.append(pos)
        self._offsets = np.frombuffer(offsets, dtype=np.int64)
        self._natoms = np.frombuffer(counts, dtype=np.int32)

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

    def atom_counts(self) -> np.ndarray:
        """Atoms of every structure (int32), from the first line of each stored frame (no parsing)."""
        out = np.empty(self._len, dtype=np.int32)
        with self._env().begin() as txn:
            for i in range(self._len):
                raw = txn.get(str(i).encode())
                if raw is None:
                    raise ValueError(f"{self.path}: structure {i} is missing")
                out[i] = int(raw[:raw.index(b"\n")].split()[0]) if b"\n" in raw else int(raw.split()[0])
        return out

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

    def atom_counts(self) -> np.ndarray:
        parts = [atom_counts(s) for s in self.sources]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def atom_counts(structures: Sequence[Atoms]) -> np.ndarray:
    """Atoms of every structure of a sequence (int32): from the source's own ``atom_counts()``
    where it has one (lazy readers: no parsing), else by reading each structure once."""
    counts = getattr(structures, "atom_counts", None)
    if counts is not None:
        return np.asarray(counts(), dtype=np.int32)
    return np.fromiter((len(structures[i]) for i in range(len(structures))), dtype=np.int32,
                       count=len(structures))


class SelectedStructures(Sequence):
    """A view of the structures ``indices`` (a ``range`` or an integer array) of a source,
    keeping each one's own file and index (``location``): nothing is read until accessed."""

    def __init__(self, source: Sequence[Atoms], indices):
        self.source = source
        self.indices = indices if isinstance(indices, range) else np.asarray(indices, dtype=np.int64).reshape(-1)

    @classmethod
    def of(cls, source: Sequence[Atoms], index=":") -> "SelectedStructures":
        """The structures of ``source`` picked by an ASE-style index (int, slice or ``":100"``, ``"::2"``)."""
        if isinstance(index, str):
            index = ase.io.formats.string2index(index)
        if isinstance(index, (int, np.integer)):
            return cls(source, _indices(len(source), index))
        return cls(source, range(len(source))[index])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        return self.source[int(self.indices[i])]

    def location(self, i: int) -> tuple:
        j = int(self.indices[i])
        if hasattr(self.source, "location"):
            return tuple(self.source.location(j))
        return ("<memory>", j)

    def atom_counts(self) -> np.ndarray:
        if isinstance(self.indices, range) and self.indices == range(len(self.source)):
            return atom_counts(self.source)
        if hasattr(self.source, "atom_counts"):
            return atom_counts(self.source)[np.asarray(self.indices, dtype=np.int64)]
        return np.fromiter((len(self[k]) for k in range(len(self))), dtype=np.int32, count=len(self))
