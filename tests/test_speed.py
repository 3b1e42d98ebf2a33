"""The per-step speed-ups keep the numbers: the transposed basis contraction, the interaction
index cache of the calculator, the kept scale factors and constants, the shared radial basis, and
the memory check that refuses a pass that cannot fit
(MemoryError naming the atom count and lean mode, instead of the kernel killing the process)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase.build import bulk

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.data.batch import IndexCache, batch_from_atoms
from jmp_ase.nn import backbone as backbone_module
from jmp_ase.nn.layers import ScaleFactor, basis_messages, scalar
from models import methanol, tiny_model


def copper(rattle=0.05, seed=3):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(rattle, seed=seed)
    return atoms


@pytest.mark.parametrize("s,c", [(49, 8), (49, 32), (7, 64), (49, 24)])
def test_basis_messages_is_the_plain_product(s, c):
    gen = torch.Generator().manual_seed(0)
    sph = torch.randn(5, 11, s, dtype=torch.float64, generator=gen).transpose(1, 2)  # as forward_padded lays it out
    x = torch.randn(5, 11, c, dtype=torch.float64, generator=gen)
    out = basis_messages(sph, x)
    assert out.shape == (5, s, c)
    torch.testing.assert_close(out, sph @ x, rtol=1e-14, atol=1e-14)


def test_index_cache_reuses_indices_only_for_identical_graphs():
    model = tiny_model()
    cache = IndexCache()
    atoms = methanol()
    first = batch_from_atoms([atoms], model.graph_settings, index_cache=cache)
    atoms.positions[0] += 1e-4  # same graphs
    second = batch_from_atoms([atoms], model.graph_settings, index_cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    assert second.indices is first.indices
    fresh = batch_from_atoms([atoms], model.graph_settings)
    torch.testing.assert_close(second.indices.quad.out, fresh.indices.quad.out, rtol=0, atol=0)
    assert second.indices.padded_width == fresh.indices.padded_width
    atoms.positions[0] += 3.0  # other graphs
    third = batch_from_atoms([atoms], model.graph_settings, index_cache=cache)
    assert cache.misses == 2 and third.indices is not first.indices
    other = copper()
    batch_from_atoms([other], model.graph_settings, index_cache=cache)
    assert cache.misses == 3


def test_calculator_md_steps_match_fresh_calculators():
    """A calculator that reuses its indices gives, step after step, what a new one gives."""
    model = tiny_model(elements=[29])
    calc = JMPCalculator(model, dtype="float64")
    atoms = copper()
    rng = np.random.default_rng(0)
    for _ in range(4):
        atoms.positions += rng.normal(scale=2e-3, size=atoms.positions.shape)
        atoms.calc = calc
        forces = atoms.get_forces()
        energy = atoms.get_potential_energy()
        ref = atoms.copy()
        ref.calc = JMPCalculator(model, dtype="float64")
        np.testing.assert_allclose(forces, ref.get_forces(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(energy, ref.get_potential_energy(), rtol=1e-13)
    assert calc._index_cache.hits >= 1


def spy_lean(monkeypatch, chosen: list) -> None:
    """Append "lean" to ``chosen`` for every pass that runs in lean mode."""
    original = backbone_module.GemNetOCBackbone.lean_chunk_size

    def spy(self, *args, **kwargs):
        size = original(self, *args, **kwargs)
        if size is not None:
            chosen.append("lean")
        return size

    monkeypatch.setattr(backbone_module.GemNetOCBackbone, "lean_chunk_size", spy)


@pytest.fixture
def small_memory(monkeypatch):
    """Every pass is checked, against ``available[0]`` bytes."""
    available = [1]
    monkeypatch.setattr(backbone_module, "MEMORY_CHECK_BYTES", 0)
    monkeypatch.setattr(backbone_module, "available_memory_bytes", lambda device: available[0])
    return available


def test_too_large_system_raises_memory_error_naming_atoms_and_lean(small_memory):
    model = tiny_model(elements=[29])
    atoms = copper()
    model.memory = "fast"
    calc = JMPCalculator(model, memory="fast")
    with pytest.raises(MemoryError, match=rf"{len(atoms)} atoms.*memory='lean'.*--memory lean"):
        calc.get_forces(atoms)
    model.memory = "lean"
    batch = batch_from_atoms([atoms], model.graph_settings)
    with pytest.raises(MemoryError, match=rf"{len(atoms)} atoms.*even in lean memory mode"):
        model(batch)


def test_auto_turns_lean_where_fast_would_not_fit(small_memory, monkeypatch):
    model = tiny_model().double()
    atoms = copper()
    batch = batch_from_atoms([atoms], model.graph_settings, dtype=torch.float64)
    model.memory = "fast"
    small_memory[0] = 2**50
    fast = model(batch)
    idx, n = batch.indices, len(atoms)
    lean_need = backbone_module.estimate_peak_bytes(model.config, idx, n, 8, lean=True, grad=True)
    fast_need = backbone_module.estimate_peak_bytes(model.config, idx, n, 8, lean=False, grad=True)
    assert lean_need < fast_need
    small_memory[0] = (lean_need + fast_need) // 2
    model.memory = "auto"
    chosen = []
    spy_lean(monkeypatch, chosen)
    auto = model(batch)
    assert chosen == ["lean"]
    for key in ("energy", "forces"):
        torch.testing.assert_close(auto[key], fast[key], rtol=1e-12, atol=1e-12)
    small_memory[0] = fast_need  # fits: nothing changes
    chosen.clear()
    model(batch)
    assert chosen == []


def test_training_with_a_force_loss_counts_the_second_derivative(small_memory, monkeypatch):
    """A fine-tuning step (training mode, conservative forces in the loss) needs about twice a
    calculator call's memory or more: auto turns lean where only the call would fit fast."""
    model = tiny_model().double()
    batch = batch_from_atoms([copper()], model.graph_settings, dtype=torch.float64)
    idx, n = batch.indices, len(batch.numbers)
    call = backbone_module.estimate_peak_bytes(model.config, idx, n, 8, lean=False, grad=True)
    step = backbone_module.estimate_peak_bytes(model.config, idx, n, 8, lean=False, grad=True, second_order=True)
    assert step == backbone_module.SECOND_ORDER_FACTOR * call > call
    small_memory[0] = 3 * call // 2  # the call fits fast, the training step does not
    chosen = []
    spy_lean(monkeypatch, chosen)
    model.memory = "auto"
    model.eval()
    model(batch)
    assert chosen == []
    model.train()
    model(batch)
    assert chosen == ["lean"]
    chosen.clear()
    with torch.no_grad():  # direct use without forces: no second derivative
        model(batch, compute_forces=False)
    model.eval()
    assert chosen == []


