"""benchmarks/mini_jmp's scripts without the corpus: a missing --data path is one ``Error:``
line (no traceback)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "benchmarks" / "mini_jmp"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.mark.parametrize("script", ["run.py", "dihedral_seeds.py"])
def test_missing_corpus_is_one_error_line(script, tmp_path):
    missing = tmp_path / "no-corpus"
    proc = subprocess.run([sys.executable, str(MINI / script), "--data", str(missing), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and str(missing) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
