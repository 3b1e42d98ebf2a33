"""Multi-head replay: keep training the parent's pre-training heads while fine-tuning.

With ``replay`` in the config (pre-training head name -> that head's training data), every
fine-tuning step also takes one batch of the pre-training data, runs it through the shared
backbone into the parent's own energy and direct-force heads, and adds the pre-training loss
(paper eq. 1, normalised as in pre-training) times ``replay_weight`` to the task's loss. The
backbone then keeps what pre-training taught it instead of drifting towards a few hundred
task structures (as MACE's multi-head fine-tuning and DeePMD's multi-task fine-tuning do).

The heads, their normalisation, element references and graph settings are the parent's
(a ``pretrain.ckpt`` or shipped pre-trained model that states them), read once with its
backbone and with the same weights (EMA with ``ema``): the replay data must be
the data those heads were trained on (or more of the same kind). Batches mix the named data
sets by temperature sampling (T = 2, as pre-training). The heads train but are not part of
the fine-tuned model file. A resumed run continues the replay stream where it stopped.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from jmp_ase.data.graphs import GraphSettings
from jmp_ase.nn.model import JMPBackboneModel
from jmp_ase.training.data import StructureDataset
from jmp_ase.training.losses import structurewise_loss
from jmp_ase.training.parent import Parent, PretrainingHeads
from jmp_ase.training.pretrain_data import PretrainCollate, TaskItems, lazy_structures
from jmp_ase.training.sampler import TemperatureBatchSampler

#: temperature of the replay batches' mix of data sets (pre-training's)
REPLAY_TEMPERATURE = 2.0


def _checked(heads: PretrainingHeads, source) -> list[dict]:
    """The heads' task_info, when it states what replay needs (jmp-train pretrain files and
    shipped pre-trained models such as jmp-mini do; JMP's published checkpoints do not)."""
    info = list(heads.task_info or [])
    missing = [k for k in ("name", "element_references", "energy_std", "force_rms") if info and k not in info[0]]
    if not info or missing:
        raise ValueError(f"replay: the parent {source} does not state its pre-training heads' normalisation "
                         "(only jmp-train pretrain files and shipped pre-trained models such as jmp-mini do)")
    return info


class Replay(torch.nn.Module):
    """The parent's pre-training heads and an endless stream of pre-training batches.

    ``heads``: the parent's pre-training heads (:class:`PretrainingHeads`, trained here on a copy);
    ``data``: head name -> training file(s) of its data set; ``qint_tags``: the backbone's; ``batch_size``, ``seed``:
    the replay batches' (per process); ``fmt``: the files' format (None: from their names)."""

    def __init__(self, heads: PretrainingHeads, data: dict, qint_tags, batch_size: int, seed: int = 0,
                 fmt: str | None = None, source: str = "model"):
        super().__init__()
        info = _checked(heads, source)
        output = copy.deepcopy(heads.output)
        names = [t["name"] for t in info]
        unknown = sorted(set(data) - set(names))
        if unknown or not data:
            raise ValueError(f"replay: {unknown or 'no data'} named; the parent's pre-training heads are {names}")
        self.heads = output.train()
        order = [k for k, name in enumerate(names) if name in data]  # parent head of each replay data set
        for k, (energy, forces) in enumerate(zip(output.out_energy, output.out_forces)):
            if k not in order:  # heads without replay data stay as they are
                energy.requires_grad_(False)
                forces.requires_grad_(False)
        self.register_buffer("head_of_task", torch.tensor(order, dtype=torch.long), persistent=False)
        self.task_info = [info[k] for k in order]
        self.settings = [GraphSettings(float(t["cutoff"]), int(t["max_neighbors"]), tuple(qint_tags),
                                       tags=t.get("tags") or "ignore") for t in self.task_info]
        self.datasets = [StructureDataset(lazy_structures(data[t["name"]], ":", fmt), ["energy", "forces"], s,
                                          name=t["name"]) for t, s in zip(self.task_info, self.settings)]
        for ds in self.datasets:
            if len(ds) == 0:
                raise ValueError(f"replay: no structures for head {ds.name!r} in {data[ds.name]}")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self._stream: Iterator | None = None
        self.batches_done = 0  # replay batches handed out since the stream's start (saved in last.ckpt)

    @classmethod
    def of(cls, config, parent: Parent, model: JMPBackboneModel) -> "Replay":
        """The replay of a fine-tuning run (``config``: its FinetuneConfig; ``parent``: its Parent)."""
        if parent.state is None:
            raise ValueError("replay needs a pre-trained parent with its pre-training heads")
        if parent.pretraining is None:
            raise ValueError(f"replay: the parent {parent.provenance.get('parent')} has no pre-training heads "
                             f"(a {parent.provenance.get('parent_kind')}; a fine-tuned model file has none): "
                             "replay needs a jmp-train pretrain file or a shipped pre-trained model such as jmp-mini")
        return cls(parent.pretraining, dict(config.replay), model.config.qint_tags,
                   config.replay_batch_size or config.batch_size, config.seed, config.format,
                   source=parent.provenance.get("parent"))

    def describe(self, weight: float) -> str:
        sizes = ", ".join(f"{ds.name} ({len(ds)} structures)" for ds in self.datasets)
        return (f"replay: every step adds {weight:g} x the pre-training loss of one batch of {self.batch_size} "
                f"structures from {sizes}, through the parent's heads")

    def restart(self, batches_done: int = 0) -> None:
        """The next batch is the stream's first again, or (a resumed run) the one after ``batches_done``."""
        self._stream, self.batches_done = None, int(batches_done)

    def batches(self, num_replicas: int = 1, rank: int = 0) -> Iterator:
        """Endless ``(AtomsBatch, targets)`` of this process, epoch after epoch of the sampler,
        from batch ``batches_done`` of the stream on."""
        sampler = TemperatureBatchSampler([len(d) for d in self.datasets], self.batch_size, REPLAY_TEMPERATURE,
                                          self.seed, num_replicas, rank)
        epoch, start = divmod(self.batches_done, len(sampler))
        sampler.load_state_dict({"epoch": epoch, "start_batch": start, "seed": self.seed})
        items, collate = TaskItems(self.datasets), PretrainCollate(self.task_info, self.settings, None, False)
        while True:
            for keys in sampler:
                yield collate([items[key] for key in keys])

    def predict(self, model: JMPBackboneModel, num_replicas: int = 1, rank: int = 0):
        """``(batch, energy, forces, targets)`` of the next replay batch: each structure's own
        head's predictions through ``model``'s backbone and the labels (normalised units)."""
        if self._stream is None:
            self._stream = self.batches(num_replicas, rank)
        batch, targets = next(self._stream)
        self.batches_done += 1
        device = self.head_of_task.device
        batch = batch.to(device)
        targets = {k: v.to(device) if torch.is_tensor(v) else v for k, v in targets.items()}
        out = model.embed(batch)
        energy, forces = self.heads.per_structure_task(out, batch.atom_batch, batch.num_structures,
                                                       self.head_of_task[targets["task"]])
        return batch, energy, forces, targets

    def loss(self, model: JMPBackboneModel, num_replicas: int = 1, rank: int = 0) -> torch.Tensor:
        """Pre-training loss (eq. 1) of the next replay batch through ``model``'s backbone and these heads."""
        batch, energy, forces, targets = self.predict(model, num_replicas, rank)
        return structurewise_loss(energy, targets["energy"], forces, targets["forces"], batch.atom_batch,
                                  targets["energy_scale"], targets["force_scale"]).loss
