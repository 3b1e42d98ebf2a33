"""Files: the jmp-ase model file (one owner: :mod:`jmp_ase.io.model_file`), original JMP checkpoints
and the restricted unpickler that reads them."""
