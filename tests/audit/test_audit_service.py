"""The audit log in the running service: every explanation (synchronous and job) recorded
before it is returned, read back over gRPC and checked by independent computations (the model
file's SHA-256, the input's HMAC, the hash link); strict and best-effort modes with the store
down; replay; crypto-shredding; the report; several server processes writing into one
PostgreSQL. Real servers on free ports, a real PostgreSQL started by the test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerThread, server_settings, wait_until, watch_job
from prometheus_client.parser import text_string_to_metric_families
from sidelight.audit.log import INPUT_KEY_FILE
from sidelight.audit.record import RecordKind
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore
from sidelight.audit.verify import verify
from sidelight.cli import main
from sidelight.client import explain_request, to_array
from sidelight.settings import AuditSettings, JobSettings
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from sklearn.datasets import load_breast_cancer, load_digits

from .support import PostgresServer, create_database, top_regions

pytestmark = pytest.mark.slow


def digits(count: int, start: int = 1500) -> np.ndarray:
    return (load_digits().images[start : start + count] / 16.0).astype(np.float32)[:, None]


def cancer(count: int) -> np.ndarray:
    return load_breast_cancer().data[400 : 400 + count].astype(np.float32)


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def audited(model_repository: Path, tmp_path: Path) -> Iterator[ServerThread]:
    settings = replace(
        server_settings(model_repository),
        audit=AuditSettings(data_dir=tmp_path / "audit", store_inputs=True),
        jobs=JobSettings(embedded_workers=1),
    )
    running = ServerThread(settings)
    yield running
    running.stop()


def stub_of(channel: grpc.Channel) -> pb_grpc.ExplainerStub:
    return pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]


def test_an_explanation_is_recorded_and_its_record_checks_out_independently(
    audited: ServerThread, model_repository: Path, tmp_path: Path
) -> None:
    images = digits(3)
    request = explain_request("digits", images, "grad_cam", request_id="case-7")
    request.subject_id = "person-42"
    with audited.channel() as channel:
        stub = stub_of(channel)
        reply = stub.Explain(request, metadata=(("sidelight-caller", "loan-app"),), timeout=60)
        stored = stub.GetAuditRecord(
            pb.GetAuditRecordRequest(record_id=reply.explanation_id), timeout=30
        )
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetAuditRecord(pb.GetAuditRecordRequest(record_id="0" * 32), timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "record_id" in (missing.value.details() or "")
    content = json.loads(stored.content_json)
    # The link, recomputed with hashlib from what the RPC returned.
    assert hashlib.sha256(stored.prev_hash + stored.content_json.encode()).digest() == stored.hash
    assert content["record_id"] == reply.explanation_id and stored.seq >= 1
    assert content["kind"] == "explanation" and content["method"] == "grad_cam"
    assert content["caller"] == "header:loan-app" and content["subject_id"] == "person-42"
    assert content["request_id"] == "case-7"
    model_file = model_repository / "digits" / "1" / "model.pt2"
    assert content["model_digest"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    key = base64.b64decode((tmp_path / "audit" / INPUT_KEY_FILE).read_bytes().strip())
    mac = hmac.new(key, b"FP32:3,1,8,8:" + images.tobytes(), hashlib.sha256)
    assert content["input_digest"] == mac.hexdigest()
    np.testing.assert_array_equal(to_array(stored.attributions), to_array(reply.attributions))
    assert content["targets"] == list(reply.targets)
    np.testing.assert_allclose(content["outputs"], to_array(reply.outputs), rtol=1e-6)
    assert_summary_of(content, to_array(reply.attributions))
    assert {"torch", "captum", "python"} <= set(content["versions"])
    assert stored.has_encrypted_input  # store_inputs, and the request named its subject
    # The raw input is nowhere in the record.
    assert images.tobytes()[:64].hex() not in stored.content_json


def assert_summary_of(content: dict[str, object], attributions: np.ndarray) -> None:
    """The record's top-8 regions are those of the returned maps, summed cell by cell."""
    summary = content["summary"]
    assert isinstance(summary, list) and len(summary) == len(attributions)
    for instance, cells in zip(summary, top_regions(attributions, 8), strict=True):
        assert [w["name"].split(" (")[0] for w in instance] == [span for span, _ in cells]
        assert [w["value"] for w in instance] == pytest.approx([v for _, v in cells], 1e-6)


