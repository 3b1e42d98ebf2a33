"""Read original JMP checkpoints (``jmp-s.pt``, ``jmp-l.pt``) without the original JMP package.

The files pickle JMP's own configuration classes, so they are read with the
restricted unpickler of :mod:`jmp_ase.io.safe_pickle`; this module splits the
tensors by role, applies JMP's EMA ordering rule and infers the backbone sizes.
"""
from __future__ import annotations

import collections
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from jmp_ase.nn.config import BackboneConfig
from jmp_ase.io.safe_pickle import ForeignObject, UnsafeCheckpointError, safe_load

__all__ = [
    "ForeignObject",
    "JMPCheckpoint",
    "UnsafeCheckpointError",
    "checkpoint_from_content",
    "ema_keys",
    "infer_backbone_config",
    "read_jmp_checkpoint",
    "safe_load",
]


# --------------------------------------------------------------------------
# Checkpoint layout
# --------------------------------------------------------------------------
@dataclass
class JMPCheckpoint:
    """Tensors of an original JMP checkpoint, split by role (all on the CPU).

    Attributes
    ----------
    atom_embedding:
        ``(num_elements, emb_size_atom)``; row ``Z - 1`` embeds element ``Z``.
    backbone:
        GemNet-OC state dict, keys without the ``"backbone."`` prefix
        (includes the ``scale_factor`` and ``rbf`` buffers).  In JMP,
        ``out_blocks.N.seq_energy_pre`` is an alias of ``out_blocks.N.layers``;
        both key sets are kept.  They are equal for raw weights; the EMA tuple
        lists only ``layers.*``, and ``torch.nn.Module.load_state_dict`` (alias registered
        last) would then leave stale raw values in effect, so with ``ema=True``
        the alias keys are given their ``layers.*`` twins' EMA values (this is
        what reproduces the original code's EMA outputs).
    energy_heads:
        One dict per pre-training task with keys ``"0.weight"`` ``(d, d)``,
        ``"0.bias"`` ``(d,)``, ``"2.weight"`` ``(1, d)``; ``d = emb_size_atom``.
    force_heads:
        Same layout with ``d = emb_size_edge``.
    task_names:
        Task name of each head (in head order) when the file says so, else None.
    source:
        Path the checkpoint was read from.
    ema:
        Whether the EMA weights replaced the raw training weights.
    """

    atom_embedding: torch.Tensor
    backbone: dict[str, torch.Tensor]
    energy_heads: list[dict[str, torch.Tensor]]
    force_heads: list[dict[str, torch.Tensor]]
    task_names: list[str] | None
    source: str
    ema: bool
    declared_backbone: dict | None = None  # jmp-ase pre-training: the full backbone config
    declared_tasks: list | None = None  # jmp-ase pre-training: per head name, graph settings, normalisation

    @property
    def num_tasks(self) -> int:
        """Number of pre-training heads (energy/force pairs)."""
        return len(self.energy_heads)

    def backbone_config(self) -> BackboneConfig:
        """Backbone sizes inferred from the tensor shapes (see :func:`infer_backbone_config`).

        A file written by jmp-ase's pre-training also declares its config (``hyper_parameters
        ["backbone"]``), including what leaves no trace in the shapes (rbf cutoff, envelope,
        qint tags); that config is returned after checking it against the shapes.
        """
        inferred = infer_backbone_config(self.backbone, self.atom_embedding)
        if self.declared_backbone is None:
            return inferred
        declared = BackboneConfig.from_dict(dict(self.declared_backbone))
        mismatched = {f: (getattr(declared, f), getattr(inferred, f)) for f in SHAPE_FIELDS
                      if getattr(declared, f) != getattr(inferred, f)}
        if mismatched:
            raise ValueError(f"{self.source}: the declared backbone config does not fit the tensors "
                             f"(field: (declared, from shapes)): {mismatched}")
        return declared


PRETRAIN_FORMAT = "jmp-ase-pretrain"  # hyper_parameters["format"] of jmp-train pretrain's files
_EMA_SKIP_SUFFIXES = ("rbf.offset", "rbf.temps", "scale_factor")


def ema_keys(state_dict_keys: Iterable[str]) -> list[str]:
    """Keys that JMP's EMA tuple lists, in order.

    Every key except those ending in ``rbf.offset``, ``rbf.temps`` or
    ``scale_factor``, containing ``.seq_energy_pre.`` (an alias of
    ``layers``) or starting with ``task_steps`` (metric state).
    """
    return [
        k for k in state_dict_keys
        if not k.endswith(_EMA_SKIP_SUFFIXES)
        and ".seq_energy_pre." not in k
        and not k.startswith("task_steps")
    ]


