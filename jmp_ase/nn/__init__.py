"""The network: layers, radial/spherical bases, interaction blocks, the GemNet-OC backbone and its
:class:`~jmp_ase.nn.config.BackboneConfig`, output heads, conservative derivatives and the two
models (fine-tuned and pre-trained multi-head)."""
