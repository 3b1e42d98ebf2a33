"""Checks that stop bad structures before they reach the model, naming the offending atoms."""
from __future__ import annotations

import numpy as np
import torch

from jmp_ase.data.neighbors import as_cell, as_pbc, as_positions, periodic_cell_problem, vesin_pairs

_MIN_SEARCH_RADIUS = 1.0  # Å


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def _describe_atoms(indices, numbers, limit: int = 10) -> str:
    indices = [int(i) for i in indices]
    parts = [f"{i} ({_symbol(int(numbers[i]))})" for i in indices[:limit]]
    if len(indices) > limit:
        parts.append(f"... {len(indices) - limit} more")
    return ", ".join(parts)


def validate_structure(
    numbers,
    positions,
    cell,
    pbc,
    *,
    num_elements: int = 120,
    min_distance: float = 0.1,
) -> None:
    """Raise ``ValueError`` naming the offending atoms (index and symbol) for a bad structure.

    Checks: atomic numbers ``1 <= Z <= num_elements``; finite positions (N, 3) Å; when any
    direction is periodic, a finite cell (3, 3) Å whose periodic lattice vectors are
    nonzero and independent (a non-periodic direction may have a zero vector); a cell given
    for a molecule must be finite too; no two atoms (periodic images included) closer than
    ``min_distance`` Å. Cost linear in the number of atoms.
    """
    if torch.is_tensor(numbers):
        numbers = numbers.detach().cpu().numpy()
    z = np.asarray(numbers).reshape(-1)
    pos = as_positions(positions)
    pbc_arr = as_pbc(pbc)
    if z.shape[0] != pos.shape[0]:
        raise ValueError(
            f"numbers has {z.shape[0]} entries but positions has {pos.shape[0]} atoms"
        )
    if z.size and not np.all(np.equal(np.mod(z, 1), 0)):
        bad = np.flatnonzero(~np.equal(np.mod(z, 1), 0))
        raise ValueError(f"atomic numbers must be integers; atoms {bad.tolist()} are not")
    z = z.astype(np.int64)

    bad = np.flatnonzero((z < 1) | (z > num_elements))
    if bad.size:
        desc = ", ".join(f"{i} (Z={z[i]})" for i in bad[:10].tolist())
        raise ValueError(
            f"unknown element (atomic number outside 1..{num_elements}) for atoms {desc}"
        )

    bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
    if bad.size:
        raise ValueError(
            f"non-finite (NaN/inf) positions for atoms {_describe_atoms(bad, z)}"
        )

    if cell is None:
        if pbc_arr.any():
            raise ValueError(f"pbc={pbc_arr.tolist()} is periodic but no cell was given")
        cell_arr = np.zeros((3, 3))
    else:
        cell_arr = as_cell(cell)
        if not np.all(np.isfinite(cell_arr)):
            raise ValueError(f"cell has non-finite (NaN/inf) entries: {cell_arr.tolist()}")
    problem = periodic_cell_problem(cell_arr, pbc_arr)
    if problem is not None:
        raise ValueError(problem)

    if pos.shape[0] == 0 or min_distance <= 0:
        return
    # A cell list with bins of min_distance (0.1 Å) is very slow for a tiny search radius:
    # search at least 1 Å and keep the close pairs.
    search = max(float(min_distance), _MIN_SEARCH_RADIUS)
    i, j, shifts, dist = vesin_pairs(pos, cell_arr, pbc_arr, search, full=False)
    close = dist < min_distance
    if np.any(close):
        i, j, shifts, dist = i[close], j[close], shifts[close], dist[close]
        order = np.argsort(dist, kind="stable")[:10]
        pairs = []
        for k in order.tolist():
            a, b, shift = int(i[k]), int(j[k]), shifts[k]
            if b < a:
                a, b, shift = b, a, -shift
            image = "" if not np.any(shift) else f" (periodic image {shift.tolist()} of {b})"
            pairs.append(
                f"atoms {a} ({_symbol(int(z[a]))}) and {b} ({_symbol(int(z[b]))}){image}: "
                f"{dist[k]:.4g} Å"
            )
        more = f"; {int(close.sum()) - len(pairs)} more pairs" if close.sum() > len(pairs) else ""
        raise ValueError(
            f"atoms closer than min_distance={min_distance} Å: " + "; ".join(pairs) + more
        )
