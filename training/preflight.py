"""Checks that run before torch and Lightning are imported, so that ``jmp-train`` refuses bad
input within seconds, with one message naming the file or option: data files (exist, readable,
not empty, first structure has the labels), the output folder (holds no model or run, not the
parent's folder, writable) and the parent (exists). Only the standard library, PyYAML and ASE."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from jmp_ase.training.pretrain_config import PretrainConfig
from jmp_ase.training.threads import requested_threads, use_threads

# Files that make a folder "hold a run or a model": never overwritten by a new run.
RUN_FILES = ("model.ckpt", "last.ckpt", "metrics.csv", "steps.csv")
MODEL_SUFFIXES = (".ckpt", ".pt", ".pth")
_EXTXYZ, _DB, _LMDB = (".extxyz", ".xyz"), (".db", ".json"), (".lmdb", ".mdb")


def parent_path(pretrained: str) -> Path:
    """The parent's file: a path, or the shipped model of that name (no torch import)."""
    path = Path(str(pretrained))
    if path.is_file():
        return path
    spec = importlib.util.find_spec("jmp_ase")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    shipped = models / f"{pretrained}.ckpt"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in models.glob("*.ckpt"))
    raise ValueError(f"--pretrained: no model file {str(pretrained)!r} and no shipped model of that name; "
                     f"shipped models: {names}")


def check_parent(pretrained: str | None) -> Path | None:
    if pretrained is None:
        return None
    path = parent_path(pretrained)
    if not os.access(path, os.R_OK):
        raise ValueError(f"--pretrained: {path} is not readable")
    if path.stat().st_size == 0:
        raise ValueError(f"--pretrained: {path} is empty")
    return path


def check_out(out, resume: bool = False, parent: Path | None = None, option: str = "--out") -> Path:
    """Refuse an output folder that holds a model file or another run (unless resuming it), that
    holds the parent, or that cannot be written; creates it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file, not a folder")
    if parent is not None and out.is_dir() and Path(parent).resolve().parent == out.resolve():
        raise ValueError(f"{option} {out} holds the parent model {parent}: the run would overwrite it; "
                         "choose another folder")
    if resume:
        if not (out / "last.ckpt").is_file():
            raise ValueError(f"cannot resume: {out / 'last.ckpt'} does not exist")
    elif out.is_dir():
        taken = sorted(p.name for p in out.iterdir()
                       if p.name in RUN_FILES or (p.is_file() and p.suffix in MODEL_SUFFIXES))
        if taken:
            raise ValueError(f"{option} {out} already holds a run or a model ({', '.join(taken)}); "
                             "use --resume to continue it, or another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".jmp-train-write-test"):
            pass
    except OSError as err:
        raise ValueError(f"{option} {out} is not writable: {err.strerror or err}") from None
    return out


def _format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    if path.suffix.lower() in _EXTXYZ:
        return "extxyz"
    if path.suffix.lower() in _DB:
        return "db"
    if path.suffix.lower() in _LMDB or (path.is_dir() and (path / "data.mdb").exists()):
        return "lmdb"
    raise ValueError(f"{path}: cannot tell the format from the name; use .extxyz/.xyz, .db or .lmdb")


def _labels(atoms) -> set:
    names = set(getattr(atoms.calc, "results", {}) or {}) | set(atoms.info) | set(atoms.arrays)
    return names - {"numbers", "positions"}


def check_data(paths, targets, option: str, fmt: str | None = None) -> None:
    """Every file exists, is readable and not empty; the first structure of each extxyz file or
    ASE database has every target's label."""
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or []):
        path = Path(path)
        if not path.exists():
            raise ValueError(f"{option}: no such data file: {path}")
        kind = _format(path, fmt)
        if not os.access(path, os.R_OK):
            raise ValueError(f"{option}: {path} is not readable")
        if path.is_file() and path.stat().st_size == 0:
            raise ValueError(f"{option}: {path} is empty (no structures)")
        if kind == "lmdb":
            continue  # read (and its labels checked) when the data set is opened
        import ase.io

        try:
            atoms = ase.io.read(path, index=0, format="extxyz" if kind == "extxyz" else None)
        except StopIteration:
            raise ValueError(f"{option}: {path} holds no structures") from None
        except Exception as err:  # noqa: BLE001 - ASE raises many kinds for a malformed file
            raise ValueError(f"{option}: {path} is not a readable {kind} file: {err}") from None
        missing = [t for t in targets if t not in _labels(atoms)]
        if missing:
            raise ValueError(f"{option}: {path}: structure 0 has no label {missing[0]!r} "
                             f"(available labels: {sorted(_labels(atoms))})")


def preflight_finetune(config) -> Path | None:
    """All checks of a :class:`~jmp_ase.training.finetune_config.FinetuneConfig` that need no
    model; returns the parent's path (None for scratch without a parent)."""
    parent = check_parent(config.pretrained)
    check_data(config.train, config.targets, "--train", config.format)
    if config.val:
        check_data(config.val, config.targets, "--val", config.format)
    if config.test:
        check_data(config.test, config.targets, "--test", config.format)
    for head, files in (config.replay or {}).items():
        check_data(files, ["energy", "forces"], f"replay data of head {head!r}", config.format)
    if not is_worker_process():
        check_out(config.out, config.resume, parent)
    return parent


def is_worker_process() -> bool:
    """True in the processes a DDP launcher starts besides the first (they share its --out)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def preflight_pretrain(config: PretrainConfig, resume: bool | None = None) -> None:
    """Checks of a pre-training config that need no torch: every data set's files (energy and
    forces labels) and an output folder that is writable and, unless resuming, holds no run."""
    for d in config.data.datasets:
        for split in ("train", "val"):
            if getattr(d, split):
                check_data(getattr(d, split), ["energy", "forces"], f"data set {d.name!r} ({split})", d.format)
    resume = config.resume if resume is None else resume
    out = Path(config.out_dir)
    if not is_worker_process():
        if not resume and out.is_dir():
            taken = sorted(p.name for p in out.iterdir() if p.name in ("pretrain.ckpt", "last.ckpt", "metrics.csv"))
            if taken:
                raise ValueError(f"out_dir {out} already holds a run ({', '.join(taken)}); use --resume to continue "
                                 "it, or another out_dir")
        check_out(out, resume=False, option="out_dir") if not out.is_dir() else _writable(out, "out_dir")


def prepare_pretrain(path, resume: bool | None = None, threads: int | None = None, **trainer) -> PretrainConfig:
    """The start of every pre-training run (``jmp-train pretrain``, ``python -m jmp_ase.training.pretrain``):
    the YAML file ``path`` typed and checked with the ``trainer`` overrides that are not None, its data
    and output folder checked (all before torch is imported), then the CPU threads set."""
    requested_threads(threads)
    config = PretrainConfig.from_yaml(path, **trainer)
    preflight_pretrain(config, resume)
    use_threads(threads)
    return config


def _writable(out: Path, option: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".jmp-train-write-test"):
            pass
    except OSError as err:
        raise ValueError(f"{option} {out} is not writable: {err.strerror or err}") from None
