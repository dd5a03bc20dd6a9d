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

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if self.max_queue_instances < self.max_batch_size:
            raise ValueError("max_queue_instances must be >= max_batch_size")
        if self.max_rows_per_call < 1:
            raise ValueError("max_rows_per_call must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    model_repository: Path
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (printed at start)
    metrics_port: int | None = 9095  # None: no /metrics endpoint; 0: any free port
    devices: tuple[str, ...] = ("cpu",)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    max_instances_per_request: int = 1024
    max_message_bytes: int = 256 * 1024 * 1024
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
