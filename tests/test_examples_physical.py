"""The examples with the shipped models, from ideal ``ase.build`` geometries (perfect crystals,
ideal slabs: where users start), stay physical: the first thing a user runs must not blow up.

Before the dihedral fix: NPT from perfect Cu reached 848,586 K after one step, the adsorbate
relaxation began at fmax 59,288 eV/Å and dissociated CO, cell relaxations did not converge.
"""
from __future__ import annotations

import numpy as np
import pytest
from ase.io import read

from test_examples import load_example

COMMON = ["--threads", "1"]


def run_example(name, tmp_path, *args):
    out = tmp_path / name
    result = load_example(name).main([*args, "--out", str(out), *COMMON])
    return result, read(out / f"{name}.traj", ":"), (out / f"{name}.log").read_text()


def test_npt_from_a_perfect_crystal_holds_its_temperature(tmp_path):
    target = 300.0
    _, frames, _ = run_example("npt_crystal", tmp_path, "--steps", "50", "--temperature", str(target))
    temperatures = np.array([f.get_temperature() for f in frames])
    assert np.all(temperatures < 3 * target), temperatures.max()
    assert temperatures[len(temperatures) // 2:].mean() > target / 3
    volumes = np.array([f.get_volume() / len(f) for f in frames])
    assert np.all(np.abs(volumes / volumes[0] - 1) < 0.1)


def test_co_on_an_ideal_slab_relaxes_and_stays_bound(tmp_path):
    _, frames, log = run_example("relax_adsorbate", tmp_path, "--steps", "60")
    first = frames[0]
    assert np.abs(first.get_forces()).max() < 20.0  # eV/Å: an ideal slab with CO on top
    n_slab = len(first) - 2
    bond = frames[-1].get_distance(n_slab, n_slab + 1)
    assert 1.0 < bond < 1.4, f"C-O {bond:.3f} Å"
    assert "(intact)" in log


@pytest.mark.parametrize("name, args", [
    ("relax_cell", ["--element", "Pt", "--optimizer", "BFGS"]),
    ("pymatgen_relax", ["--cell", "--supercell", "2"]),
], ids=["relax_cell-Pt-BFGS", "pymatgen_relax-cell-supercell2"])
def test_cell_relaxations_converge(name, args, tmp_path):
    _, frames, log = run_example(name, tmp_path, *args)
    assert "# converged after" in log, log.splitlines()[-3:]
