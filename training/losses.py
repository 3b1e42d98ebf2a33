"""JMP's pre-training loss with the structure-wise force reduction (paper eq. 1).

For a batch of B structures, structure b with N_b atoms from data set t(b)::

    L = 1/B Σ_b [ λ_E,t(b) |Ê_b - E_b|  +  λ_F,t(b) (1/N_b) Σ_{i in b} ||F̂_i - F_i||_2 ]

on normalised targets, each structure predicted by its own data set's heads. JMP uses
λ_E = 1 and λ_F = the mean number of atoms per structure of the data set
(``energy_loss_scale`` / ``force_loss_scale`` in ``tasks/pretrain/module.py``; its
``structurewise_loss_reduction=True``, mean reductions, all atoms, fixed ones included).

Fine-tuning's losses (``"mae"``: MAE for energy, stress and graph-level scalars, the mean
Euclidean norm of the force error per atom; ``"mse"``: their squares) and its guard against
diverging force errors are here too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jmp_ase.nn.layers import scatter_sum
from jmp_ase.training.finetune_config import LOSS_KINDS


@dataclass
class LossTerms:
    """loss: scalar to minimise; energy / force: its two batch-mean terms;
    per_structure_energy / per_structure_force: (B,) weighted terms of every structure."""

    loss: torch.Tensor
    energy: torch.Tensor
    force: torch.Tensor
    per_structure_energy: torch.Tensor
    per_structure_force: torch.Tensor

    @property
    def per_structure(self) -> torch.Tensor:
        return self.per_structure_energy + self.per_structure_force


def structurewise_loss(energy_pred: torch.Tensor, energy: torch.Tensor, forces_pred: torch.Tensor,
                       forces: torch.Tensor, atom_batch: torch.Tensor, energy_scale: torch.Tensor,
                       force_scale: torch.Tensor) -> LossTerms:
    """Paper eq. 1. energy_* (B,); forces_* (N, 3); atom_batch (N,) structure of each atom;
    energy_scale / force_scale (B,): λ_E and λ_F of each structure's data set."""
    num = energy.shape[0]
    e_term = energy_scale * (energy_pred - energy).abs()
    atom_err = torch.linalg.vector_norm(forces_pred - forces, dim=-1)  # (N,)
    natoms = torch.bincount(atom_batch, minlength=num).to(atom_err.dtype)
    f_term = force_scale * scatter_sum(atom_err, atom_batch, num) / natoms.clamp(min=1)
    energy_loss, force_loss = e_term.mean(), f_term.mean()
    return LossTerms(energy_loss + force_loss, energy_loss, force_loss, e_term, f_term)


def per_task_means(values: torch.Tensor, task: torch.Tensor, num_tasks: int) -> list[torch.Tensor | None]:
    """Mean of ``values`` (B,) over the structures of each task (None where a task is absent)."""
    out: list[torch.Tensor | None] = []
    for t in range(num_tasks):
        mask = task == t
        out.append(values[mask].mean() if bool(mask.any()) else None)
    return out


# ----------------------------------------------------------------------------- fine-tuning
def error_sizes(name: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Size of each error: the Euclidean norm of every atom's force error for ``"forces"``,
    the absolute error of every component for any other target (energy, stress, scalars)."""
    diff = pred - target
    return diff.norm(dim=-1) if name == "forces" else diff.abs()


def energy_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MAE over structures (also used for stress components and graph-level scalars)."""
    return error_sizes("energy", pred, target).mean()


def force_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over atoms of the Euclidean norm of the force error (JMP's L2-MAE)."""
    return error_sizes("forces", pred, target).mean()


def compute_losses(preds: dict, targets: dict, weights: dict, scales: dict,
                   kind: str = "mae") -> tuple[torch.Tensor, dict]:
    """Total loss and the per-target MAE terms L_t (physical units, for logs).

    ``kind="mae"`` (JMP's): Σ_t w_t L_t / σ_t. ``"mse"``: Σ_t w_t S_t / σ_t², with S_t the mean
    squared error (forces: the mean over atoms of the squared error norm), as MACE's loss: it
    weighs the rare structures far from the data's bulk more than the MAE does.

    A committee (``energy_members`` (K, B), ``forces_members`` (K, N, 3) in ``preds``) trains every
    member on the labels: the total is the mean over members of each member's loss (stress: the
    members' mean); the terms are those of the committee's mean prediction."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss must be one of {LOSS_KINDS}, got {kind!r}")
    members = preds.get("energy_members")
    if members is not None:
        forces = preds.get("forces_members")
        total = sum(_weighted_loss({**preds, "energy": members[k],
                                    **({"forces": forces[k]} if forces is not None else {})},
                                   targets, weights, scales, kind)[0] for k in range(members.shape[0]))
        return total / members.shape[0], _weighted_loss(preds, targets, weights, scales, kind)[1]
    return _weighted_loss(preds, targets, weights, scales, kind)


def _weighted_loss(preds: dict, targets: dict, weights: dict, scales: dict, kind: str) -> tuple[torch.Tensor, dict]:
    terms = {}
    total = 0.0
    for name, target in targets.items():
        scale = scales.get(name, 1.0)
        sizes = error_sizes(name, preds[name], target)
        terms[name] = sizes.mean()
        term = terms[name] / scale if kind == "mae" else (sizes ** 2).mean() / scale ** 2
        total = total + weights.get(name, 1.0) * term
    return total, terms


def check_force_errors(preds: dict, targets: dict, batch, limit: float) -> None:
    """Raise ``FloatingPointError`` naming the structures whose largest per-atom force error
    exceeds ``limit`` (eV/Å): a model that diverges must stop, not write a model file."""
    if "forces" not in preds or "forces" not in targets:
        return
    error = (preds["forces"].detach() - targets["forces"]).norm(dim=-1)
    worst = torch.zeros(batch.num_structures, dtype=error.dtype, device=error.device)
    worst = worst.scatter_reduce(0, batch.atom_batch, error, reduce="amax")
    bad = ~(worst <= limit)  # NaN counts as bad
    if bad.any():
        rows = [f"{batch.sources[k][0]}: structure {batch.sources[k][1]} ({float(worst[k]):.4g} eV/Å)"
                if k < len(batch.sources) else f"batch structure {k} ({float(worst[k]):.4g} eV/Å)"
                for k in torch.nonzero(bad).flatten().tolist()[:10]]
        raise FloatingPointError(
            f"force errors above {limit:.4g} eV/Å (force_error_limit x the force labels' RMS); the model "
            "diverged on: " + "; ".join(rows)
        )
