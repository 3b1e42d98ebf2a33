"""Embedding rows of elements the parent never saw (issue 15): with ``unseen_embeddings: similar``
each unseen training element starts from the row of the nearest seen element on the periodic
table; the seen rows and everything else stay the parent's; ``random`` keeps JMP's behaviour."""
from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from jmp_ase.training.finetune import FinetuneConfig, _graph, build_model, make_datasets
from jmp_ase.training.parent import parent_of
from jmp_ase.training.unseen_elements import similar_element, table_position

JMP_MINI_SEEN = [1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79]


@pytest.mark.parametrize("z, position", [(1, (1, 1)), (2, (18, 1)), (3, (1, 2)), (14, (14, 3)), (26, (8, 4)),
                                          (57, (3, 6)), (71, (3, 6)), (72, (4, 6)), (79, (11, 6)), (82, (14, 6)),
                                          (92, (3, 7)), (118, (18, 7))])
def test_periodic_table_positions(z, position):
    assert table_position(z) == position


@pytest.mark.parametrize("symbol, donor", [("Fe", "Ni"), ("Ti", "Ni"), ("Zn", "Cu"), ("Hf", "Pt"), ("Si", "C"),
                                           ("P", "N"), ("S", "O"), ("Cl", "O"), ("Ga", "Al"), ("Li", "Al"),
                                           ("Ba", "Al"), ("Pb", "C")])
def test_similar_seen_element(symbol, donor):
    from ase.data import atomic_numbers
    assert similar_element(atomic_numbers[symbol], JMP_MINI_SEEN) == atomic_numbers[donor]


def test_nothing_similar_to_offer():
    assert similar_element(26, [1, 6, 8]) is None  # no transition metal seen
    with pytest.raises(ValueError, match="no element"):
        table_position(0)


def _model(tmp_path, **extra):
    frames = []
    for symbol, a in (("Fe", 2.87), ("Ni", 3.52), ("Cu", 3.61)):
        atoms = bulk(symbol, "bcc" if symbol == "Fe" else "fcc", a=a).repeat((1, 1, 2))
        atoms.rattle(0.02, seed=len(frames))
        atoms.calc = SinglePointCalculator(atoms, energy=-len(atoms) * 3.0 + 0.01 * len(frames),
                                           forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    frames = frames * 2
    ase.io.write(tmp_path / "train.extxyz", frames, format="extxyz")
    config = FinetuneConfig.from_dict(dict(pretrained="jmp-mini", train=str(tmp_path / "train.extxyz"),
                                           val=str(tmp_path / "train.extxyz"), out=str(tmp_path / "run"), **extra))
    parent = parent_of(config)
    _, settings, _ = _graph(config, parent)
    model, info = build_model(config, make_datasets(config, settings)["train"], parent)
    return model, info, parent


def test_unseen_elements_start_from_their_similar_seen_elements(tmp_path):
    model, info, parent = _model(tmp_path)
    rows = model.embedding.atom_embedding.weight.detach()
    original = parent.state["embedding.atom_embedding.weight"]
    assert info["unseen_donors"] == {26: 28}  # the training data's unseen elements
    assert torch.equal(rows[26 - 1], original[28 - 1])  # Fe takes Ni's row
    assert torch.equal(rows[42 - 1], original[46 - 1])  # Mo (not in the data) Pd's, for --allow-unknown-elements
    seen = [z - 1 for z in JMP_MINI_SEEN]
    assert torch.equal(rows[seen], original[seen])  # the trained rows are the parent's
    for z in range(1, rows.shape[0] + 1):
        donor = similar_element(z, JMP_MINI_SEEN) if z not in JMP_MINI_SEEN else z
        assert torch.equal(rows[z - 1], original[(donor or z) - 1]), z


def test_random_keeps_the_untrained_rows(tmp_path):
    model, info, parent = _model(tmp_path, unseen_embeddings="random")
    assert "unseen_donors" not in info
    assert torch.equal(model.embedding.atom_embedding.weight.detach(), parent.state["embedding.atom_embedding.weight"])


def test_bad_choice_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unseen-embeddings"):
        FinetuneConfig.from_dict(dict(pretrained="jmp-mini", train="x.extxyz", unseen_embeddings="mean"))
