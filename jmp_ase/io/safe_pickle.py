"""Restricted unpickling: read tensors from checkpoints that pickle foreign classes.

JMP's published files (``jmp-s.pt``, ``jmp-l.pt``) are PyTorch Lightning
checkpoints.  Besides the tensors they pickle JMP's own configuration classes
(``jmp.tasks.pretrain.module.PretrainConfig`` and friends) in
``hyper_parameters``.  ``torch.load(weights_only=True)`` therefore refuses
them, and a plain ``torch.load`` needs the original package importable and
runs whatever the pickle asks for.

This module reads such files with a restricted unpickler:

* the few globals that tensors and plain containers need (torch's tensor
  rebuild helpers, dtypes, ``torch.Size``, ``collections.OrderedDict``,
  builtin containers, numpy arrays/scalars, ``_codecs.encode``) resolve to the
  real objects;
* every other class resolves to an inert :class:`ForeignObject` subclass that
  only records what the pickle hands it (constructor arguments, state,
  items) and never imports or runs foreign code;
* a global that is a function (or any other non-class object) in an already
  loaded standard-library, torch or numpy module, and is not on the
  allow-list -- ``os.system``, ``builtins.eval``, ``torch.load`` ... -- makes
  the load fail with :class:`UnsafeCheckpointError`.  Globals of modules that
  are not loaded cannot be inspected without importing them; they become
  placeholders too, which is safe because a placeholder never calls anything.
"""
from __future__ import annotations

import collections
import os
import pickle
import re
import sys
import types
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

__all__ = ["ForeignObject", "RestrictedUnpickler", "UnsafeCheckpointError", "safe_load"]


class UnsafeCheckpointError(ValueError):
    """The pickle asks for a callable that the restricted reader refuses to run."""


