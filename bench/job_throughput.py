"""Perturbation methods: Sidelight's batched jobs against the reference libraries, side by side.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'     # shap and lime (make bench does)
    .venv/bin/python bench/job_throughput.py [--instances 32] [--samples 512] [--repeats 3]

On `breast_cancer` (30 features; the model's 32 background rows), each configuration explains
the same instances, the same number of samples per instance, the same class probability, with
the same torch module evaluated in this process (2 threads):

- kernel_shap: (a) Sidelight's method in-process, with the rows per call a worker uses (every
  instance shares the job's coalitions, so a model call holds instances x coalitions x
  background rows); (b) `shap.KernelExplainer`,
  the reference implementation, one instance at a time (l1_reg off, so it is plain Kernel SHAP);
  (c) Sidelight through a real server as a job (SubmitJob, embedded worker, result back).
- lime: (a) Sidelight in-process; (b) `lime.lime_tabular.LimeTabularExplainer.explain_instance`
  one instance at a time, sampling around the instance as Sidelight does; (c) as a job.

Configurations run interleaved, `--repeats` times each, and the median is reported with the
ratios and the agreement of the attributions (Pearson correlation between (a) and (b), which
sample differently and so agree only up to sampling noise). Results JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from inprocess import InProcessServer
from sidelight.settings import JobSettings, ServerSettings

HERE = Path(__file__).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("var/model-repository"))
    parser.add_argument("--instances", type=int, default=32)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import shap  # noqa: F401 - fail early when the bench extra is missing
    from lime import lime_tabular  # noqa: F401
    from sidelight.methods.catalog import check_model
    from sidelight.models.registry import ModelRegistry

    torch.set_num_threads(2)
    registry = ModelRegistry.load(args.repository, [torch.device("cpu")], check_model)
    model = registry.get("breast_cancer").primary
    assert model.background is not None
    from sklearn.datasets import load_breast_cancer

    rows = load_breast_cancer().data[400 : 400 + args.instances].astype(np.float32)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "instances": args.instances,
        "samples": args.samples,
        "repeats": args.repeats,
        "methods": {},
    }
    server = InProcessServer(
        ServerSettings(
            model_repository=args.repository,
            port=0,
            metrics_port=None,
            jobs=JobSettings(embedded_workers=1),
        )
    )
    try:
        for method in ("kernel_shap", "lime"):
            runs: dict[str, Callable[[], np.ndarray]] = {
                "a": lambda m=method: _sidelight(model, m, rows, args.samples),
                "b": lambda m=method: _reference(model, m, rows, args.samples),
                "c": lambda m=method: _job(server, m, rows, args.samples),
            }
            seconds: dict[str, list[float]] = {key: [] for key in runs}
            outputs: dict[str, np.ndarray] = {}
            for key, run in runs.items():  # warm-up: compile, allocate, connect
                outputs[key] = run()
            for _ in range(args.repeats):
                for key, run in runs.items():
                    started = time.perf_counter()
                    outputs[key] = run()
                    seconds[key].append(time.perf_counter() - started)
            rate = {key: args.instances / statistics.median(s) for key, s in seconds.items()}
            agreement = float(np.corrcoef(outputs["a"].ravel(), outputs["b"].ravel())[0, 1])
            results["methods"][method] = {
                "instances_per_second": rate,
                "seconds": seconds,
                "a_over_b": rate["a"] / rate["b"],
                "c_over_b": rate["c"] / rate["b"],
                "correlation_a_b": agreement,
            }
            print(
                f"{method}: (a) Sidelight in-process {rate['a']:.1f} inst/s, "
                f"(b) reference library {rate['b']:.2f} inst/s, (c) Sidelight job "
                f"{rate['c']:.1f} inst/s; a/b {rate['a'] / rate['b']:.1f}, "
                f"c/b {rate['c'] / rate['b']:.1f}; correlation(a, b) {agreement:.3f}",
                flush=True,
            )
    finally:
        server.stop()
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.results / f"job_throughput-{stamp}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")
    return 0


def _sidelight(model: Any, method: str, rows: np.ndarray, samples: int) -> np.ndarray:
    from sidelight.jobs.runner import rows_per_call
    from sidelight.methods.base import Batch
    from sidelight.methods.catalog import METHODS, parse_params

    params = parse_params(METHODS[method], {"n_samples": samples, "seed": 1})
    n = rows.shape[0]
    batch = Batch(
        torch.from_numpy(rows), torch.ones(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)
    )
    rows = rows_per_call(batch.inputs, JobSettings.max_rows_per_call, JobSettings.max_call_bytes)
    result = METHODS[method].attribute(model, batch, params, rows)
    return result.attributions.double().numpy()


def _probability(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    def of_class_one(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            return model.probabilities(model.module(tensor)).numpy().astype(np.float64)

    return of_class_one


def _reference(model: Any, method: str, rows: np.ndarray, samples: int) -> np.ndarray:
    background = model.background.tensor.numpy().astype(np.float64)
    predict = _probability(model)
    if method == "kernel_shap":
        import shap

        explainer = shap.KernelExplainer(lambda x: predict(x)[:, 1], background)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = [
                explainer.shap_values(row[None], nsamples=samples, l1_reg=False, silent=True)
                for row in rows
            ]
        return np.concatenate([np.asarray(v).reshape(1, -1) for v in values])
    from lime import lime_tabular

    explainer = lime_tabular.LimeTabularExplainer(
        background,
        discretize_continuous=False,
        sample_around_instance=True,
        random_state=1,
    )
    found = []
    for row in rows:
        explanation = explainer.explain_instance(
            row.astype(np.float64),
            predict,
            labels=(1,),
            num_features=rows.shape[1],
            num_samples=samples,
        )
        weights = np.zeros(rows.shape[1])
        for feature, weight in explanation.as_map()[1]:
            weights[feature] = weight
        found.append(weights)
    return np.stack(found)


def _job(server: InProcessServer, method: str, rows: np.ndarray, samples: int) -> np.ndarray:
    from sidelight.client import to_array

    job = server.finished_job("breast_cancer", rows, method, n_samples=samples, seed=1)
    return to_array(job.result.attributions).astype(np.float64)


if __name__ == "__main__":
    raise SystemExit(main())
