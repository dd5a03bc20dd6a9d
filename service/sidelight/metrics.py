"""Every Prometheus metric Sidelight exports, declared once, on a registry passed in.

Labels are bounded: model and method names come from the repository and the catalog, never
from what a client typed (unknown names are recorded as "unknown").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sidelight.errors import Unavailable

if TYPE_CHECKING:  # a type only: metrics sit below the jobs package
    from sidelight.jobs.queue import QueueStats

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATIO_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
UNIT_BUCKETS = tuple(round(0.05 * k, 2) for k in range(1, 21))
GAIN_BUCKETS = (-0.5, -0.25, -0.1, -0.05, -0.02, 0.0, 0.02, 0.05, 0.1, 0.25, 0.5)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rpc_duration = Histogram(
            "sidelight_rpc_duration_seconds",
            "Time to answer an RPC, from arrival to response.",
            ["rpc", "model", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rpc_in_flight = Gauge(
            "sidelight_rpc_in_flight", "RPCs being answered now.", ["rpc"], registry=registry
        )
        self.queue_depth = Gauge(
            "sidelight_queue_depth_instances",
            "Instances waiting for a batch.",
            ["model"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "sidelight_queue_wait_seconds",
            "Time a request waited before its batch started.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "sidelight_batch_size_instances",
            "Instances per batch run on a device.",
            ["model", "task", "device"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_duration = Histogram(
            "sidelight_batch_duration_seconds",
            "Device time of one batch.",
            ["model", "task", "device"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_failures = Counter(
            "sidelight_batch_failures_total",
            "Batches that raised; their requests failed.",
            ["model", "task", "device"],
            registry=registry,
        )
        self.batches_abandoned = Counter(
            "sidelight_batches_abandoned_total",
            "Batches stopped before a model call because every caller had cancelled or passed "
            "its deadline.",
            ["model", "task", "device"],
            registry=registry,
        )
        self.chunk_rows = Gauge(
            "sidelight_chunk_rows",
            "Rows per model call chosen by the executor for the last batch of a task.",
            ["model", "task", "device"],
            registry=registry,
        )
        self.dropped = Counter(
            "sidelight_requests_dropped_total",
            "Queued requests dropped before running, by reason (deadline, cancelled).",
            ["model", "reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "sidelight_requests_rejected_total",
            "Requests refused at admission because the queue was full.",
            ["model"],
            registry=registry,
        )
        self.model_evaluations = Counter(
            "sidelight_model_evaluations_total",
            "Rows put through models to answer explanations.",
            ["model", "method"],
            registry=registry,
        )
        self.completeness_error = Histogram(
            "sidelight_relative_completeness_error",
            "|sum(attributions) - (f(x) - f(baseline))| / |f(x) - f(baseline)| per instance.",
            ["model", "method"],
            buckets=RATIO_BUCKETS,
            registry=registry,
        )
        self.models_loaded = Gauge(
            "sidelight_models_loaded",
            "Model versions loaded and serving (counted once across devices).",
            registry=registry,
        )
        self.model_unavailable = Gauge(
            "sidelight_model_unavailable",
            "1 for each model of the repository that failed to load (its error is in the log "
            "and in the NOT_FOUND answer to requests for it).",
            ["model"],
            registry=registry,
        )
        self.faithfulness_auc = Histogram(
            "sidelight_faithfulness_auc",
            "Deletion or insertion AUC of sampled explanations (probability of the explained "
            "class against the fraction of elements removed or inserted, most relevant first).",
            ["model", "method", "curve"],
            buckets=UNIT_BUCKETS,
            registry=registry,
        )
        self.faithfulness_gain = Histogram(
            "sidelight_faithfulness_gain_over_random",
            "How much better than a random ranking a sampled explanation's curve is: random "
            "minus deletion AUC, insertion minus random AUC (positive: better than chance).",
            ["model", "method", "curve"],
            buckets=GAIN_BUCKETS,
            registry=registry,
        )
        self.faithfulness_scored = Counter(
            "sidelight_faithfulness_scored_instances_total",
            "Instances whose explanation was scored by the faithfulness sampler.",
            ["model", "method"],
            registry=registry,
        )
        self.faithfulness_dropped = Counter(
            "sidelight_faithfulness_dropped_total",
            "Explanations drawn for scoring but not scored: the sampler's queue was full, or "
            "requests kept the device busy past the sampler's wait.",
            ["model", "method", "reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "sidelight_model_info",
            "1 for each loaded model version and device.",
            ["model", "version", "format", "device"],
            registry=registry,
        )


# Jobs run from seconds to an hour (the default buckets stop at 10 s).
JOB_DURATION_BUCKETS = (
    0.1,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
EVALUATION_BUCKETS = (1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8)


class JobMetrics:
    """What workers export: one observation per delivery of a job."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "sidelight_job_duration_seconds",
            "Time a worker spent on one delivery of a job, by outcome.",
            ["model", "method", "outcome"],
            buckets=JOB_DURATION_BUCKETS,
            registry=registry,
        )
        self.evaluations = Histogram(
            "sidelight_job_model_evaluations",
            "Model evaluations (rows through the model) spent on one delivery of a job.",
            ["model", "method"],
            buckets=EVALUATION_BUCKETS,
            registry=registry,
        )
        self.outcomes = Counter(
            "sidelight_job_deliveries_total",
            "Deliveries of jobs to workers, by outcome (succeeded, partial, failed, "
            "dead_lettered, cancelled, duplicate, lost, released).",
            ["model", "method", "outcome"],
            registry=registry,
        )