def _find_ema(checkpoint: Mapping[str, Any]) -> Any:
    states = checkpoint.get("optimizer_states")
    if isinstance(states, (list, tuple)):
        for state in states:
            if isinstance(state, Mapping) and state.get("ema") is not None:
                return state["ema"]
    return None


def _apply_ema(state_dict: dict[str, torch.Tensor], ema: Any, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(ema, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in ema):
        raise ValueError(f"{path}: optimizer_states[...]['ema'] is not a sequence of tensors")
    keys = ema_keys(state_dict)
    if len(keys) != len(ema):
        raise ValueError(
            f"{path}: the EMA holds {len(ema)} tensors but the state dict has {len(keys)} "
            "EMA-tracked keys (all but rbf.offset/rbf.temps/scale_factor/.seq_energy_pre./"
            "task_steps); the file does not follow JMP's EMA layout"
        )
    out = dict(state_dict)
    for key, tensor in zip(keys, ema):
        if tuple(tensor.shape) != tuple(state_dict[key].shape):
            raise ValueError(
                f"{path}: EMA tensor for {key!r} has shape {tuple(tensor.shape)}, the state dict "
                f"has {tuple(state_dict[key].shape)}; the EMA order does not match"
            )
        out[key] = tensor
    # ``seq_energy_pre`` is the same module as ``layers`` in JMP: its parameters are the
    # EMA-updated ones, so the alias keys take the values of their ``layers`` twins.
    for key in out:
        if ".seq_energy_pre." in key:
            out[key] = out[key.replace(".seq_energy_pre.", ".layers.")]
    return out


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _as_fields(obj: Any) -> Mapping[str, Any] | None:
    if isinstance(obj, ForeignObject):
        return obj.fields()
    if isinstance(obj, Mapping):
        return obj
    return None


def _task_names_from_hparams(hparams: Any) -> list[str] | None:
    """Search the recorded hyper-parameters for a ``tasks`` list with names."""
    seen: set[int] = set()
    queue: collections.deque[tuple[Any, int]] = collections.deque([(hparams, 0)])
    while queue:
        obj, depth = queue.popleft()
        if id(obj) in seen or depth > 12:
            continue
        seen.add(id(obj))
        fields = _as_fields(obj)
        if fields is not None:
            tasks = fields.get("tasks")
            if isinstance(tasks, (list, tuple)) and tasks:
                names = []
                for task in tasks:
                    task_fields = _as_fields(task)
                    name = task_fields.get("name") if task_fields is not None else None
                    if not isinstance(name, str):
                        break
                    names.append(name)
                else:
                    return names
            children: Iterable[Any] = list(fields.values())
        elif isinstance(obj, (list, tuple)):
            children = obj
        else:
            continue
        queue.extend((child, depth + 1) for child in children)
    return None


_TASK_STEPS = re.compile(r"^task_steps\.(?:_module_dict\.)?(?:_typed_moduledict_)?([^.]+)\.")


def _task_names_from_state_dict(keys: Iterable[str]) -> list[str] | None:
    names: list[str] = []
    for key in keys:
        match = _TASK_STEPS.match(key)
        if match and match.group(1) not in names:
            names.append(match.group(1))
    return names or None


def _heads(state_dict: Mapping[str, torch.Tensor], prefix: str) -> list[dict[str, torch.Tensor]]:
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        index, _, rest = key[len(prefix):].partition(".")
        if not index.isdigit() or not rest:
            continue
        by_index.setdefault(int(index), {})[rest] = value
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"head indices under {prefix!r} are not 0..n-1: {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def read_jmp_checkpoint(path: str | os.PathLike, ema: bool = False) -> JMPCheckpoint:
    """Read an original JMP checkpoint (or a bare JMP state dict) safely.

    ``path`` may hold a Lightning checkpoint (``{"state_dict": ..., ...}``)
    or directly a state dict with ``embedding.*``, ``backbone.*`` and
    optionally ``output.*`` keys.  With ``ema=True`` the exponential moving
    average weights stored in ``optimizer_states[0]["ema"]`` replace the
    tracked tensors (see :func:`ema_keys`); buffers such as ``scale_factor``
    keep their state-dict values.  No foreign code is imported or run (see
    :func:`safe_load`).
    """
    return checkpoint_from_content(safe_load(path), str(path), ema)


def checkpoint_from_content(raw: Any, source: str, ema: bool = False) -> JMPCheckpoint:
    """:func:`read_jmp_checkpoint` of contents already read (``source`` names them in errors)."""
    if isinstance(raw, Mapping) and _is_state_dict(raw.get("state_dict")):
        checkpoint: Mapping[str, Any] = raw
        state_dict = dict(raw["state_dict"])
    elif _is_state_dict(raw):
        checkpoint = {}
        state_dict = dict(raw)
    else:
        raise ValueError(
            f"{source}: neither a Lightning checkpoint with a 'state_dict' nor a bare state dict "
            f"(top level is {type(raw).__name__})"
        )
    state_dict = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}

    if not any(k.startswith("backbone.") for k in state_dict):
        raise ValueError(
            f"{source}: no 'backbone.*' keys in the state dict; not a JMP GemNet-OC checkpoint "
            f"(first keys: {list(state_dict)[:5]})"
        )
    if "embedding.atom_embedding.weight" not in state_dict:
        raise ValueError(f"{source}: missing 'embedding.atom_embedding.weight'")

    if ema:
        ema_tensors = _find_ema(checkpoint)
        if ema_tensors is None:
            raise ValueError(
                f"{source}: ema=True but the file holds no EMA weights "
                "(no optimizer_states[...]['ema']); use ema=False"
            )
        state_dict = _apply_ema(state_dict, ema_tensors, source)

    def own(t: torch.Tensor) -> torch.Tensor:
        # detach from the (possibly memory-mapped) file and from autograd
        return t.detach().clone()

    backbone = {k[len("backbone."):]: own(v) for k, v in state_dict.items() if k.startswith("backbone.")}
    energy_heads = [{k: own(v) for k, v in h.items()} for h in _heads(state_dict, "output.out_energy.")]
    force_heads = [{k: own(v) for k, v in h.items()} for h in _heads(state_dict, "output.out_forces.")]

    task_names: list[str] | None = None
    try:
        task_names = _task_names_from_hparams(checkpoint.get("hyper_parameters"))
        if task_names is None or len(task_names) != len(energy_heads):
            task_names = _task_names_from_state_dict(state_dict)
    except Exception:  # hyper-parameters are informative only; never fail on them
        task_names = None
    if task_names is not None and len(task_names) != len(energy_heads):
        task_names = None

    return JMPCheckpoint(
        atom_embedding=own(state_dict["embedding.atom_embedding.weight"]),
        backbone=backbone,
        energy_heads=energy_heads,
        force_heads=force_heads,
        task_names=task_names,
        source=source,
        ema=ema,
        **_declared(checkpoint.get("hyper_parameters")),
    )


