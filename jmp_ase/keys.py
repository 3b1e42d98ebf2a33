"""Every quantity that crosses a module boundary by name: model outputs, training labels and
ASE results. One constant per key, with its shape, unit and what it is attached to.

Shapes use N = atoms in the batch, B = structures in the batch. A key ``per="atom"`` is
sliced per structure by atom ranges (forces); ``per="structure"`` has one row per structure
(energy, stress, graph-level scalars). Names not registered here are graph-level scalars of
user-defined heads (a HOMO-LUMO gap, a bulk modulus): per structure, shape (B,), in the unit
the head declares. Use :func:`describe` to look any name up.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    """One named quantity.

    name: the string used in results dicts and label files; shape: batched shape (N = atoms,
    B = structures); unit: physical unit ("" for dimensionless or user-defined);
    per: "atom" or "structure" (how a batch splits into structures);
    derivative: computed as a derivative of the energy when the model is conservative.
    """

    name: str
    shape: str
    unit: str
    per: str
    derivative: bool = False
    doc: str = ""

    @property
    def per_atom(self) -> bool:
        return self.per == "atom"


ENERGY = Key("energy", "(B,)", "eV", "structure", doc="total potential energy of each structure")
FREE_ENERGY = Key("free_energy", "(B,)", "eV", "structure",
                  doc="ASE's name for the energy consistent with the forces; equals energy here")
FORCES = Key("forces", "(N, 3)", "eV/Å", "atom", derivative=True,
             doc="-dE/dr with an energy head (conservative), or a direct-force head's output")
STRESS = Key("stress", "(B, 3, 3)", "eV/Å³", "structure", derivative=True,
             doc="(1/V) dE/dε for 3-D periodic structures (ASE results: Voigt 6-vector)")
ENERGIES = Key("energies", "(N,)", "eV", "atom", doc="per-atom energy contributions (sum = energy)")
ENERGY_STD = Key("energy_std", "(B,)", "eV", "structure",
                 doc="committee spread: standard deviation of the members' energies (the energy is their mean)")
FORCES_STD = Key("forces_std", "(N,)", "eV/Å", "atom", derivative=True,
                 doc="committee spread per atom: sqrt(mean over members of |F_k - F|²), F the mean force")
# Training only (a committee's members, K of them, each trained on the labels); not ASE results.
ENERGY_MEMBERS = Key("energy_members", "(K, B)", "eV", "structure", doc="each committee member's energy")
FORCES_MEMBERS = Key("forces_members", "(K, N, 3)", "eV/Å", "atom", derivative=True,
                     doc="each committee member's forces")

REGISTRY: dict[str, Key] = {k.name: k for k in (ENERGY, FREE_ENERGY, FORCES, STRESS, ENERGIES, ENERGY_STD,
                                                FORCES_STD, ENERGY_MEMBERS, FORCES_MEMBERS)}

#: Names of labels that are energy or its derivatives: an energy head predicts all three.
ENERGY_AND_DERIVATIVES = (ENERGY.name, FORCES.name, STRESS.name)

#: Names a user-defined scalar head may not take: they would shadow ASE properties.
RESERVED_NAMES = ("energy", "free_energy", "energies", "forces", "stress", "stresses", "dipole",
                  "charges", "magmom", "magmoms", "energy_std", "forces_std", "energy_members", "forces_members")

#: Units jmp-ase computes in (stated in every model file).
UNITS = {"length": "Å", "energy": ENERGY.unit, "forces": FORCES.unit, "stress": "eV/Å^3"}


def register(key: Key) -> Key:
    """Add ``key`` (e.g. a per-atom output of a new head kind, such as a force variance) so
    that batches and calculator results split it correctly. Re-registering the same key is a
    no-op; another key under a registered name is an error."""
    if key.per not in ("atom", "structure"):
        raise ValueError(f"key {key.name!r}: per must be 'atom' or 'structure', got {key.per!r}")
    known = REGISTRY.get(key.name)
    if known is not None and known != key:
        raise ValueError(f"key {key.name!r} is already registered as {known}")
    REGISTRY[key.name] = key
    return key


def describe(name: str, unit: str = "") -> Key:
    """The registered key ``name``, or a graph-level scalar (per structure, shape (B,)) in
    ``unit`` for names of user-defined heads."""
    return REGISTRY.get(name) or Key(name, "(B,)", unit, "structure")


def is_per_atom(name: str) -> bool:
    """Whether ``name`` has one row per atom (sliced by atom ranges when unbatching)."""
    return describe(name).per_atom


def unit_of(name: str, default: str = "") -> str:
    """Physical unit of ``name`` (``default`` for user-defined scalars)."""
    key = REGISTRY.get(name)
    return key.unit if key is not None else default
