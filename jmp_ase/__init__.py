"""jmp-ase: JMP (Joint Multi-domain Pre-training, GemNet-OC) for the Atomic Simulation Environment.

Subpackages in the order data flows: :mod:`jmp_ase.data` (structures -> graphs -> batch),
:mod:`jmp_ase.nn` (GemNet-OC backbone, heads, models), :mod:`jmp_ase.io` (model files,
original JMP checkpoints), :mod:`jmp_ase.calculators` (the ASE calculator) and
:mod:`jmp_ase.training` (``jmp-train``; needs the ``[train]`` extra).
"""

from jmp_ase._version import __version__  # noqa: E402

from jmp_ase.calculators.calculator import JMPCalculator  # noqa: E402
from jmp_ase.io.model_file import load_model, save_model  # noqa: E402

__all__ = ["JMPCalculator", "load_model", "save_model", "__version__"]
