"""One closed-loop measurement of a `sidelight serve` started with given flags: the shared step
of the benchmarks that compare server configurations side by side (sampling_overhead.py,
audit_overhead.py). The load generator, the server start and stop: sync_throughput.py."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from prometheus_client.parser import text_string_to_metric_families
from sidelight.models.config import load_config
from sidelight.models.loaders import load_model
from sync_throughput import (
    PARAMS,
    input_pool,
    run_load,
    running_server,
    save_pool,
    single_model_repository,
)


def metric_samples(metrics_url: str) -> list[Any]:
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def measure(
    repository: Path,
    model: str,
    method: str,
    callers: int,
    serve_args: Sequence[str],
    pool: Path,
    window_s: float,
    log: Path,
    *,
    min_instances: int = 0,
) -> tuple[float, list[Any]]:
    """(instances per second over the window, the server's /metrics samples after it)."""
    spec = {
        "model": model,
        "method": method,
        "params": PARAMS.get(method, {}),
        "pool": str(pool),
        "instances": 1,
        "callers": callers,
        "warmup_callers": callers,
        "warmup_instances": 1,
        "warmup_s": min(3.0, window_s / 3),
        "min_window_s": window_s,
        "min_instances": min_instances,
        "max_window_s": window_s * 3,
    }
    with running_server(repository, serve_args, log) as server:
        result = run_load({"target": server.address, **spec}, window_s * 8 + 600)
        samples = metric_samples(server.metrics_url)
    return float(result["throughput"]), samples


def publish(
    text: str,
    rows: list[dict[str, Any]],
    results: Path,
    name: str,
    docs: Path | None,
    markers: tuple[str, str],
    heading: str,
) -> None:
    """Print the table, keep every figure as JSON in `results`, and (a full run: `docs`
    given) put the table between the markers of the docs page."""
    print(text)
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results / f"{name}-{stamp}.json").write_text(json.dumps(rows, indent=1))
    if docs is not None:
        replace_section(
            docs, *markers, f"Run of {time.strftime('%Y-%m-%d %H:%M')}, {heading}", text
        )


def replace_section(docs: Path, begin: str, end: str, heading: str, text: str) -> bool:
    """Put `heading` and `text` between the markers of `docs` (False when it has none)."""
    if not docs.exists():
        return False
    content = docs.read_text()
    if begin not in content or end not in content:
        return False
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    docs.write_text(f"{head}{begin}\n{heading}\n\n{text}\n{end}{tail}")
    return True


def case_folder(
    repository: Path, samples: Path, model_name: str, case_name: str, scratch: Path
) -> tuple[Path, Path]:
    """(a repository holding only the model, the load generator's input pool) for one case."""
    folder = repository / model_name
    model = load_model(folder, "1", load_config(folder / "config.yaml"), torch.device("cpu"))
    pool = scratch / f"{model_name}.npz"
    if not pool.exists():
        save_pool(pool, *input_pool(model, samples))
    case = scratch / case_name
    case.mkdir()
    return single_model_repository(repository, model_name, case), pool