@pytest.fixture
def gathering(model_repository: Path) -> Iterator[ServerThread]:
    """An audited server whose batches wait long for company (200 ms)."""
    running = ServerThread(server_settings(model_repository, max_wait_ms=200.0))
    yield running
    running.stop()


@pytest.mark.parametrize("method", ["saliency", "grad_cam"])
def test_requests_batched_together_each_get_the_summary_of_their_own_maps(
    gathering: ServerThread, method: str
) -> None:
    """The reasons are computed once per batch (on the executor's thread) and split back:
    concurrent requests share batches, and each record must still summarise its own maps."""
    images = digits(12, start=100)
    with gathering.channel() as channel:
        stub = stub_of(channel)

        def explain_and_read(i: int) -> tuple[np.ndarray, dict[str, object]]:
            reply = stub.Explain(explain_request("digits", images[i : i + 1], method), timeout=60)
            stored = stub.GetAuditRecord(
                pb.GetAuditRecordRequest(record_id=reply.explanation_id), timeout=30
            )
            return to_array(reply.attributions), json.loads(stored.content_json)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(explain_and_read, range(12)))
    maps = [attributions for attributions, _ in answers]
    assert len({m.tobytes() for m in maps}) == 12  # twelve different images, twelve maps
    for attributions, content in answers:
        assert_summary_of(content, attributions)
    batches = gathering.service.metrics.registry.get_sample_value(
        "sidelight_batch_size_instances_count",
        {"model": "digits", "task": method, "device": "cpu"},
    )
    assert batches is not None and batches < 12  # some requests did share a batch


