"""The GemNet-OC backbone as JMP uses it: atom embeddings in, node and edge embeddings out."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from jmp_ase.allocator import retained_free_bytes, use_policy
from jmp_ase.data.index_types import InteractionIndices
from jmp_ase.nn.bases import Bases
from jmp_ase.nn.config import BackboneConfig
from jmp_ase.nn.interactions import InteractionBlock, OutputBlock
from jmp_ase.nn.layers import Dense, ResidualLayer, ScaleFactor

GRAPH_TYPES = ("main", "a2a", "a2ee2a", "qint")
MEMORY_MODES = ("auto", "fast", "lean")
# Lean mode: padded triplet / quadruplet / neighbour slots evaluated at once (rows x padded width).
DEFAULT_CHUNK_SIZE = 1 << 17
# memory="auto" turns lean above this many padded quadruplet slots (main edges x padded width):
# a JMP-S conservative pass there needs about 6 GB in fast mode (Cu fcc at 12 Å / 30 neighbours: 108
# atoms have 0.77 M slots and peak at 4.9 GB, 256 atoms 1.8 M and 10 GB).
AUTO_LEAN_SLOTS = 1_000_000
# ... unless the fast pass's estimated peak is at most this fraction of the available memory (then fast:
# 2-2.5x quicker; the estimate is a low one, measured peaks were up to 1.4x it).
AUTO_FAST_FRACTION = 0.5
# A lean pass that keeps freed memory (jmp_ase.allocator) grew the process by up to 3.1x lean's
# estimate (JMP-S, Cu 256 / 1,372 conservative: 3.1x / 2.2x; one that releases it: 1.4x / 1.2x);
# it keeps it where this times lean's estimate is at most AUTO_FAST_FRACTION of the available memory.
LEAN_RETAINED_FACTOR = 3.5


# Estimates below this many bytes are not compared with the available memory (no /proc read).
MEMORY_CHECK_BYTES = 256 * 2**20


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a forward pass may still use: free GPU memory (``torch.cuda.mem_get_info``) on a
    CUDA device; on the CPU the least of ``MemAvailable`` (/proc/meminfo), the headroom of the
    process's cgroup (a container's limit: cgroup v2 ``memory.max`` or v1 ``limit_in_bytes``, minus
    its usage) and of ``RLIMIT_AS``, plus what the process's heap holds free for reuse
    (:func:`jmp_ase.allocator.retained_free_bytes`); None where none is known."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    known = [n for n in (_meminfo_available(), _cgroup_headroom(), _address_space_headroom()) if n is not None]
    return min(known) + retained_free_bytes() if known else None


def _read_number(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text in ("", "max") else int(text)
    except (OSError, ValueError):
        return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, else v1); None without a limit."""
    try:
        with open(membership) as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        entries = []
    for _, controllers, path in entries:
        if controllers == "":  # cgroup v2
            folder = f"{root}{path}".rstrip("/")
            limit, usage = _read_number(f"{folder}/memory.max"), _read_number(f"{folder}/memory.current")
        elif "memory" in controllers.split(","):
            folder = f"{root}/memory{path}".rstrip("/")
            limit = _read_number(f"{folder}/memory.limit_in_bytes")
            usage = _read_number(f"{folder}/memory.usage_in_bytes")
            limit = None if limit is not None and limit >= 2**60 else limit  # v1 says "no limit" with a huge number
        else:
            continue
        if limit is not None and usage is not None:
            return max(limit - usage, 0)
    return None


