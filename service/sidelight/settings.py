"""Settings, built once in `main()` from the command line and passed down explicitly.

Nothing here reads the environment or parses anything at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class BatchingSettings:
    # Instances gathered into one batch (requests are never split; a larger one runs alone).
    max_batch_size: int = 64
    # How long the oldest request may wait for others to join while the device is idle.
    max_wait_ms: float = 2.0
    # Instances waiting across all models before new requests get RESOURCE_EXHAUSTED.
    max_queue_instances: int = 4096
    # Upper bound on rows per model call; the executor measures and picks the best size
    # up to this bound (IG steps and SmoothGrad samples count as rows).
    max_rows_per_call: int = 512
    # False: chunk size fixed at max_rows_per_call (for comparisons).
    adaptive_chunks: bool = True
    # Executors per CPU device, each with its own model copies and a share of the threads
    # (sidelight.batching.lanes); None: 2 where there are 2 threads or more. CUDA runs one.
    cpu_lanes: int | None = None
    # Lanes after the first take only groups whose model calls last this long on average.
    extra_lane_min_call_ms: float = 20.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if self.max_queue_instances < self.max_batch_size:
            raise ValueError("max_queue_instances must be >= max_batch_size")
        if self.max_rows_per_call < 1:
            raise ValueError("max_rows_per_call must be >= 1")
        if self.cpu_lanes is not None and self.cpu_lanes < 1:
            raise ValueError("cpu_lanes must be >= 1")
        if self.extra_lane_min_call_ms < 0:
            raise ValueError("extra_lane_min_call_ms must be >= 0")


@dataclass(frozen=True, kw_only=True)
class QueueSettings:
    # A job whose lease has not been renewed for this long is taken over by another worker.
    # Workers renew every third of it, so it only has to cover a stalled process, not a job.
    lease_seconds: float = 30.0
    # Deliveries after which a job goes to the dead letters (FAILED) instead of running again.
    max_deliveries: int = 3
    # Finished jobs (state, progress, result) are kept this long, then forgotten.
    retention_seconds: float = 24 * 3600.0
    # Dead letters kept (the oldest are trimmed; each job's own record says FAILED anyway).
    max_dead_letters: int = 10_000
    # Redis key prefix, so that several deployments can share one Redis.
    prefix: str = "sidelight"
    # Jobs waiting for a worker, and input bytes of the jobs not finished (held in Redis's
    # memory until the job ends), at most: past either, SubmitJob answers RESOURCE_EXHAUSTED.
    max_queued_jobs: int = 10_000
    max_queued_bytes: int = 512 << 20

    def __post_init__(self) -> None:
        if self.max_queued_jobs < 1 or self.max_queued_bytes < 1:
            raise ValueError("max_queued_jobs and max_queued_bytes must be >= 1")
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be >= 1")
        if self.retention_seconds <= 0:
            raise ValueError("retention_seconds must be > 0")


@dataclass(frozen=True, kw_only=True)
class JobSettings:
    """The job queue as the API server sees it."""

    # None: the in-process queue, with `embedded_workers` worker threads in the server.
    redis_url: str | None = None
    queue: QueueSettings = field(default_factory=QueueSettings)
    embedded_workers: int = 1
    # Rows per model call in a job, at most, and input bytes per call, at most (perturbed
    # inputs are built a round at a time, so these also bound a job's memory).
    max_rows_per_call: int = 16384
    max_call_bytes: int = 64 << 20
    # A worker asked to stop lets its job run this long, then hands it back.
    grace_seconds: float = 20.0
    # Model evaluations a job may cost: its params.max_evaluations may not be more, and a job
    # that gives none stops there (a partial result); a gradient method's job whose cost is
    # known up front (instances x rows per instance) is refused above it. 2^28: KernelSHAP at its
    # largest n_samples (2^20) on two rows and its background set already needs 2^25, and a
    # default that cut what the method's own bounds allow would make such requests partial.
    max_evaluations_per_job: int = 1 << 28
    # A Redis command that has not answered in this long fails (UNAVAILABLE): a hung Redis
    # (stopped, partitioned) costs a call this long, not forever. Connecting: 1 s at most.
    redis_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.redis_timeout_s <= 0:
            raise ValueError("redis_timeout_s must be > 0")
        if self.embedded_workers < 0:
            raise ValueError("embedded_workers must be >= 0")
        if self.max_rows_per_call < 1:
            raise ValueError("max_rows_per_call must be >= 1")


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    # "strict": an explanation whose record cannot be committed is not returned (UNAVAILABLE);
    # "best_effort": it is returned anyway, the failure logged and counted; "off": no log.
    mode: str = "strict"
    # The keys (checkpoint signing key, key-encryption key, input HMAC key) and, unless `url`
    # names another store, the SQLite store `audit.db`.
    data_dir: Path = Path("var/audit")
    # "": SQLite in data_dir; "postgresql://..." for one store behind several replicas.
    url: str = ""
    # Record every Predict too, not only explanations.
    record_predictions: bool = False
    # Keep raw inputs, encrypted under the subject's key (requests that name a subject_id).
    store_inputs: bool = False
    # A signed checkpoint of the chain's head every so many records or seconds.
    checkpoint_every: int = 10_000
    checkpoint_interval_s: float = 60.0
    # Reasons kept per instance in the record's summary.
    top_k: int = 8

    def __post_init__(self) -> None:
        if self.mode not in AUDIT_MODES:
            raise ValueError(f"audit mode {self.mode!r}: one of {list(AUDIT_MODES)}")
        if self.top_k < 1 or self.checkpoint_every < 1 or self.checkpoint_interval_s <= 0:
            raise ValueError("audit top_k, checkpoint_every and checkpoint_interval_s must be > 0")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def store_url(self) -> str:
        return self.url or f"sqlite:///{(self.data_dir / 'audit.db').resolve()}"


AUDIT_MODES = ("strict", "best_effort", "off")


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """`sidelight worker`: processes that run jobs from a Redis queue."""

    model_repository: Path
    redis_url: str
    queue: QueueSettings = field(default_factory=QueueSettings)
    device: str = "cpu"
    processes: int = 1
    # Consumer names are "{name}-{index}": stable across restarts of a process, so that a
    # restarted worker first takes back what it held. Default: the host name.
    name: str = ""
    max_rows_per_call: int = 16384
    max_call_bytes: int = 64 << 20
    grace_seconds: float = 20.0
    host: str = "127.0.0.1"
    metrics_port: int | None = 9096  # None: no /metrics; 0: any free port
    torch_threads: int | None = None
    audit: AuditSettings = field(default_factory=AuditSettings)

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError("processes must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    model_repository: Path
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (printed at start)
    metrics_port: int | None = 9095  # None: no /metrics endpoint; 0: any free port
    devices: tuple[str, ...] = ("cpu",)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    max_instances_per_request: int = 1024
    # A request message larger than this is refused by gRPC (RESOURCE_EXHAUSTED) before it is
    # read: with max_concurrent_rpcs, it bounds the memory requests take ((100 + 28) x 32 MiB
    # = 4 GiB at most; a request of 64 ResNet images is 38 MB: split larger ones or raise it).
    max_receive_message_bytes: int = 32 << 20
    max_send_message_bytes: int = 256 << 20
    # Calls answered at once, streams included, health checks not; more get RESOURCE_EXHAUSTED
    # at once, with a retry delay. gRPC itself takes 28 more (health checks, refusals).
    max_concurrent_rpcs: int = 100
    # Model evaluations one synchronous request may cost (instances x rows per instance: IG's
    # n_steps, SmoothGrad's samples), checked before it is queued (INVALID_ARGUMENT).
    max_evaluations_per_request: int = 1 << 18
    # SIGTERM: health turns NOT_SERVING, then in-flight calls get this long to finish.
    grace_period_s: float = 20.0
    reflection: bool = True
    torch_threads: int | None = None  # None: torch's default (one per core)
    # The executor thread and the gRPC loop share the GIL; Python's default 5 ms switch
    # interval makes every hand-over between them cost up to 5 ms. 1 ms measured 20-30%
    # more throughput on small models (docs/benchmarks.md).
    gil_switch_interval_s: float = 0.001
    # Keep freed host memory rather than return it to the OS each batch (sidelight.memory).
    retain_freed_memory: bool = True
    jobs: JobSettings = field(default_factory=JobSettings)
    # Fraction of synchronous explanations scored for faithfulness (deletion/insertion curves
    # against random rankings) on a background thread, only while the device is idle; 0 turns
    # the sampler off. Its cost under load: bench/sampling_overhead.py, docs/benchmarks.md.
    faithfulness_sample: float = 0.01
    # Seed of the sampler's draws (which calls are scored, the random rankings they are compared
    # with); None draws a fresh one each start. Fixed, a run's scores can be reproduced.
    faithfulness_seed: int | None = None
    audit: AuditSettings = field(default_factory=AuditSettings)
