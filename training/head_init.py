"""Start the fine-tuning energy head from one of the parent's pre-training energy heads
(``init_energy_head`` in the config), instead of a new random head as JMP does.

The head takes the pre-training head's MLP weights (its first layer has a bias, as JMP's
pre-training heads do) and its de-normalisation (scale = that task's energy_std, element
references in eV). The data's level of theory may differ from the pre-training task's by a
per-element offset: it is fitted by least squares to the labels minus the head's zero-shot
energies on the first training structures, and added to the references. The run starts where
the pre-trained head stands (its zero-shot error is printed), not at random.
"""
from __future__ import annotations

import dataclasses

import torch

from jmp_ase.nn.heads import HeadSpec
from jmp_ase.nn.model import FineTunedModel
from jmp_ase.training.parent import Parent
from jmp_ase.training.references import add_energy_offsets, energy_head

#: training structures whose zero-shot energies fix the per-element offset
NUM_OFFSET_STRUCTURES = 64
# Committee members 1.. start from the pre-training head plus noise of this fraction of each weight tensor's std.
COMMITTEE_NOISE = 0.1


def _energy_head(parent: Parent, name: str):
    if not parent.energy_heads:
        raise ValueError(f"init_energy_head {name!r}: the parent states no pre-training energy heads with their "
                         "normalisation (only jmp-train pretrain files and shipped pre-trained models such as "
                         "jmp-mini do)")
    if name not in parent.energy_heads:
        raise ValueError(f"init_energy_head {name!r}: the parent's pre-training heads are {sorted(parent.energy_heads)}")
    return parent.energy_heads[name]


def head_specs_for_start(heads: list[HeadSpec], parent: Parent, name: str) -> list[HeadSpec]:
    """``heads`` with the energy head set up to take pre-training head ``name``'s weights."""
    _, energy_std, references = _energy_head(parent, name)
    if not any(h.kind == "energy" for h in heads):
        raise ValueError(f"init_energy_head {name!r}: the run has no energy head (targets without energy or forces)")
    return [dataclasses.replace(h, mlp_bias=True, scale=energy_std, shift=0.0, element_references=dict(references))
            if h.kind == "energy" else h for h in heads]


@torch.no_grad()
def start_energy_head(model: FineTunedModel, parent: Parent, name: str, train_set) -> dict:
    """Load pre-training head ``name`` into ``model``'s energy head (built by
    :func:`head_specs_for_start`) and fit the per-element offset on the training labels.
    Returns the zero-shot energy MAE (eV) before and after the offset, and the offsets."""
    state, _, _ = _energy_head(parent, name)
    head = energy_head(model)
    head.mlp.load_state_dict(state)
    for k, member in enumerate(getattr(head, "members", [])):  # a committee: the same start, perturbed
        member.load_state_dict(state)
        generator = torch.Generator().manual_seed(1000 + k)
        with torch.no_grad():
            for p in member.parameters():
                p.add_(COMMITTEE_NOISE * p.std() * torch.randn(p.shape, generator=generator).to(p))
    count = min(len(train_set), NUM_OFFSET_STRUCTURES)
    try:
        fit = add_energy_offsets(model, [train_set[i] for i in range(count)])
    except ValueError as err:
        raise ValueError(f"init_energy_head {name!r}: {err}") from None
    return {"head": name, "zero_shot_energy_mae": fit["energy_mae_before"],
            "offset_energy_mae": fit["energy_mae_after"], "offsets": fit["offsets"]}
