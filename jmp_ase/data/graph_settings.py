"""Who owns the graphs' settings: :class:`GraphSettings` (cutoff, neighbour limits, which atoms
enter the quadruplet graph, neighbour order) and the tag rules that decide it
(:func:`resolve_tags`). Graph construction itself is :mod:`jmp_ase.data.graphs`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GRAPH_TYPES = ("main", "a2a", "a2ee2a", "qint")

# Tag given to every atom of a structure without tags (JMP's fine-tuning convention).
_DEFAULT_TAG = 2
TAG_POLICIES = ("ignore", "oc20", "auto")
NEIGHBOR_ORDERS = ("jmp", "canonical")
# Å: under neighbor_order="canonical", neighbours within this of the k-th nearest count as tied
# with it and are all kept (complete shells of perfect crystals, also when read from rounded files).
TIE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class GraphSettings:
    """Cutoff and neighbour limits of the four GemNet-OC graphs.

    All four graphs share ``cutoff`` (Å), as in JMP's fine-tuning transform. Neighbour
    limits of the other graphs follow JMP's GemNet-OC proportions 30 : 1000 : 20 : 8
    (main : a2a : a2ee2a : qint).
    """

    cutoff: float = 12.0
    max_neighbors: int = 30
    qint_tags: tuple[int, ...] = (1, 2)
    tags: str = "ignore"
    """How the atoms' tags are read (:func:`resolve_tags`): ``"ignore"`` (every atom tag 2, as
    JMP fine-tunes), ``"oc20"`` (0 sub-surface, 1 surface, 2 adsorbate) or ``"auto"`` (the
    first release's rule, kept for model files that predate the setting)."""
    neighbor_order: str = "jmp"
    """How the nearest ``k`` neighbours are chosen when an atom has more within the cutoff.
    ``"jmp"``: exactly as JMP (float32 distances, ties and the main graph's ``s < t``
    symmetrisation decided by atom index, so the kept edges depend on the atom order; what
    JMP's checkpoints and the models shipped so far were trained with). ``"canonical"``: float64
    distances, every neighbour within :data:`TIE_TOLERANCE` of the k-th nearest kept too, and
    the main graph made symmetric by union (an edge is kept when either end selects it): the
    graphs, hence energies and forces, do not depend on the atom order, and degenerate shells
    of perfect crystals are kept whole (their symmetry is kept)."""

    def __post_init__(self) -> None:
        if self.tags not in TAG_POLICIES:
            raise ValueError(f"tags must be one of {TAG_POLICIES}, got {self.tags!r}")
        if self.neighbor_order not in NEIGHBOR_ORDERS:
            raise ValueError(f"neighbor_order must be one of {NEIGHBOR_ORDERS}, got {self.neighbor_order!r}")
        if not (np.isfinite(self.cutoff) and self.cutoff > 0):
            raise ValueError(f"cutoff must be a positive number of Å, got {self.cutoff!r}")
        if int(self.max_neighbors) != self.max_neighbors or self.max_neighbors < 1:
            raise ValueError(
                f"max_neighbors must be a positive integer, got {self.max_neighbors!r}"
            )
        object.__setattr__(self, "cutoff", float(self.cutoff))
        object.__setattr__(self, "max_neighbors", int(self.max_neighbors))
        object.__setattr__(self, "qint_tags", tuple(int(t) for t in self.qint_tags))

    @property
    def a2a_max_neighbors(self) -> int:
        """Neighbour limit of the atom-to-atom graph: ``int(max_neighbors * 1000 / 30)``."""
        return int(self.max_neighbors * 1000 / 30)

    @property
    def a2ee2a_max_neighbors(self) -> int:
        """Neighbour limit of the atom-to-edge / edge-to-atom graph: ``int(max_neighbors * 20 / 30)``."""
        return int(self.max_neighbors * 20 / 30)

    @property
    def qint_max_neighbors(self) -> int:
        """Neighbour limit of the quadruplet graph (before the tag filter): ``int(max_neighbors * 8 / 30)``."""
        return int(self.max_neighbors * 8 / 30)

    def max_neighbors_of(self, graph_type: str) -> int:
        """Neighbour limit of one graph type (one of ``GRAPH_TYPES``)."""
        limits = {
            "main": self.max_neighbors,
            "a2a": self.a2a_max_neighbors,
            "a2ee2a": self.a2ee2a_max_neighbors,
            "qint": self.qint_max_neighbors,
        }
        if graph_type not in limits:
            raise KeyError(f"unknown graph type {graph_type!r}; expected one of {GRAPH_TYPES}")
        return limits[graph_type]


def max_neighbors_keeping(count: int) -> int:
    """The smallest ``max_neighbors`` under which all four graphs keep ``count`` neighbours per
    atom: the quadruplet graph's share (8/30) is the one that binds, so about 3.75 × count."""
    k = max(1, -(-int(count) * 30 // 8))
    while GraphSettings(max_neighbors=k).qint_max_neighbors < count:
        k += 1
    return k


def resolve_tags(tags, policy: str = "auto") -> np.ndarray:
    """The tags the quadruplet graph uses under a tag ``policy``; returns an (N,) int64 array.

    Tags decide which atoms enter the quadruplet graph (edges with an end tagged 1 or 2).
    ``"ignore"``: every atom gets tag 2, whatever the Atoms say (JMP's fine-tuning convention;
    ASE's surface builders write layer numbers into tags, which mean nothing here).
    ``"oc20"``: OC20's convention, 0 sub-surface, 1 surface, 2 adsorbate; other values raise.
    ``"auto"``: the first release's rule for files that predate the setting: OC20 if any tag
    is nonzero. Under ``"oc20"`` and ``"auto"`` all-zero tags (ASE's default) mean every atom
    is tag 2. The rule is idempotent.
    """
    if policy not in TAG_POLICIES:
        raise ValueError(f"tags must be one of {TAG_POLICIES}, got {policy!r}")
    if torch.is_tensor(tags):
        tags = tags.detach().cpu().numpy()
    arr = np.asarray(tags).reshape(-1)
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"tags must be integers, got {arr!r}")
    arr = arr.astype(np.int64)
    if policy == "ignore" or not np.any(arr != 0):
        return np.full(arr.shape, _DEFAULT_TAG, dtype=np.int64)
    odd = sorted(set(np.unique(arr).tolist()) - {0, 1, 2})
    if odd:
        atoms = np.flatnonzero(~np.isin(arr, [0, 1, 2]))[:10].tolist()
        raise ValueError(
            f"tags {odd} (atoms {atoms}) are not OC20 tags (0 sub-surface, 1 surface, 2 adsorbate); "
            "ASE's surface builders write layer numbers into tags. Set OC20 tags, or read the "
            "structure with tags='ignore'"
        )
    return arr
