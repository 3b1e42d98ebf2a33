"""Activation checkpointing for lean memory mode that stays lean under a second derivative.

``recompute(fn, *args)`` returns ``fn(*args)``. While autograd records, nothing of ``fn``'s
inside is kept: its backward runs ``fn`` again. Unlike ``torch.utils.checkpoint``, this also
holds for a backward taken with ``create_graph=True`` (conservative forces inside a training
loss): the first backward keeps only ``fn``'s inputs and the incoming gradients, and the second
backward runs ``fn`` and its first backward once more. With ``torch.utils.checkpoint`` the first
backward's graph keeps every recomputed intermediate until the second backward, which is what
made a lean fine-tuning step cost ~90 MB per atom (JMP-S, Cu 12 Å).

Contract for ``fn``: every tensor it reads that requires a gradient is either one of ``args`` or
a leaf (a parameter); a captured intermediate (a tensor computed from the positions outside
``fn``) would get no gradient and is refused with a ``RuntimeError`` at the first call. Random
operations (dropout) see the same random numbers when recomputed.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


class _ReadTensors(TorchFunctionMode):
    """Under ``no_grad``, the tensors that require a gradient among the operands of every torch
    operation run inside: these come from outside ``fn`` (nothing made inside requires one)."""

    def __init__(self):
        super().__init__()
        self.read: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs or {})):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                self.read[id(t)] = t
        return func(*args, **(kwargs or {}))


def _autocast_state() -> list:
    """(device type, dtype) of each autocast context in force (mixed precision): replayed as is."""
    return [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]


def _rng_state(tensors) -> tuple:
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    return torch.get_rng_state(), devices, [torch.cuda.get_rng_state(d) for d in devices]


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().requires_grad_(x.requires_grad)


class _Replay:
    """``fn`` with its non-tensor arguments, random-number and autocast state, run again on new tensors."""

    def __init__(self, fn, args: tuple, tensor_slots: list[int], num_outputs: int | None, rng: tuple):
        self.fn, self.tensor_slots = fn, tensor_slots
        self.args = tuple(None if i in tensor_slots else a for i, a in enumerate(args))  # tensors: saved by autograd
        self.num_outputs, self.rng = num_outputs, rng  # num_outputs None: fn returns one tensor
        self.autocast = _autocast_state()

    def __call__(self, tensors: list) -> list:
        args = list(self.args)
        for slot, t in zip(self.tensor_slots, tensors):
            args[slot] = t
        cpu_state, devices, cuda_states = self.rng
        with torch.random.fork_rng(devices=devices), contextlib.ExitStack() as stack:
            torch.set_rng_state(cpu_state)
            for device, state in zip(devices, cuda_states):
                torch.cuda.set_rng_state(state, device)
            for device_type, dtype in self.autocast:
                stack.enter_context(torch.autocast(device_type, dtype=dtype))
            out = self.fn(*args)
        return [out] if self.num_outputs is None else list(out)

    def fresh_inputs(self, inputs) -> list:
        """The tensor arguments as new leaves (the gradient stops there), the parameters as they are."""
        n = len(self.tensor_slots)
        return [_leaf(x) for x in inputs[:n]] + list(inputs[n:])

    def vjp(self, leaves: list, grads: list, create_graph: bool) -> list:
        """Gradients of ``sum(out * grads)`` with respect to ``leaves`` (tensor arguments, then
        parameters; from :meth:`fresh_inputs`), ``fn`` evaluated afresh; None where there is none."""
        with torch.enable_grad():
            outs = self(leaves[:len(self.tensor_slots)])
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            wanted = [i for i, x in enumerate(leaves) if x.requires_grad]
            found = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wanted], [g for _, g in pairs],
                                        allow_unused=True, create_graph=create_graph) if pairs and wanted else []
        result = [None] * len(leaves)
        for i, g in zip(wanted, found):
            result[i] = g
        return result


class _Recomputed(torch.autograd.Function):
    """Outputs computed beforehand (under ``no_grad``); backward = :meth:`_Replay.vjp`, itself
    recomputed (:class:`_RecomputedVjp`) when the backward is recorded for a second derivative."""

    @staticmethod
    def forward(ctx, replay: _Replay, outputs: tuple, *inputs):
        ctx.replay = replay
        ctx.save_for_backward(*inputs)
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        inputs = list(ctx.saved_tensors)
        if torch.is_grad_enabled():  # create_graph: this backward is differentiated in turn
            found = _RecomputedVjp.apply(ctx.replay, len(inputs), *inputs, *grads)
        else:
            found = ctx.replay.vjp(ctx.replay.fresh_inputs(inputs), list(grads), create_graph=False)
        return (None, None) + tuple(found)


class _RecomputedVjp(torch.autograd.Function):
    """:meth:`_Replay.vjp` of ``(inputs, grads)`` whose own backward runs ``fn`` and its first
    backward again (a third derivative is not supported)."""

    @staticmethod
    def forward(ctx, replay: _Replay, num_inputs: int, *inputs_and_grads):
        ctx.replay, ctx.num_inputs = replay, num_inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs_and_grads)
        inputs, grads = list(inputs_and_grads[:num_inputs]), list(inputs_and_grads[num_inputs:])
        return tuple(replay.vjp(replay.fresh_inputs(inputs), grads, create_graph=False))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_grads):
        saved = ctx.saved_tensors
        n = ctx.num_inputs
        inputs = ctx.replay.fresh_inputs(saved[:n])
        grads = [_leaf(g) for g in saved[n:]]
        with torch.enable_grad():
            found = ctx.replay.vjp(inputs, grads, create_graph=True)
            pairs = [(f, gg) for f, gg in zip(found, grad_grads)
                     if f is not None and gg is not None and f.requires_grad]
            sources = [x for x in inputs + grads if x.requires_grad]
            result = torch.autograd.grad([f for f, _ in pairs], sources, [gg for _, gg in pairs],
                                         allow_unused=True) if pairs and sources else [None] * len(sources)
        by_source = dict(zip(map(id, sources), result))
        return (None, None) + tuple(by_source.get(id(x)) for x in inputs + grads)


def recompute(fn, *args):
    """``fn(*args)`` (a tensor or a tuple of tensors); while autograd records, ``fn``'s
    intermediates are not kept but recomputed in backward, also in a backward recorded for a
    second derivative (see the module docstring for what ``fn`` may read)."""
    if not torch.is_grad_enabled():
        return fn(*args)
    reads = _ReadTensors()
    rng = _rng_state([a for a in args if isinstance(a, torch.Tensor)])
    with torch.no_grad(), reads:
        out = fn(*args)
    slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    explicit = {id(args[i]) for i in slots}
    params = []
    for t in reads.read.values():
        if id(t) in explicit:
            continue
        if not t.is_leaf:
            raise RuntimeError(f"recompute: {getattr(fn, '__qualname__', fn)} reads a tensor {tuple(t.shape)} that "
                               "requires a gradient but is neither an argument nor a parameter; pass it as an argument")
        params.append(t)
    if not params and not any(args[i].requires_grad for i in slots):
        return out
    single = isinstance(out, torch.Tensor)
    outputs = (out,) if single else tuple(out)
    replay = _Replay(fn, args, slots, None if single else len(outputs), rng)
    result = _Recomputed.apply(replay, outputs, *(args[i] for i in slots), *params)
    return result[0] if single else tuple(result)
