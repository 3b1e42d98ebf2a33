"""ASE calculator for JMP models."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from torch import nn

from .batch import batch_from_atoms
from .graph import GraphSettings

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _full_3x3_to_voigt(stress: np.ndarray) -> np.ndarray:
    """(3, 3) -> ASE Voigt order xx, yy, zz, yz, xz, xy."""
    return stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


class JMPCalculator(Calculator):
    """ASE calculator running a JMP model (energy eV, forces eV/Å, stress eV/Å³).

    ``model`` is a predictor module (see :mod:`jmp_ase.predictors`) or, for fine-tuned
    model files, a path or the name of a model shipped with the package. Use
    :meth:`from_jmp_checkpoint` for the original pre-trained JMP weights.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, model: nn.Module | str, device: str = "cpu", dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from .checkpoint import load_predictor

            model = load_predictor(model)
        self.dtype = DTYPES[dtype]
        self.device = torch.device(device)
        self.predictor = model.to(device=self.device, dtype=self.dtype).eval()
        self.implemented_properties = list(model.implemented_properties)

    @classmethod
    def from_jmp_checkpoint(cls, path, head: int | str = 0, ema: bool = False, cutoff: float = 12.0,
                            max_neighbors: int = 30, config=None, *, energy_scale: float = 1.0,
                            energy_shift: float = 0.0, force_scale: float = 1.0,
                            element_references: dict[int, float] | None = None,
                            device: str = "cpu", dtype: str = "float32") -> "JMPCalculator":
        """Calculator on pre-training head ``head`` (index or task name) of an original JMP checkpoint.

        Energy = sum over atoms of that energy head, forces = its direct-force head, in the
        checkpoint's normalised units unless ``energy_scale``/``energy_shift``/``force_scale``/
        ``element_references`` (eV per element) are given. ``config`` may be ``"jmp-s"``,
        ``"jmp-l"``, a dict or a BackboneConfig; by default it is inferred from the tensors.
        """
        from .model import load_jmp_pretrained
        from .predictors import PretrainHeadPredictor

        model, names = load_jmp_pretrained(path, ema=ema, config=config)
        task = _head_index(head, names, len(model.output.out_energy))
        predictor = PretrainHeadPredictor(
            model, task, GraphSettings(cutoff=cutoff, max_neighbors=max_neighbors, qint_tags=model.config.qint_tags),
            energy_scale=energy_scale, energy_shift=energy_shift, force_scale=force_scale,
            element_references=element_references,
        )
        return cls(predictor, device=device, dtype=dtype)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = self.predict([self.atoms], properties)[0]

    def predict(self, atoms_list: Sequence, properties=("energy", "forces"), batch_size: int = 16,
                progress: bool = False) -> list[dict]:
        """Properties of many structures, ``batch_size`` at a time (ASE units, numpy arrays)."""
        want_stress = "stress" in properties
        if want_stress:
            for k, atoms in enumerate(atoms_list):
                if not np.all(atoms.pbc):
                    raise ValueError(
                        f"stress needs a 3-D periodic cell, but structure {k} has pbc={atoms.pbc.tolist()}"
                    )
        chunks = range(0, len(atoms_list), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="JMP predict", unit="batch")
        results: list[dict] = []
        for start in chunks:
            results.extend(self._predict_chunk(atoms_list[start:start + batch_size], want_stress))
        return results

    def _predict_chunk(self, atoms_list, want_stress: bool) -> list[dict]:
        predictor = self.predictor
        batch = batch_from_atoms(
            atoms_list, predictor.graph_settings, num_elements=predictor.num_elements, dtype=self.dtype
        ).to(self.device)
        with torch.set_grad_enabled(getattr(predictor, "needs_grad", True)):
            out = predictor(batch, compute_stress=want_stress)
        out = {k: v.detach().to("cpu", torch.float64).numpy() for k, v in out.items()}
        offsets = np.concatenate([[0], np.cumsum(batch.natoms.numpy())])
        results = []
        for b in range(len(atoms_list)):
            atoms_slice = slice(offsets[b], offsets[b + 1])
            res = {"energy": float(out["energy"][b]), "free_energy": float(out["energy"][b])}
            if "forces" in out:
                res["forces"] = out["forces"][atoms_slice]
            if "energies" in out:
                res["energies"] = out["energies"][atoms_slice]
            if want_stress:
                res["stress"] = _full_3x3_to_voigt(out["stress"][b])
            for key, value in out.items():
                if key not in ("energy", "forces", "energies", "stress"):
                    res[key] = value[b]
            results.append(res)
        return results


def _head_index(head: int | str, names: list[str] | None, num_heads: int) -> int:
    if isinstance(head, str):
        if not names or head not in names:
            raise ValueError(f"no pre-training head named {head!r}; the checkpoint's heads are {names}")
        return names.index(head)
    if not 0 <= int(head) < num_heads:
        raise ValueError(f"head {head} out of range: the checkpoint has {num_heads} pre-training heads")
    return int(head)