def test_auto_stays_fast_above_the_slot_limit_where_memory_is_plentiful(small_memory, monkeypatch):
    """Above AUTO_LEAN_SLOTS auto is lean, unless the fast pass needs at most AUTO_FAST_FRACTION
    of the available memory (a large machine pays no recomputation)."""
    model = tiny_model().double()
    atoms = copper()
    batch = batch_from_atoms([atoms], model.graph_settings, dtype=torch.float64)
    idx, n = batch.indices, len(atoms)
    fast_need = backbone_module.estimate_peak_bytes(model.config, idx, n, 8, lean=False, grad=True)
    monkeypatch.setattr(backbone_module, "AUTO_LEAN_SLOTS", 0)
    chosen = []
    spy_lean(monkeypatch, chosen)
    for available, expected in ((2 * fast_need, []), (2 * fast_need - 16, ["lean"])):
        small_memory[0] = int(available / backbone_module.AUTO_FAST_FRACTION / 2)
        chosen.clear()
        model(batch)
        assert chosen == expected, available


def test_scale_factor_cached_factor_follows_its_buffer():
    """The picked factor is kept, but a changed buffer (in place, loaded, replaced) is seen."""
    layer = ScaleFactor()
    x = torch.randn(4, 3)
    assert torch.equal(layer(x), x)  # unfitted: identity, bit for bit
    layer.scale_factor.fill_(2.0)
    assert torch.equal(layer(x), x * 2.0)
    layer.load_state_dict({"scale_factor": torch.tensor(3.0)})
    assert torch.equal(layer(x), x * 3.0)
    layer.scale_factor = torch.tensor(0.5)  # a new buffer tensor
    assert torch.equal(layer(x), x * 0.5)
    layer.scale_factor.data = torch.tensor(4.0)
    assert torch.equal(layer(x), x * 4.0)
    layer.double()
    assert layer(x.double()).dtype == torch.float64
    with torch.inference_mode():
        layer(x.double())
    y = x.double().requires_grad_()  # a factor made in inference mode is not reused with autograd
    (grad,) = torch.autograd.grad(layer(y).sum(), y)
    assert torch.equal(grad, torch.full_like(y, 4.0))
    assert torch.equal(copy.deepcopy(layer)(x.double()), x.double() * 4.0)


def test_observers_are_counted_and_force_the_fast_path():
    model = tiny_model()
    batch = batch_from_atoms([methanol()], model.graph_settings)
    backbone = model.backbone
    backbone.memory = "lean"
    before = ScaleFactor.observing
    assert backbone.lean_chunk_size(batch.indices) is not None
    layer = next(m for m in backbone.modules() if isinstance(m, ScaleFactor))
    layer.observer = lambda x, ref: None
    try:
        assert ScaleFactor.observing == before + 1
        assert backbone.lean_chunk_size(batch.indices) is None
        twin = copy.deepcopy(layer)  # a copy observes too
        assert ScaleFactor.observing == before + 2
        twin.observer = None
    finally:
        layer.observer = None
    assert ScaleFactor.observing == before
    assert backbone.lean_chunk_size(batch.indices) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scalar_constants_are_kept_and_exact(dtype):
    x = torch.randn(5, 3, dtype=dtype)
    c = 1.0 / 0.6
    assert scalar(c, x) is scalar(c, x) and scalar(c, x).dtype == dtype and scalar(c, x).dim() == 0
    assert torch.equal(x * scalar(c, x), x * c)
    with torch.inference_mode():
        made_here = scalar(0.123, x)
    y = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad((y * made_here).sum(), y)  # usable where autograd records
    assert torch.equal(grad, torch.full_like(y, 0.123))


def test_shared_radial_basis_and_quadruplet_paths_match_the_plain_ones():
    """One radial evaluation for the four graphs equals one per graph; a file whose radial bases
    differ turns the shared evaluation off."""
    model = tiny_model().double()
    atoms = methanol()
    batch = batch_from_atoms([atoms], model.graph_settings, dtype=torch.float64)
    bases = model.backbone.bases
    assert bases._one_radial
    shared = model(batch)
    bases._one_radial = False
    separate = model(batch)
    for key in ("energy", "forces"):
        torch.testing.assert_close(shared[key], separate[key], rtol=1e-13, atol=1e-13)
    state = model.state_dict()
    state["backbone.bases.radial_basis_aint.rbf.offset"] = state["backbone.bases.radial_basis_aint.rbf.offset"] * 1.01
    model.load_state_dict(state)
    assert not bases._one_radial
    model.memory = "lean"  # the quadruplet basis per chunk, the a2a basis apart
    lean = model(batch)
    model.memory = "fast"
    fast = model(batch)
    for key in ("energy", "forces"):
        torch.testing.assert_close(lean[key], fast[key], rtol=1e-12, atol=1e-12)
