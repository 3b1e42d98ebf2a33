"""Pre-trained multi-head models from files: original JMP checkpoints (``jmp-s.pt``, ...),
``jmp-train pretrain`` outputs and shipped pre-trained models (``jmp-mini``)."""
from __future__ import annotations

import dataclasses

from jmp_ase.io.jmp_checkpoint import JMPCheckpoint, read_jmp_checkpoint
from jmp_ase.io.model_file import resolve_model_path
from jmp_ase.nn.config import DEFAULT_DIHEDRAL_DAMPING, resolve_backbone_config
from jmp_ase.nn.model import JMPPretrainedModel


def load_jmp_pretrained(path, ema: bool = False, config=None,
                        smooth_dihedral: bool | None = None,
                        dihedral_damping: float | None = None) -> tuple[JMPPretrainedModel, list[str] | None]:
    """Build :class:`JMPPretrainedModel` from an original JMP checkpoint (``jmp-s.pt``, ...),
    a ``pretrain.ckpt`` of ``jmp-train pretrain`` or a shipped pre-trained model name (``jmp-mini``).

    Tensors are read without executing foreign code (:mod:`jmp_ase.io.jmp_checkpoint`).
    ``smooth_dihedral`` overrides the backbone's quadruplet basis (same weights), with ε =
    ``dihedral_damping`` (default :data:`~jmp_ase.nn.config.DEFAULT_DIHEDRAL_DAMPING`).
    Returns the model (eval mode) and the pre-training task names if the file has them.
    Raises ``ValueError`` when ``config`` does not fit the file's tensors.
    """
    return pretrained_from_checkpoint(read_jmp_checkpoint(resolve_model_path(path), ema=ema), config,
                                      smooth_dihedral, dihedral_damping)


def pretrained_from_checkpoint(ckpt: JMPCheckpoint, config=None, smooth_dihedral: bool | None = None,
                               dihedral_damping: float | None = None) -> tuple[JMPPretrainedModel, list[str] | None]:
    """:func:`load_jmp_pretrained` of a checkpoint already read."""
    path = ckpt.source
    cfg = resolve_backbone_config(config, ckpt.backbone_config())
    if smooth_dihedral is not None:
        damping = DEFAULT_DIHEDRAL_DAMPING if dihedral_damping is None else float(dihedral_damping)
        cfg = dataclasses.replace(cfg, smooth_dihedral=bool(smooth_dihedral), dihedral_damping=damping)
    num_mlps = len([k for k in ckpt.energy_heads[0] if k.endswith("weight")]) if ckpt.energy_heads else 2
    model = JMPPretrainedModel(cfg, max(ckpt.num_tasks, 1), num_mlps=num_mlps)
    state = {"embedding.atom_embedding.weight": ckpt.atom_embedding}
    state.update({f"backbone.{k}": v for k, v in ckpt.backbone.items()})
    for kind, heads in (("out_energy", ckpt.energy_heads), ("out_forces", ckpt.force_heads)):
        for i, head in enumerate(heads):
            state.update({f"output.{kind}.{i}.{k}": v for k, v in head.items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the checkpoint does not fit backbone config {cfg}:\n{err}") from None
    model.task_info = ckpt.declared_tasks
    return model.eval(), ckpt.task_names
