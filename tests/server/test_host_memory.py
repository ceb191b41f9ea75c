"""`kiln serve` keeps the host memory that tensors free for the next request (`server.host_memory`): glibc's own
accounting (`mallinfo2`) of a fresh interpreter says where a large tensor's memory came from and where it went."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

import server.services
from testkit.servers import REPO

glibc = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc's allocator (mallinfo2, glibc 2.33+) only"
)

# A 64 MiB tensor, over glibc's largest dynamic mmap threshold (32 MiB): bytes mapped on their own while it
# lives, and free bytes the heap keeps once it is gone.
PROBE = """
import ctypes, json, sys, torch
from server.host_memory import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
took = retain_freed_memory() if sys.argv[1] == "retain" else None
before = libc.mallinfo2()
block = torch.ones(64 << 20, dtype=torch.uint8)
alive = libc.mallinfo2()
mapped = alive.hblkhd - before.hblkhd
del block
kept = libc.mallinfo2().fordblks - alive.fordblks
print(json.dumps({"took": took, "mapped": mapped, "kept": kept}))
"""


def probe(mode: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


@glibc
def test_a_large_tensor_comes_from_the_heap_and_its_memory_stays_for_the_next():
    default, retained = probe("default"), probe("retain")
    # as glibc leaves it: mapped on its own, unmapped when freed
    assert default["mapped"] >= 64 << 20
    assert default["kept"] < 64 << 20
    assert retained["took"] is True
    assert retained["mapped"] == 0
    assert retained["kept"] >= 64 << 20


def test_the_server_sets_it_up_at_start(make_client, monkeypatch):
    calls = []
    monkeypatch.setattr(server.services, "retain_freed_memory", lambda: calls.append(True) or True)
    make_client()
    assert calls == [True]
