"""The tag policy: tags are ignored (every atom tag 2, as JMP fine-tunes) unless a model or the
user asks for OC20's convention; the policy is saved in the model file."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111

from jmp_ase import JMPCalculator
from jmp_ase.io.model_file import load_model, model_settings, save_model
from jmp_ase.data.graphs import GraphSettings, resolve_tags
from jmp_ase.nn.model import FineTunedModel, ModelConfig
from models import tiny_model


def test_resolve_tags_policies():
    layers = np.array([1, 1, 2, 2, 3, 3, 4, 4])  # what ase.build.fcc111 writes
    oc20 = np.array([0, 0, 1, 1, 2])
    assert resolve_tags(layers, "ignore").tolist() == [2] * 8
    assert resolve_tags(oc20, "oc20").tolist() == oc20.tolist()
    assert resolve_tags(oc20, "auto").tolist() == oc20.tolist()
    for policy in ("oc20", "auto", "ignore"):
        assert resolve_tags(np.zeros(3, int), policy).tolist() == [2, 2, 2]
    for policy in ("oc20", "auto"):
        with pytest.raises(ValueError, match=r"tags \[3, 4\] \(atoms \[4, 5, 6, 7\]\).*layer numbers"):
            resolve_tags(layers, policy)
    with pytest.raises(ValueError, match="tags must be one of"):
        resolve_tags(oc20, "ase")
    with pytest.raises(ValueError, match="tags must be one of"):
        GraphSettings(tags="OC20")


def slab_with_co():
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.3, "fcc")
    slab.rattle(0.02, seed=0)
    return slab  # tags: ASE's layer numbers 1..3, the adsorbate 0


def energy(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy()


def test_calculator_ignores_tags_unless_asked_for_oc20():
    net = tiny_model(elements=[8, 29])
    slab = slab_with_co()
    untagged = slab.copy()
    untagged.set_tags(0)
    calc = JMPCalculator(net, dtype="float64")
    assert calc.graph_settings.tags == "ignore"
    assert energy(calc, slab) == energy(calc, untagged)  # ASE's layer numbers change nothing

    oc20 = JMPCalculator(net, dtype="float64", tags="oc20")
    with pytest.raises(ValueError, match="layer numbers"):
        energy(oc20, slab)
    tagged = slab.copy()
    layer = slab.get_tags()
    tagged.set_tags(np.where(layer == 1, 1, np.where(layer == 0, 2, 0)))
    assert energy(oc20, tagged) != energy(calc, tagged)  # sub-surface atoms leave the quadruplet graph
    with pytest.raises(ValueError, match="tags must be one of"):
        JMPCalculator(net, tags="layers")


def test_tag_policy_is_saved_in_the_model_file_and_old_files_read_auto(tmp_path):
    net = tiny_model(elements=[8, 29])
    config = ModelConfig.from_dict({**net.model_config.to_dict(), "tags": "oc20"})
    oc20_net = FineTunedModel(config)
    oc20_net.load_state_dict(net.state_dict())
    save_model(oc20_net, tmp_path / "oc20.ckpt")
    assert load_model(tmp_path / "oc20.ckpt").graph_settings.tags == "oc20"
    assert "tags oc20" in model_settings(tmp_path / "oc20.ckpt")[0]

    first_release = net.model_config.to_dict()
    del first_release["tags"]
    assert ModelConfig.from_dict(first_release).tags == "auto"
    assert ModelConfig(net.config, net.model_config.heads).tags == "ignore"
