"""Input normalisation and the raw pair search (vesin) shared by graphs and validation."""
from __future__ import annotations

import numpy as np
import torch


def as_positions(positions) -> np.ndarray:
    if torch.is_tensor(positions):
        positions = positions.detach().cpu().numpy()
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 1 and pos.size == 0:
        pos = pos.reshape(0, 3)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    return pos


def as_pbc(pbc) -> np.ndarray:
    if torch.is_tensor(pbc):
        pbc = pbc.detach().cpu().numpy()
    arr = np.asarray(pbc, dtype=bool)
    if arr.ndim == 0:
        arr = np.repeat(arr, 3)
    arr = arr.reshape(-1)
    if arr.shape != (3,):
        raise ValueError(f"pbc must be a bool or 3 bools, got {pbc!r}")
    return arr


def as_cell(cell) -> np.ndarray:
    """(3, 3) float64 array, rows = lattice vectors (Å); None gives zeros."""
    if cell is None:
        return np.zeros((3, 3))
    if torch.is_tensor(cell):
        cell = cell.detach().cpu().numpy()
    arr = np.asarray(cell, dtype=np.float64)
    if arr.shape == (1, 3, 3):
        arr = arr[0]
    if arr.shape == (3,):
        arr = np.diag(arr)
    if arr.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3) (rows = lattice vectors), got {arr.shape}")
    return arr


def periodic_cell_problem(cell: np.ndarray, pbc: np.ndarray) -> str | None:
    """Describe why the periodic lattice vectors are unusable, or None when they are fine."""
    if not pbc.any():
        return None
    rows = cell[pbc]
    if not np.all(np.isfinite(rows)):
        return f"cell has non-finite entries in a periodic direction: {cell.tolist()}"
    norms = np.linalg.norm(rows, axis=1)
    if np.any(norms < 1e-8):
        return (
            f"cell is singular: lattice vector(s) {np.flatnonzero(pbc)[norms < 1e-8].tolist()} "
            f"are zero but periodic (pbc={pbc.tolist()})"
        )
    unit = rows / norms[:, None]
    # Gram determinant of the normalised periodic vectors: 1 for orthogonal, 0 for dependent.
    gram_det = np.linalg.det(unit @ unit.T)
    if not gram_det > 1e-10:
        return (
            f"cell is singular: the periodic lattice vectors {rows.tolist()} are linearly "
            f"dependent (pbc={pbc.tolist()})"
        )
    return None


def largest_neighbor_count(atoms, cutoff: float) -> int:
    """Most neighbours any atom of ``atoms`` (ase.Atoms) has within ``cutoff`` Å, periodic
    images included (a molecule's cell plays no role)."""
    pbc = as_pbc(atoms.pbc)
    cell = np.asarray(atoms.cell.array, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    i, _, _, _ = vesin_pairs(as_positions(atoms.positions), cell, pbc, float(cutoff), full=True)
    return int(np.bincount(i, minlength=len(atoms)).max()) if len(atoms) else 0


def vesin_pairs(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, *, full: bool):
    """All pairs with distance < cutoff from vesin: (i, j, shifts, distance).

    vesin's convention: the vector of pair (i, j, S) is ``pos[j] + S @ box - pos[i]``.
    Non-periodic directions get a zero box vector (vesin then searches the bounding box).
    """
    from vesin import NeighborList

    box = np.where(pbc[:, None], cell, 0.0)
    calculator = NeighborList(cutoff=cutoff, full_list=full)
    i, j, shifts, dist = calculator.compute(
        points=np.ascontiguousarray(pos), box=box, periodic=[bool(p) for p in pbc],
        quantities="ijSd",
    )
    return (
        np.asarray(i, dtype=np.int64),
        np.asarray(j, dtype=np.int64),
        np.asarray(shifts, dtype=np.int64).reshape(-1, 3),
        np.asarray(dist, dtype=np.float64),
    )