class QueueCollector(Collector):
    """The queue's state, read from the queue at each scrape (so every API replica reports
    the same shared figures; take max() across replicas, not sum())."""

    def __init__(self, stats: Callable[[], QueueStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "sidelight_job_queue_up", "1 when the job queue answered this scrape."
        )
        try:
            stats = self._stats()
        except Unavailable:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, documentation, value in (
            (
                "sidelight_job_queue_length",
                "Entries in the job stream (until trimmed).",
                stats.length,
            ),
            ("sidelight_job_queue_lag", "Jobs not yet delivered to any worker.", stats.lag),
            ("sidelight_job_queue_pending", "Jobs delivered and not acknowledged.", stats.pending),
            (
                "sidelight_job_queue_oldest_waiting_seconds",
                "Age of the oldest job not yet delivered to any worker (0 when none waits).",
                stats.oldest_waiting_s,
            ),
            (
                "sidelight_job_dead_letters",
                "Entries in the dead-letter stream.",
                stats.dead_letters,
            ),
        ):
            yield GaugeMetricFamily(name, documentation, value=value)
        jobs = GaugeMetricFamily(
            "sidelight_jobs",
            "Jobs QUEUED and RUNNING now; for the end states, jobs that ended so since the "
            "queue was created (a running total).",
            labels=["state"],
        )
        for state, count in sorted(stats.jobs.items()):
            jobs.add_metric([state.value], count)
        yield jobs


@dataclass(frozen=True)
class RemoteFigures:
    """What one remote model's client has seen of its endpoint since start (running totals)."""

    endpoint: str  # host:port, from remote.yaml
    model: str  # the Sidelight model name (the repository entry)
    calls: Mapping[str, int]  # calls by outcome: OK, or the endpoint's gRPC status name
    rows: int  # rows sent in calls that succeeded
    latency_buckets: tuple[tuple[float, int], ...]  # (upper bound, calls at most that long)
    latency_sum: float  # seconds, every call whatever its outcome
    up: bool | None  # the last probe's or call's outcome; None before either


class RemoteCollector(Collector):
    """Remote models' endpoint figures, read from their clients at each scrape. Clients of the
    same endpoint and model (one per device) are summed into one series."""

    def __init__(self, figures: Callable[[], Iterable[RemoteFigures]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        merged: dict[tuple[str, str], list[RemoteFigures]] = {}
        for figures in self._figures():
            merged.setdefault((figures.endpoint, figures.model), []).append(figures)
        calls = CounterMetricFamily(
            "sidelight_remote_calls",
            "Calls to a remote model's endpoint, by outcome: OK, or the endpoint's gRPC status "
            "(UNAVAILABLE, DEADLINE_EXCEEDED, ...; BAD_RESPONSE: an answer that does not fit).",
            labels=["endpoint", "model", "code"],
        )
        rows = CounterMetricFamily(
            "sidelight_remote_rows",
            "Rows a remote model's endpoint answered.",
            labels=["endpoint", "model"],
        )
        latency = HistogramMetricFamily(
            "sidelight_remote_call_duration_seconds",
            "Time of one call to a remote model's endpoint (one attempt), whatever its outcome.",
            labels=["endpoint", "model"],
        )
        up = GaugeMetricFamily(
            "sidelight_remote_up",
            "1 when a remote model's endpoint answered its last probe or call, 0 when it did not.",
            labels=["endpoint", "model"],
        )
        for labels, group in sorted(merged.items()):
            by_code: dict[str, int] = {}
            for figures in group:
                for code, count in figures.calls.items():
                    by_code[code] = by_code.get(code, 0) + count
            for code, count in sorted(by_code.items()):
                calls.add_metric([*labels, code], count)
            rows.add_metric(list(labels), sum(f.rows for f in group))
            bounds = [bound for bound, _ in group[0].latency_buckets]
            buckets = [
                (_bucket_name(bound), sum(f.latency_buckets[i][1] for f in group))
                for i, bound in enumerate(bounds)
            ]
            latency.add_metric(list(labels), buckets, sum(f.latency_sum for f in group))
            states = [f.up for f in group if f.up is not None]
            if states:
                up.add_metric(list(labels), 1 if all(states) else 0)
        yield from (calls, rows, latency, up)


def _bucket_name(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
