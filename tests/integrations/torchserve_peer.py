"""A real TorchServe 0.12 for tests: archives made with the real archiver, the server on free
loopback ports in a folder of its own, stopped by killing its own process group.

TorchServe keeps its pid file in the temporary directory (`torchserve --stop` finds the server
there; a second `torchserve --start` refuses to run while it names a live server), its
frontend talks to the workers over unix sockets `<java.io.tmpdir>/.ts.sock.9000, 9001, ...`
(numbered the same in every TorchServe), and the archiver stages files in
`<tmp>/<model name>`: all get a private TMPDIR/TEMP, so that nothing here meets another
TorchServe on the machine, and nothing here uses `torchserve --stop`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from conftest import wait_until
from peers import java, venv_command

READY_TIMEOUT_S = 120  # a worker loads in about 5-30 s; the machine is shared


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def archive(
    folder: Path,
    name: str,
    serialized_file: Path,
    extra_files: list[Path],
    model_config: dict[str, Any],
    handler: Path,
    **options: str,
) -> Path:
    """`torch-model-archiver` into `folder/<name>.mar`: `options` add `--flag value` pairs."""
    config = folder / f"{name}-model-config.yaml"
    config.write_text(yaml.safe_dump(model_config))
    private_tmp = folder / f".tmp-{name}"
    private_tmp.mkdir(exist_ok=True)
    command = [
        str(venv_command("torch-model-archiver")),
        *("--model-name", name, "--version", "1"),
        *("--serialized-file", str(serialized_file), "--handler", str(handler)),
        *("--extra-files", ",".join(str(p) for p in extra_files)),
        *("--config-file", str(config), "--export-path", str(folder), "--force"),
    ]
    for flag, value in options.items():
        command += [f"--{flag.replace('_', '-')}", value]
    done = subprocess.run(
        command,
        env={**os.environ, "TMPDIR": str(private_tmp)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"torch-model-archiver failed: {done.stderr}"
    return folder / f"{name}.mar"


class TorchServe:
    """`torchserve --foreground` in `folder`, serving `models` from `store`."""

    def __init__(self, folder: Path, store: Path, models: list[str]) -> None:
        java()
        folder.mkdir(parents=True)
        self.folder = folder
        self.models = models
        self.inference = f"http://127.0.0.1:{free_port()}"
        self.management = f"http://127.0.0.1:{free_port()}"
        self.grpc_inference_port = free_port()
        properties = {
            "inference_address": self.inference,
            "management_address": self.management,
            "metrics_address": f"http://127.0.0.1:{free_port()}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": self.grpc_inference_port,
            "grpc_management_port": free_port(),
            "disable_token_authorization": "true",
            "install_py_dep_per_model": "false",
            "default_workers_per_model": 1,
            "model_store": store,
            "load_models": ",".join(f"{m}.mar" for m in models),
            # The workers' interpreter: this venv's, where sidelight and torch are installed.
            "python": sys.executable,
            "enable_envvars_config": "false",  # no TS_* variable of the machine leaks in
        }
        config = folder / "config.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        private_tmp = folder / "tmp"
        private_tmp.mkdir()
        self._stdout = (folder / "stdout.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(venv_command("torchserve")),
                *("--start", "--foreground", "--ncs", "--disable-token-auth"),
                *("--ts-config", str(config), "--model-store", str(store)),
            ],
            cwd=folder,  # TorchServe writes logs/ into its working directory
            env={**os.environ, "TMPDIR": str(private_tmp), "TEMP": str(private_tmp)},
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the frontend and its workers
        )
        self._next_look = 0.0
        try:
            for model in models:
                wait_until(lambda m=model: self._ready(m), READY_TIMEOUT_S, f"{model} READY")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def _ready(self, model: str) -> bool:
        # wait_until looks every 10 ms: ask TorchServe (HTTP, its logs) twice a second only.
        if time.monotonic() < self._next_look:
            return False
        self._next_look = time.monotonic() + 0.5
        if self.process.poll() is not None:
            raise AssertionError(f"torchserve exited with {self.process.returncode}")
        model_log = self.folder / "logs" / "model_log.log"
        if model_log.is_file() and "Backend worker process died" in model_log.read_text():
            raise AssertionError("a TorchServe worker died loading its model")
        try:
            status, body = self.call(f"{self.management}/models/{model}", timeout=2)
        except OSError:
            return False
        workers = body[0].get("workers", []) if status == 200 and isinstance(body, list) else []
        return any(worker.get("status") == "READY" for worker in workers)

    def call(self, url: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body) of a GET, or a POST of `body` as JSON."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"null")

    def post(self, path: str, body: Any, timeout: float = 60) -> tuple[int, Any]:
        return self.call(f"{self.inference}/{path}", body, timeout)

    def log_tail(self, lines: int = 40) -> str:
        found = []
        for name in ("logs/ts_log.log", "logs/model_log.log"):
            path = self.folder / name
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()
                # Without the access log and metrics lines of the readiness polls.
                kept = [
                    line for line in text if "ACCESS_LOG" not in line and "TS_METRICS" not in line
                ]
                tail = kept[-lines:]
                found.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(found)

    def stop(self) -> None:
        """SIGTERM to our own process group (the launcher, java and the workers), then KILL."""
        group = self.process.pid
        for sig, patience in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            try:
                wait_until(lambda: not self._alive(), patience, "TorchServe's processes to end")
                break
            except AssertionError:
                continue
        self._stdout.close()

    def _alive(self) -> bool:
        self.process.poll()  # reap the launcher, else its zombie keeps the group alive
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True
