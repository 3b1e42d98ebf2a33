"""Embeddings of elements the parent never saw in pre-training (``unseen_embeddings``).

A pre-trained backbone has one learned embedding row per element it met; the rows of every
other element are still the random numbers they started from, so a fine-tuning set with such
elements (mini-JMP's bulk moduli: 51 of 61 elements) enters the backbone as noise it never
learned to read. ``"similar"`` starts each unseen training element from the row of the seen
element closest to it on the periodic table: s-block metals take the lightest seen metal of
the p-block (Al), transition metals (lanthanides and actinides counted in group 3) the nearest
seen transition metal, p-block elements the nearest seen p-block element; nearest means the
smallest group difference, then the smallest period difference, then the lighter element.
Fine-tuning then trains the copies apart. ``"random"`` (JMP's behaviour) leaves the rows as
they are.
"""
from __future__ import annotations

import torch

_PERIOD_STARTS = (1, 3, 11, 19, 37, 55, 87, 119)


def table_position(z: int) -> tuple[int, int]:
    """(group 1-18, period 1-7) of element ``z``; lanthanides and actinides in group 3."""
    if not 1 <= int(z) <= 118:
        raise ValueError(f"no element with atomic number {z}")
    period = max(k for k, start in enumerate(_PERIOD_STARTS) if start <= z)
    offset = z - _PERIOD_STARTS[period]
    if period == 0:
        return (1 if z == 1 else 18), 1
    if period in (1, 2):  # no d block
        return (offset + 1 if offset < 2 else offset + 11), period + 1
    if period in (3, 4):
        return offset + 1, period + 1
    if offset < 2:
        return offset + 1, period + 1
    return (3 if offset <= 16 else offset - 13), period + 1  # La-Lu / Ac-Lr in group 3


def _block(z: int) -> str:
    group, _ = table_position(z)
    if z == 1:
        return "H"
    if z == 2:
        return "p"  # helium sits with the noble gases
    return "s" if group <= 2 else "d" if group <= 12 else "p"


def similar_element(z: int, seen) -> int | None:
    """The seen element whose embedding row element ``z`` starts from (None: nothing fits)."""
    if not 1 <= int(z) <= 118:  # embedding rows beyond the periodic table stay as they are
        return None
    seen = sorted(int(s) for s in seen)  # hydrogen is its own block: never a donor
    block = _block(z)
    pool = {"s": [s for s in seen if _block(s) == "p" and table_position(s)[0] == 13][:1],
            "d": [s for s in seen if _block(s) == "d"],
            "p": [s for s in seen if _block(s) == "p"],
            "H": []}[block]
    if not pool:
        return None
    group, period = table_position(z)
    return min(pool, key=lambda s: (abs(table_position(s)[0] - group), abs(table_position(s)[1] - period), s))


@torch.no_grad()
def start_unseen_embeddings(embedding: torch.nn.Embedding, unseen, seen) -> dict[int, int]:
    """Copy into each ``unseen`` element's row (row Z-1) the row of its :func:`similar_element`;
    returns {unseen Z: donor Z} for the rows it set."""
    donors = {int(z): similar_element(int(z), seen) for z in unseen}
    donors = {z: d for z, d in donors.items() if d is not None}
    for z, d in donors.items():
        embedding.weight[z - 1] = embedding.weight[d - 1]
    return donors
