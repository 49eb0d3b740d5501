"""kinema.common.malloc: freed CPU tensor memory is kept on the heap for reuse, and the user can opt out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# In a fresh process (the settings are per process): tune or not, then allocate and free a 64 MiB tensor
# twice and report what glibc says (mallinfo2: bytes in mmapped blocks while it is alive, heap arena after).
PROBE = """
import ctypes, json, sys
from kinema.common.malloc import keep_freed_memory
applied = keep_freed_memory()
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
mapped = []
for _ in range(2):
    x = torch.ones(16 << 20)  # 64 MiB: above glibc's largest automatic mmap threshold (32 MiB)
    mapped.append(libc.mallinfo2().hblkhd)
    del x
print(json.dumps({"applied": applied, "mapped": mapped, "arena": libc.mallinfo2().arena}))
"""


def probe(**env) -> dict:
    import json
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                 reason="glibc's allocator settings exist on Linux with glibc only")


@linux_glibc
def test_tuned_process_serves_large_tensors_from_the_heap_and_keeps_them():
    tuned = probe()
    assert tuned["applied"] is True
    assert all(m < 64 << 20 for m in tuned["mapped"]), tuned  # the 64 MiB blocks came from the heap, not mmaps
    assert tuned["arena"] >= 64 << 20  # and the freed block stayed there for the next one


@linux_glibc
def test_opting_out_leaves_glibc_defaults_which_map_each_large_block():
    for env in ({"KINEMA_MALLOC": "system"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"}):
        plain = probe(**env)
        assert plain["applied"] is False
        assert all(m >= 64 << 20 for m in plain["mapped"]), (env, plain)
