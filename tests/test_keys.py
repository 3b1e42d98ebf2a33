"""The key registry: one description per quantity, used wherever batches are split."""
import pytest

from jmp_ase import keys


def test_registered_keys_know_their_shape_unit_and_owner():
    assert keys.FORCES.per_atom and keys.FORCES.unit == "eV/Å" and keys.FORCES.shape == "(N, 3)"
    assert not keys.ENERGY.per_atom and keys.ENERGY.unit == "eV"
    assert not keys.STRESS.per_atom and keys.STRESS.derivative
    assert keys.is_per_atom("energies") and not keys.is_per_atom("free_energy")
    assert set(keys.REGISTRY) <= set(keys.RESERVED_NAMES)


@pytest.mark.parametrize("name", ["gap", "bulk_modulus"])
def test_user_defined_scalars_are_per_structure(name):
    key = keys.describe(name, unit="eV")
    assert key.shape == "(B,)" and not key.per_atom and key.unit == "eV"
    assert keys.unit_of(name, "GPa") == "GPa" and keys.unit_of("forces") == "eV/Å"
