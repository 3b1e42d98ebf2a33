"""Entry point of the ``jmp-train`` command."""
from __future__ import annotations

import click

from jmp_ase import __version__


@click.group(name="jmp-train")
@click.version_option(__version__, "--version", prog_name="jmp-train")
def main() -> None:
    """Fine-tune and evaluate JMP (GemNet-OC) models for use with ASE."""


if __name__ == "__main__":  # pragma: no cover
    main()
