"""Layers and the backbone's forward pass: scale factors and padded widths without host syncs."""

import dataclasses

import ase.io
import pytest
import torch

from jmp_ase.data.batch import batch_from_atoms, padded_widths
from jmp_ase.data.graphs import GraphSettings
from jmp_ase.nn.layers import ScaleFactor
from jmp_ase.io.pretrained import load_jmp_pretrained
from models import methanol, tiny_model

# Python-level ways of reading a tensor's value back to the host (each waits for the device).
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def no_host_reads(monkeypatch):
    """Make every Python-level read of a tensor's value raise while the fixture is active."""
    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} called in the forward pass (host sync)")
        return method

    def activate():
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, refuse(name))
    return activate


def test_unfitted_scale_factor_is_the_identity_bit_for_bit():
    layer = ScaleFactor()
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    x[0, 0], x[1, 1] = -0.0, float("inf")
    assert not layer.fitted
    y = layer(x)
    assert torch.equal(y, x) and torch.equal(torch.signbit(y), torch.signbit(x))


def test_fitted_scale_factor_multiplies():
    layer = ScaleFactor()
    layer.scale_factor.fill_(0.37)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    assert layer.fitted
    assert torch.equal(layer(x), x * torch.tensor(0.37))


def test_scale_factor_observer_sees_the_unscaled_input():
    layer = ScaleFactor()
    layer.scale_factor.fill_(2.0)
    seen = []
    layer.observer = lambda x, ref: seen.append((x, ref))
    x, ref = torch.ones(3, 2), torch.zeros(3, 2)
    assert torch.equal(layer(x, ref=ref), 2 * x)
    assert seen[0][0] is x and seen[0][1] is ref


def test_padded_widths_are_ints_matching_the_inner_ranks(reference_dir):
    atoms = ase.io.read(reference_dir / "structures.extxyz", ":")
    batch = batch_from_atoms(atoms, GraphSettings(cutoff=6.0, max_neighbors=30, tags="oc20"))
    idx = batch.indices
    widths = idx.padded_width
    inner = {
        "trip_e2e": idx.trip_e2e.out_agg, "trip_a2e": idx.trip_a2e.out_agg,
        "trip_e2a": idx.trip_e2a.out_agg, "quad": idx.quad.out_agg,
        "a2ee2a": idx.a2ee2a_target_inner, "a2a": idx.a2a_target_inner,
    }
    assert set(widths._fields) == set(inner)
    for name, ranks in inner.items():
        assert type(getattr(widths, name)) is int
        assert getattr(widths, name) == int(ranks.max()) + 1 > 1, name
    # moving the batch keeps the widths as plain ints
    assert batch.to(dtype=torch.float64).indices.padded_width == widths
    assert padded_widths(dataclasses.replace(idx, a2a_target_inner=torch.zeros(0, dtype=torch.long))).a2a == 0


def test_backbone_forward_reads_nothing_back_to_the_host(reference_dir, no_host_reads):
    """The pre-trained backbone (fitted scale factors) and a fresh fine-tuned model
    (unfitted ones) run without .item(), int(), bool() etc. on any tensor."""
    model, _ = load_jmp_pretrained(reference_dir / "jmp-tiny-pretrain.ckpt")
    atoms = ase.io.read(reference_dir / "structures.extxyz", ":")
    batch = batch_from_atoms(atoms, GraphSettings(cutoff=6.0, max_neighbors=30, tags="oc20"))
    fresh = tiny_model()
    small = batch_from_atoms([methanol()], GraphSettings(cutoff=4.0, max_neighbors=100))
    with torch.no_grad():
        expected = model.embed(batch).node_embedding
        expected_fresh = fresh.embed(small).node_embedding
    no_host_reads()
    with torch.no_grad():
        got = model.embed(batch).node_embedding
        got_fresh = fresh.embed(small).node_embedding
    assert torch.equal(got, expected) and torch.equal(got_fresh, expected_fresh)


def test_backbone_names_the_missing_padded_widths(reference_dir):
    model, _ = load_jmp_pretrained(reference_dir / "jmp-tiny-pretrain.ckpt")
    batch = batch_from_atoms([methanol()], GraphSettings(cutoff=6.0, max_neighbors=30))
    batch.indices = dataclasses.replace(batch.indices, padded_width=None)
    with pytest.raises(ValueError, match="padded_widths"):
        model.embed(batch)


def test_radial_bases_are_shared_only_while_equal():
    """Bases evaluates each distinct radial basis once per distance tensor: layers whose radial
    basis equals the main (or a2ee2a) one share its evaluation, checked again on every load."""
    from jmp_ase.calculators.calculator import JMPCalculator
    from models import water

    net = tiny_model(seed=2)
    bases = net.backbone.bases
    assert all(bases._radial_twin.values())
    state = net.state_dict()
    key = next(k for k in state if k.endswith("cbf_basis_tint.radial_basis.rbf.temps"))
    state[key] = state[key] * 1.5
    net.load_state_dict(state)
    assert not bases._radial_twin["cbf_basis_tint"] and bases._radial_twin["sbf_basis_qint"]

    def energy():
        atoms = water()
        atoms.calc = JMPCalculator(net, dtype="float64")
        return atoms.get_potential_energy()

    own = energy()  # the changed layer evaluates its own basis
    bases._radial_twin["cbf_basis_tint"] = True  # wrongly shared: another number
    assert abs(energy() - own) > 1e-9


def test_weighted_basis_gradients_and_second_derivatives_are_the_plain_products():
    """The custom backward of ``weighted_basis`` (layouts chosen for speed) is the product's own:
    first and second derivatives (forces inside a training loss) by finite differences."""
    from jmp_ase.nn.layers import weighted_basis

    gen = torch.Generator().manual_seed(0)
    for channels, custom in ((2, True), (3, False)):  # S = 5 > 2 C: the custom backward
        rad_w = torch.randn(3, channels, 5, dtype=torch.float64, generator=gen, requires_grad=True)
        sph = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
        out = weighted_basis(rad_w, sph)
        assert out.shape == (3, channels, 4) and out.is_contiguous() == custom
        assert (type(out.grad_fn).__name__ == "_WeightedBasisBackward") == custom
        torch.testing.assert_close(out, rad_w @ sph.transpose(1, 2))
        torch.autograd.gradcheck(weighted_basis, (rad_w, sph))
        torch.autograd.gradgradcheck(weighted_basis, (rad_w, sph))
        grad_sph, = torch.autograd.grad(weighted_basis(rad_w, sph).sum(), sph)
        assert grad_sph.is_contiguous()  # pad_rows' backward reads it without a copy


def test_outer_product_is_the_broadcast_product_with_the_same_derivatives():
    from jmp_ase.nn.layers import outer_product

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(6, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.equal(outer_product(a, b), (a[:, :, None] * b[:, None, :]).reshape(6, 12))
    torch.autograd.gradcheck(outer_product, (a, b))
    torch.autograd.gradgradcheck(outer_product, (a, b))
