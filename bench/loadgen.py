"""The load of configurations (b), (c) and (d): closed-loop gRPC callers in a process of their own.

    python bench/loadgen.py --spec '{"target": "127.0.0.1:50051", ...}'   # one JSON line out

Run by `sync_throughput.py`, never by hand. It lives in another process so that the clients'
Python work does not share a GIL with the server or with the process that orchestrates; on a
small machine it still shares the cores, equally in every configuration.

Two phases:

1. Warm-up: a few callers loop for a while (at least one call each), then wait for their last
   answers, so the server has run the method, the model and its chunk sizing before the clock
   starts, and nothing of the warm-up is still queued when it does.
2. Measurement: every caller starts at once and loops until the stopping rule holds (see
   `throughput_window`); then the callers are cancelled, which withdraws their queued requests.

Requests are built and serialized once, before the clock starts, and answers are kept as bytes
(checked by parsing them in the warm-up only): the clients' own cost stays as small as it can be,
so that the figures describe the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from sidelight.client import CHANNEL_OPTIONS, explain_request
from sidelight.v1 import explainer_pb2 as pb

EXPLAIN = "/sidelight.v1.Explainer/Explain"
# Answers of one batch reach the client within this of each other; a longer silence means
# the next answers belong to another batch. Used to end the window after a whole batch.
LUMP_GAP_S = 0.25
# At most this long after the stopping rule holds, waiting for the rest of a batch's answers.
MAX_TAIL_S = 2.0
# After a failed call, wait this long before the next, so an error does not become a spin.
ERROR_PAUSE_S = 0.05
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LoadSpec:
    """One measurement, as `sync_throughput.py` asks for it."""

    target: str  # host:port of the server
    model: str
    method: str
    params: dict[str, Any]
    pool: str  # .npz with `inputs` (pool x input shape) and `targets` (pool)
    instances: int  # per request
    callers: int  # concurrent callers in the measurement
    warmup_callers: int
    warmup_instances: int  # per warm-up request (a smaller request warms the same batch group)
    warmup_s: float
    min_window_s: float  # the measurement lasts at least this long...
    min_instances: int  # ...and until at least this many instances were answered...
    max_window_s: float  # ...but never longer than this (then it stops where it is)


@dataclass(frozen=True)
class Completion:
    started: float  # seconds since the measurement started
    finished: float
    instances: int


@dataclass
class Recorder:
    """What the callers of the measurement completed, and when the stopping rule held."""

    clock_zero: float
    min_window_s: float
    min_instances: int
    completions: list[Completion] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    stop_at: float | None = None
    last_finish: float = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.clock_zero

    def complete(self, started: float, instances: int) -> None:
        finished = self.now()
        self.completions.append(Completion(started, finished, instances))
        self.answered += instances
        self.last_finish = finished
        if (
            self.stop_at is None
            and finished >= self.min_window_s
            and self.answered >= self.min_instances
        ):
            self.stop_at = finished

    def fail(self, code: str) -> None:
        self.errors[code] += 1


def window_end(finishes: Sequence[float], stop_at: float, lump_gap: float) -> float | None:
    """The end of the counted window: the last answer at or before `stop_at`, carried on
    through the answers that follow it closer than `lump_gap` (the rest of its batch).

    Counting from a fresh start (every caller starts at 0, the server idle and warm) to the
    instant an answer arrives makes the estimate exact for a server that runs one batch at a
    time, however long its batches: the window holds whole batches, no partial one. Cutting
    a batch's answers in two would count work done inside the window as if it were not.
    """
    ordered = sorted(finishes)
    before = [t for t in ordered if t <= stop_at]
    if not before:
        return None
    end = before[-1]
    for t in ordered[len(before) :]:
        if t - end >= lump_gap:
            break
        end = t
    return end


def summarize(recorder: Recorder, stop_at: float, lump_gap: float) -> dict[str, Any]:
    """Throughput over [0, window end] and the latencies of the requests answered in it."""
    end = window_end([c.finished for c in recorder.completions], stop_at, lump_gap)
    counted = [] if end is None else [c for c in recorder.completions if c.finished <= end]
    latencies = np.array([c.finished - c.started for c in counted], dtype=np.float64)
    instances = sum(c.instances for c in counted)
    return {
        "throughput": instances / end if end else None,
        "window_s": end,
        "completed_requests": len(counted),
        "completed_instances": instances,
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p99_s": _percentile(latencies, 99),
        "latency_mean_s": float(latencies.mean()) if latencies.size else None,
        "latencies_s": [round(float(x), 6) for x in latencies],  # to pool rounds
        "errors": dict(recorder.errors),
    }


def _percentile(values: npt.NDArray[np.float64], q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def payloads(spec: LoadSpec, count: int, instances: int) -> list[bytes]:
    """One serialized request per caller; caller i takes the next `instances` rows of the pool,
    so that callers do not all send the same instances."""
    with np.load(spec.pool, allow_pickle=False) as pool:
        inputs, targets = pool["inputs"], pool["targets"]
    size = inputs.shape[0]
    built = []
    for caller in range(count):
        rows = [(caller * instances + j) % size for j in range(instances)]
        request = explain_request(
            spec.model,
            inputs[rows],
            spec.method,
            targets=[int(t) for t in targets[rows]],
            params=spec.params,
            request_id=f"bench-{caller}",
        )
        built.append(request.SerializeToString())
    return built


def open_channels(target: str, count: int) -> list[grpc.aio.Channel]:
    """One connection per caller, as separate clients would have (a local subchannel pool
    keeps gRPC from sharing one connection between channels to the same address)."""
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]


def check_answer(answer: bytes, instances: int) -> None:
    """Refuse to measure a server that does not answer every instance."""
    reply = pb.ExplainResponse.FromString(answer)
    shape = list(reply.attributions.shape)
    if len(reply.targets) != instances or not shape or shape[0] != instances:
        raise RuntimeError(
            f"the server answered {len(reply.targets)} targets and attributions of shape "
            f"{shape} for {instances} instances"
        )


async def warm_up(calls: Sequence[Any], requests: Sequence[bytes], spec: LoadSpec) -> float:
    """Each warm-up caller loops until `warmup_s` has passed (one call at least) and waits
    for its last answer; the first answer of each is parsed and checked. Returns seconds."""
    started = time.perf_counter()
    deadline = started + spec.warmup_s

    async def loop(call: Any, request: bytes) -> None:
        check_answer(await call(request), spec.warmup_instances)
        while time.perf_counter() < deadline:
            await call(request)

    await asyncio.gather(*(loop(c, r) for c, r in zip(calls, requests, strict=True)))
    return time.perf_counter() - started


async def caller(call: Any, request: bytes, instances: int, recorder: Recorder) -> None:
    """Closed loop: send, wait for the answer, send again."""
    while True:
        started = recorder.now()
        try:
            await call(request)
        except grpc.aio.AioRpcError as exc:
            recorder.fail(exc.code().name)
            await asyncio.sleep(ERROR_PAUSE_S)
            continue
        recorder.complete(started, instances)


async def wait_for_stop(recorder: Recorder, max_window_s: float) -> tuple[float, str]:
    """Until the stopping rule holds (or the cap passes), then until the batch then being
    answered is answered whole. Returns (stop instant, what stopped it)."""
    poll = LUMP_GAP_S / 5
    while recorder.stop_at is None and recorder.now() < max_window_s:
        await asyncio.sleep(poll)
    stop_at, reason = (
        (recorder.stop_at, "rule") if recorder.stop_at is not None else (recorder.now(), "cap")
    )
    while recorder.now() - recorder.last_finish < LUMP_GAP_S and recorder.now() < (
        stop_at + MAX_TAIL_S
    ):
        await asyncio.sleep(poll)
    return stop_at, reason


async def measure(
    calls: Sequence[Any], requests: Sequence[bytes], spec: LoadSpec
) -> dict[str, Any]:
    """All callers start together; the result covers whole batches from that instant."""
    recorder = Recorder(time.perf_counter(), spec.min_window_s, spec.min_instances)
    cpu_before = time.process_time()
    tasks = [
        asyncio.create_task(caller(c, r, spec.instances, recorder))
        for c, r in zip(calls, requests, strict=True)
    ]
    try:
        stop_at, reason = await wait_for_stop(recorder, spec.max_window_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = recorder.now()
    summary = summarize(recorder, stop_at, LUMP_GAP_S)
    summary.update(
        stopped_by=reason,
        stop_at_s=stop_at,
        run_s=elapsed,
        client_cpu_cores=(time.process_time() - cpu_before) / elapsed,
    )
    return summary


async def run(spec: LoadSpec) -> dict[str, Any]:
    """Connect, warm up, measure, disconnect."""
    requests = payloads(spec, spec.callers, spec.instances)
    warm_requests = payloads(spec, spec.warmup_callers, spec.warmup_instances)
    channels = open_channels(spec.target, spec.callers)
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)), READY_TIMEOUT_S
        )
        calls = [channel.unary_unary(EXPLAIN) for channel in channels]  # bytes in, bytes out
        warmup_s = await warm_up(calls[: spec.warmup_callers], warm_requests, spec)
        result = await measure(calls, requests, spec)
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    result["warmup_run_s"] = warmup_s
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="a LoadSpec as JSON")
    args = parser.parse_args(argv)
    spec = LoadSpec(**json.loads(args.spec))
    result = asyncio.run(run(spec))
    json.dump({"spec": asdict(spec), **result}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
