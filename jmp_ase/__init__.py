"""jmp-ase: JMP (Joint Multi-domain Pre-training, GemNet-OC) for the Atomic Simulation Environment.

Pipeline: ``graph`` (neighbour lists) -> ``indices`` (triplets, quadruplets) ->
``backbone`` (GemNet-OC) -> ``heads`` -> ``model`` / ``checkpoint`` (model file) ->
``calculator`` (ASE). Training lives in the ``training`` package (``jmp-train``).
"""

__version__ = "0.1.0"

from .calculator import JMPCalculator  # noqa: E402
from .checkpoint import load_model, save_model  # noqa: E402

__all__ = ["JMPCalculator", "load_model", "save_model", "__version__"]
