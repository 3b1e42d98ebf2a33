"""The calculator never returns a number that belongs to another structure or depends on
bookkeeping (issue 14): shared by threads, atoms reordered, far from the origin, elements
a pre-training head never saw, empty input, an unusable device.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from jmp_ase import JMPCalculator
from jmp_ase.calculators.calculator import NeighborLimitWarning
from jmp_ase.data.batch import atoms_arrays, local_frame
from jmp_ase.data.graphs import GraphSettings, structure_graphs_from_atoms
from jmp_ase.data.indices import symmetrize_edges
from jmp_ase.io.model_file import load_model
from models import methanol, tiny_model, triclinic_crystal, water

SHIPPED = Path(__file__).resolve().parent / "data" / "shipped"


def aspirin(count: int = 3) -> list[Atoms]:
    frames = ase.io.read(SHIPPED / "aspirin-gfn1-test20.extxyz", f":{count}")
    for a in frames:
        a.calc = None
    return frames


def fcc_copper() -> Atoms:
    """Perfect fcc Cu, 32 atoms: 12 first and 6 second neighbours within 5 Å, so a limit of 16
    cuts inside the degenerate second shell."""
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)


# --------------------------------------------------------------------------------------
# 1. Threads
# --------------------------------------------------------------------------------------


def test_shared_calculator_gives_every_thread_its_own_results():
    """Before the lock: in 4 of 16 trials a call returned another molecule's energy and forces."""
    calc = JMPCalculator(tiny_model())
    structures = [water(), methanol(), molecule("C6H6"), molecule("CH3CH2OH")]
    for k, a in enumerate(structures):
        a.rattle(0.02, seed=k)
    reference = []
    for a in structures:
        a = a.copy()
        a.calc = calc
        reference.append((a.get_potential_energy(), a.get_forces()))
    failures, errors = [], []
    start = threading.Barrier(4)

    def work(worker: int):
        mine = [a.copy() for a in structures]
        try:
            start.wait()
            for i in range(8):  # every call a different structure from the other threads' and the last
                k = (worker + i) % len(mine)
                if i % 4 == 3:
                    got = calc.predict([mine[k]], ["energy", "forces"])[0]
                    energy, forces = got["energy"], got["forces"]
                else:
                    mine[k].calc = calc
                    energy, forces = mine[k].get_potential_energy(), mine[k].get_forces()
                if forces.shape != reference[k][1].shape or not (
                        np.isclose(energy, reference[k][0], rtol=1e-6, atol=1e-6)
                        and np.allclose(forces, reference[k][1], rtol=1e-5, atol=1e-6)):
                    failures.append((worker, k, energy, reference[k][0], forces.shape))
        except Exception as err:  # noqa: BLE001 - reported below with the thread
            errors.append((worker, repr(err)))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not failures, f"{len(failures)} results belonged to another structure, e.g. {failures[:3]}"


def test_calculator_can_still_be_copied():
    import copy
    import pickle

    calc = JMPCalculator(tiny_model())
    for clone in (copy.deepcopy(calc), pickle.loads(pickle.dumps(calc))):
        a = water()
        a.calc = clone
        assert np.isfinite(a.get_potential_energy())
        assert clone._lock is not calc._lock


# --------------------------------------------------------------------------------------
# 2. Atom order
# --------------------------------------------------------------------------------------


def permutation_spread(calc, structures, permutations: int = 3, seed: int = 0):
    """Largest change of the energy (eV) and of a force component (eV/Å) when the atoms are reordered."""
    rng = np.random.default_rng(seed)
    de = df = 0.0
    for atoms in structures:
        ref = calc.predict([atoms], ["energy", "forces"])[0]
        for _ in range(permutations):
            p = rng.permutation(len(atoms))
            got = calc.predict([atoms[p]], ["energy", "forces"])[0]
            de = max(de, abs(got["energy"] - ref["energy"]))
            df = max(df, float(np.abs(got["forces"] - ref["forces"][p]).max()))
    return de, df


quiet = pytest.mark.filterwarnings("ignore::jmp_ase.calculators.calculator.NeighborLimitWarning")


def aspirin_model_with_16_neighbours():
    """jmp-mini-aspirin's weights on graphs of 16 neighbours at 5 Å, which truncate aspirin's
    neighbour lists (as the first shipped models' graphs did)."""
    model = load_model("jmp-mini-aspirin")
    model.model_config.max_neighbors = 16
    return model


