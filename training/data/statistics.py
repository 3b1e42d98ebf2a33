"""Splits, per-element energy references and the statistics that normalise targets."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jmp_ase.training.data.samples import StructureDataset


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
