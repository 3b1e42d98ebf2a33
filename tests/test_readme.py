"""README.rst's Python code blocks run as written, in order, in one namespace (as a reader
pastes them into one session). Blocks that need the original JMP weights (``jmp-s.pt``,
``jmp-l.pt``, downloaded by the user) are skipped."""
import re
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.rst"
NEEDS_DOWNLOAD = ("jmp-s.pt", "jmp-l.pt")


def python_blocks(text: str) -> list[str]:
    """The bodies of ``.. code-block:: python`` directives (indented lines after a blank)."""
    blocks = []
    for match in re.finditer(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", text, flags=re.M):
        blocks.append(textwrap.dedent(match.group(1)))
    return blocks


def test_readme_has_python_blocks():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2
    assert any("JMPCalculator(" in b for b in blocks)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    ran = 0
    for block in python_blocks(README.read_text()):
        if any(name in block for name in NEEDS_DOWNLOAD):
            continue
        exec(compile(block, str(README), "exec"), namespace)
        ran += 1
    assert ran >= 2
    results = namespace["results"]  # the first block's batch prediction
    assert len(results) == 2 and results[0]["forces"].shape == (8, 3)
