"""jmp-ase: JMP (Joint Multi-domain Pre-training, GemNet-OC) for the Atomic Simulation Environment.

Subpackages in the order data flows: :mod:`jmp_ase.data` (structures -> graphs -> batch),
:mod:`jmp_ase.nn` (GemNet-OC backbone, heads, models), :mod:`jmp_ase.io` (model files,
original JMP checkpoints), :mod:`jmp_ase.calculators` (the ASE calculator) and
:mod:`jmp_ase.training` (``jmp-train``; needs the ``[train]`` extra).
"""

from jmp_ase._version import __version__  # noqa: E402

__all__ = ["JMPCalculator", "load_model", "save_model", "__version__"]


def __getattr__(name):
    """``JMPCalculator``, ``load_model`` and ``save_model`` are imported on first use, so that
    ``import jmp_ase`` (and ``jmp-train``'s argument checks) do not wait for torch."""
    if name == "JMPCalculator":
        from jmp_ase.calculators.calculator import JMPCalculator

        return JMPCalculator
    if name in ("load_model", "save_model"):
        from jmp_ase.io import model_file

        return getattr(model_file, name)
    raise AttributeError(f"module 'jmp_ase' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
