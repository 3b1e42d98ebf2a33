"""Training tools of jmp-ase (the ``jmp-train`` command).

* :mod:`jmp_ase.training.data`: reading labelled structures (extxyz, ASE db, LMDB), labels, graph
  samples, batching, splits, element references and normalisation statistics;
* :mod:`jmp_ase.training.finetune`: fine-tuning with Lightning (``run_finetune``);
* :mod:`jmp_ase.training.schedules`: layer-wise LR decay and the warmup + cosine + plateau schedule;
* :mod:`jmp_ase.training.cli`: ``jmp-train finetune | evaluate | pretrain``.
"""

import importlib.util as _util

_MISSING = [name for name in ("lightning", "click", "yaml") if _util.find_spec(name) is None]
if _MISSING:
    raise ImportError(f"jmp-ase's training tools need {', '.join(_MISSING)}, which are not installed: "
                      "pip install 'jmp-ase[train]'")
