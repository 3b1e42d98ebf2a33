"""Training command-line tools of jmp-ase (``jmp-train``)."""
