"""The jmp-ase model file: one file that alone rebuilds a fine-tuned model.

Layout (plain Python containers and tensors, loadable with ``torch.load(weights_only=True)``)::

    {"format": "jmp-ase-model", "format_version": 1, "jmp_ase_version": "0.1.0",
     "config": ModelConfig.to_dict(), "state_dict": {...}}
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from . import __version__
from .model import FineTunedModel, ModelConfig

FORMAT = "jmp-ase-model"
FORMAT_VERSION = 1
MODELS_DIR = Path(__file__).parent / "models"


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package (usable instead of a path)."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.ckpt"))


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A path as given, or the shipped model of that name; clear error if neither exists."""
    path = Path(model)
    if path.is_file():
        return path
    shipped = MODELS_DIR / f"{model}.ckpt"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"no model file {str(model)!r} and no shipped model of that name; shipped models: {shipped_models()}"
    )


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_to_dict(model: FineTunedModel) -> dict:
    """The model-file contents of ``model`` (weights copied to the CPU)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jmp_ase_version": __version__,
        "config": model.model_config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def save_model(model: FineTunedModel, path: str | os.PathLike) -> None:
    """Write ``model`` as a self-describing model file (atomically)."""
    atomic_torch_save(model_to_dict(model), path)


def _read(path: Path) -> dict:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means "not our file"
        raise ValueError(
            f"{path}: not a readable jmp-ase model file ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "For an original JMP checkpoint (jmp-s.pt / jmp-l.pt) use JMPCalculator.from_jmp_checkpoint."
        ) from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        keys = sorted(content)[:8] if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{path}: not a jmp-ase model file (expected a dict with format={FORMAT!r}, found {keys}). "
            "For an original JMP checkpoint use JMPCalculator.from_jmp_checkpoint."
        )
    version = content.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: model file format version {version!r}, this jmp-ase ({__version__}) reads version "
            f"{FORMAT_VERSION}; the file was written by jmp-ase {content.get('jmp_ase_version')!r}"
        )
    for key in ("config", "state_dict"):
        if key not in content:
            raise ValueError(f"{path}: corrupt model file, the entry {key!r} is missing")
    return content


def model_from_dict(content: dict, source: str = "<dict>") -> FineTunedModel:
    """Rebuild a model from model-file contents (see :func:`model_to_dict`)."""
    try:
        config = ModelConfig.from_dict(content["config"])
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{source}: corrupt model configuration: {err}") from None
    model = FineTunedModel(config)
    try:
        model.load_state_dict(content["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source}: weights do not match the configuration:\n{err}") from None
    return model.eval()


def load_model(model: str | os.PathLike) -> FineTunedModel:
    """Load a model file, or a shipped model by name (eval mode, on the CPU)."""
    path = resolve_model_path(model)
    return model_from_dict(_read(path), str(path))


def load_predictor(model: str | os.PathLike) -> FineTunedModel:
    """What :class:`~jmp_ase.calculator.JMPCalculator` runs for a path or model name."""
    return load_model(model)
