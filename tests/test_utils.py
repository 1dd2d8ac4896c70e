"""rtd_lab.utils: the CPU allocator setting (measured in fresh processes: it changes process-wide state)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

FAULTS = """
import ctypes, resource, sys, torch
from rtd_lab.utils import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, retain_freed_memory

# glibc's initial thresholds (128 KiB), fixed: its default adapts them as blocks are freed, which
# makes the default's faults depend on the order of earlier allocations (nondeterministic to test).
libc = ctypes.CDLL("libc.so.6")
assert libc.mallopt(M_MMAP_THRESHOLD, 2**17) and libc.mallopt(M_TRIM_THRESHOLD, 2**17)
if sys.argv[1] == "retain":
    assert retain_freed_memory()

def faults():  # a training step's pattern: activations of a few sizes, all freed after the step
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for step in range(10):
        buffers = [torch.ones(2**20 * (1 + i % 3)) for i in range(24)]  # 4-12 MB each, 192 MB in all
        del buffers
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
print(faults())
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_retained_memory_is_reused_without_page_faults():
    released, retained = page_faults("release"), page_faults("retain")
    assert released > 10 * 40_000  # every step faults its 192 MB (47k pages) in again
    assert retained < released / 20
