"""The head registry: a head kind is one class registered by name; the model builds and runs
whatever is registered, and the calculator returns its outputs."""
import pytest
import torch

from jmp_ase.data.batch import batch_from_atoms
from jmp_ase.nn.heads import HEAD_TYPES, Head, HeadSpec, build_head, head_kinds, register_head
from jmp_ase.nn.heads.energy import EnergyHead
from models import methanol, tiny_model


def test_builtin_kinds_are_registered_one_class_each():
    assert set(head_kinds()) >= {"energy", "scalar", "direct_forces"}
    assert HEAD_TYPES["energy"] is EnergyHead
    with pytest.raises(ValueError, match="kind must be one of"):
        HeadSpec("x", kind="dipole")


def test_a_new_head_kind_is_one_registered_class():
    @register_head("atom_count")
    class AtomCount(Head):
        """Counts atoms through the pooled node MLP (raw output times zero plus one)."""

        def forward(self, inputs):
            raw = self.mlp(inputs.out.node_embedding)[:, 0]
            per_atom = raw * 0 + 1
            return {self.spec.name: self.structure_value(per_atom, inputs.atom_batch, inputs.num_structures)}

    try:
        model = tiny_model(heads=[HeadSpec("energy"), HeadSpec("n", kind="atom_count")])
        assert isinstance(model.heads["n"], AtomCount)
        atoms = methanol()
        out = model(batch_from_atoms([atoms, atoms[:3]], model.graph_settings))
        assert out["n"].tolist() == [6.0, 3.0]
        assert out["forces"].shape == (9, 3)  # the energy head still gives -dE/dr
        with pytest.raises(ValueError, match="registered twice"):
            register_head("atom_count")(AtomCount)
    finally:
        HEAD_TYPES.pop("atom_count")


def test_edge_heads_read_edge_embeddings():
    model = tiny_model(heads=[HeadSpec("energy"), HeadSpec("forces", kind="direct_forces")])
    c = model.config
    assert model.heads["forces"].mlp[0].in_features == c.emb_size_edge
    assert model.heads["energy"].mlp[0].in_features == c.emb_size_atom
    head = build_head(HeadSpec("gap", kind="scalar", reduction="mean"), 8, 16, 10)
    assert head.mlp[0].in_features == 8 and head.element_references.shape == (11,)
    assert not model.conservative
    assert torch.isfinite(model(batch_from_atoms([methanol()], model.graph_settings))["forces"]).all()