def test_the_cli_verifies_shows_reports_and_replays_a_served_explanation(
    audited: ServerThread,
    tmp_path: Path,
    model_repository: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = cancer(2)
    with audited.channel() as channel:
        stub = stub_of(channel)
        request = explain_request("breast_cancer", rows, "integrated_gradients")
        reply = stub.Explain(request, timeout=60)
    audit = ["--audit-dir", tmp_path / "audit"]
    code, out, err = cli(capsys, "audit", "verify", *audit)
    assert code == 0 and "OK: the log verifies" in out, out + err
    # Elsewhere, with a copy of the store and the exported public key only.
    key = tmp_path / "audit.pub.pem"
    assert cli(capsys, "audit", "export-key", *audit, "--out", key)[0] == 0
    elsewhere = tmp_path / "regulator"
    copy = f"sqlite:///{tmp_path / 'audit' / 'audit.db'}"
    code, out, err = cli(
        capsys, "audit", "verify", "--audit-dir", elsewhere, "--audit-url", copy,
        "--public-key", key,
    )  # fmt: skip
    assert code == 0 and "OK: the log verifies" in out, out + err
    assert not elsewhere.exists()  # no keys made there
    code, out, _ = cli(capsys, "audit", "show", reply.explanation_id, *audit)
    shown = json.loads(out)
    assert code == 0 and shown["record"]["model"] == "breast_cancer"
    report = tmp_path / "report.html"
    code, out, _ = cli(capsys, "audit", "report", reply.explanation_id, *audit, "--out", report)
    page = report.read_text()
    assert code == 0 and "breast_cancer" in page and "Integrated" in page
    assert "its hash matches its content" in page
    np.save(tmp_path / "rows.npy", rows)
    repository = ["--model-repository", model_repository]
    code, out, err = cli(
        capsys, "audit", "replay", reply.explanation_id, *audit, *repository,
        "--input", tmp_path / "rows.npy",
    )  # fmt: skip
    assert code == 0 and "model digest matches; input digest matches" in out, out + err
    np.save(tmp_path / "other.npy", rows * 1.01)
    code, out, _ = cli(
        capsys, "audit", "replay", reply.explanation_id, *audit, *repository,
        "--input", tmp_path / "other.npy",
    )  # fmt: skip
    assert code == 1 and "input given is not the one recorded" in out


def test_a_signed_verification_shows_on_the_servers_metrics_port(
    audited: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`verify --sign` beside the running server (one SQLite store), then the server's own
    /metrics: the outcome read from the store at scrape time."""
    with audited.channel() as channel:
        stub_of(channel).Explain(explain_request("digits", digits(2), "saliency"), timeout=60)
    code, out, err = cli(capsys, "audit", "verify", "--sign", "--audit-dir", tmp_path / "audit")
    assert code == 0 and "signed a checkpoint of seq" in out, out + err
    port = audited.service.endpoints.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    [success] = families["sidelight_audit_last_verification_success"].samples
    [seq] = families["sidelight_audit_last_verified_seq"].samples
    [when] = families["sidelight_audit_last_verification_timestamp_seconds"].samples
    assert success.value == 1.0 and seq.value >= 1
    assert abs(when.value - time.time()) < 120


def test_a_job_is_recorded_under_its_id_and_replays_bit_for_bit_then_shredding_keeps_the_log(
    audited: ServerThread,
    tmp_path: Path,
    model_repository: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    request = explain_request(
        "breast_cancer", cancer(2), "kernel_shap", params={"n_samples": 128, "seed": 3}
    )
    request.subject_id = "person-9"
    with audited.channel() as channel:
        stub = stub_of(channel)
        job = watch_job(stub, stub.SubmitJob(request, timeout=30).job_id)
        assert job.state == pb.JobState.SUCCEEDED, job.error
        assert job.result.explanation_id == job.job_id
        stored = stub.GetAuditRecord(pb.GetAuditRecordRequest(record_id=job.job_id), timeout=30)
    np.testing.assert_array_equal(to_array(stored.attributions), to_array(job.result.attributions))
    audit = ["--audit-dir", tmp_path / "audit"]
    repository = ["--model-repository", model_repository]
    # No --input: the stored input, decrypted under the subject's key.
    code, out, err = cli(capsys, "audit", "replay", job.job_id, *audit, *repository)
    assert code == 0 and "matches bit for bit" in out, out + err

    code, out, _ = cli(capsys, "audit", "erase", "person-9", *audit)
    assert code == 0 and "key destroyed, 1 stored inputs now unreadable" in out
    code, out, err = cli(capsys, "audit", "replay", job.job_id, *audit, *repository)
    assert code == 1 and "person-9" in err  # the input cannot be read any more
    code, out, _ = cli(capsys, "audit", "verify", *audit)
    assert code == 0 and "OK" in out  # and the log still verifies, erasure recorded in it
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit' / 'audit.db'}")
    try:
        kinds = [s.record.kind for s in store.records()]
    finally:
        store.close()
    assert kinds[-1] is RecordKind.ERASURE


@pytest.mark.parametrize("mode", ["strict", "best_effort"])
def test_with_the_store_down_strict_refuses_and_best_effort_serves(
    model_repository: Path, private_postgres: PostgresServer, tmp_path: Path, mode: str
) -> None:
    url = create_database(private_postgres.admin_url)
    settings = replace(
        server_settings(model_repository),
        audit=AuditSettings(mode=mode, data_dir=tmp_path / "audit", url=url),
    )
    server = ServerThread(settings)
    try:
        with server.channel() as channel:
            stub = stub_of(channel)
            request = explain_request("digits", digits(1), "saliency")
            stub.Explain(request, timeout=60)
            private_postgres.stop()
            if mode == "strict":
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Explain(request, timeout=60)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "audit" in (refused.value.details() or "")
            else:
                assert len(stub.Explain(request, timeout=60).targets) == 1
            # The server stays up: it answers what needs no record, and records again once
            # the store is back.
            assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models
            private_postgres.start()
            again = stub.Explain(request, timeout=60)
            stub.GetAuditRecord(
                pb.GetAuditRecordRequest(record_id=again.explanation_id), timeout=30
            )
        registry = server.service.metrics.registry
        outcome = "refused" if mode == "strict" else "lost"
        assert (
            registry.get_sample_value(
                "sidelight_audit_records_total", {"kind": "explanation", "outcome": outcome}
            )
            == 1
        )
        assert (
            registry.get_sample_value(
                "sidelight_audit_records_total", {"kind": "explanation", "outcome": "written"}
            )
            == 2
        )
    finally:
        server.stop()


def test_several_server_processes_write_one_chain_into_postgresql(
    model_repository: Path, postgres_admin_url: str, tmp_path: Path
) -> None:
    url = create_database(postgres_admin_url)
    servers = []
    try:
        for index in range(2):
            log = tmp_path / f"server-{index}.log"
            command = [
                sys.executable, "-m", "sidelight.cli", "serve",
                "--model-repository", str(model_repository), "--port", "0",
                "--metrics-port", "-1", "--audit-dir", str(tmp_path / "audit"),
                "--audit-url", url,
            ]  # fmt: skip
            with log.open("w") as out:
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            servers.append((process, log))
        addresses = [wait_listening(process, log) for process, log in servers]

        def send(index: int) -> str:
            with grpc.insecure_channel(addresses[index % 2]) as channel:
                request = explain_request("digits", digits(2, 1500 + index), "saliency")
                return str(stub_of(channel).Explain(request, timeout=120).explanation_id)

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(send, range(40)))
    finally:
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            process.wait(60)
    store = AuditStore.open(url)
    try:
        report = verify(store, Signer.in_data_dir(tmp_path / "audit").public_key)
        # (The servers sample 1% for faithfulness: a `quality` record may follow an answer.)
        recorded = [
            s.record.record_id for s in store.records() if s.record.kind is RecordKind.EXPLANATION
        ]
    finally:
        store.close()
    assert report.ok, report.problems
    assert sorted(recorded) == sorted(ids)  # every answer recorded, exactly once
    assert report.checkpoints_checked >= 2  # each server signed its last head as it stopped


def wait_listening(process: subprocess.Popen[bytes], log: Path) -> str:
    def address() -> str:
        for line in log.read_text().splitlines():
            if line.startswith("sidelight listening on "):
                return line.split()[3].rstrip(",;")
        assert process.poll() is None, log.read_text()
        return ""

    return wait_until(address, 120, f"the server to listen ({log})")


def test_the_live_samplers_figures_follow_the_explanations_record(
    model_repository: Path, tmp_path: Path
) -> None:
    """A record is never changed: the faithfulness the sampler measures after the answer is
    appended as a `quality` record naming the explanation."""
    settings = replace(
        server_settings(model_repository),
        faithfulness_sample=1.0,
        audit=AuditSettings(data_dir=tmp_path / "audit"),
    )
    server = ServerThread(settings)
    try:
        with server.channel() as channel:
            reply = stub_of(channel).Explain(
                explain_request("digits", digits(2), "grad_cam"), timeout=60
            )
        assert server.service.sampler is not None
        server.service.sampler.join()
    finally:
        server.stop()  # the writer commits what is pending before it stops
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit' / 'audit.db'}")
    try:
        records = [s.record for s in store.records()]
        report = verify(store, Signer.in_data_dir(tmp_path / "audit").public_key)
    finally:
        store.close()
    assert report.ok, report.problems
    assert [r.kind for r in records] == [RecordKind.EXPLANATION, RecordKind.QUALITY]
    quality = records[1].details
    assert quality["explanation_id"] == reply.explanation_id == records[0].record_id
    assert len(quality["faithfulness"]["deletion_auc"]) == 2
    assert len(quality["faithfulness"]["random_insertion_auc"]) == 2