@quiet
def test_canonical_order_makes_aspirin_independent_of_atom_order():
    frames = aspirin()
    canonical = JMPCalculator(aspirin_model_with_16_neighbours(), dtype="float64", neighbor_order="canonical")
    de, df = permutation_spread(canonical, frames)
    assert de < 1e-9 and df < 1e-9, (de, df)
    # The same inputs under JMP's rule: the test does exercise the truncation.
    jmp = JMPCalculator(aspirin_model_with_16_neighbours(), dtype="float64", neighbor_order="jmp")
    de, df = permutation_spread(jmp, frames)
    assert de > 1e-4 and df > 1e-3, (de, df)


@quiet
def test_canonical_order_on_a_perfect_crystal_keeps_its_symmetry():
    """fcc with 16 neighbours cuts inside the 6-atom second shell: JMP's rule keeps some of it
    by atom index (forces on a perfect crystal, order dependent); canonical keeps the shell whole."""
    atoms = fcc_copper()
    canonical = JMPCalculator("jmp-mini-catalysis", dtype="float64", neighbor_order="canonical")
    de, df = permutation_spread(canonical, [atoms])
    assert de < 1e-9 and df < 1e-9, (de, df)
    out = canonical.predict([atoms], ["energy", "forces", "stress"])[0]
    assert np.abs(out["forces"]).max() < 1e-9
    stress = out["stress"]
    assert np.ptp(stress[:3]) < 1e-9 and np.abs(stress[3:]).max() < 1e-9, stress
    jmp = JMPCalculator("jmp-mini-catalysis", dtype="float64", neighbor_order="jmp")
    assert np.abs(jmp.predict([atoms], ["forces"])[0]["forces"]).max() > 1e-3
    rattled = atoms.copy()
    rattled.rattle(0.05, seed=1)
    de, df = permutation_spread(canonical, [rattled])
    assert de < 1e-9 and df < 1e-9, (de, df)


