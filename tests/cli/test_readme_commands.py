"""The README's Quick start, as CI reaches it: `make run` starts the service and says where it
listens; the service answers; SIGTERM stops it cleanly.

`make test` builds .venv and var/model-repository before it runs the suite, so here `make run`
only starts the server. Run outside make, before the demo repository exists, the test is skipped.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sidelight.client import Client, to_array
from sidelight.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "var" / "model-repository" / ".built"
MAKE_RUN = ["make", "run", "PORT=0", "METRICS_PORT=0"]
LISTENING = re.compile(
    r"^sidelight listening on (?P<host>127\.0\.0\.1):(?P<port>\d+), "
    r"metrics on (?P<metrics>http://127\.0\.0\.1:(?P<metrics_port>\d+)/metrics); "
    r"models: (?P<models>.+)$"
)
# Only `sidelight serve` is left to do when the suite runs; starting it loads every model.
START_TIMEOUT_S = 180.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not BUILT.exists(),
        reason=f"{BUILT.relative_to(ROOT)} is missing: the demo repository is built by "
        "`make test` (or `make demo`) before the suite runs; this test runs under make",
    ),
]


def fresh_shell_environment() -> dict[str, str]:
    """The environment of a terminal: no make variables leaking in from `make test`."""
    leaked = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "MAKE_TERMOUT", "MAKE_TERMERR"}
    return {k: v for k, v in os.environ.items() if k not in leaked}


class Lines:
    """A pipe read line by line in a thread, so that waiting for a line has a bound."""

    def __init__(self, stream: object) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        while True:
            line = self._lines.get(timeout=timeout)
            if line is None:
                return None
            self.seen.append(line)
            if match := pattern.match(line):
                return match


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines, Path]]:
    dry = subprocess.run(
        ["make", "--dry-run", *MAKE_RUN[1:]],
        cwd=ROOT,
        env=fresh_shell_environment(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rebuild in ("-m venv", "pip install", "build-demo"):
        assert rebuild not in dry, f"`make run` would rebuild first; run `make test`:\n{dry}"
    assert "sidelight serve" in dry and "--port 0" in dry and "--metrics-port 0" in dry, dry

    log = tmp_path / "make-run.stderr"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            MAKE_RUN,
            cwd=ROOT,
            env=fresh_shell_environment(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # its own process group: make and the server under it
        )
    lines = Lines(process.stdout)
    try:
        yield process, lines, log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        lines.reader.join(30)  # the pipe is at its end once the process group is gone
        assert process.stdout is not None
        process.stdout.close()


def server_pid(make_pid: int) -> int:
    children = Path(f"/proc/{make_pid}/task/{make_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_make_run_serves_and_stops_cleanly_on_sigterm(
    make_run: tuple[subprocess.Popen[str], Lines, Path],
) -> None:
    process, stdout, log = make_run
    listening = stdout.wait_for(LISTENING, START_TIMEOUT_S)
    assert listening, "no listening line:\n" + "\n".join(stdout.seen) + "\n" + log.read_text()
    port, metrics_port = int(listening["port"]), int(listening["metrics_port"])
    assert port > 0 and metrics_port > 0 and port != metrics_port  # the ports bound, not 0
    models = listening["models"].split(", ")
    assert {"digits", "breast_cancer"} <= set(models)

    address = f"{listening['host']}:{port}"
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    with Client(address, timeout=120) as client:
        assert sorted(m.name for m in client.list_models().models) == sorted(models)
        reply = client.explain("digits", x, "integrated_gradients", params={"n_steps": 32})
    attributions = to_array(reply.attributions)
    assert attributions.shape == (2, 1, 8, 8) and np.isfinite(attributions).all()
    assert to_array(reply.outputs).sum(1) == pytest.approx([1.0, 1.0], abs=1e-5)

    with urllib.request.urlopen(listening["metrics"], timeout=30) as response:
        assert response.status == 200
        metrics = response.read().decode()
    assert f"sidelight_models_loaded {float(len(models))}" in metrics
    assert (
        'sidelight_rpc_duration_seconds_count{code="OK",method="integrated_gradients",'
        'model="digits",rpc="Explain"} 1.0'
    ) in metrics

    # Stop it as a terminal or a CI runner does: SIGTERM to the whole process group.
    server = server_pid(process.pid)
    os.killpg(process.pid, signal.SIGTERM)
    code = process.wait(timeout=ServerSettings.grace_period_s)
    errors = log.read_text()
    # make itself dies of the SIGTERM it received once its recipe has finished (GNU make
    # re-raises fatal signals), but it reports a recipe that failed or was killed with
    # "make: *** [...] Error N" / "Terminated": none here means `sidelight serve` exited 0.
    assert code in (0, -signal.SIGTERM), errors
    assert "make: ***" not in errors, errors
    assert "Traceback" not in errors, errors
    assert "stopping: health NOT_SERVING" in errors
    assert not Path(f"/proc/{server}").exists(), "the server outlived make"
