"""Errors of a calculator against labelled structures (energies and forces as ASE results)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def labelled_errors(calc, structures: Sequence, batch_size: int = 8) -> dict:
    """Mean absolute errors of ``calc`` (a :class:`~jmp_ase.calculators.calculator.JMPCalculator`) on
    ``structures`` whose reference energy (eV) and forces (eV/Å) are attached as ASE results
    (as ``ase.io.read`` gives them for extxyz).

    Returns ``{"structures": n, "energy_mae": eV per structure, "forces_mae": eV/Å per
    component}``. Raises ``ValueError`` naming the first structure without labels.
    """
    structures = list(structures)
    if not structures:
        raise ValueError("no structures to evaluate")
    energies, forces = [], []
    for k, atoms in enumerate(structures):
        if atoms.calc is None or "energy" not in atoms.calc.results or "forces" not in atoms.calc.results:
            raise ValueError(f"structure {k} ({atoms.get_chemical_formula()}) has no reference energy and forces")
        energies.append(float(atoms.calc.results["energy"]))
        forces.append(np.asarray(atoms.calc.results["forces"], dtype=float))
    predictions = calc.predict(structures, ["energy", "forces"], batch_size=batch_size)
    energy_errors = [abs(p["energy"] - e) for p, e in zip(predictions, energies)]
    force_errors = np.concatenate([np.abs(p["forces"] - f).ravel() for p, f in zip(predictions, forces)])
    return {"structures": len(structures), "energy_mae": float(np.mean(energy_errors)),
            "forces_mae": float(np.mean(force_errors))}
