"""Labels of a structure (ASE units: eV, eV/Å, eV/Å³), looked up, for target ``name``, in the
calculator results (``atoms.calc.results``, where ``ase.io.read`` puts an extxyz
``energy``/``forces``/``stress``), then ``atoms.info`` (graph-level labels such as
``homo_lumo_gap``), then ``atoms.arrays`` (per-atom labels). ``stress`` is returned as a
full (3, 3) matrix."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from jmp_ase.keys import FORCES, STRESS

MATRIX_TARGETS = (STRESS.name,)  # per structure, 3x3 (Voigt 6-vectors accepted)


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
