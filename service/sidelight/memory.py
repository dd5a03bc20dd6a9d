"""Keep freed host memory in the process, rather than hand it back to the OS after every batch.

glibc's malloc returns the top of its heap to the kernel once more than a threshold is free, and
serves large blocks with mmap and munmap. An attribution batch allocates and frees hundreds of
megabytes of activations; when the inputs are fresh each batch (they always are in a server)
the heap layout shifts and those pages go back and forth: ResNet-18 Grad-CAM took 110,000 minor
page faults a second and ran 16% slower than the same loop on a reused input (64 vs 75 inst/s,
2 CPU cores). Fixing the two thresholds stops it: the process keeps its peak memory, as
jemalloc or tcmalloc would, which is what an inference server wants.

The thresholds are not enough for threads other than the main one. Each such thread (an executor
lane, a job worker) allocates from its own glibc arena, made of heaps of at most 64 MiB, and
glibc unmaps such a heap as soon as it is wholly free, whatever the trim threshold says. With the
mmap threshold fixed at 32 MiB, blocks that mmap would have served come from those heaps, so a
thread's churn got worse, not better: on a thread, 20 rounds of the loop in
tests/unit/test_memory.py re-faulted 5,100 pages with glibc's defaults, 38,400 with the two
thresholds alone, and none once the top pad is set as well. The top pad is what glibc keeps free
at the top of a heap when it trims: at 64 MiB, a whole heap, no heap is ever unmapped or shrunk.
It also rounds the main heap's growth up by 64 MiB of address space, which costs no memory until
it is touched. In a server with two lanes (ResNet-18 saliency and Grad-CAM, 16 instances a
request) faults fell to 16-106 a second once warm; what remains elsewhere is blocks over the
32 MiB mmap threshold, which glibc always maps afresh (docs/benchmarks.md).

glibc only; elsewhere (macOS, musl) nothing is changed. No maintained Python package sets
mallopt (the alternatives are LD_PRELOAD of another allocator, which has to be installed
outside pip), hence these few lines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# Keep up to this much free memory at the top of the heap (mallopt takes a C int).
TRIM_THRESHOLD_BYTES = 1 << 30
# Blocks below this come from the heap, not from mmap: glibc's own maximum for the dynamic
# threshold (32 MiB on 64-bit), fixed so it no longer moves with each free.
MMAP_THRESHOLD_BYTES = 32 << 20
# Free memory kept at the top of every heap when glibc trims: a thread arena's heap is at most
# 64 MiB (HEAP_MAX_SIZE on 64-bit), so none is ever given back.
TOP_PAD_BYTES = 64 << 20


def retain_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds and its top pad; True if they were set."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = all(
        mallopt(option, value)
        for option, value in (
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (_M_TOP_PAD, TOP_PAD_BYTES),
        )
    )
    if not done:
        log.warning("mallopt refused a threshold or the top pad; freed memory goes back to the OS")
    return done
