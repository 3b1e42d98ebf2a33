"""README.rst's shell blocks (``.. code-block:: bash`` / ``console`` / ``shell``) run as written.

Every such block is either run or skipped on purpose. A block is skipped only when an rst
comment right above it says why::

    .. skip-test: needs the mini-JMP corpus (../shared)

    .. code-block:: bash

The comment is invisible in the rendered page. Blocks run in order, each with ``bash -e`` in one
temporary folder that looks like a fresh clone (the repository's top-level entries linked, the
example folders copied so their default outputs stay out of the repository), with this Python's
``bin`` first on PATH (``jmp-train``) and one torch thread. A block may also carry

    .. test-replace: --frames 60 => --frames 8

which the test applies before running it (and fails if the text is not in the block): this is
how the tutorial's commands run here on a few structures and one epoch instead of the budget
the README gives. Nothing else is changed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.rst"
SHELL = ("bash", "console", "shell", "sh")
COPIED = ("md_examples", "configs")  # scripts there write default outputs next to themselves


class Block:
    def __init__(self, line: int, language: str, body: str, comments: list[str]):
        self.line, self.language, self.body = line, language, body
        self.skip: str | None = None
        self.replace: list[tuple[str, str]] = []
        for comment in comments:
            key, _, value = comment.partition(":")
            if key.strip() == "skip-test":
                self.skip = value.strip()
            elif key.strip() == "test-replace":
                old, sep, new = value.partition("=>")
                assert sep, f"README.rst line {line}: test-replace needs 'OLD => NEW'"
                self.replace.append((old.strip(), new.strip()))

    def command(self) -> str:
        text = self.body
        if self.language == "console":  # only the prompted lines are commands
            text = "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ "))
        for old, new in self.replace:
            assert old in text, f"README.rst line {self.line}: test-replace text {old!r} is not in the block"
            text = text.replace(old, new)
        return text


def shell_blocks(text: str) -> list[Block]:
    """Every shell code block with the rst comments (``.. word: ...``) directly above it."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        match = re.fullmatch(r"\.\. code-block:: *(\S+)\s*", line)
        if not match or match.group(1) not in SHELL:
            continue
        body, j = [], i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j].startswith("   ")):
            body.append(lines[j][3:])
            j += 1
        comments, k = [], i - 1
        while k >= 0 and (not lines[k].strip() or (lines[k].startswith(".. ") and "::" not in lines[k])):
            if lines[k].strip():
                comments.insert(0, lines[k][3:])
            k -= 1
        blocks.append(Block(i + 1, match.group(1), "\n".join(body).strip() + "\n", comments))
    return blocks


BLOCKS = shell_blocks(README.read_text())


def test_every_shell_block_runs_or_says_why_not():
    assert len(BLOCKS) >= 5
    for block in BLOCKS:
        if block.skip is not None:
            assert len(block.skip) > 10, f"README.rst line {block.line}: skip-test needs a reason"
        assert block.command().strip(), f"README.rst line {block.line}: empty block"
    run = [b for b in BLOCKS if b.skip is None]
    assert any("jmp-train finetune" in b.body for b in run), "the tutorial's fine-tuning must run"
    assert any("jmp-train evaluate" in b.body for b in run)
    assert any("check_model.py" in b.body for b in run)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A folder that looks like a fresh clone: no ../shared, no runs/, no example outputs."""
    folder = tmp_path_factory.mktemp("clone") / "jmp-ase"
    folder.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in (".git", "runs") or entry.name.startswith("."):
            continue
        if entry.name in COPIED:
            shutil.copytree(entry, folder / entry.name, ignore=shutil.ignore_patterns("out", "__pycache__"))
        else:
            (folder / entry.name).symlink_to(entry)
    return folder


def test_readme_shell_blocks_run(clone):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    ran = []
    for block in BLOCKS:
        if block.skip is not None:
            continue
        start = time.perf_counter()
        proc = subprocess.run(["bash", "-e", "-c", block.command()], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=900)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README.rst line {block.line} failed ({proc.returncode}):\n{output[-4000:]}"
        ran.append((block.line, round(time.perf_counter() - start, 1)))
        if "check_model.py" in block.body:
            assert re.search(r"^check (PASSED|FAILED)", proc.stdout, flags=re.M), output[-2000:]
    print("README.rst blocks run (line, seconds):", ran)
    tutorial = clone / "runs" / "emt-tutorial"
    for path in ("data/train.extxyz", "model/model.ckpt", "eval/metrics.json", "check/check_model.png"):
        assert (tutorial / path).is_file(), f"the tutorial did not write {path}"
