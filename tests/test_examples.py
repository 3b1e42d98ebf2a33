"""The scripts in md_examples/ run end to end (in-process, a few steps, a tiny random model).

Every example must write a readable ASE trajectory, a log with its summary line and a
PNG plot into --out. The model is a tiny random GemNet-OC with a down-scaled energy head
so that a few MD steps stay finite; nothing here needs the shared data folder.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from ase.io import read

from jmp_ase.io.model_file import save_model
from jmp_ase.nn.config import tiny
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.nn.model import FineTunedModel, ModelConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "md_examples"
ELEMENTS = [1, 6, 8, 29, 78, 79]  # H C O Cu Pt Au: everything the examples build

# name: (extra arguments keeping the system small, words the summary line must contain)
CASES = {
    "nve_molecule": ([], "energy drift"),
    "nvt_molecule": ([], "temperature over the second half"),
    "npt_crystal": (["--size", "1"], "volume per atom"),
    "relax_adsorbate": (["--layers", "2", "--fixed-layers", "1"], "distance"),
    "relax_cell": (["--size", "1"], "volume per atom"),
    "pymatgen_relax": (["--supercell", "1"], "space group"),
}
MD = {"nve_molecule", "nvt_molecule", "npt_crystal"}
STEPS = 3


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(tiny(), [HeadSpec("energy", scale=0.01)], cutoff=5.0, max_neighbors=20,
                         elements=ELEMENTS, provenance={"purpose": "md_examples test, random weights"})
    path = tmp_path_factory.mktemp("model") / "tiny-random.ckpt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the orthogonal weight init is slow with busy threads on a loaded machine
    try:
        save_model(FineTunedModel(config), path)
    finally:
        torch.set_num_threads(threads)
    return path


def load_example(name: str):
    """Import md_examples/<name>.py as a module (its folder is not a package)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # for `import _common`
    spec = importlib.util.spec_from_file_location(f"md_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(CASES))
def test_example_writes_trajectory_log_and_plot(name, tiny_model, tmp_path, capsys):
    extra, summary = CASES[name]
    out = tmp_path / name
    threads = torch.get_num_threads()
    result = load_example(name).main(
        ["--model", str(tiny_model), "--steps", str(STEPS), "--out", str(out), "--threads", "1"] + extra
    )
    assert torch.get_num_threads() == threads, "the example must restore torch's thread count"
    assert result is not None

    traj, log, png = (out / f"{name}{suffix}" for suffix in (".traj", ".log", ".png"))
    for path in (traj, log, png):
        assert path.is_file() and path.stat().st_size > 0, f"{path.name} missing or empty"
    frames = read(traj, ":")
    if name in MD:
        assert len(frames) == STEPS + 1  # the start and every step
    else:
        assert 1 <= len(frames) <= STEPS + 1
    assert all(math.isfinite(f.get_potential_energy()) for f in frames)
    text = log.read_text()
    assert summary in text and f"--model {tiny_model}" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert summary in printed  # the summary is printed too
    progress = [line for line in printed.splitlines() if line.lstrip().startswith("step ")]
    assert progress, "no progress lines"  # long runs must show where they are
    assert ("max|F|" if name in MD else "fmax") in progress[-1]


def test_nve_reports_a_finite_drift(tiny_model, tmp_path):
    drift = load_example("nve_molecule").main(
        ["--model", str(tiny_model), "--steps", "2", "--out", str(tmp_path), "--threads", "1", "--dtype", "float64"]
    )
    assert math.isfinite(drift)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--model PATH"):
        load_example("relax_cell").main(["--model", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path)])


def test_energy_drift_is_the_slope_per_atom():
    load_example("nve_molecule")
    import _common

    # 2 atoms, total energy rising 0.004 eV per ps -> 2 meV/atom/ps
    assert _common.energy_drift([0.0, 1.0, 2.0], [1.0, 1.004, 1.008], 2) == pytest.approx(2.0)
    assert math.isnan(_common.energy_drift([0.0], [1.0], 2))