def jmp_ase_hparams(hparams) -> Mapping | None:
    """``hyper_parameters`` of a checkpoint written by jmp-ase's pre-training, else None."""
    if isinstance(hparams, Mapping) and hparams.get("format") == PRETRAIN_FORMAT:
        return hparams
    return None


def _declared(hparams) -> dict:
    """The backbone config and per-head task info a jmp-ase ``pretrain.ckpt`` declares."""
    hparams = jmp_ase_hparams(hparams) or {}
    backbone, tasks = hparams.get("backbone"), hparams.get("tasks")
    valid_tasks = isinstance(tasks, (list, tuple)) and all(isinstance(t, Mapping) for t in tasks)
    return {"declared_backbone": dict(backbone) if isinstance(backbone, Mapping) else None,
            "declared_tasks": [dict(t) for t in tasks] if valid_tasks else None}


# --------------------------------------------------------------------------
# Backbone sizes from tensor shapes
# --------------------------------------------------------------------------
def _count(keys: Iterable[str], prefix: str, residual_only: bool = False) -> int:
    """Number of distinct ``prefix.N`` sub-modules (optionally residual layers only)."""
    found: set[int] = set()
    for key in keys:
        if not key.startswith(prefix + "."):
            continue
        index, _, rest = key[len(prefix) + 1:].partition(".")
        if not index.isdigit():
            continue
        if residual_only and not rest.startswith("dense_mlp."):
            continue
        found.add(int(index))
    return len(found)


# Fields of BackboneConfig that the tensor shapes determine.
SHAPE_FIELDS = ("num_spherical", "num_radial", "num_blocks", "emb_size_atom", "emb_size_edge", "emb_size_trip_in",
                "emb_size_trip_out", "emb_size_quad_in", "emb_size_quad_out", "emb_size_aint_in",
                "emb_size_aint_out", "emb_size_rbf", "emb_size_cbf", "emb_size_sbf", "num_before_skip",
                "num_after_skip", "num_concat", "num_atom", "num_output_afteratom", "num_atom_emb_layers",
                "num_global_out_layers", "num_elements")


