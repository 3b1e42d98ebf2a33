"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "jmp-reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Folder with the JMP reference fixture (checkpoint, reference outputs, shape tables)."""
    if not (REFERENCE_DIR / "jmp-tiny-pretrain.ckpt").is_file():
        pytest.fail(f"reference fixture missing: {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: tiny test models only lose time to thread hand-offs, and stall
    badly when other processes share the CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
