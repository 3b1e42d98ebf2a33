"""Units of the numbers jmp-train writes: one per column of ``metrics.csv`` (in the sidecar
``metrics_units.json``), per key of ``jmp-train evaluate``'s ``metrics.json`` and on plot axes.

Column names stay as they are (``val_forces_mae``, ``val/mols/forces_mae``), so every reader of
earlier runs keeps working; the unit of a column follows from its target: energy eV, forces
eV/Å (per component), stress eV/Å³, graph-level targets their own unit. Losses are normalised
by the targets' training-set scales and have none.
"""
from __future__ import annotations

import json
from pathlib import Path

PHYSICAL = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³"}
NORMALISED = "dimensionless (normalised by the training-set scales)"
_OTHER = {"epoch": "count", "step": "count", "batch": "count", "structures": "count", "lr": "dimensionless",
          "elapsed_s": "s", "data_s": "s", "step_s": "s", "structures_per_s": "structures/s",
          "data_wait_share": "fraction of the time", "grad_norm": NORMALISED,
          "train_replay_loss": "dimensionless (pre-training loss, normalised by the parent's statistics)"}
UNITS_FILE = "metrics_units.json"


def target_unit(target: str, units: dict | None = None) -> str:
    """eV, eV/Å, eV/Å³ or a graph-level target's own unit (``units``: target -> unit)."""
    return PHYSICAL.get(target) or (units or {}).get(target) or "the label's unit"


def metric_unit(column: str, units: dict | None = None) -> str:
    """The unit of a metrics column or key: ``val_forces_mae`` and ``val/mols/forces_mae`` -> eV/Å."""
    name = column.rsplit("/", 1)[-1]
    if name in _OTHER:
        return _OTHER[name]
    if name == "loss" or name.endswith("_loss"):
        return NORMALISED
    for suffix in ("_mae", "_rmse"):
        if name.endswith(suffix):
            target = name[: -len(suffix)]
            for prefix in ("train_", "val_", "test_"):
                if "/" not in column and target.startswith(prefix):
                    target = target[len(prefix):]
                    break
            return target_unit(target, units)
    raise ValueError(f"no unit known for the metric {column!r}")


def write_units(folder, columns, units: dict | None = None) -> Path:
    """``folder/metrics_units.json``: the unit of every column of ``folder/metrics.csv``."""
    path = Path(folder) / UNITS_FILE
    path.write_text(json.dumps({c: metric_unit(c, units) for c in columns}, indent=1, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path


def axis_label(kind: str, target: str, units: dict | None = None) -> str:
    """``label forces (eV/Å)``, ``predicted energy (eV)``."""
    return f"{kind} {target} ({target_unit(target, units)})"
