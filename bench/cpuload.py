"""How much CPU other processes took during a measurement, from Linux's /proc.

The benchmark runs on shared machines. On a 2-core machine one busy neighbour does not cost a
figure half its value but far more: PyTorch's two intra-op threads meet at a barrier after
each operator, and when the neighbour holds one core, every barrier waits a scheduler time
slice (a small model's forward goes from ~3 ms to ~100 ms). Ratios from such a run mean
nothing, so each figure records the CPU that was not ours (all CPUs' busy time minus this
process, its finished children and the server), and the run waits for a quiet machine before
each measurement.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
# /proc/stat cpu columns: user nice system idle iowait irq softirq steal guest guest_nice.
# Busy is what processes and interrupts used (guest time is already inside user).
_BUSY_COLUMNS = (0, 1, 2, 5, 6)


@dataclass(frozen=True)
class CpuSample:
    wall: float
    busy: float  # CPU-seconds of every process on the machine
    own: float  # CPU-seconds of ours: this process, its reaped children, `pids`


def machine_busy_seconds() -> float | None:
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in first[1:]]
    return sum(values[i] for i in _BUSY_COLUMNS if i < len(values)) * TICK_S


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after "pid (comm)": fields[0] is the state (field 3 of proc(5)); None
    when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads); 0 when it is gone."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) * TICK_S


def minor_faults(pid: int) -> int | None:
    """Minor page faults of a live process so far (all its threads); None when it is gone.
    A server that keeps handing memory back to the kernel and faulting it in again shows here
    (see sidelight.memory)."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[7])  # minflt: field 10 of proc(5)


def own_seconds(pids: Sequence[int]) -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    return total + sum(process_seconds(pid) for pid in pids)


def sample(pids: Sequence[int] = ()) -> CpuSample | None:
    busy = machine_busy_seconds()
    if busy is None:
        return None
    return CpuSample(time.perf_counter(), busy, own_seconds(pids))


def foreign_cores(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """Cores' worth of CPU that other processes used between the two samples."""
    if before is None or after is None or after.wall <= before.wall:
        return None
    foreign = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, foreign / (after.wall - before.wall))


def wait_for_quiet(
    threshold: float, probe_s: float, max_wait_s: float
) -> tuple[float, float | None]:
    """Probe until others use less than `threshold` cores (or `max_wait_s` passes).
    Returns (seconds waited, the last probe's foreign cores)."""
    began = time.perf_counter()
    while True:
        before = sample()
        time.sleep(probe_s)
        foreign = foreign_cores(before, sample())
        waited = time.perf_counter() - began
        if foreign is None or foreign < threshold or waited >= max_wait_s:
            return waited, foreign
