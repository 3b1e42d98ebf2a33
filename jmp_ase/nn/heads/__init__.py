"""Output heads on top of the backbone embeddings, one kind per file, built by kind from the
registry (:func:`build_head`): ``energy`` (conservative forces and stress by autograd),
``scalar`` (pooled graph-level targets), ``direct_forces``; and JMP's multi-task
pre-training heads (:class:`PretrainOutput`)."""
from jmp_ase.nn.heads.base import (HEAD_TYPES, REDUCTIONS, Head, HeadInputs, HeadSpec, build_head, direct_forces,
                                   energy_mlp, head_kinds, mlp, pool, register_head, sum_per_structure)
# importing a head module registers its kind
from jmp_ase.nn.heads import direct, energy, scalar  # noqa: E402,F401
from jmp_ase.nn.heads.pretrain import PretrainOutput

__all__ = ["HEAD_TYPES", "REDUCTIONS", "Head", "HeadInputs", "HeadSpec", "PretrainOutput", "build_head",
           "direct_forces", "energy_mlp", "head_kinds", "mlp", "pool", "register_head", "sum_per_structure"]
