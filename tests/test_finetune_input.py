"""jmp-train finetune refuses bad input before any heavy work, with one "Error:" line naming the
file or option, and never writes into a folder holding a run, a model or the parent."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from click.testing import CliRunner

from jmp_ase.training.cli import main
from models import emt_clusters

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    ase.io.write(root / "train.extxyz", emt_clusters(4, 0, gap=False), format="extxyz")
    (root / "empty.extxyz").write_text("")
    energy_only = []
    for atoms in emt_clusters(2, 0, gap=False):
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy())
        energy_only.append(atoms)
    ase.io.write(root / "energy-only.extxyz", energy_only, format="extxyz")
    return root


def error_line(args) -> str:
    result = CliRunner().invoke(main, ["finetune", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def base(data, out, *extra):
    return ["--pretrained", "jmp-mini", "--train", str(data / "train.extxyz"), "--targets", "energy,forces",
            "--out", str(out), *extra]


def test_bad_options_and_files(data, tmp_path):
    assert "--max-epochs must be at least 1" in error_line(base(data, tmp_path / "a", "--max-epochs", "0"))
    assert "--batch-size" in error_line(base(data, tmp_path / "a", "--batch-size", "0"))
    assert "--cutoff must be positive" in error_line(base(data, tmp_path / "a", "--cutoff", "-1"))
    assert "--qint-tags" in error_line(base(data, tmp_path / "a", "--qint-tags", "1,5"))
    assert "element_references must map elements" in error_line(base(data, tmp_path / "a", "--element-references",
                                                                      "H=-13.6,Qq=1"))
    assert "needs an energy head" in error_line(base(data, tmp_path / "a", "--targets", "gap",
                                                       "--isolated-atom-references"))
    line = error_line(base(data, tmp_path / "a", "--val", str(data / "empty.extxyz")))
    assert "--val" in line and "empty.extxyz" in line and "empty" in line
    line = error_line(["--pretrained", "jmp-mini", "--train", str(data / "energy-only.extxyz"), "--out",
                       str(tmp_path / "a")])
    assert "--train" in line and "energy-only.extxyz" in line and "no label 'forces'" in line
    line = error_line(["--pretrained", "no-such-model", "--train", str(data / "train.extxyz"),
                       "--out", str(tmp_path / "a")])
    assert "--pretrained" in line and "no-such-model" in line
    assert not (tmp_path / "a").exists()  # nothing created for refused settings


def test_out_folder_safety(data, tmp_path, reference_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is not writable" in error_line(base(data, blocker / "sub"))
    held = tmp_path / "held"
    held.mkdir()
    (held / "jmp-s.pt").write_bytes(b"weights")
    line = error_line(base(data, held))
    assert "already holds a run or a model (jmp-s.pt)" in line
    parent_dir = tmp_path / "parent"
    parent_dir.mkdir()
    parent = parent_dir / "model.ckpt"
    parent.write_bytes((reference_dir / "jmp-tiny-pretrain.ckpt").read_bytes())
    args = ["--pretrained", str(parent), "--train", str(data / "train.extxyz"), "--out", str(parent_dir)]
    assert "holds the parent model" in error_line(args)
    assert "cannot resume" in error_line(base(data, tmp_path / "fresh", "--resume"))
    assert (held / "jmp-s.pt").read_bytes() == b"weights" and sorted(p.name for p in parent_dir.iterdir()) == [
        "model.ckpt"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_unsafe_last_checkpoint_is_refused(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.ckpt").write_bytes(pickle.dumps({"state_dict": _Evil()}))
    line = error_line(base(data, out, "--resume"))
    assert "last.ckpt is not a checkpoint jmp-train can read safely" in line


def test_errors_come_before_heavy_imports(data, tmp_path):
    """Bad input is refused by checks that import neither torch nor Lightning."""
    code = ("import sys\nfrom jmp_ase.training.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print('heavy:', sorted(m for m in ('torch', 'lightning') if m in sys.modules), 'exit:', code)")
    for args in (["--val", str(data / "empty.extxyz")], ["--max-epochs", "0"]):
        proc = subprocess.run([sys.executable, "-c", code, "finetune", *base(data, tmp_path / "o", *args)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert "heavy: [] exit: 1" in proc.stdout, proc.stdout + proc.stderr
        assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr, proc.stderr


def test_empty_structure_file_with_whitespace(data, tmp_path):
    blank = tmp_path / "blank.extxyz"
    blank.write_text("\n\n")
    line = error_line(base(data, tmp_path / "o", "--val", str(blank)))
    assert "--val" in line and "blank.extxyz" in line


def test_empty_validation_split_is_refused(tmp_path):
    one = tmp_path / "one.extxyz"
    ase.io.write(one, [emt_clusters(1, 0, gap=False)[0]], format="extxyz")
    line = error_line(["--scratch", "--train", str(one), "--out", str(tmp_path / "o"), "--max-epochs", "1"])
    assert "--train" in line and "too few to split off a validation set" in line


def test_atoms_helper_is_labelled():  # guards the fixtures above: the clusters carry energy and forces
    atoms = emt_clusters(1, 0, gap=False)[0]
    assert isinstance(atoms, Atoms) and set(atoms.calc.results) >= {"energy", "forces"}
