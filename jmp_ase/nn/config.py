"""Backbone configuration: a plain dataclass saved inside every checkpoint.

Field names and meanings follow JMP's GemNet-OC ``BackboneConfig`` so that a
configuration read from an original JMP checkpoint maps one to one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class BackboneConfig:
    """Sizes and switches of a GemNet-OC backbone (JMP flavour).

    Only the "full" GemNet-OC variant that JMP uses is implemented: all four
    interaction types (quadruplet, atom-to-edge, edge-to-atom, atom-to-atom).
    """

    num_spherical: int = 7
    num_radial: int = 128
    num_blocks: int = 4
    emb_size_atom: int = 256
    emb_size_edge: int = 512
    emb_size_trip_in: int = 64
    emb_size_trip_out: int = 64
    emb_size_quad_in: int = 32
    emb_size_quad_out: int = 32
    emb_size_aint_in: int = 64
    emb_size_aint_out: int = 64
    emb_size_rbf: int = 16
    emb_size_cbf: int = 16
    emb_size_sbf: int = 32
    num_before_skip: int = 2
    num_after_skip: int = 2
    num_concat: int = 1
    num_atom: int = 3
    num_output_afteratom: int = 3
    num_atom_emb_layers: int = 2
    num_global_out_layers: int = 2
    num_elements: int = 120
    envelope_exponent: int = 5
    absolute_rbf_cutoff: float = 12.0
    qint_tags: tuple[int, ...] = (1, 2)
    activation: str = "scaled_silu"
    dropout: float | None = None
    edge_dropout: float | None = None
    smooth_dihedral: bool = False
    """Damp each dihedral term of the quadruplet basis by (sin θ_cab sin θ_abd)^m so energy and
    forces are continuous where three atoms are collinear (crystals, slabs, aromatic rings).
    False computes JMP's function exactly (needed to reproduce the published weights);
    fine-tuning with conservative forces turns it on (see ``jmp_ase.nn.bases.SphericalBasisLayer``)."""
    dihedral_damping: float = 0.0
    """ε of the smooth basis (used only with ``smooth_dihedral``): each triplet normal n (|n| = sin
    of its angle) enters as n / sqrt(|n|² + ε²), so the m-th dihedral term is damped by
    (sin θ_cab sin θ_abd / sqrt((sin² θ_cab + ε²)(sin² θ_abd + ε²)))^m. That factor is about 1 away
    from collinearity (JMP's values, which the pre-trained weights know) and goes to 0 smoothly at
    it; forces stay bounded by ~1/ε. 0 damps by (sin θ_cab sin θ_abd)^m everywhere."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (safe for ``torch.load(weights_only=True)``)."""
        out = dataclasses.asdict(self)
        out["qint_tags"] = list(self.qint_tags)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BackboneConfig":
        """Build from a dict; unknown keys raise so typos never pass silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"unknown backbone config keys {sorted(unknown)}; expected a subset of {sorted(known)}"
            )
        values = dict(values)
        if "qint_tags" in values:
            values["qint_tags"] = tuple(int(t) for t in values["qint_tags"])
        return cls(**values)

    @classmethod
    def from_jmp(cls, jmp_config: dict[str, Any]) -> "BackboneConfig":
        """Translate JMP's own ``BackboneConfig`` fields (e.g. ``jmp-s-config.json``).

        Raises ``ValueError`` for settings this implementation does not support
        (other basis functions, partial interaction sets, per-layer bases).
        """
        required = {
            "rbf": {"name": "gaussian"},
            "cbf": {"name": "spherical_harmonics"},
            "sbf": {"name": "legendre_outer"},
            "quad_interaction": True,
            "atom_edge_interaction": True,
            "edge_atom_interaction": True,
            "atom_interaction": True,
            "scale_basis": False,
            "direct_forces": True,
            "learnable_rbf": False,
            "learnable_rbf_stds": False,
            "unique_basis_per_layer": False,
        }
        for key, expected in required.items():
            if key in jmp_config and jmp_config[key] not in (expected, None) and not (
                key == "direct_forces"
            ):
                raise ValueError(
                    f"JMP config has {key}={jmp_config[key]!r}; jmp-ase supports only {expected!r}"
                )
        if jmp_config.get("rbf_spherical") not in (None, {"name": "gaussian"}):
            raise ValueError("only a Gaussian rbf_spherical is supported")
        envelope = jmp_config.get("envelope", {"name": "polynomial", "exponent": 5})
        if envelope.get("name") != "polynomial":
            raise ValueError(f"only the polynomial envelope is supported, got {envelope!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in jmp_config.items() if k in known}
        values["envelope_exponent"] = int(envelope.get("exponent", 5))
        if jmp_config.get("absolute_rbf_cutoff") is None:
            raise ValueError("JMP config without absolute_rbf_cutoff is not supported")
        return cls.from_dict(values)


#: ε of the smooth basis for new fine-tunes and for ``from_jmp_checkpoint(smooth_dihedral=True)``:
#: on aspirin-1000 it matches JMP's dihedral in accuracy where ε = 0 cost ~10 % (README, "Collinear atoms").
DEFAULT_DIHEDRAL_DAMPING = 0.15


def basis_description(config: BackboneConfig) -> str:
    """The quadruplet basis in words, for start-up lines and ``jmp-train info``."""
    if not config.smooth_dihedral:
        return "JMP's exact dihedral"
    if config.dihedral_damping > 0:
        return f"smooth (ε {config.dihedral_damping:g})"
    return "smooth (sin-damped)"


def jmp_s() -> BackboneConfig:
    """JMP-S (GemNet-OC base, ~38.9 M parameters with the atom embedding)."""
    return BackboneConfig()


def jmp_l() -> BackboneConfig:
    """JMP-L (GemNet-OC large, ~216 M parameters with the atom embedding)."""
    return BackboneConfig(
        num_blocks=6,
        emb_size_edge=1024,
        emb_size_trip_out=128,
        emb_size_quad_in=64,
        emb_size_rbf=32,
        emb_size_sbf=64,
        num_concat=4,
    )


def tiny() -> BackboneConfig:
    """The tiny configuration of the reference fixture: fast enough for unit tests."""
    return BackboneConfig(
        num_radial=32,
        num_blocks=2,
        emb_size_atom=32,
        emb_size_edge=48,
        emb_size_trip_in=16,
        emb_size_trip_out=16,
        emb_size_quad_in=8,
        emb_size_quad_out=8,
        emb_size_aint_in=16,
        emb_size_aint_out=16,
        emb_size_rbf=8,
        emb_size_cbf=8,
        emb_size_sbf=8,
        num_before_skip=1,
        num_after_skip=1,
        num_concat=1,
        num_atom=2,
        num_output_afteratom=2,
        num_atom_emb_layers=1,
        num_global_out_layers=1,
    )


NAMED_CONFIGS = {"jmp-s": jmp_s, "jmp-l": jmp_l, "tiny": tiny}


def named_config(name: str) -> BackboneConfig:
    """Return a fresh copy of a named configuration (``jmp-s``, ``jmp-l``, ``tiny``)."""
    try:
        return NAMED_CONFIGS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown config name {name!r}; choose one of {sorted(NAMED_CONFIGS)}") from None


def resolve_backbone_config(config, inferred: BackboneConfig) -> BackboneConfig:
    """``config`` may be None (use ``inferred``), a name, a dict or a BackboneConfig."""
    if config is None:
        return inferred
    if isinstance(config, str):
        return named_config(config)
    if isinstance(config, dict):
        return BackboneConfig.from_dict(config)
    if isinstance(config, BackboneConfig):
        return config
    raise TypeError(f"config must be None, a name, a dict or a BackboneConfig, not {type(config).__name__}")
