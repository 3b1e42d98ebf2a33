"""Structures in, graphs out: input validation, neighbour lists, the four GemNet-OC graphs, their
interaction indices (triplets, quadruplets) and the collated :class:`~jmp_ase.data.batch.AtomsBatch`."""
