"""Typed settings from YAML: the one loader and type coercion of every ``jmp-train`` config
dataclass (:class:`~jmp_ase.training.finetune_config.FinetuneConfig`,
:class:`~jmp_ase.training.pretrain_config.PretrainConfig`). Only the standard library and PyYAML.

YAML reads ``1e-4`` (no dot) as a string: numeric fields take such strings as numbers, and
refuse other values with a message naming the setting. Unknown keys are refused by name;
nested mappings become the nested dataclasses their fields declare.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path


def read_yaml_mapping(path, what: str) -> dict:
    """The mapping in the YAML file ``path`` (empty file: ``{}``); ``ValueError`` otherwise."""
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a readable YAML file: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a {what} config is a mapping of settings, got {type(values).__name__}")
    return values


def build(cls, values, what: str, where: str = ""):
    """``cls(**values)`` with every field's value coerced to its declared type (nested dataclasses
    from mappings); ``ValueError`` naming ``where`` + the key for unknown keys and bad values."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ValueError(f"{where.rstrip('.') or what + ' config'} must be a mapping of settings, "
                         f"got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in values if key not in fields]
    if unknown:
        raise ValueError(f"unknown {what} setting {where}{unknown[0]!r}; known settings: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: coerce(value, hints[key], what, f"{where}{key}") for key, value in values.items()})


def _members(kind) -> tuple:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return (kind,)


def coerce(value, kind, what: str, name: str):
    """``value`` as the declared type ``kind`` (see the module docstring)."""
    members = _members(kind)
    if value is None:
        if type(None) in members:
            return None
        raise ValueError(f"setting {name} must not be empty (null)")
    nested = [m for m in members if dataclasses.is_dataclass(m)]
    if nested and isinstance(value, dict):
        return build(nested[0], value, what, f"{name}.")
    if typing.get_origin(kind) is list and dataclasses.is_dataclass(typing.get_args(kind)[0]):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"setting {name} must be a list, got {value!r}")
        return [build(typing.get_args(kind)[0], v, what, f"{name}[{k}].") for k, v in enumerate(value)]
    plain = {m for m in members if m is not type(None)}
    if plain == {bool}:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise ValueError(f"setting {name} must be true or false, got {value!r}")
    if plain and plain <= {int, float}:
        return _number(value, plain, name)
    return value  # strings, lists, mappings and mixed types: the config's own checks judge them


def _number(value, kinds: set, name: str):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"setting {name} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip()) if not value.strip().lstrip("+-").isdigit() else int(value)
        except ValueError:
            raise ValueError(f"setting {name} must be a number, got {value!r}") from None
    if int in kinds and (isinstance(value, int) or float not in kinds):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"setting {name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)
