"""The jmp-ase model file: one file that alone rebuilds a fine-tuned model.

Layout (plain Python containers and tensors, loadable with ``torch.load(weights_only=True)``)::

    {"format": "jmp-ase-model", "format_version": 1, "jmp_ase_version": "0.1.0",
     "config": ModelConfig.to_dict(), "state_dict": {...}, "checksum": "sha256:..."}

``config`` holds the backbone sizes, the heads with their target normalisation and
per-element energy references, the graph settings (cutoff Å, max_neighbors), the units,
the elements seen in training and the provenance (parent model, data, jmp-ase version,
date). ``checksum`` covers config and weights, so a damaged file is refused rather than
giving silently wrong predictions.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jmp_ase._version import __version__
from jmp_ase.nn.config import BackboneConfig, basis_description
from jmp_ase.nn.model import FineTunedModel, ModelConfig

FORMAT = "jmp-ase-model"
FORMAT_VERSION = 1
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
REQUIRED_KEYS = ("format", "format_version", "config", "state_dict")
NOT_OURS_HINT = "For an original JMP checkpoint (jmp-s.pt / jmp-l.pt) use JMPCalculator.from_jmp_checkpoint."


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plain(value, where: str = "config"):
    """``value`` with NumPy scalars/arrays turned into Python ones; ``ValueError`` for other objects.

    Model files hold only what ``torch.load(weights_only=True)`` accepts.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), where)
    if isinstance(value, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise ValueError(
        f"{where} is a {type(value).__name__}; model files hold only None, bool, int, float, str, "
        "lists and dicts (convert it, e.g. str(path))"
    )


def checksum(config: dict, state_dict: dict) -> str:
    """``sha256:<hex>`` of the config (as sorted JSON) and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode())
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def model_to_dict(model: FineTunedModel) -> dict:
    """The model-file contents of ``model`` (weights copied to the CPU)."""
    config = plain(model.model_config.to_dict())
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jmp_ase_version": __version__,
        "config": config,
        "state_dict": state,
        "checksum": checksum(config, state),
    }


def save_model(model: FineTunedModel, path: str | os.PathLike) -> None:
    """Write ``model`` as a self-describing model file (atomically).

    Records the jmp-ase version and the date in ``model.model_config.provenance``
    (keys ``jmp_ase_version`` and ``saved``) when they are not there yet.
    """
    provenance = model.model_config.provenance
    provenance.setdefault("jmp_ase_version", __version__)
    provenance.setdefault("saved", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_torch_save(model_to_dict(model), path)


def _read(path: Path) -> dict:
    """File contents via ``torch.load(weights_only=True)``; ``ValueError`` if unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means "not a readable model file"
        first = (str(err).splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path}: not a readable jmp-ase model file; the file is truncated, corrupt or of another "
            f"kind ({type(err).__name__}: {first}). {NOT_OURS_HINT}"
        ) from None


def check_content(content, source: str) -> dict:
    """Raise ``ValueError`` (what is wrong, what was expected) unless ``content`` is a valid model file."""
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = sorted(map(str, content))[:8] if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{source}: not a jmp-ase model file (expected a dict with format={FORMAT!r}, found {found}). "
            f"{NOT_OURS_HINT}"
        )
    version = content.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ValueError(
            f"{source}: model file format version {version!r}, but this jmp-ase ({__version__}) reads only "
            f"version {FORMAT_VERSION}; the file was written by jmp-ase {content.get('jmp_ase_version')!r}"
            + (". Upgrade jmp-ase to read it." if newer else ".")
        )
    missing = [k for k in REQUIRED_KEYS if k not in content]
    if missing:
        raise ValueError(f"{source}: corrupt model file, the entries {missing} are missing")
    state = content["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{source}: corrupt model file, state_dict must map names to tensors")
    if "checksum" in content:
        found = checksum(content["config"], state)
        if found != content["checksum"]:
            raise ValueError(
                f"{source}: corrupt model file, the checksum of config and weights is {found}, "
                f"expected {content['checksum']} (the file was damaged after it was written)"
            )
    return content


