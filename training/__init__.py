"""Training tools of jmp-ase (the ``jmp-train`` command).

* :mod:`training.data`: reading labelled structures (extxyz, ASE db, LMDB), labels, graph
  samples, batching, splits, element references and normalisation statistics;
* :mod:`training.finetune`: fine-tuning with Lightning (``run_finetune``);
* :mod:`training.schedules`: layer-wise LR decay and the warmup + cosine + plateau schedule;
* :mod:`training.cli`: ``jmp-train finetune | evaluate | pretrain``.
"""