@quiet
def test_canonical_stress_is_the_strain_derivative_in_a_small_cell():
    """A 4-atom cell meets its own images at the truncation boundary, in tied +o/-o pairs:
    JMP's rule keeps one of a pair by round-off (stress off the finite-strain derivative by
    8.7 eV/Å³); canonical keeps both or neither."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=0)
    errors = {}
    for order in ("jmp", "canonical"):
        atoms.calc = JMPCalculator("jmp-mini-catalysis", dtype="float64", neighbor_order=order)
        numerical = atoms.calc.calculate_numerical_stress(atoms, d=1e-5)
        errors[order] = np.abs(atoms.get_stress() - numerical).max()
    assert errors["canonical"] < 1e-6 and errors["jmp"] > 1e-2, errors


def test_canonical_graphs_are_permuted_with_the_atoms():
    settings = GraphSettings(cutoff=5.0, max_neighbors=16, neighbor_order="canonical")
    atoms = fcc_copper()
    atoms.rattle(0.03, seed=2)
    p = np.random.default_rng(0).permutation(len(atoms))

    def edge_set(graphs, relabel):
        out = {}
        for g in graphs.edge_index:
            s, t = relabel[graphs.edge_index[g].numpy()]
            out[g] = sorted(zip(s.tolist(), t.tolist(), map(tuple, graphs.cell_offset[g].tolist())))
        return out

    original = edge_set(structure_graphs_from_atoms(atoms, settings), np.arange(len(atoms)))
    # atom i of the permuted structure is atom p[i] of the original
    permuted = edge_set(structure_graphs_from_atoms(atoms[p], settings), p)
    assert original == permuted


def test_canonical_main_graph_is_symmetric_and_keeps_tied_shells():
    settings = GraphSettings(cutoff=5.0, max_neighbors=16, neighbor_order="canonical")
    graphs = structure_graphs_from_atoms(fcc_copper(), settings)
    ei, off = graphs.edge_index["main"], graphs.cell_offset["main"]
    edges = set(zip(ei[0].tolist(), ei[1].tolist(), map(tuple, off.tolist())))
    assert edges == {(t, s, tuple(-np.asarray(o))) for s, t, o in edges}
    # JMP's s < t symmetrisation (in the model's indices) leaves a symmetric graph as it is
    sym_ei, sym_off, _ = symmetrize_edges(ei, off, 32)
    assert set(zip(sym_ei[0].tolist(), sym_ei[1].tolist(), map(tuple, sym_off.tolist()))) == edges
    # 12 first + all 6 second neighbours (tied with the 16th), of 42 within 5 Å, for every atom
    assert np.all(np.bincount(ei[1].numpy(), minlength=32) == 18)
    assert graphs.truncated.tolist() == list(range(32))  # the 24 third neighbours (4.4 Å) are cut
    rattled = fcc_copper()
    rattled.rattle(0.05, seed=3)
    graphs = structure_graphs_from_atoms(rattled, settings)
    ei, off = graphs.edge_index["main"], graphs.cell_offset["main"]
    edges = set(zip(ei[0].tolist(), ei[1].tolist(), map(tuple, off.tolist())))
    assert edges == {(t, s, tuple(-np.asarray(o))) for s, t, o in edges}
    assert np.bincount(ei[1].numpy(), minlength=32).max() > 16  # the union adds reverse edges
    jmp = structure_graphs_from_atoms(fcc_copper(), GraphSettings(cutoff=5.0, max_neighbors=16))
    assert np.all(np.bincount(jmp.edge_index["main"][1].numpy()) == 16)
    assert jmp.truncated.tolist() == list(range(32))


def test_neighbor_order_defaults_keep_jmp_behaviour():
    assert GraphSettings().neighbor_order == "jmp"
    with pytest.raises(ValueError, match="neighbor_order"):
        GraphSettings(neighbor_order="sorted")
    assert load_model("jmp-mini-aspirin").graph_settings.neighbor_order == "canonical"  # moved by regraph.py
    assert JMPCalculator.from_jmp_checkpoint("jmp-mini", head="molecules-gfn2").graph_settings.neighbor_order == "jmp"
    calc = JMPCalculator("jmp-mini-aspirin", neighbor_order="jmp")
    assert calc.graph_settings.neighbor_order == "jmp"
    assert calc.graph_settings.max_neighbors == load_model("jmp-mini-aspirin").model_config.max_neighbors


# --------------------------------------------------------------------------------------
# 3. The max_neighbors limit is reported
# --------------------------------------------------------------------------------------


def test_warns_once_with_the_atoms_whose_neighbours_were_cut():
    calc = JMPCalculator(tiny_model(max_neighbors=4))
    atoms = methanol()  # 6 atoms within 4 Å of each other: 5 neighbours each, 4 kept
    atoms.calc = calc
    with pytest.warns(NeighborLimitWarning, match=r"atoms \[0, 1, 2, 3, 4, 5\] have more than max_neighbors=4"):
        atoms.get_potential_energy()
    atoms.rattle(0.01, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.get_potential_energy()  # once per calculator
        roomy = water()
        roomy.calc = JMPCalculator(tiny_model(max_neighbors=4))  # 2 neighbours each: nothing cut
        roomy.get_potential_energy()
    with pytest.warns(NeighborLimitWarning, match=r"structure 1: atoms \[0, 1, 2, 3, 4, 5\]"):
        JMPCalculator(tiny_model(max_neighbors=4)).predict([water(), methanol()])


# --------------------------------------------------------------------------------------
# 4. Float32 round-off does not depend on where the structure sits
# --------------------------------------------------------------------------------------


def far_away_cases(mol: Atoms):
    a = mol.copy()
    a.positions += 500.0
    yield "+500 Å", a
    a = mol.copy()
    a.positions += 500.0
    a.cell, a.pbc = [1000.0] * 3, True
    yield "centre of a periodic 1000 Å box", a
    a = mol.copy()
    a.positions += [999.5, 0.0, 500.0]
    a.cell, a.pbc = [1000.0] * 3, True
    a.wrap()
    yield "across the boundary of a periodic 1000 Å box", a


@quiet
def test_float32_force_error_does_not_depend_on_position():
    """Before: 2.3e-4 to 4.2e-4 relative force error away from the origin, 1.0e-6 at it."""
    mol = aspirin(1)[0]
    mol.positions -= mol.positions.mean(axis=0)
    reference = JMPCalculator(aspirin_model_with_16_neighbours(), dtype="float64").predict([mol], ["forces"])[0]["forces"]
    single = JMPCalculator(aspirin_model_with_16_neighbours(), dtype="float32")

    def relative_error(atoms):
        forces = single.predict([atoms], ["forces"])[0]["forces"]
        return np.abs(forces - reference).max() / np.abs(reference).max()

    at_origin = relative_error(mol)
    assert at_origin < 1e-5
    for name, atoms in far_away_cases(mol):
        assert relative_error(atoms) < max(3 * at_origin, 5e-6), name


def test_local_frame_keeps_every_edge_vector():
    """The offsets follow the images chosen for the local frame: pos[t] - pos[s] - o @ cell unchanged."""
    for atoms in (triclinic_crystal(), methanol()):
        if atoms.pbc.all():
            atoms.positions += np.array([3, -7, 12]) @ atoms.cell.array + 0.37 * atoms.cell.array[0]
            atoms.positions[1] += 5 * atoms.cell.array[2]
        settings = GraphSettings(cutoff=4.0, max_neighbors=30)
        arrays = atoms_arrays(atoms)
        graphs = structure_graphs_from_atoms(atoms, settings)
        positions, moved = local_frame(arrays, graphs)
        assert np.abs(positions).max() < np.abs(atoms.cell.array).sum() + 3.0
        for g in graphs.edge_index:
            s, t = graphs.edge_index[g].numpy()
            before = arrays["positions"][t] - arrays["positions"][s] - graphs.cell_offset[g].numpy() @ arrays["cell"]
            after = positions[t] - positions[s] - moved.cell_offset[g].numpy() @ arrays["cell"]
            np.testing.assert_allclose(after, before, atol=1e-9)


def test_crystal_far_from_its_cell_gives_the_same_results():
    calc = JMPCalculator(tiny_model(), dtype="float64")
    atoms = triclinic_crystal()
    far = atoms.copy()
    far.positions += np.array([[40, -3, 7], [0, 0, 0], [-25, 11, 2], [5, 5, -60]]) @ atoms.cell.array
    a, b = calc.predict([atoms, far], ["energy", "forces", "stress"])
    assert a["energy"] == pytest.approx(b["energy"], abs=1e-9)
    np.testing.assert_allclose(b["forces"], a["forces"], atol=1e-9)
    np.testing.assert_allclose(b["stress"], a["stress"], atol=1e-10)


# --------------------------------------------------------------------------------------
# 5. Elements, empty input, device
# --------------------------------------------------------------------------------------


def test_pretraining_head_refuses_elements_it_never_saw():
    """Before: -219 eV for UO2 from a head whose references cover only H, C, N, O."""
    calc = JMPCalculator.from_jmp_checkpoint("jmp-mini", head="molecules-gfn2")
    assert calc.elements == [1, 6, 7, 8]
    uo2 = Atoms("UO2", positions=[[0, 0, 0], [0, 0, 1.8], [0, 0, -1.8]])
    uo2.calc = calc
    with pytest.raises(ValueError, match=r"U \(Z=92\) at atoms \[0\].*knows only H, C, N, O"):
        uo2.get_potential_energy()
    with pytest.raises(ValueError, match=r"structure 1: unknown element"):
        calc.predict([molecule("CH4"), uo2])
    methane = molecule("CH4")
    methane.calc = calc
    assert np.isfinite(methane.get_potential_energy())
    unchecked = JMPCalculator.from_jmp_checkpoint("jmp-mini", head="molecules-gfn2")
    unchecked.check_elements = False
    assert np.isfinite(unchecked.predict([uo2])[0]["energy"])
    # references given by the caller name the elements too
    given = JMPCalculator.from_jmp_checkpoint("jmp-mini", head=0, element_references={1: -13.6, 8: -2041.0})
    assert given.elements == [1, 8]
    catalysis = JMPCalculator.from_jmp_checkpoint("jmp-mini", head="catalysis-emt")
    assert 29 in catalysis.elements and 92 not in catalysis.elements


def test_empty_atoms_is_a_clear_error():
    calc = JMPCalculator(tiny_model())
    empty = Atoms()
    empty.calc = calc
    with pytest.raises(ValueError, match=r"empty \(0 atoms\)"):
        empty.get_potential_energy()
    with pytest.raises(ValueError, match=r"structure 1: the Atoms object is empty"):
        calc.predict([water(), Atoms()])
    assert calc.predict([]) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        JMPCalculator(tiny_model(), device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        JMPCalculator.from_jmp_checkpoint("jmp-mini", head=0, device="cuda:0")
    with pytest.raises(ValueError, match="not a torch device"):
        JMPCalculator(tiny_model(), device="gpu")


def test_neighbor_order_is_saved_in_the_model_file_and_old_files_read_jmp(tmp_path):
    from jmp_ase.io.model_file import model_settings, save_model
    from jmp_ase.nn.model import ModelConfig

    net = tiny_model()
    assert net.model_config.neighbor_order == "canonical" == net.graph_settings.neighbor_order
    save_model(net, tmp_path / "m.ckpt")
    assert load_model(tmp_path / "m.ckpt").graph_settings.neighbor_order == "canonical"
    assert "(canonical order)" in model_settings(tmp_path / "m.ckpt")[0]
    older = net.model_config.to_dict()
    del older["neighbor_order"]
    assert ModelConfig.from_dict(older).graph_settings.neighbor_order == "jmp"
