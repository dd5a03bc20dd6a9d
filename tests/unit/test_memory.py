"""Freed memory stays in the server process (see sidelight.memory for the measurement)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
from sidelight.memory import retain_freed_memory

# A fresh 10 MB input per round, as a server gets, then the activations of a model call kept for
# its backward pass and freed together:
# with glibc's default thresholds the heap gives pages back and faults them in again.
# argv: "retain" or "default", then "main" (the main thread) or "thread" (a thread of its own,
# as an executor lane is: it allocates from its own glibc arena). Prints the process's faults
# (OpenMP's workers touch pages too) over 20 rounds after 20 rounds of warm-up.
ROUNDS = """
import resource, sys, threading, torch
if sys.argv[1] == "retain":
    from sidelight.memory import retain_freed_memory
    assert retain_freed_memory()
def one_round():
    x = torch.randn(40, 256, 256)              # fresh input, ~10 MB
    kept = [x * i for i in range(8)]           # activations a backward pass keeps, ~80 MB
    return float(sum(t.sum() for t in kept))   # then all of it is freed
def rounds():
    for _ in range(20):
        one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        one_round()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if sys.argv[2] == "main":
    rounds()
else:
    worker = threading.Thread(target=rounds)
    worker.start()
    worker.join()
"""


def faults(mode: str, where: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode, where], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


def test_retained_only_where_glibc_is() -> None:
    assert retain_freed_memory() is (
        sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    )


@pytest.mark.parametrize("where", ["main", "thread"])
def test_retaining_stops_the_page_fault_churn(where: str) -> None:
    """On the main thread the thresholds do it; on another thread (its own arena, whose heaps
    glibc unmaps once they are free) only the top pad does: without it, the thresholds made a
    thread's churn 7 times worse than glibc's defaults."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the thresholds are glibc's")
    default, retained = faults("default", where), faults("retain", where)
    assert retained * 10 < default, (default, retained)
