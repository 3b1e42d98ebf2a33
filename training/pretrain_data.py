"""Data of multi-domain pre-training: per-data-set graphs, normalisation, edge dropout, loaders.

Each data set keeps its own graph settings, as JMP's pre-training transforms do
(``tasks/pretrain/module.py``): OC20/OC22 12 Å with 30 neighbours and periodic cells (OC20
tags), ANI-1x/Transition-1x 8 Å with 30 neighbours, non-periodic, every tag 2. Periodicity
and tags come from the structures themselves (:func:`jmp_ase.data.batch.atoms_arrays`).

Edge dropout (JMP's ``_process_aint_graph``): during training every edge of a structure's
a2a graph (the full radius graph) is dropped with probability p, *then* the main, a2ee2a
and qint graphs are sub-selected again from the remaining edges (nearest first, the same
limits and tag filter as :func:`jmp_ase.data.graphs.structure_graphs`). The backbone's output
blocks rescale x_E by 1/(1-p) in training mode. The random draws use a per-item seed from
the sampler, so a run (and a resumed run) drops the same edges.

Memory: the training and validation sets are lazy selections of their files
(:class:`~jmp_ase.training.data.SelectedStructures`: extxyz and LMDB are read frame by frame);
statistics and element references come from one pass (:class:`~jmp_ase.training.data.StreamingStatistics`)
that keeps 4 bytes per structure (its atom count); ``data.streaming`` turns off the per-process
graph cache, leaving nothing per structure but that count, its file offset and its place in
the sampler's permutation of the current epoch (8 bytes per item). Graphs are built in the
DataLoader workers.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from jmp_ase.data.graphs import GraphSettings, resolve_tags, select_subgraphs
from jmp_ase.training.data import (
    ConcatStructures, GraphSample, SelectedStructures, StreamingStatistics, StructureDataset, atom_counts, collate,
    open_structures,
)
from jmp_ase.training.pretrain_config import DatasetConfig, PretrainConfig
from jmp_ase.training.sampler import ResumableDataLoader, TemperatureBatchSampler

def lazy_structures(paths, index, fmt) -> SelectedStructures:
    """The selected structures of one or several files, as a lazy view (extxyz and LMDB are read
    frame by frame when accessed; an ASE database is read into memory)."""
    paths = [paths] if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__") else list(paths)
    source = ConcatStructures([open_structures(str(p), fmt, streaming=True) for p in paths], [str(p) for p in paths])
    return SelectedStructures.of(source, index)


def drop_edges(sample: GraphSample, settings: GraphSettings, p: float, rng: np.random.Generator) -> GraphSample:
    """A copy of ``sample`` whose a2a edges were dropped with probability ``p`` and whose
    main / a2ee2a / qint graphs were re-selected from the remaining ones by the same nearest-k
    rule as graph building (:func:`jmp_ase.data.graphs.select_subgraphs`)."""
    ei = sample.graphs.edge_index["a2a"].numpy()
    keep = rng.random(ei.shape[1]) >= p
    s, t = ei[0][keep], ei[1][keep]
    off = sample.graphs.cell_offset["a2a"].numpy()[keep].astype(np.int64)
    arrays = sample.arrays
    box = arrays["cell"] * np.asarray(arrays["pbc"], dtype=bool)[:, None]
    tags = resolve_tags(arrays["tags"], settings.tags)
    graphs = select_subgraphs(np.asarray(arrays["positions"], dtype=np.float64), box, t, s, off, tags, settings)
    return dataclasses.replace(sample, graphs=graphs)


class TaskItems(torch.utils.data.Dataset):
    """Several :class:`StructureDataset` behind ``(task, index, seed)`` keys."""

    def __init__(self, datasets: list[StructureDataset]):
        self.datasets = datasets

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key):
        task, index, seed = key
        return task, index, seed, self.datasets[task][index]


class PretrainCollate:
    """``[(task, index, seed, GraphSample)] -> (AtomsBatch, targets)`` with normalised targets.

    targets: ``energy`` (B,) and ``forces`` (N, 3) normalised with each structure's data set;
    ``task`` (B,); ``energy_scale`` / ``force_scale`` (B,) loss weights; ``ids``: list of
    ``(data set name, index, (file, frame))`` naming every structure.
    """

    def __init__(self, task_info: list[dict], settings: list[GraphSettings], edge_dropout: float | None,
                 training: bool, num_elements: int = 120):
        self.task_info, self.settings, self.training = task_info, settings, training
        self.p = float(edge_dropout or 0.0)
        self.refs = np.zeros((len(task_info), num_elements + 1))
        for t, info in enumerate(task_info):
            for z, value in info["element_references"].items():
                self.refs[t, int(z)] = value
        self.energy_std = torch.tensor([i["energy_std"] for i in task_info], dtype=torch.float64)
        self.force_rms = torch.tensor([i["force_rms"] for i in task_info])
        self.e_scale = torch.tensor([float(i["energy_loss_scale"]) for i in task_info])
        self.f_scale = torch.tensor([float(i["force_loss_scale"]) for i in task_info])

    def __call__(self, items):
        samples = []
        for task, _, seed, sample in items:
            if self.training and self.p > 0:
                sample = drop_edges(sample, self.settings[task], self.p, np.random.default_rng(seed))
            samples.append(sample)
        batch, labels = collate(samples)
        task = torch.tensor([it[0] for it in items], dtype=torch.long)
        referenced = [s.labels["energy"] - self.refs[t, s.arrays["numbers"]].sum() for (t, *_), s in zip(items, samples)]
        energy = (torch.tensor(referenced, dtype=torch.float64) / self.energy_std[task]).float()
        forces = labels["forces"] / self.force_rms[task][batch.atom_batch][:, None]
        ids = [(self.task_info[t]["name"], int(i), tuple(s.source)) for (t, i, _, _), s in zip(items, samples)]
        return batch, {"energy": energy, "forces": forces, "task": task, "energy_scale": self.e_scale[task],
                       "force_scale": self.f_scale[task], "ids": ids}


class PretrainData:
    """The configured data sets, their statistics (``task_info``) and loaders.

    ``saved_tasks``: the ``tasks`` of a checkpoint being resumed; their references and
    statistics are reused instead of being fitted again.
    """

    def __init__(self, cfg: PretrainConfig, qint_tags=(1, 2), num_elements: int = 120,
                 saved_tasks: list[dict] | None = None):
        self.cfg, self.num_elements = cfg, num_elements
        self.specs = cfg.data.datasets
        self.settings = [GraphSettings(d.cutoff, d.max_neighbors, tuple(qint_tags), tags=d.tags)
                         for d in self.specs]
        cache = not cfg.data.streaming
        self.train, self.val, self.task_info, self._natoms = [], [], [], []
        for k, spec in enumerate(self.specs):
            ds = StructureDataset(lazy_structures(spec.train, spec.train_index, spec.format), ["energy", "forces"],
                                  self.settings[k], cache=cache, num_elements=num_elements, name=spec.name)
            self.train.append(ds)
            if saved_tasks:
                info, natoms = saved_tasks[k], None  # atom counts read when a sampler needs them
                if info["name"] != spec.name:
                    raise ValueError(f"data set {k} is {spec.name!r} but the checkpoint has {info['name']!r}")
            else:
                info, natoms = self._statistics(spec, ds)
            self._natoms.append(natoms)
            self.task_info.append(info)
            if spec.val:
                self.val.append(StructureDataset(lazy_structures(spec.val, spec.val_index, spec.format),
                                                 ["energy", "forces"], self.settings[k], cache=cache,
                                                 num_elements=num_elements, name=spec.name))
            else:
                self.val.append(None)

    @property
    def natoms(self) -> list[np.ndarray]:
        """Atoms of every training structure of each data set (int32; for balancing processes)."""
        for k, ds in enumerate(self.train):
            if self._natoms[k] is None:
                self._natoms[k] = atom_counts(ds.structures)
        return self._natoms

    def _statistics(self, spec: DatasetConfig, ds: StructureDataset) -> tuple[dict, np.ndarray]:
        """The data set's normalisation and references, from one pass over its structures that
        keeps only their atom counts (returned as well)."""
        acc = StreamingStatistics(self.num_elements)
        for i in range(len(ds)):
            acc.add(*ds.labels(i))
        refs, stats = acc.result()
        shift = stats["energy_mean_per_atom"]
        force_scale = spec.force_loss_scale
        info = {
            "name": spec.name, "cutoff": float(spec.cutoff), "max_neighbors": int(spec.max_neighbors),
            "tags": spec.tags,
            "num_structures": stats["num_structures"], "mean_natoms": stats["mean_natoms"],
            "element_references": {int(z): float(v + shift) for z, v in refs.items()},
            "energy_std": float(stats["energy_std"]) or 1.0, "force_rms": float(stats["force_rms"]) or 1.0,
            "energy_loss_scale": float(spec.energy_loss_scale),
            "force_loss_scale": float(stats["mean_natoms"] if force_scale is None else force_scale),
        }
        return info, np.asarray(acc.natoms, dtype=np.int32)

    @property
    def has_val(self) -> bool:
        return any(v is not None for v in self.val)

    def _collate(self, training: bool) -> PretrainCollate:
        return PretrainCollate(self.task_info, self.settings, self.cfg.model.edge_dropout, training,
                               self.num_elements)

    def train_loader(self, num_replicas: int = 1, rank: int = 0) -> ResumableDataLoader:
        d = self.cfg.data
        sampler = TemperatureBatchSampler([len(x) for x in self.train], d.batch_size, d.temperature,
                                          self.cfg.seed, num_replicas, rank,
                                          natoms=self.natoms if num_replicas > 1 else None)
        return ResumableDataLoader(TaskItems(self.train), batch_sampler=sampler, collate_fn=self._collate(True),
                                   num_workers=d.num_workers, persistent_workers=d.num_workers > 0)

    def val_loader(self, num_replicas: int = 1, rank: int = 0):
        if not self.has_val:
            return None
        tasks = [k for k, v in enumerate(self.val) if v is not None]
        d = self.cfg.data
        sampler = TemperatureBatchSampler([len(self.val[k]) for k in tasks], d.val_batch_size or d.batch_size,
                                          1.0, 0, num_replicas, rank, shuffle=False, expand=False)
        items = _Remap(TaskItems([self.val[k] for k in tasks]), tasks)
        return torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=self._collate(False),
                                           num_workers=d.num_workers)

    def scale_fit_batches(self, num_batches: int) -> list:
        """``num_batches`` mixed training batches without edge dropout (one process's view)."""
        d = self.cfg.data
        sampler = TemperatureBatchSampler([len(x) for x in self.train], d.batch_size, d.temperature,
                                          self.cfg.seed, 1, 0)
        collate_fn, items, out = self._collate(False), TaskItems(self.train), []
        for keys in sampler:
            if len(out) >= num_batches:
                break
            out.append(collate_fn([items[k] for k in keys]))
        return out


class _Remap(torch.utils.data.Dataset):
    """Validation items: the sampler's task k is data set ``tasks[k]``."""

    def __init__(self, items: TaskItems, tasks: list[int]):
        self.items, self.tasks = items, tasks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        task, index, seed, sample = self.items[key]
        return self.tasks[task], index, seed, sample
