"""Errors of predictions against labels: the one evaluator of jmp-ase.

:class:`ErrorSums` accumulates, per target, the error measures of batches or single structures
(physical units) and turns them into metrics; with ``keep=True`` it also keeps every
prediction and label, per structure. It serves the calculator (:func:`labelled_errors`), the
training steps and ``jmp-train evaluate`` (:func:`jmp_ase.training.finetune.predict_dataset`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


class ErrorSums:
    """Per target: sums of the loss measure (|error|; for forces the norm of each atom's error)
    and of the component-wise absolute and squared errors.

    ``keep``: also record, per target, the (prediction, label) arrays of every :meth:`add` in
    ``predictions`` and the atoms of each structure in ``natoms``.
    """

    def __init__(self, keep: bool = False):
        self.sums: dict[str, np.ndarray] = {}
        self.keep = keep
        self.predictions: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self.natoms: list[int] = []

    def add(self, preds: dict, targets: dict, natoms: Sequence[int] | None = None) -> None:
        """Errors of ``preds`` against ``targets`` (tensors or arrays; targets name what is compared);
        ``natoms``: atoms of each structure, recorded with ``keep``."""
        for name, target in targets.items():
            pred, target = torch.as_tensor(preds[name]).detach(), torch.as_tensor(target)
            err = (pred - target).double()
            loss = err.norm(dim=-1) if name == "forces" else err.abs()
            row = np.array([loss.sum().item(), loss.numel(), err.abs().sum().item(), err.square().sum().item(),
                            err.numel()])
            self.sums[name] = self.sums.get(name, 0) + row
            if self.keep:
                kept = self.predictions.setdefault(name, ([], []))
                kept[0].append(pred.cpu().numpy())
                kept[1].append(target.cpu().numpy())
        if self.keep and natoms is not None:
            self.natoms.extend(int(n) for n in natoms)

    def metrics(self, weights: dict | None = None, scales: dict | None = None, prefix: str = "") -> dict[str, float]:
        """``{prefix}loss`` (the weighted loss over everything added), ``{prefix}{t}_mae`` / ``_rmse``
        (per component: per structure for energy and graph-level targets, per force component)."""
        weights, scales = weights or {}, scales or {}
        out, total = {}, 0.0
        for name, (loss_sum, loss_n, abs_sum, sq_sum, n) in self.sums.items():
            total += weights.get(name, 1.0) * (loss_sum / loss_n) / scales.get(name, 1.0)
            out[f"{prefix}{name}_mae"] = float(abs_sum / n)
            out[f"{prefix}{name}_rmse"] = math.sqrt(sq_sum / n)
        out[f"{prefix}loss"] = float(total)
        return out

    def state(self) -> dict:
        """Plain lists (checkpoints are read with ``weights_only=True``)."""
        return {k: [float(x) for x in v] for k, v in self.sums.items()}

    @classmethod
    def from_state(cls, state: dict) -> "ErrorSums":
        out = cls()
        out.sums = {k: np.asarray(v, dtype=np.float64) for k, v in (state or {}).items()}
        return out


def labelled_errors(calc, structures: Sequence, batch_size: int = 8) -> dict:
    """Mean absolute errors of ``calc`` (a :class:`~jmp_ase.calculators.calculator.JMPCalculator`) on
    ``structures`` whose reference energy (eV) and forces (eV/Å) are attached as ASE results
    (as ``ase.io.read`` gives them for extxyz).

    Returns ``{"structures": n, "energy_mae": eV per structure, "forces_mae": eV/Å per
    component}``, and ``"stress_mae"`` (eV/Å³ per Voigt component) where the model predicts stress
    and every structure has a reference stress and is 3-D periodic (the model's stress needs a cell). Raises
    ``ValueError`` naming the first structure without labels.
    """
    structures = list(structures)
    if not structures:
        raise ValueError("no structures to evaluate")
    stress = "stress" in getattr(calc, "implemented_properties", ()) and all(
        atoms.calc is not None and "stress" in atoms.calc.results and atoms.pbc.all() for atoms in structures)
    labels = []
    for k, atoms in enumerate(structures):
        if atoms.calc is None or "energy" not in atoms.calc.results or "forces" not in atoms.calc.results:
            raise ValueError(f"structure {k} ({atoms.get_chemical_formula()}) has no reference energy and forces")
        label = {"energy": np.array([float(atoms.calc.results["energy"])]),
                 "forces": np.asarray(atoms.calc.results["forces"], dtype=float)}
        if stress:
            label["stress"] = voigt(atoms.calc.results["stress"])
        labels.append(label)
    errors = ErrorSums()
    properties = ["energy", "forces"] + (["stress"] if stress else [])
    for p, label in zip(calc.predict(structures, properties, batch_size=batch_size), labels):
        errors.add({"energy": np.array([p["energy"]]), "forces": np.asarray(p["forces"]),
                    **({"stress": voigt(p["stress"])} if stress else {})}, label)
    metrics = errors.metrics()
    return {"structures": len(structures), **{f"{t}_mae": metrics[f"{t}_mae"] for t in properties}}


def voigt(stress) -> np.ndarray:
    """A stress as its 6 Voigt components (xx, yy, zz, yz, xz, xy), from Voigt or 3x3 form."""
    stress = np.asarray(stress, dtype=float)
    if stress.shape == (3, 3):
        return stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    if stress.shape != (6,):
        raise ValueError(f"a stress has 6 (Voigt) or 3x3 components, got shape {stress.shape}")
    return stress