def infer_backbone_config(
    backbone_state: Mapping[str, Any], atom_embedding: Any
) -> BackboneConfig:
    """Infer every size field of :class:`~jmp_ase.nn.config.BackboneConfig` from shapes.

    ``backbone_state`` maps GemNet-OC keys (with or without ``"backbone."``)
    to tensors (meta tensors are fine); ``atom_embedding`` has shape
    ``(num_elements, emb_size_atom)``.  Settings that leave no trace in the
    shapes (cutoff, envelope, activation, qint tags) keep their defaults,
    which are JMP's.  Raises ``ValueError`` when a required tensor is missing
    or the shapes are inconsistent.
    """
    state = {
        (k[len("backbone."):] if k.startswith("backbone.") else k): v
        for k, v in backbone_state.items()
    }
    keys = list(state)

    def shape(key: str) -> tuple[int, ...]:
        try:
            return tuple(int(s) for s in state[key].shape)
        except KeyError:
            raise ValueError(
                f"backbone state dict lacks {key!r}; jmp-ase supports only the full GemNet-OC "
                "variant (quadruplet, atom-edge, edge-atom and atom-atom interactions)"
            ) from None

    num_elements, emb_size_atom = (int(s) for s in tuple(atom_embedding.shape))
    num_radial = shape("bases.radial_basis.rbf.offset")[0]
    emb_size_edge = shape("bases.edge_emb.dense.linear.weight")[0]
    _, num_spherical, emb_size_cbf = shape("bases.mlp_cbf_tint.weight")
    sbf_radial, sbf_spherical, emb_size_sbf = shape("bases.mlp_sbf_qint.weight")
    emb_size_rbf = shape("bases.mlp_rbf_tint.linear.weight")[0]

    num_blocks = _count(keys, "int_blocks")
    if num_blocks == 0:
        raise ValueError("backbone state dict has no 'int_blocks.N' entries")
    num_out_blocks = _count(keys, "out_blocks")
    if num_out_blocks != num_blocks + 1:
        raise ValueError(
            f"{num_blocks} interaction blocks need {num_blocks + 1} output blocks, found {num_out_blocks}"
        )
    blk = "int_blocks.0."
    config = BackboneConfig(
        num_spherical=num_spherical,
        num_radial=num_radial,
        num_blocks=num_blocks,
        emb_size_atom=emb_size_atom,
        emb_size_edge=emb_size_edge,
        emb_size_trip_in=shape(blk + "trip_interaction.down_projection.linear.weight")[0],
        emb_size_trip_out=shape(blk + "trip_interaction.up_projection_ca.linear.weight")[1],
        emb_size_quad_in=shape(blk + "quad_interaction.down_projection.linear.weight")[0],
        emb_size_quad_out=shape(blk + "quad_interaction.up_projection_ca.linear.weight")[1],
        emb_size_aint_in=shape(blk + "atom_interaction.down_projection.linear.weight")[0],
        emb_size_aint_out=shape(blk + "atom_interaction.up_projection.linear.weight")[1],
        emb_size_rbf=emb_size_rbf,
        emb_size_cbf=emb_size_cbf,
        emb_size_sbf=emb_size_sbf,
        num_before_skip=_count(keys, blk + "layers_before_skip"),
        num_after_skip=_count(keys, blk + "layers_after_skip"),
        num_concat=_count(keys, blk + "residual_m"),
        num_atom=_count(keys, blk + "atom_update.layers", residual_only=True),
        num_output_afteratom=_count(keys, "out_blocks.0.seq_energy2"),
        num_atom_emb_layers=_count(keys, blk + "atom_emb_layers"),
        num_global_out_layers=_count(keys, "out_mlp_E.out_mlp", residual_only=True),
        num_elements=num_elements,
    )

    # consistency checks: catch a layout this reader does not understand
    problems = []
    if sbf_radial != num_radial or sbf_spherical != num_spherical**2:
        problems.append(
            f"mlp_sbf_qint.weight {shape('bases.mlp_sbf_qint.weight')} does not match "
            f"num_radial={num_radial}, num_spherical={num_spherical}"
        )
    edge_in = shape("bases.edge_emb.dense.linear.weight")[1]
    if edge_in != 2 * emb_size_atom + num_radial:
        problems.append(
            f"edge embedding input size {edge_in} != 2 * emb_size_atom + num_radial "
            f"= {2 * emb_size_atom + num_radial}"
        )
    if shape("out_mlp_E.out_mlp.0.linear.weight") != (emb_size_atom, emb_size_atom * (num_blocks + 1)):
        problems.append("out_mlp_E.out_mlp.0 does not match emb_size_atom and num_blocks")
    for i in range(1, num_blocks):
        b = f"int_blocks.{i}."
        counts = (
            _count(keys, b + "layers_before_skip"), _count(keys, b + "layers_after_skip"),
            _count(keys, b + "residual_m"), _count(keys, b + "atom_emb_layers"),
            _count(keys, b + "atom_update.layers", residual_only=True),
        )
        expected = (config.num_before_skip, config.num_after_skip, config.num_concat,
                    config.num_atom_emb_layers, config.num_atom)
        if counts != expected:
            problems.append(f"int_blocks.{i} has layer counts {counts}, int_blocks.0 has {expected}")
    if problems:
        raise ValueError("inconsistent GemNet-OC state dict: " + "; ".join(problems))
    return config
