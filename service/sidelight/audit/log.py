"""The audit log as the server and the workers use it: one object that turns what was served
into a record and makes it durable before the answer leaves.

Strict mode (the default): an explanation whose record cannot be committed is not returned;
the caller gets UNAVAILABLE and may retry (the explanation is computed again). Best-effort mode
returns it anyway and counts the loss (`sidelight_audit_records_total{outcome="lost"}`): for
deployments that prefer serving to recording. Records are grouped into transactions by the
writer (`sidelight.audit.writer`), so under load a commit serves many requests.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidelight.audit import keyfiles
from sidelight.audit.record import AuditRecord, FeatureWeight, RecordKind
from sidelight.audit.recording import (
    explanation_record,
    finite,
    library_versions,
    prediction_record,
)
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore, VerificationRun
from sidelight.audit.subjects import SubjectKeys
from sidelight.audit.writer import AuditWriter
from sidelight.errors import AuditUnavailable, Overloaded, Unavailable
from sidelight.explanations import Explanation, new_explanation_id
from sidelight.models.model import Model
from sidelight.quality.sampler import SampledScores
from sidelight.settings import AuditSettings
from sidelight.tensors import RawTensor

log = logging.getLogger(__name__)

INPUT_KEY_FILE = "input-hmac.key"
VERIFICATION_CACHE_S = 30.0  # VerificationCollector: how long a store read serves scrapes
WRITE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.records = Counter(
            "sidelight_audit_records_total",
            "Audit records by kind and outcome (written; lost: not written, answer served "
            "in best-effort mode; refused: not written, answer withheld in strict mode).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.write_seconds = Histogram(
            "sidelight_audit_write_seconds",
            "From handing a record to the writer to its commit (group commit included).",
            buckets=WRITE_BUCKETS,
            registry=registry,
        )


class VerificationCollector(Collector):
    """The newest `sidelight audit verify --sign` run (`sidelight.audit.attest`), read from the
    store at scrape time: one row by its primary key, at most once per `cache_s` (a store that
    does not answer costs one connect timeout per period, not one per scrape). Every replica
    reports the same shared figures: take max() across them, not sum(). Nothing is exported
    before the first run, nor while the store cannot be read."""

    def __init__(
        self,
        last_run: Callable[[], VerificationRun | None],
        *,
        cache_s: float = VERIFICATION_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._last_run = last_run
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()  # scrapes may come in together
        self._read_at: float | None = None
        self._run: VerificationRun | None = None

    def describe(self) -> Iterator[Metric]:
        # Named here so that registering reads nothing from the store.
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._read())

    def _read(self) -> VerificationRun | None:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._cache_s:
                try:
                    self._run = self._last_run()
                except Unavailable as exc:
                    log.warning("audit verification metrics not read: %s", exc)
                    self._run = None
                self._read_at = now
            return self._run

    @staticmethod
    def _families(run: VerificationRun | None) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            "sidelight_audit_last_verification_success",
            "1 when the last `sidelight audit verify --sign` found the audit log intact, 0 "
            "when it did not (absent before the first run).",
        )
        when = GaugeMetricFamily(
            "sidelight_audit_last_verification_timestamp_seconds",
            "When the last `sidelight audit verify --sign` ended, whatever its outcome.",
        )
        seq = GaugeMetricFamily(
            "sidelight_audit_last_verified_seq",
            "The last record seq that the last `sidelight audit verify --sign` checked.",
        )
        if run is not None:
            success.add_metric([], 1 if run.ok else 0)
            when.add_metric([], run.time)
            if run.last_seq is not None:
                seq.add_metric([], run.last_seq)
        yield from (success, when, seq)


class AuditLog:
    def __init__(
        self,
        settings: AuditSettings,
        store: AuditStore,
        signer: Signer,
        subjects: SubjectKeys,
        input_key: bytes,
        metrics: AuditMetrics,
        *,
        writing: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.signer = signer
        self.subjects = subjects
        self._input_key = input_key
        self._metrics = metrics
        # The writer signs checkpoints as it goes (and when closed): only a server or a
        # worker has one. The audit commands read, or make their own signed changes.
        self.writer = (
            AuditWriter(
                store,
                signer,
                checkpoint_every=settings.checkpoint_every,
                checkpoint_interval_s=settings.checkpoint_interval_s,
            )
            if writing
            else None
        )

    @classmethod
    def open(
        cls,
        settings: AuditSettings,
        registry: CollectorRegistry | None = None,
        *,
        writing: bool = True,
    ) -> AuditLog | None:
        """The log the settings describe (None when off): the store opened (tables created),
        the keys read from the data directory (created there on first use)."""
        if not settings.enabled:
            return None
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # keys, records
        store = AuditStore.open(settings.store_url)
        key = keyfiles.read_or_create(
            settings.data_dir / INPUT_KEY_FILE, lambda: base64.b64encode(os.urandom(32)) + b"\n"
        )
        return cls(
            settings,
            store,
            Signer.in_data_dir(settings.data_dir),
            SubjectKeys.open(store, settings.data_dir),
            base64.b64decode(key.strip(), validate=True),
            AuditMetrics(registry),
            writing=writing,
        )

    @property
    def input_key(self) -> bytes:
        return self._input_key

    def explanation(
        self,
        explanation: Explanation,
        model: Model,
        inputs: RawTensor,
        params: Mapping[str, Any],
        *,
        caller: str,
        subject_id: str,
        reasons: tuple[tuple[FeatureWeight, ...], ...] | None = None,
    ) -> AuditRecord:
        """The record of `explanation`; `reasons`, its top-k summary when already computed
        with its batch (computed here otherwise)."""
        encrypted = self._encrypted(subject_id, inputs, explanation.explanation_id)
        return explanation_record(
            explanation,
            model,
            inputs,
            params,
            key=self._input_key,
            caller=caller,
            subject_id=subject_id,
            encrypted_input=encrypted,
            top_k=self.settings.top_k,
            reasons=reasons,
        )

    def prediction(
        self,
        model: Model,
        inputs: RawTensor,
        outputs: npt.NDArray[np.float32],
        predicted: npt.NDArray[np.int64],
        *,
        request_id: str,
        caller: str,
        subject_id: str,
    ) -> AuditRecord:
        record_id = new_explanation_id()
        return prediction_record(
            record_id,
            model,
            inputs,
            outputs,
            predicted,
            request_id=request_id,
            key=self._input_key,
            caller=caller,
            subject_id=subject_id,
            encrypted_input=self._encrypted(subject_id, inputs, record_id),
        )

    async def write(self, record: AuditRecord) -> None:
        """Durable before it returns; in strict mode AuditUnavailable when it cannot be."""
        assert self.writer is not None, "opened for reading"
        started = time.perf_counter()
        try:
            await self.writer.write(record)
        except (Unavailable, Overloaded) as exc:
            self._lost(record, exc)
            return
        self._written(record, started)

    def write_blocking(self, record: AuditRecord) -> None:
        """`write` for a worker thread."""
        assert self.writer is not None, "opened for reading"
        started = time.perf_counter()
        try:
            self.writer.submit(record).result()
        except (Unavailable, Overloaded) as exc:
            self._lost(record, exc)
            return
        self._written(record, started)

    def quality(self, scores: SampledScores) -> None:
        """Append the sampler's figures for an explanation already recorded; from the
        sampler's thread, without waiting for the commit (a loss is logged and counted)."""
        if self.writer is None:
            return
        model = scores.model
        record = AuditRecord(
            record_id=new_explanation_id(),
            kind=RecordKind.QUALITY,
            time=time.time(),
            model=model.name,
            model_version=model.version,
            model_digest=model.file_digest,
            method=scores.method,
            details={
                "explanation_id": scores.explanation_id,
                "reference": scores.reference,
                "steps": scores.steps,
                "faithfulness": {k: finite(v) for k, v in scores.areas.items()},
            },
            versions=library_versions(),
        )
        try:
            future = self.writer.submit(record)
        except (Unavailable, Overloaded) as exc:
            self._metrics.records.labels(record.kind.value, "lost").inc()
            log.warning("quality record for %s not written: %s", scores.explanation_id, exc)
            return

        def written(done: Future[int]) -> None:
            outcome = "lost" if done.exception() is not None else "written"
            self._metrics.records.labels(record.kind.value, outcome).inc()

        future.add_done_callback(written)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.store.close()

    def _encrypted(self, subject_id: str, inputs: RawTensor, record_id: str) -> bytes:
        if not (self.settings.store_inputs and subject_id):
            return b""
        return self.subjects.encrypt_input(subject_id, bytes(inputs.data), record_id)

    def _written(self, record: AuditRecord, started: float) -> None:
        self._metrics.write_seconds.observe(time.perf_counter() - started)
        self._metrics.records.labels(record.kind.value, "written").inc()

    def _lost(self, record: AuditRecord, exc: Exception) -> None:
        if self.settings.mode == "strict":
            self._metrics.records.labels(record.kind.value, "refused").inc()
            why = exc.public if isinstance(exc, Unavailable) else "see the server's log"
            raise AuditUnavailable(
                f"the audit log cannot record this {record.kind.value} ({exc}); "
                "it is not returned unrecorded: retry later",
                public=f"the audit log cannot record this {record.kind.value} ({why}); "
                "it is not returned unrecorded: retry later",
            ) from exc
        self._metrics.records.labels(record.kind.value, "lost").inc()
        log.error("audit record %s not written (best-effort mode): %s", record.record_id, exc)
