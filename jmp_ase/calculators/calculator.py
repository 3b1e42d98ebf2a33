"""ASE calculator for JMP models."""
from __future__ import annotations

import copy
import dataclasses
import threading
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols
from torch import nn

import jmp_ase.keys as keys
from jmp_ase.data.batch import IndexCache, atoms_arrays, batch_from_atoms
from jmp_ase.data.graphs import GraphSettings, validate_structure
from jmp_ase.nn.backbone import with_memory_mode
from jmp_ase.calculators.evaluation import voigt

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# eV/Å: forces above this on a structure without close contacts are reported (once).
FORCE_WARNING = 50.0
# Two atoms closer than this fraction of the sum of their covalent radii are a close contact.
CLOSE_CONTACT = 0.6


def has_close_contact(atoms) -> bool:
    """True when two atoms are closer than ``CLOSE_CONTACT`` x the sum of their covalent radii."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    radii = CLOSE_CONTACT * covalent_radii[atoms.numbers]
    i, j = neighbor_list("ij", atoms, radii, self_interaction=False)
    return bool(len(i))


class StressUnavailableError(PropertyNotImplementedError, ValueError):
    """Stress was requested for a structure that is not periodic in all three directions."""


class NeighborLimitWarning(RuntimeWarning):
    """A structure has atoms with more neighbours within the cutoff than ``max_neighbors``."""


def _user_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` called here that points at the first frame outside
    jmp-ase and ASE (the user's call), however deep the call came in."""
    import os
    import sys

    import ase

    inside = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(ase.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _check_device(device) -> torch.device:
    """``torch.device(device)``, or a ``ValueError`` saying why this torch cannot use it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"device={device!r}, but CUDA is not available (torch {torch.__version__}, {build}, "
                             "sees no GPU); use device='cpu' or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}, but torch sees only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}, but MPS is not available here; use device='cpu'")
    return dev


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def _prepare(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``module`` in eval mode on ``device`` in ``dtype``; a copy when that would change the caller's module."""
    params = list(module.parameters())
    fits = not module.training and all(p.device == device and p.dtype == dtype for p in params)
    fits = fits and all(b.device == device for b in module.buffers())
    if not fits:
        module = copy.deepcopy(module)
    return module.to(device=device, dtype=dtype).eval()


class JMPCalculator(Calculator):
    """ASE calculator running a JMP model (energy eV, forces eV/Å, stress eV/Å³ in Voigt order).

    ``model`` is a model file path, the name of a model shipped with the package, a
    :class:`~jmp_ase.nn.model.FineTunedModel` or a predictor module (see
    :mod:`jmp_ase.calculators.predictors`); the caller's module is never modified. Use
    :meth:`from_jmp_checkpoint` for the original pre-trained JMP weights. Energy, forces,
    per-atom energies, scalar heads (under their names) and, for 3-D periodic structures,
    stress come from one model pass and are cached until the atoms change.
    ``check_elements`` refuses elements absent from the model's training data.
    ``tags``: how the atoms' tags are read, ``"ignore"`` (every atom tag 2, as JMP fine-tunes)
    or ``"oc20"`` (0 sub-surface, 1 surface, 2 adsorbate: they decide which atoms enter the
    quadruplet graph); None takes the model file's setting (``jmp-train info`` shows it).
    ``neighbor_order``: how the nearest ``max_neighbors`` are chosen where an atom has more,
    ``"jmp"`` (JMP's rule: depends on the atom order) or ``"canonical"`` (independent of the
    atom order; see :class:`~jmp_ase.data.graphs.GraphSettings`); None takes the model's.
    ``memory``: ``"auto"``, ``"fast"`` or ``"lean"`` (see :attr:`jmp_ase.nn.backbone.GemNetOCBackbone.memory`;
    lean: large systems in a fraction of the memory, same numbers); None keeps the model's (``"auto"``).

    One calculator may be shared by several threads: each call computes, stores and reads
    its results under a lock, so every caller gets its own structure's results (calls run
    one at a time). Positions are moved to a local origin before the cast to ``dtype``, so
    float32 round-off does not depend on where the structure sits. On the CPU the model keeps
    freed memory in the process for the next call, except in lean mode where memory is short
    (:mod:`jmp_ase.allocator`: faster MD steps; ``JMP_ASE_RETAIN_FREED_MEMORY=0`` turns it off).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, model: nn.Module | str, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 16, check_elements: bool = True, tags: str | None = None,
                 neighbor_order: str | None = None, memory: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self._lock = threading.RLock()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        device = _check_device(device)
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from jmp_ase.io.model_file import load_predictor

            model = load_predictor(model)
        if not isinstance(model, nn.Module) or not hasattr(model, "implemented_properties"):
            raise TypeError(f"model must be a path, a shipped model name or a predictor module, not {type(model)}")
        self.dtype = DTYPES[dtype]
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.check_elements = check_elements
        self.predictor = _prepare(model, self.device, self.dtype)
        self.predictor = with_memory_mode(self.predictor, memory, original=model)
        self.implemented_properties = list(model.implemented_properties)
        settings = self.predictor.graph_settings
        if tags is not None:
            settings = dataclasses.replace(settings, tags=tags)
        if neighbor_order is not None:
            settings = dataclasses.replace(settings, neighbor_order=neighbor_order)
        self.graph_settings = settings
        self._force_warning_given = False
        self._neighbor_warning_given = False
        self._index_cache = IndexCache()  # MD steps with unchanged graphs reuse the interaction indices

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)  # a lock cannot be copied or pickled; the copy gets its own
        state.pop("_index_cache", None)  # nor shared: the copy starts with an empty one
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._index_cache = IndexCache()

    @classmethod
    def from_jmp_checkpoint(cls, path, head: int | str = 0, ema: bool = False, cutoff: float | None = None,
                            max_neighbors: int | None = None, config=None, *, energy_scale: float | None = None,
                            energy_shift: float = 0.0, force_scale: float | None = None,
                            element_references: dict[int, float] | None = None,
                            forces: str = "direct", smooth_dihedral: bool | None = None,
                            dihedral_damping: float | None = None, tags: str | None = None, neighbor_order: str | None = None,
                            memory: str | None = None,
                            device: str = "cpu", dtype: str = "float32") -> "JMPCalculator":
        """Calculator on pre-training head ``head`` (index or task name) of a pre-trained checkpoint:
        an original JMP file (``jmp-s.pt``), a ``pretrain.ckpt`` or a shipped name (``jmp-mini``).

        Energy = sum over atoms of that energy head, forces = its direct-force head. Files
        written by jmp-ase state each head's graph settings and normalisation, so their
        predictions come out in eV and eV/Å. JMP's own files do not: there the defaults are
        12 Å / 30 neighbours and normalised units unless ``energy_scale``/``energy_shift``/
        ``force_scale``/``element_references`` (eV per element) are given. ``config`` may be
        ``"jmp-s"``, ``"jmp-l"``, a dict or a BackboneConfig; by default it comes from the file.

        ``forces="conservative"`` gives -dE/dr of the head's energy and, for 3-D periodic cells,
        the stress (what NVE/NPT need) instead of the direct-force head. ``smooth_dihedral=True``
        evaluates the same weights with the smooth quadruplet basis (energy and forces
        continuous where atoms are collinear; away from collinearity close to the function JMP
        trained, within ε = ``dihedral_damping`` rad of it damped; see README).
        ``tags``: ``"ignore"`` or ``"oc20"``; by default the head's training setting as the file
        states it, else ``"ignore"``. ``neighbor_order``: ``"jmp"`` (default, as JMP trained
        the heads) or ``"canonical"`` (independent of the atom order, see GraphSettings).

        The head knows its elements when the file or the caller gives element references
        (those elements); others are refused like a fine-tuned model refuses them.
        """
        from jmp_ase.io.pretrained import load_jmp_pretrained
        from jmp_ase.calculators.predictors import PretrainHeadPredictor

        _check_device(device)  # before loading the weights
        model, names = load_jmp_pretrained(path, ema=ema, config=config, smooth_dihedral=smooth_dihedral,
                                           dihedral_damping=dihedral_damping)
        task = _head_index(head, names, len(model.output.out_energy))
        info = model.task_info[task] if model.task_info else {}

        def given_or_file(value, key, default):
            return value if value is not None else info.get(key, default)

        settings = GraphSettings(cutoff=given_or_file(cutoff, "cutoff", 12.0),
                                 max_neighbors=given_or_file(max_neighbors, "max_neighbors", 30),
                                 qint_tags=model.config.qint_tags,
                                 tags=given_or_file(tags, "tags", "auto" if info else "ignore"),
                                 neighbor_order=given_or_file(neighbor_order, "neighbor_order", "jmp"))
        predictor = PretrainHeadPredictor(
            model, task, settings, energy_scale=given_or_file(energy_scale, "energy_std", 1.0),
            energy_shift=energy_shift, force_scale=given_or_file(force_scale, "force_rms", 1.0),
            element_references=given_or_file(element_references, "element_references", None),
            forces=forces,
        )
        return cls(predictor, device=device, dtype=dtype, memory=memory)

    @property
    def elements(self) -> list[int] | None:
        """Atomic numbers the model knows (seen in training), None if it does not say."""
        return getattr(self.predictor, "elements", None)

    @property
    def supports_stress(self) -> bool:
        return "stress" in self.implemented_properties

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(
                f"{name!r} is not predicted by this model; it predicts {self.implemented_properties}"
            )
        with self._lock:  # check the cache, compute, store and read as one step
            return super().get_property(name, atoms, allow_calculation)

    def check_state(self, atoms, tol=1e-15):
        """ASE's changes, plus ``tags`` (they select the quadruplet graph's atoms)."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and not np.array_equal(self.atoms.get_tags(), atoms.get_tags()):
            changes.append("tags")
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        with self._lock:
            self.check_structure(atoms if atoms is not None else self.atoms, properties)
            super().calculate(atoms, properties, system_changes)
            try:
                self.results = self._predict_chunk([self.atoms], spread=keys.FORCES_STD.name in properties)[0]
            except BaseException:
                self.atoms = None  # nothing half-computed stays cached
                raise

    def check_structure(self, atoms, properties=(), index: int | None = None) -> None:
        """Raise ``ValueError`` naming the atoms if the model cannot predict ``properties`` for ``atoms``.

        Checks the elements (against the model's training elements), positions and cell
        (finite, no atoms closer than 0.1 Å), that there are atoms and that stress has a 3-D
        periodic cell.
        """
        where = "" if index is None else f"structure {index}: "
        if atoms is None:
            raise ValueError("no atoms given and none attached to the calculator")
        if len(atoms) == 0:
            raise ValueError(f"{where}the Atoms object is empty (0 atoms): there is nothing to predict")
        unknown = [p for p in properties if p not in self.implemented_properties]
        if unknown:
            raise PropertyNotImplementedError(
                f"{unknown} not predicted by this model; it predicts {self.implemented_properties}"
            )
        if "stress" in properties and not np.all(atoms.pbc):
            raise StressUnavailableError(
                f"{where}stress needs a cell periodic in all three directions, but these atoms have "
                f"pbc={np.asarray(atoms.pbc).tolist()}; energy and forces are available"
            )
        arrays = atoms_arrays(atoms)
        self._check_elements(arrays["numbers"], where)
        cell = arrays["cell"] if arrays["pbc"].any() else None
        try:
            validate_structure(arrays["numbers"], arrays["positions"], cell, arrays["pbc"],
                               num_elements=self.predictor.num_elements)
        except ValueError as err:
            raise ValueError(where + str(err)) from None

    def _check_elements(self, numbers: np.ndarray, where: str) -> None:
        known = self.elements
        if not self.check_elements or not known:
            return
        bad = sorted(set(numbers.tolist()) - set(known))
        if bad:
            atoms = {z: np.flatnonzero(numbers == z)[:10].tolist() for z in bad}
            listed = "; ".join(f"{_symbol(z)} (Z={z}) at atoms {idx}" for z, idx in atoms.items())
            raise ValueError(
                f"{where}unknown element for this model: {listed}. The model knows only "
                f"{', '.join(_symbol(z) for z in known)} (the elements of its training data); "
                "pass check_elements=False to predict anyway"
            )

    def predict(self, atoms_list: Sequence, properties: Sequence[str] | None = None,
                batch_size: int | None = None, progress: bool = False) -> list[dict]:
        """Predictions for many structures, ``batch_size`` per model pass.

        Every structure is checked first (see :meth:`check_structure`), so a bad one fails
        before any work is done. Returns one dict per structure, like ``calc.results``:
        energy and free_energy (eV), forces (n, 3) eV/Å, energies (n,) eV, stress (6,) eV/Å³
        for 3-D periodic structures, and one float per scalar head.
        """
        atoms_list = list(atoms_list)
        properties = () if properties is None else tuple(properties)
        for k, atoms in enumerate(atoms_list):
            self.check_structure(atoms, properties, index=k)
        size = self.batch_size if batch_size is None else int(batch_size)
        chunks = range(0, len(atoms_list), size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="JMP predict", unit="batch")
        results: list[dict] = []
        with self._lock:
            for start in chunks:
                results.extend(self._predict_chunk(atoms_list[start:start + size], first_index=start,
                                                   spread=keys.FORCES_STD.name in properties))
        return results

    def _predict_chunk(self, atoms_list: list, first_index: int | None = None, spread: bool = False) -> list[dict]:
        """One model pass over already checked structures (``first_index``: the first one's
        index in :meth:`predict`'s list, for messages; ``spread``: a committee's forces_std too,
        one backward pass per member)."""
        predictor = self.predictor
        periodic = [bool(np.all(a.pbc)) for a in atoms_list]
        want_stress = self.supports_stress and any(periodic)
        truncated: list[np.ndarray] = []
        batch = batch_from_atoms(atoms_list, self.graph_settings, num_elements=predictor.num_elements,
                                 validate=False, dtype=self.dtype, local_origin=True,
                                 truncated=truncated, index_cache=self._index_cache).to(self.device)
        if not self._neighbor_warning_given:
            self._warn_neighbor_limit(truncated, first_index)
        with torch.set_grad_enabled(getattr(predictor, "needs_grad", True)):
            out = predictor(batch, compute_stress=want_stress, **({"compute_spread": True} if spread else {}))
        out = {k: v.detach().to("cpu", torch.float64).numpy() for k, v in out.items()}
        offsets = np.concatenate([[0], np.cumsum(batch.natoms.cpu().numpy())])
        results = [self._unbatch(out, b, slice(offsets[b], offsets[b + 1]), periodic[b])
                   for b in range(len(atoms_list))]
        if not self._force_warning_given:
            for atoms, res in zip(atoms_list, results):
                if self._warn_unphysical_forces(atoms, res.get("forces")):
                    break
        return results

    def _warn_neighbor_limit(self, truncated: list[np.ndarray], first_index: int | None) -> None:
        """Warn once per calculator when the ``max_neighbors`` limit cuts an atom's neighbours."""
        for k, atoms_cut in enumerate(truncated):
            if atoms_cut.size:
                break
        else:
            return
        s = self.graph_settings
        where = "" if first_index is None else f"structure {first_index + k}: "
        listed = atoms_cut[:10].tolist()
        more = f" and {atoms_cut.size - 10} more" if atoms_cut.size > 10 else ""
        warnings.warn(
            f"{where}atoms {listed}{more} have more than max_neighbors={s.max_neighbors} neighbours within "
            f"the {s.cutoff:g} Å cutoff; the graph keeps the nearest {s.max_neighbors}. Where that set changes "
            "(the atoms move, or the cell), the energy jumps and the forces are not its derivative "
            "(README, 'Known behaviour'); this warning is given once", NeighborLimitWarning,
            stacklevel=_user_stacklevel(),
        )
        self._neighbor_warning_given = True

    def _warn_unphysical_forces(self, atoms, forces) -> bool:
        """Warn once per calculator when a force exceeds :data:`FORCE_WARNING` eV/Å on a
        structure without close contacts: such a force is a model failure, not physics."""
        if forces is None:
            return False
        norms = np.linalg.norm(forces, axis=1)
        if not norms.size or norms.max() <= FORCE_WARNING or has_close_contact(atoms):
            return False
        worst = np.argsort(-norms)[:5]
        listed = ", ".join(f"{int(i)} ({norms[i]:.4g} eV/Å)" for i in worst if norms[i] > FORCE_WARNING)
        warnings.warn(
            f"forces above {FORCE_WARNING:g} eV/Å on a structure without close contacts, at atoms "
            f"{listed}: the model is outside its valid range here (for models with JMP's exact "
            "dihedral: collinear atoms, see README); this warning is given once", RuntimeWarning, stacklevel=4,
        )
        self._force_warning_given = True
        return True

    @staticmethod
    def _unbatch(out: dict, b: int, atoms_slice: slice, periodic: bool) -> dict:
        """Results of structure ``b`` of a batch, in ASE's shapes."""
        res = {}
        for key, value in out.items():
            if keys.is_per_atom(key):
                res[key] = value[atoms_slice].copy()
            elif key == keys.STRESS.name:
                if periodic:
                    res[key] = voigt(value[b])
            elif value.ndim == 1:
                res[key] = float(value[b])
            else:  # a per-structure vector or matrix
                res[key] = value[b].copy()
        if keys.ENERGY.name in res:
            res[keys.FREE_ENERGY.name] = res[keys.ENERGY.name]
        return res


def _head_index(head: int | str, names: list[str] | None, num_heads: int) -> int:
    if isinstance(head, str):
        if not names or head not in names:
            raise ValueError(f"no pre-training head named {head!r}; the checkpoint's heads are {names}")
        return names.index(head)
    if not 0 <= int(head) < num_heads:
        raise ValueError(f"head {head} out of range: the checkpoint has {num_heads} pre-training heads")
    return int(head)
