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


def test_a_registered_per_atom_output_is_split_by_atoms_in_calculator_results():
    """A head producing a per-atom quantity (here a fake force variance) registers its key;
    the calculator then returns one row per atom of each structure, not a float."""
    import numpy as np
    from ase.build import molecule

    from jmp_ase.calculators.calculator import JMPCalculator
    from jmp_ase.nn.heads import HEAD_TYPES, Head, HeadSpec, register_head
    from models import tiny_model

    variance = keys.register(keys.Key("force_variance", "(N,)", "eV²/Å²", "atom"))
    with pytest.raises(ValueError, match="already registered"):
        keys.register(keys.Key("force_variance", "(N,)", "eV²/Å²", "structure"))

    @register_head("variance_demo")
    class VarianceDemo(Head):
        produces = ("force_variance",)

        def forward(self, inputs):
            return {variance.name: self.mlp(inputs.out.node_embedding)[:, 0] ** 2}

    try:
        net = tiny_model(heads=[HeadSpec("energy"), HeadSpec("v", kind="variance_demo")])
        calc = JMPCalculator(net)
        results = calc.predict([molecule("H2O"), molecule("CH4")], properties=("energy", "force_variance"))
        assert [np.shape(r["force_variance"]) for r in results] == [(3,), (5,)]
        assert np.all(results[1]["force_variance"] >= 0)
    finally:
        HEAD_TYPES.pop("variance_demo")
        keys.REGISTRY.pop("force_variance")
