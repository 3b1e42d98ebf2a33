"""jmp-ase: JMP (Joint Multi-domain Pre-training, GemNet-OC) models as ASE calculators."""

__version__ = "0.1.0"
