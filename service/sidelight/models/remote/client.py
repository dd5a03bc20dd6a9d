"""What every remote protocol shares: rows cut into calls of at most `batch_rows`, at most
`max_concurrency` calls in flight to the endpoint, a deadline on each call, retries where they
are safe, and the figures that metrics and health read.

Retries. A prediction changes nothing on the server, so repeating one is harmless; but only two
answers say that the call may succeed if made again: UNAVAILABLE (the connection was refused or
dropped, the server is starting or shedding load: gRPC's own retry guidance) and CANCELLED
(Sidelight never cancels its own calls, so the server did: MLServer 1.7 cancels the calls in
flight when it shuts down, as before a restart or in a rolling update; tests/models show it).
Every other code is retried never: DEADLINE_EXCEEDED means the endpoint is too slow for the
configured deadline, and repeating the call would multiply the load on a server already behind;
INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, INTERNAL and a response that does not fit the
model's config (BAD_RESPONSE) would fail again the same way. Retries back off exponentially
(0.1 s, 0.2 s, ... at most 2 s), and the caller's own deadline is the job's or the batch's,
checked between calls.
"""

from __future__ import annotations

import bisect
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc
import numpy as np

from sidelight.errors import RemoteModelError
from sidelight.metrics import LATENCY_BUCKETS, RemoteFigures
from sidelight.models.remote.config import RemoteConfig

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
BAD_RESPONSE = "BAD_RESPONSE"  # the status recorded for an answer that does not fit
_BOUNDS = (*LATENCY_BUCKETS, float("inf"))


class BadResponse(Exception):
    """The endpoint answered, but not with what the model's config describes."""


class Endpoint(Protocol):
    """One protocol's calls to one remote model (oip.OipEndpoint, torchserve.TorchServeEndpoint)."""

    def infer(self, rows: np.ndarray, timeout: float) -> np.ndarray:
        """R x input shape -> the endpoint's output for the R rows. Raises grpc.RpcError
        (the endpoint's status) or BadResponse."""
        ...

    def ready(self, timeout: float) -> bool:
        """Whether the endpoint says it can serve the model now."""
        ...

    def close(self) -> None: ...


class EndpointStats:
    """Running totals of one client's calls, updated by the calling threads."""

    def __init__(self, endpoint: str, model: str) -> None:
        self.endpoint = endpoint
        self.model = model
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._rows = 0
        self._latency = [0] * len(_BOUNDS)  # per bucket, not cumulative
        self._latency_sum = 0.0
        self._up: bool | None = None

    def call(self, code: str, rows: int, seconds: float) -> None:
        with self._lock:
            self._calls[code] = self._calls.get(code, 0) + 1
            if code == "OK":
                self._rows += rows
            self._latency[bisect.bisect_left(_BOUNDS, seconds)] += 1
            self._latency_sum += seconds

    def mark(self, up: bool) -> None:
        with self._lock:
            self._up = up

    @property
    def up(self) -> bool | None:
        with self._lock:
            return self._up

    def figures(self) -> RemoteFigures:
        with self._lock:
            cumulative, total = [], 0
            for bound, count in zip(_BOUNDS, self._latency, strict=True):
                total += count
                cumulative.append((bound, total))
            return RemoteFigures(
                endpoint=self.endpoint,
                model=self.model,
                calls=dict(self._calls),
                rows=self._rows,
                latency_buckets=tuple(cumulative),
                latency_sum=self._latency_sum,
                up=self._up,
            )


class RemoteClient:
    """Batched, bounded, retried calls of one remote model; safe to use from many threads."""

    def __init__(self, endpoint: Endpoint, config: RemoteConfig, model: str, classes: int) -> None:
        self._endpoint = endpoint
        self.config = config
        self.model = model  # the Sidelight model name, for errors and metrics
        self._classes = classes
        # Bounds the calls in flight from every thread of this process, the pool's and the
        # callers' own (a single-call forward runs in its caller's thread).
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._pool = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="remote")
        self.stats = EndpointStats(config.target, model)

    def infer(self, rows: np.ndarray) -> np.ndarray:
        """R x input shape -> R x classes, in calls of at most `batch_rows` rows."""
        size = self.config.batch_rows
        parts = [rows[start : start + size] for start in range(0, rows.shape[0], size)]
        if len(parts) == 1:
            return self._call(parts[0])
        return np.concatenate(list(self._pool.map(self._call, parts)))

    def probe(self) -> bool:
        """Ask the endpoint whether the model is ready (health); never raises."""
        try:
            ready = self._endpoint.ready(min(self.config.timeout_seconds, 2.0))
        except (grpc.RpcError, BadResponse, ValueError):
            ready = False
        self.stats.mark(ready)
        return ready

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._endpoint.close()

    def _call(self, rows: np.ndarray) -> np.ndarray:
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                with self._slots:
                    answer = self._checked(
                        self._endpoint.infer(rows, self.config.timeout_seconds), rows.shape[0]
                    )
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                detail = str(exc.details())
                status, retry = code.name, code in RETRYABLE
            except BadResponse as exc:
                status, detail, retry = BAD_RESPONSE, str(exc), False
            else:
                self.stats.call("OK", rows.shape[0], time.perf_counter() - started)
                self.stats.mark(True)
                return answer
            self.stats.call(status, rows.shape[0], time.perf_counter() - started)
            if not retry or attempt >= self.config.retries:
                self.stats.mark(False)
                tried = f" (after {attempt + 1} attempts)" if attempt else ""
                raise RemoteModelError(self._where(), self.model, status, detail + tried)
            time.sleep(min(MAX_BACKOFF_S, BACKOFF_S * 2**attempt))
            attempt += 1

    def _checked(self, answer: np.ndarray, rows: int) -> np.ndarray:
        if answer.shape != (rows, self._classes):
            raise BadResponse(
                f"answered shape {list(answer.shape)} for {rows} rows; config.yaml's labels "
                f"say {self._classes} classes, so [{rows}, {self._classes}] was expected"
            )
        if not np.isfinite(answer).all():
            raise BadResponse("answered NaN or Inf")
        return answer

    def _where(self) -> str:
        version = f" version {self.config.model_version}" if self.config.model_version else ""
        return (
            f"{self.config.target} ({self.config.protocol.value} {self.config.model_name}{version})"
        )
