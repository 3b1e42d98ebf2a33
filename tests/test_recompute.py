"""``jmp_ase.nn.recompute.recompute``: lean mode's activation checkpointing, which also stays lean
when the backward is itself differentiated (a force loss in training)."""
from __future__ import annotations

import weakref

import pytest
import torch

from jmp_ase.nn.recompute import recompute

WIDE = 2000  # width of the intermediate that recomputation must not keep


@pytest.fixture()
def layer():
    torch.manual_seed(0)
    return torch.nn.Linear(4, WIDE).double()


def energy_and_forces(layer, positions, wrap, dropout=0.0):
    """A toy potential: per-atom features (with a batch-wide one) through a wide layer."""
    x = torch.cat([positions, positions.square().sum(-1, keepdim=True)], dim=-1)

    def part(x, index, scale):
        y = torch.tanh(layer(x.index_select(0, index)))
        y = torch.nn.functional.dropout(y, dropout, training=dropout > 0)
        return y.mean(-1) * scale, (y * x[:, :1]).sum(-1)

    torch.manual_seed(7)
    a, b = wrap(part, x, torch.arange(x.shape[0]), 3.0)
    energy = a.sin().sum() + b.cos().sum()
    forces = -torch.autograd.grad(energy, positions, create_graph=True)[0]
    return energy, forces


def plain(fn, *args):
    return fn(*args)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_same_values_forces_and_second_derivatives(layer, dropout):
    positions = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for wrap in (plain, recompute):
        energy, forces = energy_and_forces(layer, positions, wrap, dropout)
        loss = energy.square() + 10 * forces.square().sum()
        grads = torch.autograd.grad(loss, [positions, *layer.parameters()])
        results.append((energy, forces, grads))
    (e0, f0, g0), (e1, f1, g1) = results
    assert torch.equal(e0, e1)
    assert torch.allclose(f0, f1, rtol=0, atol=1e-13)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert all(g.abs().max() > 0 for g in g1)  # the force loss reaches the weights


def test_second_derivative_is_finite_difference_of_first(layer):
    """d/dW of the force loss from the recomputed double backward = finite difference of the loss."""
    positions = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)

    def loss():
        _, forces = energy_and_forces(layer, positions, recompute)
        return forces.square().sum()

    grad = torch.autograd.grad(loss(), layer.weight)[0]
    direction = torch.randn_like(layer.weight)
    step = 1e-6
    with torch.no_grad():
        layer.weight += step * direction
    up = loss().item()
    with torch.no_grad():
        layer.weight -= 2 * step * direction
    down = loss().item()
    assert (up - down) / (2 * step) == pytest.approx((grad * direction).sum().item(), rel=1e-6)


def retained_bytes_after_force_backward(layer, wrap) -> int:
    """Bytes that the graph still holds once the forces (with their graph, for a loss) exist."""
    packed = []

    class Held:
        def __init__(self, tensor):
            self.tensor = tensor

    def pack(tensor):
        held = Held(tensor)
        packed.append((weakref.ref(held), tensor.numel() * tensor.element_size()))
        return held

    positions = torch.randn(400, 3, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda held: held.tensor):
        energy, forces = energy_and_forces(layer, positions, wrap)
        return sum(size for ref, size in packed if ref() is not None)


def test_force_graph_keeps_no_intermediate(layer):
    intermediate = 400 * WIDE * 8
    kept_plain = retained_bytes_after_force_backward(layer, plain)
    kept = retained_bytes_after_force_backward(layer, recompute)
    assert kept_plain > 2 * intermediate  # the measure sees what a plain graph keeps
    assert kept < intermediate / 4, kept


def test_refuses_a_captured_intermediate(layer):
    positions = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    captured = positions * 2  # depends on the positions, but not passed in

    with pytest.raises(RuntimeError, match="neither an argument nor a parameter"):
        recompute(lambda x: x + captured, positions)


def test_without_autograd_it_is_a_plain_call(layer):
    with torch.no_grad():
        out = recompute(lambda x: layer(x), torch.randn(2, 4, dtype=torch.float64))
    assert out.grad_fn is None and out.shape == (2, WIDE)


def test_mixed_precision_is_replayed(layer):
    """Under autocast, the recomputation runs at the forward's precision (else the gradients are
    those of another function: 1 % off here)."""
    positions = torch.randn(6, 3, dtype=torch.float32, requires_grad=True)
    layer = layer.float()
    results = []
    for wrap in (plain, recompute):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            energy, forces = energy_and_forces(layer, positions, wrap)
        results.append((forces, torch.autograd.grad(energy, layer.weight)[0]))
    for a, b in zip(*results):
        assert torch.equal(a, b)
