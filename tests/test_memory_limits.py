"""The memory check sees a container's limit (cgroup v1/v2) and an address-space limit, not only
the machine's free memory."""
import subprocess
import sys

import torch

from jmp_ase.nn import backbone


def _cgroup(tmp_path, membership: str, files: dict) -> int | None:
    (tmp_path / "cgroup").write_text(membership)
    for name, text in files.items():
        path = tmp_path / "fs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return backbone._cgroup_headroom(str(tmp_path / "fs"), str(tmp_path / "cgroup"))


def test_cgroup_v2_limit(tmp_path):
    files = {"job/memory.max": "4294967296\n", "job/memory.current": "1073741824\n"}
    assert _cgroup(tmp_path, "0::/job\n", files) == 3 * 2**30


def test_cgroup_v2_without_limit(tmp_path):
    assert _cgroup(tmp_path, "0::/job\n", {"job/memory.max": "max\n", "job/memory.current": "10\n"}) is None


def test_cgroup_v1_limit(tmp_path):
    files = {"memory/job/memory.limit_in_bytes": str(2 * 2**30), "memory/job/memory.usage_in_bytes": str(2**29)}
    assert _cgroup(tmp_path, "5:cpu,cpuacct:/job\n4:memory:/job\n", files) == 2 * 2**30 - 2**29
    unlimited = {"memory/job/memory.limit_in_bytes": "9223372036854771712", "memory/job/memory.usage_in_bytes": "1"}
    assert _cgroup(tmp_path, "4:memory:/job\n", unlimited) is None


def test_cgroup_headroom_is_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(backbone, "_cgroup_headroom", lambda: 12345)
    monkeypatch.setattr(backbone, "retained_free_bytes", lambda: 0)
    assert backbone.available_memory_bytes(torch.device("cpu")) == 12345


def test_address_space_limit_caps_available_memory():
    code = ("import resource, torch\n"
            "from jmp_ase.nn import backbone\n"
            "vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
            "limit = vm + 2**30\n"
            "resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))\n"
            "backbone.retained_free_bytes = lambda: 0\n"  # the heap's free blocks would count on top
            "print(backbone.available_memory_bytes(torch.device('cpu')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout) <= 2**30
