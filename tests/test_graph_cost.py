"""Cost of jmp_ase.data.graphs, counted rather than timed (a wall-clock limit flakes under load)."""
from __future__ import annotations

import tracemalloc

from ase.build import bulk

from jmp_ase.data import graphs as G
from jmp_ase.data.graphs import GraphSettings, structure_graphs


def test_large_cell_is_linear_not_all_pairs(monkeypatch):
    """Graph construction only handles the pairs within the cutoff: per atom, as many
    candidates from the pair search, as many distances ranked and about as much peak memory
    at 4,000 atoms as at 500 (counted, not timed), and no N x N array."""
    candidates, ranked = [], []
    pair_search, rank = G.vesin_pairs, G._neighbor_ranks

    def counted_pair_search(*args, **kwargs):
        pairs = pair_search(*args, **kwargs)
        candidates.append(pairs[0].size)
        return pairs

    def counted_rank(t, key, num_atoms, min_limit):
        ranked.append(key.numel())
        return rank(t, key, num_atoms, min_limit)

    monkeypatch.setattr(G, "vesin_pairs", counted_pair_search)
    monkeypatch.setattr(G, "_neighbor_ranks", counted_rank)
    sizes, peaks = [], []
    for repeat in (5, 10):  # 500 and 4000 atoms
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((repeat, repeat, repeat))
        atoms.rattle(0.01, seed=0)
        n = len(atoms)
        sizes.append(n)
        tracemalloc.start()
        graphs = structure_graphs(atoms.positions, atoms.cell.array, True, None, GraphSettings(cutoff=6.0))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peaks.append(peak)
        # fcc Cu within 6 Å: 12 + 6 + 24 + 12 + 24 = 78 neighbours (the next shell is at 6.25 Å)
        assert graphs.num_edges("a2a") == 78 * n
        assert graphs.num_edges("main") == 30 * n
    # one pair search and one ranking (of the a2a edges) per structure, all linear in N
    assert candidates == [78 * n for n in sizes]
    assert ranked == [78 * n for n in sizes]
    # An N x N float64 matrix alone would be 128 MB at 4000 atoms; the edge arrays are far smaller.
    assert peaks[1] < sizes[1] ** 2 * 8 / 2, peaks
    assert peaks[1] / sizes[1] < 1.25 * peaks[0] / sizes[0], peaks
