"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "jmp-reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Folder with the JMP reference fixture (checkpoint, reference outputs, shape tables)."""
    if not (REFERENCE_DIR / "jmp-tiny-pretrain.ckpt").is_file():
        pytest.fail(f"reference fixture missing: {REFERENCE_DIR}")
    return REFERENCE_DIR
