"""The parent of a fine-tuning run, read first: its architecture and weights, the graph
settings it was trained with (the model owns them) and the elements it has seen.

Graph settings of the fine-tuned model are, per setting: the explicit option, else the
parent's, else the default (an original JMP checkpoint does not state them). The data sets
are built with the result, so training and inference use the same graphs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from torch import nn

from jmp_ase.io.model_file import load_model, resolve_model_path
from jmp_ase.nn.config import BackboneConfig
from jmp_ase.io.pretrained import load_jmp_pretrained
from jmp_ase.nn.config import resolve_backbone_config

from jmp_ase.training.finetune_config import UNTRUNCATED, FinetuneConfig

DEFAULT_CUTOFF, DEFAULT_MAX_NEIGHBORS, DEFAULT_TAGS = 12.0, 30, "ignore"


class PretrainingHeads(NamedTuple):
    """A JMP-layout parent's pre-training heads, read with the same weights (EMA or not) as its
    backbone. output: the per-head energy and direct-force MLPs (``JMPPretrainOutput``);
    task_info: per head its name, graph settings, normalisation and element references."""

    output: nn.Module
    task_info: list[dict]


@dataclass
class Parent:
    """backbone: its config (dropout and edge dropout off); state: embedding + backbone weights
    (None: random weights); graph: the cutoff / max_neighbors / tags it states (None: unknown);
    elements: atomic numbers it was trained on (None: not recorded)."""

    backbone: BackboneConfig
    state: dict | None
    provenance: dict
    graph: dict = field(default_factory=dict)
    elements: list[int] | None = None
    pretraining: PretrainingHeads | None = None
    """All of a JMP-layout parent's pre-training heads (for replay and init_energy_head); None
    for a jmp-ase model file (its heads are the fine-tuned ones) and without a parent."""

    @property
    def energy_heads(self) -> dict:
        """The named pre-training energy heads: name -> (MLP state dict, energy_std in eV,
        element references in eV); empty without :attr:`pretraining`."""
        if self.pretraining is None:
            return {}
        output, info = self.pretraining
        return {str(h["name"]): (output.out_energy[k].state_dict(), float(h.get("energy_std") or 1.0),
                                 {int(z): float(v) for z, v in (h.get("element_references") or {}).items()})
                for k, h in enumerate(info) if h.get("name") is not None}


def _common(values: list):
    """The value all heads agree on, else None."""
    values = [v for v in values if v is not None]
    return values[0] if values and all(v == values[0] for v in values) else None


def read_parent(pretrained: str, ema: bool = False) -> Parent:
    """Read a jmp-ase model file (or shipped name) or an original-layout JMP checkpoint
    (JMP's ``jmp-s.pt`` or our pre-training's ``pretrain.ckpt``)."""
    path = resolve_model_path(pretrained) if not Path(str(pretrained)).is_file() else Path(pretrained)
    pretraining = None
    try:
        model = load_model(path)
        kind = "jmp-ase model file"
        cfg = model.model_config
        graph = {"cutoff": cfg.cutoff, "max_neighbors": cfg.max_neighbors, "tags": cfg.tags}
        elements = list(cfg.elements) or None
    except ValueError:
        model, _ = load_jmp_pretrained(path, ema=ema)
        kind = "JMP checkpoint (EMA weights)" if ema else "JMP checkpoint"
        heads = model.task_info or []
        graph = {k: _common([h.get(k) for h in heads]) for k in ("cutoff", "max_neighbors", "tags")}
        if heads and graph["cutoff"] is None:  # heads with different cutoffs: the largest, with its neighbours
            graph["cutoff"] = max(float(h["cutoff"]) for h in heads if h.get("cutoff") is not None)
        if heads and graph["max_neighbors"] is None and any(h.get("max_neighbors") for h in heads):
            graph["max_neighbors"] = max(int(h["max_neighbors"]) for h in heads if h.get("max_neighbors"))
        seen = {int(z) for h in heads for z in (h.get("element_references") or {})}
        elements = sorted(seen) or None
        pretraining = PretrainingHeads(model.output, heads) if heads else None
    state = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("embedding", "backbone")}
    # Dropout and edge dropout are pre-training regularisers (JMP fine-tunes without them); with
    # edge_dropout kept, training would rescale edges that the fine-tuning data never drops.
    backbone = dataclasses.replace(model.config, dropout=None, edge_dropout=None)
    provenance = {"parent": str(pretrained), "parent_path": str(path), "parent_kind": kind}
    return Parent(backbone, state, provenance, graph, elements, pretraining)


def load_parent(pretrained: str | None, ema: bool = False) -> tuple[BackboneConfig, dict, dict]:
    """(backbone config, embedding + backbone state dict, provenance) of a parent model."""
    parent = read_parent(pretrained, ema)
    return parent.backbone, parent.state, parent.provenance


def parent_of(config: FinetuneConfig) -> Parent:
    """The run's parent: weights and settings of ``pretrained``, only its architecture and
    settings with ``scratch``, or the named architecture (``backbone``) for scratch without one."""
    if config.pretrained and config.scratch:
        parent = read_parent(config.pretrained, config.ema)
        return dataclasses.replace(parent, state=None, elements=None, pretraining=None,
                                   provenance={"parent": "scratch", "architecture_of": str(config.pretrained)})
    if config.scratch:
        return Parent(resolve_backbone_config(config.backbone or "jmp-s", None), None, {"parent": "scratch"})
    return read_parent(config.pretrained, config.ema)


def graph_settings(config: FinetuneConfig, parent: Parent) -> tuple[BackboneConfig, dict, dict]:
    """(backbone with the run's qint_tags, {cutoff, max_neighbors, tags}, where each setting came from).

    Raises ``ValueError`` for a cutoff beyond the backbone's radial basis."""
    backbone = parent.backbone
    values, sources = {}, {}
    defaults = {"cutoff": min(DEFAULT_CUTOFF, float(backbone.absolute_rbf_cutoff)),
                "max_neighbors": DEFAULT_MAX_NEIGHBORS, "tags": DEFAULT_TAGS}
    for name, default in defaults.items():
        given, inherited = getattr(config, name), parent.graph.get(name)
        if given is not None:
            values[name], sources[name] = given, "option"
        elif inherited is not None:
            values[name], sources[name] = inherited, "parent"
        else:
            values[name], sources[name] = default, "default"
    values["cutoff"] = float(values["cutoff"])
    if values["max_neighbors"] != UNTRUNCATED:  # resolved from the training data by the caller
        values["max_neighbors"] = int(values["max_neighbors"])
    if config.qint_tags is not None:
        backbone = dataclasses.replace(backbone, qint_tags=tuple(config.qint_tags))
        sources["qint_tags"] = "option"
    else:
        sources["qint_tags"] = "parent" if config.pretrained else "default"
    if values["cutoff"] > backbone.absolute_rbf_cutoff:
        raise ValueError(f"cutoff {values['cutoff']} Å exceeds the backbone's radial-basis cutoff "
                         f"{backbone.absolute_rbf_cutoff} Å (absolute_rbf_cutoff): edges beyond it would "
                         f"carry nothing but cost time; use cutoff <= {backbone.absolute_rbf_cutoff}")
    return backbone, values, sources


def unseen_elements(parent: Parent, elements) -> list[int]:
    """Elements of the data the parent never saw in training (its embedding rows are untrained)."""
    if parent.elements is None or parent.state is None:
        return []
    return sorted(set(int(z) for z in elements) - set(parent.elements))