# --------------------------------------------------------------------------
# Placeholders for foreign classes
# --------------------------------------------------------------------------
class ForeignObject:
    """Inert stand-in for an object of a class the reader does not trust.

    Subclasses are created on the fly, one per pickled ``module.qualname``;
    the original names are in ``foreign_module`` / ``foreign_name``.
    Whatever the pickle passes is recorded and nothing else happens:

    * ``foreign_args`` / ``foreign_kwargs``: constructor arguments,
    * ``foreign_state``: the object passed to ``__setstate__`` (``BUILD``),
    * ``foreign_items``: ``(key, value)`` pairs set with ``obj[key] = value``
      (dict subclasses), ``foreign_list``: appended items (list subclasses).
    """

    foreign_module: str = ""
    foreign_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "ForeignObject":
        obj = object.__new__(cls)
        object.__setattr__(obj, "foreign_args", args)
        object.__setattr__(obj, "foreign_kwargs", kwargs)
        object.__setattr__(obj, "foreign_state", None)
        object.__setattr__(obj, "foreign_items", [])
        object.__setattr__(obj, "foreign_list", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # arguments already recorded
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "foreign_state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.foreign_items.append((key, value))

    def append(self, value: Any) -> None:
        self.foreign_list.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.foreign_list.extend(values)

    def fields(self) -> dict[str, Any]:
        """Best-effort mapping of the recorded attributes (``{}`` if none).

        Understands plain ``__dict__`` states, ``(state, slotstate)`` pairs,
        pydantic-style ``{"__dict__": {...}, ...}`` states and dict subclasses.
        """
        out: dict[str, Any] = {}
        state = self.foreign_state
        if isinstance(state, tuple) and len(state) == 2:
            for part in state:
                if isinstance(part, dict):
                    out.update(part)
        elif isinstance(state, dict):
            inner = state.get("__dict__")
            out.update(inner if isinstance(inner, dict) else state)
        for key, value in self.foreign_items:
            if isinstance(key, str):
                out.setdefault(key, value)
        out.update({k: v for k, v in self.foreign_kwargs.items()})
        return out

    def __repr__(self) -> str:
        return f"<ForeignObject {self.foreign_module}.{self.foreign_name}>"


_PLACEHOLDERS: dict[tuple[str, str], type] = {}


def _placeholder(module: str, name: str) -> type:
    key = (module, name)
    cls = _PLACEHOLDERS.get(key)
    if cls is None:
        cls = type(
            "Foreign_" + re.sub(r"\W", "_", name),
            (ForeignObject,),
            {"foreign_module": module, "foreign_name": name, "__module__": __name__},
        )
        _PLACEHOLDERS[key] = cls
    return cls


# --------------------------------------------------------------------------
# Allow-list
# --------------------------------------------------------------------------
def _checked_rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2`` restricted to plain tensor types."""
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise UnsafeCheckpointError(f"tensor subclass {new_type!r} is not allowed")
    from torch._tensor import _rebuild_from_type_v2

    return _rebuild_from_type_v2(func, new_type, args, state)


def _checked_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (pickle protocols 0/1) for placeholders only."""
    if isinstance(cls, type) and issubclass(cls, ForeignObject):
        obj = cls()
        if state is not None:
            obj.foreign_args = (state,)
        return obj
    raise UnsafeCheckpointError(f"copyreg._reconstructor for {cls!r} is not allowed")


_BUILTIN_TYPES = (
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex",
    "bool", "str", "bytes", "bytearray", "slice", "range",
)
_TORCH_UTILS_REBUILD = (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
    "_rebuild_parameter", "_rebuild_parameter_with_state",
    "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_meta_tensor_no_storage",
)

_ALLOWED: dict[tuple[str, str], Any] | None = None


def _allowed() -> dict[tuple[str, str], Any]:
    global _ALLOWED
    if _ALLOWED is not None:
        return _ALLOWED
    import builtins
    import codecs

    import torch._utils
    import torch.serialization

    table: dict[tuple[str, str], Any] = {}
    for name in _BUILTIN_TYPES:
        table[("builtins", name)] = getattr(builtins, name)
        table[("__builtin__", name)] = getattr(builtins, name)
    table[("collections", "OrderedDict")] = collections.OrderedDict
    table[("_codecs", "encode")] = codecs.encode
    table[("copyreg", "_reconstructor")] = _checked_reconstructor
    for name in _TORCH_UTILS_REBUILD:
        if hasattr(torch._utils, name):
            table[("torch._utils", name)] = getattr(torch._utils, name)
    table[("torch._tensor", "_rebuild_from_type_v2")] = _checked_rebuild_from_type_v2
    table[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    table[("torch", "Size")] = torch.Size
    table[("torch", "device")] = torch.device
    table[("torch", "Tensor")] = torch.Tensor
    table[("torch.nn.parameter", "Parameter")] = torch.nn.Parameter
    for name, value in vars(torch).items():
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            table[("torch", name)] = value
        elif name.endswith("Storage") and isinstance(value, type):
            table[("torch", name)] = value
    table[("torch.storage", "UntypedStorage")] = torch.UntypedStorage
    table[("torch.storage", "TypedStorage")] = torch.TypedStorage
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = None
    if np is not None:
        multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            table[(mod, "_reconstruct")] = multiarray._reconstruct
            table[(mod, "scalar")] = multiarray.scalar
        table[("numpy", "ndarray")] = np.ndarray
        table[("numpy", "dtype")] = np.dtype
        dtypes = getattr(np, "dtypes", None)
        if dtypes is not None:
            for name, value in vars(dtypes).items():
                if isinstance(value, type) and issubclass(value, np.dtype):
                    table[("numpy.dtypes", name)] = value
    _ALLOWED = table
    return table


def _inspectable(module: str) -> types.ModuleType | None:
    """The loaded module object if it is trusted enough to look into, else None.

    Only standard-library, torch and numpy modules that are already imported
    qualify: looking into them runs no foreign code.
    """
    top = module.split(".", 1)[0]
    if top not in sys.stdlib_module_names and top not in ("torch", "numpy", "__builtin__"):
        return None
    if top == "__builtin__":
        module = "builtins"
    return sys.modules.get(module)


def _static_lookup(mod: types.ModuleType, qualname: str) -> tuple[bool, Any]:
    """Look up a dotted name through ``__dict__`` only (no ``__getattr__`` hooks)."""
    obj: Any = mod
    for part in qualname.split("."):
        namespace = getattr(obj, "__dict__", None)
        if not isinstance(namespace, Mapping) or part not in namespace:
            return False, None
        obj = namespace[part]
    return True, obj


def _resolve_global(module: str, name: str) -> Any:
    table = _allowed()
    hit = table.get((module, name))
    if hit is not None:
        return hit
    mod = _inspectable(module)
    if mod is not None:
        found, obj = _static_lookup(mod, name)
        if found and not isinstance(obj, type):
            raise UnsafeCheckpointError(
                f"the pickle references {module}.{name}, which is not a class and not on the "
                "allow-list of tensor rebuild functions; refusing to load"
            )
    return _placeholder(module, name)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals through the allow-list (see module doc)."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        return _resolve_global(module, name)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    import io

    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


#: A module-like object to pass as ``torch.load(..., pickle_module=...)``.
restricted_pickle = types.ModuleType("jmp_ase.restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
restricted_pickle.loads = _restricted_loads  # type: ignore[attr-defined]
restricted_pickle.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


def safe_load(path: str | os.PathLike) -> Any:
    """``torch.load`` a (possibly foreign) checkpoint onto the CPU without running foreign code.

    Tensors come back as tensors, plain containers as themselves, everything
    else as :class:`ForeignObject` placeholders.  Raises ``FileNotFoundError``
    for a missing file, :class:`UnsafeCheckpointError` for a pickle that
    references a refused callable and ``ValueError`` (naming the path) for a
    file that is not a PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    use_mmap = zipfile.is_zipfile(path)
    try:
        try:
            return torch.load(
                path, map_location="cpu", weights_only=False,
                pickle_module=restricted_pickle, mmap=use_mmap,
            )
        except RuntimeError:
            if not use_mmap:
                raise
            # mmap needs an aligned zip layout; read the file into memory instead.
            return torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle,
            )
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except Exception as err:  # torch/pickle/zip report a broken file in many ways
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (torch zip or pickle file): "
            f"{type(err).__name__}: {err}"
        ) from err
