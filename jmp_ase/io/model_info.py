"""What ``jmp-train info`` reports about a model file, shipped model or jmp-ase pre-trained
checkpoint, from one read of the file."""
from __future__ import annotations

import os
from dataclasses import dataclass

from jmp_ase.io.jmp_checkpoint import checkpoint_from_content, jmp_ase_hparams
from jmp_ase.io.model_file import model_from_dict, provenance_of, read_model_content, settings_of
from jmp_ase.io.pretrained import pretrained_from_checkpoint


@dataclass(frozen=True)
class ModelInfo:
    settings: list[str]  # one line per head (pre-trained checkpoints) or for the model: graphs, tags, basis
    provenance: dict  # data, recipe, test errors; empty when the file does not say


def model_info(model: str | os.PathLike) -> ModelInfo:
    """Settings and provenance of ``model``, read once; ``ValueError`` when the file is unreadable
    or its weights do not fit its configuration (as the calculator would refuse it)."""
    content, source = read_model_content(model)
    if jmp_ase_hparams(content.get("hyper_parameters") if isinstance(content, dict) else None) is not None:
        pretrained_from_checkpoint(checkpoint_from_content(content, source))
    else:
        model_from_dict(content, source)
    return ModelInfo(settings_of(content, source), provenance_of(content, source))
