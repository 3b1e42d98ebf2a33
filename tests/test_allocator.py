"""jmp_ase.allocator: freed blocks stay in the process (glibc) or go back to the kernel, the backbone
chooses per pass, the environment switch overrides, and the memory check counts what is kept."""
import json
import os
import subprocess
import sys

import pytest

from jmp_ase.allocator import ENV_SWITCH, _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="needs glibc (Linux)")

# Resident memory (MB) kept after a 256 MB tensor is allocated, written and freed, after setting
# the policies named in argv in turn; what use_policy returned; what retained_free_bytes reports.
CHILD = """
import json, os, sys, torch
import jmp_ase.allocator as allocator
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
flags = [allocator.use_policy(name) for name in sys.argv[1:]]
before = rss_mb()
x = torch.ones(64 * 2**20)
del x
print(json.dumps({"flags": flags, "kept_mb": rss_mb() - before, "free_mb": allocator.retained_free_bytes() / 2**20}))
"""


def run_child(switch, *policies):
    env = dict(os.environ)
    env.pop(ENV_SWITCH, None)
    if switch is not None:
        env[ENV_SWITCH] = switch
    out = subprocess.run([sys.executable, "-c", CHILD, *policies], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_retained_block_stays_in_the_process_and_counts_as_free():
    out = run_child(None, "retain", "retain")
    assert out["flags"] == ["retain", "retain"]
    assert out["kept_mb"] > 200  # the freed 256 MB block is kept for the next call ...
    assert out["free_mb"] > 200  # ... and reported as free for reuse (the memory check adds it)


def test_released_block_goes_back_and_policies_switch_both_ways():
    assert run_child(None, "retain", "release")["kept_mb"] < 50
    out = run_child(None, "release", "retain")
    assert out["flags"] == ["release", "retain"] and out["kept_mb"] > 200


@pytest.mark.parametrize("switch, flags, kept", [("0", ["off", "off"], False), ("always", ["retain", "retain"], True)])
def test_environment_switch(switch, flags, kept):
    out = run_child(switch, "retain", "release")
    assert out["flags"] == flags
    assert (out["kept_mb"] > 200) is kept


def test_without_any_call_glibc_returns_the_block():
    """The reference the tests above differ from: glibc's default."""
    assert run_child(None)["kept_mb"] < 50


def test_bad_policy_is_refused():
    from jmp_ase.allocator import use_policy

    with pytest.raises(ValueError, match="retain"):
        use_policy("keep")


def test_backbone_retains_in_fast_mode_and_in_lean_mode_only_with_memory_to_spare(monkeypatch):
    import torch

    import jmp_ase.nn.backbone as backbone
    from jmp_ase.data.batch import batch_from_atoms
    from jmp_ase.nn.config import tiny
    from jmp_ase.nn.heads import HeadSpec
    from jmp_ase.nn.model import FineTunedModel, ModelConfig
    from ase.build import bulk

    model = FineTunedModel(ModelConfig(tiny(), [HeadSpec("energy")], cutoff=6.0, max_neighbors=30)).double().eval()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=0)
    batch = batch_from_atoms([atoms], model.graph_settings, dtype=torch.float64)
    idx, n = batch.indices, len(atoms)
    lean_need = backbone.estimate_peak_bytes(model.backbone.config, idx, n, 8, lean=True, grad=True)
    policies, available = [], [0]
    monkeypatch.setattr(backbone, "use_policy", policies.append)
    monkeypatch.setattr(backbone, "available_memory_bytes", lambda device: available[0])
    model.memory = "fast"
    available[0] = 2**50
    model(batch)
    model.memory = "lean"
    bound = int(backbone.LEAN_RETAINED_FACTOR * lean_need / backbone.AUTO_FAST_FRACTION)
    for available[0] in (bound, bound - 64):
        model(batch)
    assert policies == ["retain", "retain", "release"]


def test_memory_check_counts_retained_free_memory_as_available(monkeypatch):
    """A process that retained a large call's memory must not see it as unavailable on the next
    call (which would turn lean, or raise MemoryError, for nothing)."""
    import torch

    import jmp_ase.nn.backbone as backbone

    monkeypatch.setattr(backbone, "_meminfo_available", lambda: 1000)
    monkeypatch.setattr(backbone, "_cgroup_headroom", lambda: 3000)
    monkeypatch.setattr(backbone, "_address_space_headroom", lambda: None)
    monkeypatch.setattr(backbone, "retained_free_bytes", lambda: 500)
    assert backbone.available_memory_bytes(torch.device("cpu")) == 1500