def _address_space_headroom() -> int | None:
    """``RLIMIT_AS`` minus the process's virtual size; None without a limit."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        return max(limit - pages * resource.getpagesize(), 0)
    except (ImportError, OSError, ValueError, IndexError):
        return None


#: a force loss's second derivative (training with conservative forces) at least doubles a pass's
#: memory (measured, JMP-S Cu 12 Å: fast 126 against 41 MB/atom, lean 7.6-12.8 against 3.5-4.6)
SECOND_ORDER_FACTOR = 2


def estimate_peak_bytes(config: BackboneConfig, idx: InteractionIndices, num_atoms: int, itemsize: int,
                        lean: bool, grad: bool, second_order: bool = False) -> int:
    """A low estimate of the memory one backbone pass allocates, from the graph sizes alone.

    Counts only the largest tensors: per main edge and block, activations of width
    ``emb_size_edge`` (about 12 kept per block for backward, 3 at a time without gradients);
    in fast mode also the padded quadruplet basis (S² per padded slot) and per block its padded
    messages (about 8 x ``emb_size_quad_in`` kept per slot for backward), and the padded
    a2a messages. Below the measured peaks of JMP-S conservative passes (benchmarks/README.md,
    float32, cutoff 12 Å: Cu 108 fast 3.4 GB estimated / 4.4 GB measured, Cu 256 fast 8.4 / 9.6,
    lean 0.7 / 0.9, Cu 1372 lean 3.8 / 4.7), so a pass refused by :func:`check_memory` would
    not have fitted. ``second_order``: a force loss will differentiate the forces again
    (training): times :data:`SECOND_ORDER_FACTOR`.
    """
    c, width = config, idx.padded_width
    edges = idx.main_edge_index.shape[1]
    per_edge = (12 * c.num_blocks if grad else 3) * c.emb_size_edge
    total = edges * per_edge
    if not lean:
        slots = edges * width.quad
        total += slots * (c.num_spherical ** 2 + (8 * c.num_blocks if grad else 3) * c.emb_size_quad_in)
        total += num_atoms * width.a2a * (c.emb_size_rbf + c.emb_size_aint_in * (c.num_blocks if grad else 1))
    return int(total) * int(itemsize) * (SECOND_ORDER_FACTOR if second_order and grad else 1)


def check_memory(estimate: int, available: int | None, num_atoms: int, lean: bool) -> None:
    """Raise ``MemoryError`` (naming the atom count and what to do) when ``estimate`` bytes do
    not fit in ``available``."""
    if available is None or estimate <= available:
        return
    def size(n):
        return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"

    if lean:
        advice = ("it does not fit even in lean memory mode: use a machine (or GPU) with more memory, "
                  "or a smaller system")
    else:
        advice = ("use lean memory mode: JMPCalculator(..., memory='lean'), model.memory = 'lean', or "
                  "jmp-train ... --memory lean (same numbers, a fraction of the memory)")
    raise MemoryError(
        f"a system of {num_atoms} atoms needs at least {size(estimate)} for this model pass "
        f"({'lean' if lean else 'fast'} memory mode), but only {size(available)} are available: {advice}"
    )


def check_memory_mode(memory: str) -> str:
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    return memory


def edge_geometry(positions, cell, atom_batch, edge_index, cell_offset):
    """Distances (E,) in Å and unit vectors (E, 3) from source image to target.

    positions (N, 3) Å; cell (B, 3, 3) rows are lattice vectors; atom_batch (N,)
    structure of each atom; edge_index (2, E) [source, target]; cell_offset (E, 3)
    integer image shift of the source. Differentiable w.r.t. positions and cell.
    """
    source, target = edge_index
    shift = torch.einsum("ei,eij->ej", cell_offset.to(positions.dtype), cell[atom_batch[source]])
    vec = positions[target] - positions[source] - shift
    dist = vec.norm(dim=-1)
    return dist, vec / dist[:, None]


def with_memory_mode(module: nn.Module, memory: str | None, original: nn.Module | None = None) -> nn.Module:
    """``module`` with every GemNet-OC backbone in it set to ``memory`` (None: unchanged).

    When a setting changes and ``module`` is ``original`` (the caller's), a copy is changed instead.
    """
    if memory is None:
        return module
    check_memory_mode(memory)
    backbones = [m for m in module.modules() if isinstance(m, GemNetOCBackbone)]
    if not backbones:
        raise ValueError(f"memory={memory!r}: {type(module).__name__} has no GemNet-OC backbone to set it on")
    if all(b.memory == memory for b in backbones):
        return module
    if module is original:
        module = copy.deepcopy(module)
    for b in module.modules():
        if isinstance(b, GemNetOCBackbone):
            b.memory = memory
    return module


class FinalMLP(nn.Module):
    """Concatenated per-block outputs -> one embedding (``out_mlp`` as in JMP)."""

    def __init__(self, emb_size, num_blocks, num_global_out_layers, activation=None, dropout=None):
        super().__init__()
        self.out_mlp = nn.Sequential(
            Dense(emb_size * (num_blocks + 1), emb_size, activation=activation, dropout=dropout),
            *[ResidualLayer(emb_size, activation=activation, dropout=dropout) for _ in range(num_global_out_layers)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_mlp(x)


@dataclass
class BackboneOutput:
    """node_embedding (N, emb_size_atom); edge_embedding (E_main, emb_size_edge);
    edge_index (2, E_main) of the symmetrised main graph; vector (E_main, 3) unit
    vectors source->target; distance (E_main,) Å."""

    node_embedding: torch.Tensor
    edge_embedding: torch.Tensor
    edge_index: torch.Tensor
    vector: torch.Tensor
    distance: torch.Tensor


class GemNetOCBackbone(nn.Module):
    """GemNet-OC with quadruplet, atom-edge, edge-atom and atom-atom interactions."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        c = self.config = config
        self.bases = Bases(c)
        self.int_blocks = nn.ModuleList([InteractionBlock(c) for _ in range(c.num_blocks)])
        self.out_blocks = nn.ModuleList(
            [
                OutputBlock(c.emb_size_atom, c.emb_size_edge, c.emb_size_rbf, c.num_atom, c.num_output_afteratom,
                            activation=c.activation, edge_dropout=c.edge_dropout, dropout=c.dropout)
                for _ in range(c.num_blocks + 1)
            ]
        )
        self.out_mlp_E = FinalMLP(c.emb_size_atom, c.num_blocks, c.num_global_out_layers, c.activation)
        self.out_mlp_F = FinalMLP(c.emb_size_edge, c.num_blocks, c.num_global_out_layers, c.activation, c.dropout)
        # Runtime settings (plain attributes: never part of the state dict or of a model file).
        self.memory = "auto"
        self.chunk_size: int | None = None  # lean mode's padded slots per chunk; None: DEFAULT_CHUNK_SIZE

    @property
    def memory(self) -> str:
        """``"fast"``: every interaction evaluated at once for the whole system (fastest, memory
        grows with the number of quadruplets, ~50 MB per atom for JMP-S conservative forces on
        dense 12 Å graphs); ``"lean"``: triplet, quadruplet and atom-pair interactions in chunks of
        ``chunk_size`` padded slots and the per-edge MLPs in chunks of ``chunk_size // 64`` edges;
        while autograd records, every chunk is recomputed in backward instead of kept (activation
        checkpointing, :func:`jmp_ase.nn.recompute.recompute`: also the first backward of a force
        loss's second derivative), so only a few per-edge tensors per block are kept; ``"auto"`` (default): lean for
        systems above :data:`AUTO_LEAN_SLOTS` padded quadruplet slots, fast below (small molecules
        pay nothing), and fast above it too where the fast pass's estimated peak is at most
        :data:`AUTO_FAST_FRACTION` of the available memory (a large machine or GPU pays no
        recomputation). Same numbers in every mode (to float round-off)."""
        return self._memory

    @memory.setter
    def memory(self, value: str):
        self._memory = check_memory_mode(value)

    def lean_chunk_size(self, idx: InteractionIndices, num_atoms: int | None = None,
                        reference: torch.Tensor | None = None) -> int | None:
        """The chunk size this forward pass uses (None: fast path), from host-side sizes only.

        With ``num_atoms`` and ``reference`` (the positions of the pass: dtype, device; gradients
        count when grad mode is on, a second derivative when they require one in training mode),
        the estimated peak memory
        (:func:`estimate_peak_bytes`) is compared with the available memory: ``auto`` turns lean
        where fast would not fit, and a pass that fits in neither mode raises ``MemoryError``
        before any work (instead of the kernel killing the process). On the CPU it also sets
        what glibc does with freed memory (:mod:`jmp_ase.allocator`): kept for reuse in fast
        mode and in lean mode with memory to spare, returned to the system in lean mode
        otherwise."""
        mode = self._memory
        if mode == "auto":
            slots = idx.main_edge_index.shape[1] * idx.padded_width.quad
            mode = "lean" if slots > AUTO_LEAN_SLOTS else "fast"
        observing = ScaleFactor.observing > 0 and any(
            isinstance(mod, ScaleFactor) and mod.observer is not None for mod in self.modules())
        if observing:
            mode = "fast"  # fitting scale factors observes whole tensors
        if num_atoms is not None and reference is not None:
            mode = self._check_memory(idx, num_atoms, reference, mode, may_turn_lean=self._memory == "auto"
                                      and not observing)
        if reference is None or reference.device.type == "cpu":
            use_policy("retain" if mode == "fast" or self._lean_may_retain(idx, num_atoms, reference) else "release")
        if mode == "fast":
            return None
        return max(1, int(DEFAULT_CHUNK_SIZE if self.chunk_size is None else self.chunk_size))

    def _estimate(self, idx, num_atoms: int, reference: torch.Tensor, lean: bool) -> int:
        """:func:`estimate_peak_bytes` for this pass (grad mode; a second derivative where positions
        that need a gradient meet training mode: conservative forces inside a loss)."""
        grad = torch.is_grad_enabled()
        second_order = grad and self.training and reference.requires_grad
        return estimate_peak_bytes(self.config, idx, num_atoms, reference.element_size(), lean=lean, grad=grad,
                                   second_order=second_order)

    def _lean_may_retain(self, idx, num_atoms: int | None, reference: torch.Tensor | None) -> bool:
        """Whether a lean pass on the CPU keeps freed memory (:mod:`jmp_ase.allocator`): about twice
        as fast (no page faults per chunk) at up to 1.8x the peak, so only where
        :data:`LEAN_RETAINED_FACTOR` x lean's estimate fits in :data:`AUTO_FAST_FRACTION` of the
        available memory."""
        if num_atoms is None or reference is None:
            return False
        available = available_memory_bytes(reference.device)
        return available is not None and \
            LEAN_RETAINED_FACTOR * self._estimate(idx, num_atoms, reference, True) <= AUTO_FAST_FRACTION * available

    def _check_memory(self, idx, num_atoms: int, reference: torch.Tensor, mode: str, may_turn_lean: bool) -> str:
        def estimate(lean):
            return self._estimate(idx, num_atoms, reference, lean)

        need = estimate(mode == "lean")
        if need < MEMORY_CHECK_BYTES:
            return mode
        available = available_memory_bytes(reference.device)
        if mode == "lean" and may_turn_lean and available is not None \
                and estimate(False) <= AUTO_FAST_FRACTION * available:
            return "fast"  # auto: the fast pass fits with room to spare
        if available is None or need <= available:
            return mode
        if mode == "fast" and may_turn_lean:
            need, mode = estimate(True), "lean"
        check_memory(need, available, num_atoms, lean=mode == "lean")
        return mode

    def geometry(self, positions, cell, atom_batch, idx) -> dict:
        """Distances and unit vectors of the four graphs (see :func:`edge_geometry`), computed
        in one pass over their edges laid end to end (the same numbers edge by edge, a quarter
        of the operations); ``out["all"]`` holds ``distance`` in that layout, ``graphs`` (their
        order, :data:`GRAPH_TYPES`) and ``sizes`` (their edge counts)."""
        graphs = [idx.graph(g) for g in GRAPH_TYPES]
        sizes = [int(edge_index.shape[1]) for edge_index, _ in graphs]
        dist, vec = edge_geometry(positions, cell, atom_batch, torch.cat([ei for ei, _ in graphs], dim=1),
                                  torch.cat([off for _, off in graphs]))
        out = {g: {"distance": d, "vector": v}
               for g, d, v in zip(GRAPH_TYPES, dist.split(sizes), vec.split(sizes))}
        out["all"] = {"distance": dist, "sizes": sizes, "graphs": GRAPH_TYPES}
        return out

    def forward(self, h, positions, cell, atom_batch, idx: InteractionIndices, edge_embedding: bool = True) -> BackboneOutput:
        """h (N, emb_size_atom) atom embeddings; idx from :func:`jmp_ase.data.indices.interaction_indices`
        plus ``idx.padded_width`` (:func:`jmp_ase.data.batch.padded_widths`), as ``AtomsBatch.indices`` has.
        ``edge_embedding=False`` skips the edge (direct-force) branch: ``edge_embedding`` of the
        output is then None (an energy-only model does not need it).

        The forward pass never reads a tensor's value back to the host: the padded widths
        of the ragged dimensions come in as plain ints.
        """
        if idx.padded_width is None:
            raise ValueError("idx lacks padded_width: build batches with jmp_ase.data.batch.batch_from_atoms or "
                             "assemble_batch, or use dataclasses.replace(idx, padded_width=padded_widths(idx))")
        num_atoms = h.shape[0]
        chunk_size = self.lean_chunk_size(idx, num_atoms, positions)
        geom = self.geometry(positions, cell, atom_batch, idx)
        bases = self.bases(h, geom, idx, num_atoms, chunk_size=chunk_size)
        m = bases.m
        target = idx.main_edge_index[1]

        def output(out_block, h, m, bases):
            if chunk_size is None:
                return out_block(h, m, bases.output, target, with_forces=edge_embedding)
            return out_block.forward_lean(h, m, bases.output, target, chunk_size, with_forces=edge_embedding)

        def interaction(block, out_block, h, m, bases):
            if chunk_size is None:
                h, m = block(h, m, bases, idx)
            else:
                h, m = block.forward_lean(h, m, bases, idx, chunk_size)
            return (h, m) + output(out_block, h, m, bases)

        x_e, x_f = output(self.out_blocks[0], h, m, bases)
        xs_e, xs_f = [x_e], [x_f]
        for block, out_block in zip(self.int_blocks, self.out_blocks[1:]):
            h, m, x_e, x_f = interaction(block, out_block, h, m, bases)
            xs_e.append(x_e)
            xs_f.append(x_f)
        return BackboneOutput(
            node_embedding=self.out_mlp_E(torch.cat(xs_e, dim=-1)),
            edge_embedding=self.out_mlp_F(torch.cat(xs_f, dim=-1)) if edge_embedding else None,
            edge_index=idx.main_edge_index,
            vector=geom["main"]["vector"],
            distance=geom["main"]["distance"],
        )
