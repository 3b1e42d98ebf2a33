"""Splits, per-element energy references and the statistics that normalise targets."""
from __future__ import annotations

import math
from array import array
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


class StreamingStatistics:
    """Element references and :func:`dataset_statistics` (energy and forces) in one pass over
    ``(numbers, labels)`` pairs, keeping per structure only its atom count (``natoms``).

    The references are the minimum-norm least-squares solution of :func:`fit_element_references`,
    from the normal equations: the first ``buffer`` structures (their energies and compositions)
    give a first fit w0; after it only the sums of the composition products and of the residuals
    ``E - c·w0`` times the compositions are accumulated (an (Z+1)² matrix), so the final
    correction and the energy mean and spread are computed on small residuals. The forces
    contribute only their sum of squares.
    """

    def __init__(self, num_elements: int = 120, buffer: int = 4096):
        self.size, self.buffer = num_elements + 1, int(buffer)
        self._pending: list[tuple[float, np.ndarray]] = []  # (energy, composition) not yet in the sums
        self.w0: np.ndarray | None = None
        self.gram = np.zeros((self.size, self.size))  # Σ c cᵀ
        self.rhs = np.zeros(self.size)  # Σ r c, r = E - c·w0
        self.inv_n = np.zeros(self.size)  # Σ c / N
        self.c_sum = np.zeros(self.size)  # Σ c
        self.r_sum = self.r_sq = self.r_per_atom = 0.0  # Σ r, Σ r², Σ r / N
        self.force_sq, self.force_n, self.has_energy = 0.0, 0, False
        self.natoms = array("i")  # atoms of every structure (4 bytes each)

    def add(self, numbers, labels: dict) -> None:
        numbers = np.asarray(numbers, dtype=np.int64)
        if numbers.size and (numbers.min() < 0 or numbers.max() >= self.size):
            raise ValueError(f"atomic numbers must lie in [0, {self.size - 1}], got {numbers.min()}..{numbers.max()}")
        self.natoms.append(len(numbers))
        if "forces" in labels:
            value = np.asarray(labels["forces"])
            self.force_sq += float(np.sum(np.square(value)))
            self.force_n += value.size
        if "energy" in labels:
            self.has_energy = True
            self._pending.append((float(labels["energy"]), np.bincount(numbers, minlength=self.size)))
            if len(self._pending) >= (self.buffer if self.w0 is None else 256):
                self._flush()

    def _flush(self) -> None:
        """Fold the pending structures into the sums (fitting w0 on them first if there is none)."""
        if not self._pending:
            return
        energies = np.asarray([e for e, _ in self._pending])
        counts = np.stack([c for _, c in self._pending]).astype(np.float64)
        self._pending = []
        if self.w0 is None:
            used = counts.any(axis=0)
            self.w0 = np.zeros(self.size)
            self.w0[used] = np.linalg.lstsq(counts[:, used], energies, rcond=None)[0]
        cols = np.flatnonzero(counts.any(axis=0))  # the elements present: a few columns of the 121
        counts = counts[:, cols]
        n = counts.sum(axis=1)
        r = energies - counts @ self.w0[cols]
        self.gram[np.ix_(cols, cols)] += counts.T @ counts
        self.rhs[cols] += counts.T @ r
        self.inv_n[cols] += (counts / n[:, None]).sum(axis=0)
        self.c_sum[cols] += counts.sum(axis=0)
        self.r_sum += float(r.sum())
        self.r_sq += float(r @ r)
        self.r_per_atom += float((r / n).sum())

    def result(self) -> tuple[dict[int, float], dict]:
        """``(references, statistics)``: as :func:`fit_element_references` on every structure
        and :func:`dataset_statistics` with those references (energy and force entries)."""
        if not self.natoms:
            raise ValueError("cannot compute statistics of an empty data set")
        natoms = np.asarray(self.natoms, dtype=np.float64)
        stats = {"num_structures": len(self.natoms), "mean_natoms": float(natoms.mean())}
        refs: dict[int, float] = {}
        if self.has_energy:
            self._flush()
            used = np.flatnonzero(self.gram.diagonal() > 0)
            g = self.gram[np.ix_(used, used)]
            # minimum-norm correction: w0 lies in the row space of the compositions already
            delta = np.linalg.pinv(g, rcond=1e-10, hermitian=True) @ self.rhs[used]
            w = self.w0[used] + delta
            refs = {int(z): float(v) for z, v in zip(used, w)}
            s = len(self.natoms)
            # residuals after the final references: r' = r - c·delta
            mean_per_atom = (self.r_per_atom - float(self.inv_n[used] @ delta)) / s
            total_c = self.c_sum[used]
            # d = r' - N m = r - c·(delta + m); mean and mean square from the accumulated sums
            u = delta + mean_per_atom
            d_sum = self.r_sum - float(total_c @ u)
            d_sq = self.r_sq - 2.0 * float(self.rhs[used] @ u) + float(u @ g @ u)
            var = max(d_sq / s - (d_sum / s) ** 2, 0.0)
            stats["energy_mean_per_atom"] = float(mean_per_atom)
            stats["energy_std"] = math.sqrt(var)
        if self.force_n:
            stats["force_rms"] = math.sqrt(self.force_sq / self.force_n)
        return refs, stats
