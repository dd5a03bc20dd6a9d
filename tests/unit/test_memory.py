"""Freed memory stays in the server process (see sidelight.memory for the measurement)."""

from __future__ import annotations

import platform
import subprocess
import sys

from sidelight.memory import retain_freed_memory

# A fresh 10 MB input per round, as a server gets, then the activations of a model call kept for
# its backward pass and freed together:
# with glibc's default thresholds the heap gives pages back and faults them in again.
ROUNDS = """
import resource, sys, torch
if sys.argv[1] == "retain":
    from sidelight.memory import retain_freed_memory
    assert retain_freed_memory()
def one_round():
    x = torch.randn(40, 256, 256)              # fresh input, ~10 MB
    kept = [x * i for i in range(8)]           # activations a backward pass keeps, ~80 MB
    return float(sum(t.sum() for t in kept))   # then all of it is freed
for _ in range(3):
    one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


def test_retained_only_where_glibc_is() -> None:
    assert retain_freed_memory() is (
        sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    )


def test_retaining_stops_the_page_fault_churn() -> None:
    if platform.libc_ver()[0] != "glibc":
        return
    default, retained = faults("default"), faults("retain")
    assert retained * 10 < default, (default, retained)
