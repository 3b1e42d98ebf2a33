"""The commands in md_examples/README.md, benchmarks/README.md and jmp_ase/models/README.md
name scripts that exist and options those scripts define (read from their source, so this
runs in a fraction of a second). tests/test_examples.py and tests/test_readme_shell.py run
scripts; this catches a renamed script or option in the docs."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["md_examples/README.md", "benchmarks/README.md", "jmp_ase/models/README.md"]
CLI = ROOT / "training" / "cli.py"


def commands(doc: str) -> list[str]:
    """Lines of the ```bash blocks, comments dropped, continuation lines joined."""
    text = (ROOT / doc).read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def options(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if w.startswith("--")]


ALL = [(doc, line) for doc in DOCS for line in commands(doc)]


def test_docs_have_commands():
    for doc in DOCS:
        assert commands(doc), f"{doc} has no ```bash command"


@pytest.mark.parametrize("doc,line", ALL, ids=[f"{d}:{i}" for i, (d, _) in enumerate(ALL)])
def test_command_names_a_script_and_its_options(doc, line):
    words = shlex.split(line.replace("[", "").replace("]", ""))
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # environment settings before the command
        words = words[1:]
    if words[0] == "python":
        script = ROOT / words[1]
        assert script.is_file(), f"{doc}: {words[1]} does not exist"
        source = script.read_text()
        if "common.parser(" in source:  # md_examples: the shared options live in _common.py
            source += (script.parent / "_common.py").read_text()
        for option in options(words[2:]):
            assert f'"{option}"' in source, f"{doc}: {words[1]} has no option {option}"
    elif words[0] == "jmp-train":
        source = CLI.read_text()
        assert f"def {words[1]}(" in source, f"{doc}: jmp-train has no command {words[1]}"
        for option in options(words[2:]):
            assert f'"{option}' in source, f"{doc}: jmp-train {words[1]} has no option {option}"
    else:
        pytest.skip(f"not a python or jmp-train command: {line!r}")


def test_no_script_shadows_the_standard_library():
    """A script folder is first on sys.path when one of its scripts runs: a script named like a
    standard-library module (benchmarks/profile.py did: torch's cProfile then imported it and
    benchmarks/memory.py failed) breaks every other script there."""
    import sys

    for folder in ("benchmarks", "benchmarks/mini_jmp", "md_examples", "training"):
        clashes = sorted(p.name for p in (ROOT / folder).glob("*.py") if p.stem in sys.stdlib_module_names)
        assert not clashes, f"{folder}: {clashes} shadow standard-library modules"
