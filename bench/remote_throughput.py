"""A kernel_shap job on a remote model (served by MLServer over the Open Inference Protocol)
against the same job on the same model loaded locally, side by side in one run.

    .venv/bin/python bench/remote_throughput.py [--model logistic|mlp] [--hidden 64,64]
        [--instances 32] [--samples 1024] [--rounds 3] [--rows 64,256,1024,4096,16384]
        [--concurrency 1]

The model, on 8 standardized breast_cancer features, trained by .venv-peers' Python
(tests/models/peer_train.py): scikit-learn's LogisticRegression (a dot product per row: the
local job is nearly all Sidelight's own work), or an MLPClassifier 8-64-64-1 (ReLU; compute per
row that outweighs a call's fixed cost). MLServer 1.7.1 serves its `predict_proba`
(mlserver-sklearn, in-process: `parallel_workers: 0`); Sidelight loads the same weights as a
float64 torch.export file (a second repository entry). One Sidelight server
(in this process, embedded job worker) holds the local entry and one remote entry per
`batch_rows` of the sweep, all with `max_concurrency` `--concurrency`.

Each round runs the same job (the same instances, coalitions and seed: kernel_shap with the
model's 12 background rows, so instances x samples x 12 rows) on the local entry and on every
remote entry, in an order that rotates between rounds. Reported per configuration: the median
job time over the rounds with its spread (min-max), instances per second, the ratio to the
local job in the same round (median), and the share of the job's time spent waiting for the
remote server (the client's summed call time over the job time; with `--concurrency 1` calls do
not overlap, so this is the share of wall time). The smallest `batch_rows` that reaches half the
local throughput is named. Results JSON in bench/results/, with MLServer's and Sidelight's logs
beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
import yaml
from inprocess import InProcessServer
from torch import nn

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = ROOT / ".venv-peers" / "bin"
TRAIN = ROOT / "tests" / "models" / "peer_train.py"
# One core each: Sidelight's torch (set_num_threads(1) in main) and MLServer's BLAS, which
# would otherwise take both cores and beat the local model on wide layers for that alone.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LOCAL = "cancer_local"
SERVED = "cancer"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("logistic", "mlp"), default="logistic")
    parser.add_argument("--hidden", default="64,64", help="the MLP's hidden layer widths")
    parser.add_argument("--instances", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default="64,256,1024,4096,16384")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    sweep = [int(r) for r in args.rows.split(",")]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sidelight-remote-bench-"))
    log_file = args.results / f"remote_throughput-{stamp}-sidelight.log"
    logging.basicConfig(
        filename=log_file, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    torch.set_num_threads(1)  # the other core is MLServer's (ONE_THREAD)

    figures = _train(work / "trained", args.model, args.hidden)
    mlserver = _MlServer(work / "mlserver", work / "trained" / "model.joblib")
    server = None
    try:
        repository = _repository(work / "repository", figures, mlserver.grpc_port, sweep, args)
        server = _Server(repository)
        rows = np.asarray(figures["rows"], dtype=np.float64)[400 : 400 + args.instances]
        names = [LOCAL, *(_remote_name(r) for r in sweep)]
        for name in names:  # warm-up: connections, the sizer, MLServer's first calls
            server.job(name, rows, args.samples)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(server.job(name, rows, args.samples))
    finally:
        if server is not None:
            server.stop()
        mlserver.stop()
        shutil.copy(mlserver.log, args.results / f"remote_throughput-{stamp}-mlserver.log")
    report = _report(runs, sweep, args)
    path = args.results / f"remote_throughput-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(_table(report))
    print(f"\nresults: {path}\nlogs: {log_file} and its -mlserver.log twin")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _remote_name(rows: int) -> str:
    return f"cancer_remote_{rows}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _train(folder: Path, kind: str, hidden: str) -> dict[str, Any]:
    folder.mkdir(parents=True)
    command = [str(PEERS / "python"), str(TRAIN), str(folder), kind, hidden]
    subprocess.run(command, check=True, timeout=600)
    figures: dict[str, Any] = json.loads((folder / "model.json").read_text())
    return figures


class _TwoClass(nn.Module):
    """scikit-learn's binary classifiers in float64: ReLU hidden layers (none for the logistic
    regression), one logistic output unit p, probabilities [1 - p, p]."""

    def __init__(self, layers: list[tuple[list[Any], list[float]]]) -> None:
        super().__init__()
        for index, (weight, bias) in enumerate(layers):  # weight: inputs x outputs
            self.register_buffer(f"w{index}", torch.tensor(weight, dtype=torch.float64))
            self.register_buffer(f"b{index}", torch.tensor(bias, dtype=torch.float64))
        self.depth = len(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(self.depth):
            x = x @ getattr(self, f"w{index}") + getattr(self, f"b{index}")
            if index < self.depth - 1:
                x = torch.relu(x)
        p = torch.sigmoid(x[:, 0])  # N
        return torch.stack([1 - p, p], 1)  # N x 2


def _layers(figures: dict[str, Any]) -> list[tuple[list[Any], list[float]]]:
    if figures["kind"] == "logistic":
        return [([[c] for c in figures["coef"]], [figures["intercept"]])]
    return [(layer["weight"], layer["bias"]) for layer in figures["layers"]]


def _repository(
    root: Path, figures: dict[str, Any], port: int, sweep: list[int], args: Any
) -> Path:
    from sidelight.demo.build import export_program

    rows = np.asarray(figures["rows"], dtype=np.float64)
    config = {
        "task": "tabular_classification",
        "input": {"shape": [rows.shape[1]], "dtype": "FP64"},
        "output": "probabilities",
        "labels": ["malignant", "benign"],
        "background": "background.npy",
        "methods": ["kernel_shap"],
    }
    for name in [LOCAL, *(_remote_name(r) for r in sweep)]:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.yaml").write_text(yaml.safe_dump(config))
        np.save(root / name / "background.npy", rows[::40][:12])
    export_program(
        _TwoClass(_layers(figures)),
        torch.zeros(2, rows.shape[1], dtype=torch.float64),
        root / LOCAL / "1" / "model.pt2",
    )
    for batch_rows in sweep:
        remote = {
            "protocol": "oip",
            "target": f"127.0.0.1:{port}",
            "model_name": SERVED,
            "model_version": "1",
            "output_name": "predict_proba",
            "batch_rows": batch_rows,
            "max_concurrency": args.concurrency,
            "timeout_seconds": 60.0,
        }
        path = root / _remote_name(batch_rows) / "1" / "remote.yaml"
        path.write_text(yaml.safe_dump(remote))
    return root


class _MlServer:
    def __init__(self, folder: Path, model_file: Path) -> None:
        self.grpc_port = _free_port()
        served = folder / SERVED
        served.mkdir(parents=True)
        shutil.copy(model_file, served / "model.joblib")
        settings = {
            "host": "127.0.0.1",
            "http_port": _free_port(),
            "grpc_port": self.grpc_port,
            "metrics_port": _free_port(),
            "parallel_workers": 0,
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        model_settings = {
            "name": SERVED,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "1"},
        }
        (served / "model-settings.json").write_text(json.dumps(model_settings))
        self.log = folder / "mlserver.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(PEERS / "mlserver"), "start", str(folder)],
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **ONE_THREAD},
            )
        self._wait_ready(120)

    def _wait_ready(self, timeout: float) -> None:
        from sidelight.oip import grpc_service_pb2 as pb
        from sidelight.oip import grpc_service_pb2_grpc as pb_grpc

        give_up = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            while time.monotonic() < give_up:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mlserver exited, see {self.log}")
                try:
                    request = pb.ModelReadyRequest(name=SERVED, version="1")
                    if stub.ModelReady(request, timeout=1).ready:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"mlserver not ready after {timeout}s, see {self.log}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class _Server(InProcessServer):
    """Sidelight in this process, with one embedded job worker, no audit log and no sampling:
    the job's own figures, and the remote client's time waiting for the endpoint."""

    def __init__(self, repository: Path) -> None:
        from sidelight.settings import JobSettings, ServerSettings

        settings = ServerSettings(
            model_repository=repository,
            port=0,
            metrics_port=None,
            faithfulness_sample=0.0,
            jobs=JobSettings(embedded_workers=1),
        )
        super().__init__(replace(settings, audit=replace(settings.audit, mode="off")))

    def remote_seconds(self, name: str) -> float:
        from sidelight.models.remote.module import remote_client

        client = remote_client(self.service.registry.get(name).primary)
        return 0.0 if client is None else client.stats.figures().latency_sum

    def job(self, name: str, rows: np.ndarray, samples: int) -> dict[str, float]:
        waited = self.remote_seconds(name)
        started = time.perf_counter()
        job = self.finished_job(name, rows, "kernel_shap", n_samples=samples, seed=1)
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "remote_seconds": self.remote_seconds(name) - waited,
            "evaluations": float(job.result.quality.model_evaluations),
        }


def _report(runs: dict[str, list[dict[str, float]]], sweep: list[int], args: Any) -> dict[str, Any]:
    local = runs[LOCAL]
    rows: list[dict[str, Any]] = []
    for name, measured in runs.items():
        seconds = [m["seconds"] for m in measured]
        ratios = [
            (args.instances / m["seconds"]) / (args.instances / base["seconds"])
            for m, base in zip(measured, local, strict=True)
        ]
        rows.append(
            {
                "model": name,
                "batch_rows": None if name == LOCAL else int(name.rsplit("_", 1)[1]),
                "seconds_median": statistics.median(seconds),
                "seconds_min": min(seconds),
                "seconds_max": max(seconds),
                "instances_per_s": args.instances / statistics.median(seconds),
                "throughput_vs_local": statistics.median(ratios),
                "waiting_share": statistics.median(
                    m["remote_seconds"] / m["seconds"] for m in measured
                ),
                "rows_per_job": measured[0]["evaluations"],
            }
        )
    enough = [r["batch_rows"] for r in rows if r["batch_rows"] and r["throughput_vs_local"] >= 0.5]
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch_threads": torch.get_num_threads(),
        "model": args.model if args.model == "logistic" else f"mlp {args.hidden}",
        "instances": args.instances,
        "samples": args.samples,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "rows": rows,
        "raw": runs,
        "half_local_from_batch_rows": min(enough) if enough else None,
    }


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']}: kernel_shap, {report['instances']} instances x "
        f"{report['samples']} samples x 12 "
        f"background rows, {report['rounds']} rounds, max_concurrency {report['concurrency']}",
        "",
        "| model | batch_rows | job s (median, min-max) | inst/s | vs local | waiting for remote |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['batch_rows'] or '-'} | {row['seconds_median']:.2f} "
            f"({row['seconds_min']:.2f}-{row['seconds_max']:.2f}) | "
            f"{row['instances_per_s']:.2f} | {row['throughput_vs_local']:.2f} | "
            f"{row['waiting_share']:.0%} |"
        )
    found = report["half_local_from_batch_rows"]
    lines.append("")
    lines.append(
        f"half the local throughput from batch_rows = {found}"
        if found
        else "no batch_rows of the sweep reached half the local throughput"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