def _float_dtype(state: dict) -> torch.dtype:
    """The floating dtype of the saved weights (float32 unless all are another one)."""
    dtypes = {v.dtype for v in state.values() if torch.is_floating_point(v)}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def model_from_dict(content: dict, source: str = "<dict>") -> FineTunedModel:
    """Rebuild a model (eval mode, CPU, the saved dtype) from model-file contents."""
    content = check_content(content, source)
    try:
        config = ModelConfig.from_dict(content["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"{source}: corrupt model configuration: {err}") from None
    state = content["state_dict"]
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{source}: corrupt model file, weights {bad[:5]} contain NaN or inf")
    model = FineTunedModel(config).to(_float_dtype(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{source}: the weights do not match the model configuration saved with them "
            f"(expected the tensors of that configuration):\n{err}"
        ) from None
    return model.eval()


def load_model(model: str | os.PathLike) -> FineTunedModel:
    """Load a model file, or a shipped model by name (eval mode, on the CPU)."""
    path = resolve_model_path(model)
    return model_from_dict(_read(path), str(path))


def _pretrain_heads(content) -> list[str] | None:
    """Head names of a pre-trained checkpoint written by jmp-ase (``jmp-mini``), else None."""
    from jmp_ase.io.jmp_checkpoint import jmp_ase_hparams

    hparams = jmp_ase_hparams(content.get("hyper_parameters") if isinstance(content, dict) else None)
    return None if hparams is None else [str(t.get("name")) for t in hparams.get("tasks", [])]


def load_predictor(model: str | os.PathLike) -> FineTunedModel:
    """What :class:`~jmp_ase.calculators.calculator.JMPCalculator` runs for a path or model name."""
    path = resolve_model_path(model)
    content = _read(path)
    heads = _pretrain_heads(content)
    if heads is not None:
        raise ValueError(
            f"{model}: a pre-trained backbone with one head per pre-training data set {heads}, not a "
            f"fine-tuned model; use JMPCalculator.from_jmp_checkpoint({str(model)!r}, head={heads[0]!r}) "
            "or fine-tune it (jmp-train finetune --pretrained ...)")
    return model_from_dict(content, str(path))


def model_provenance(model: str | os.PathLike) -> dict:
    """How a model file, shipped model or jmp-ase pre-trained checkpoint was made (data, recipe,
    test errors); empty for files that do not say."""
    path = resolve_model_path(model)
    return provenance_of(_read(path), str(path))


def read_model_content(model: str | os.PathLike) -> tuple[dict, str]:
    """The contents of a model file or jmp-ase pre-trained checkpoint (one read) and its path."""
    path = resolve_model_path(model)
    return _read(path), str(path)


def provenance_of(content: dict, source: str) -> dict:
    """:func:`model_provenance` of contents already read."""
    if _pretrain_heads(content) is not None:
        return dict(content.get("jmp_ase_provenance") or {})
    return dict(check_content(content, source)["config"].get("provenance") or {})


def model_settings(model: str | os.PathLike) -> list[str]:
    """One line per head (pre-trained checkpoints) or for the model: graph settings, how tags are
    read and which quadruplet basis the backbone uses, as ``jmp-train info`` prints them."""
    path = resolve_model_path(model)
    return settings_of(_read(path), str(path))


def settings_of(content: dict, source: str) -> list[str]:
    """:func:`model_settings` of contents already read."""
    from jmp_ase.io.jmp_checkpoint import jmp_ase_hparams

    def line(name, cutoff, max_neighbors, tags, backbone: BackboneConfig, order="jmp"):
        basis = basis_description(backbone)
        return (f"{name}: cutoff {cutoff} Å, max_neighbors {max_neighbors} ({order} order), tags {tags}, "
                f"quadruplet basis {basis}")

    hparams = jmp_ase_hparams(content.get("hyper_parameters") if isinstance(content, dict) else None)
    if hparams is not None:
        values = hparams.get("backbone") or {}
        backbone = BackboneConfig(smooth_dihedral=bool(values.get("smooth_dihedral", False)),
                                  dihedral_damping=float(values.get("dihedral_damping", 0.0)))
        return [line(f"head {t.get('name')}", t.get("cutoff"), t.get("max_neighbors"), t.get("tags", "auto"), backbone)
                for t in hparams.get("tasks", [])]
    config = ModelConfig.from_dict(check_content(content, source)["config"])
    heads = ", ".join(f"{h.name} ({h.kind}" + (f", committee of {h.committee}" if h.committee > 1 else "") + ")"
                      for h in config.heads)
    isolated = "; isolated atoms at their element references" if config.isolated_atom_references else ""
    return [line("model", config.cutoff, config.max_neighbors, config.tags, config.backbone,
                 config.neighbor_order) + f"; heads {heads}{isolated}"]
