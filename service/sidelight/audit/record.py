"""One entry of the audit log, and the bytes its hash is computed over.

A record says what was decided and why, for a person who may ask months later: who called,
about whom (`subject_id`), which model file (by digest), which method with which parameters and
seed, a keyed digest of the input (the raw input is not kept unless encrypted under the
subject's key), the outputs, the classes explained, a top-k summary of the attributions, the
full attributions, the quality figures and the versions of the libraries that computed them.

The hash chain covers `canonical_content`: the record as canonical JSON (sorted keys, no
spaces, UTF-8) in which the two binary parts, the attributions and the encrypted input, appear
as their SHA-256. Erasing a subject destroys a key, never a byte the hash covers, so the chain
still verifies after crypto-shredding.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson


class RecordKind(enum.StrEnum):
    EXPLANATION = "explanation"  # a synchronous Explain or a job's result
    PREDICTION = "prediction"  # a Predict, when predictions are recorded too
    ERASURE = "erasure"  # a subject's key destroyed (details: subject_id, records affected)
    RETENTION = "retention"  # records before a cutoff removed (details: cutoff, first kept seq)
    # Faithfulness measured after the answer by the live sampler, for the explanation named
    # in details["explanation_id"] (a record is never changed: its figures come after it).
    QUALITY = "quality"


class FeatureWeight(NamedTuple):
    """One of an instance's main reasons: a feature (tabular) or a region (image) and its
    attribution, signed (positive: pushed towards the explained class). A named tuple, not a
    frozen dataclass: every record makes top_k of them per instance, at a third of the cost."""

    name: str
    value: float


@dataclass(frozen=True)
class AuditRecord:
    record_id: str  # the explanation_id returned to the caller (a fresh id for other kinds)
    kind: RecordKind
    time: float  # seconds since the epoch, UTC, when the record was made
    caller: str = ""  # the authenticated peer or the caller header
    request_id: str = ""
    subject_id: str = ""  # the person the decision is about, as the caller names them
    model: str = ""
    model_version: str = ""
    model_digest: str = ""  # SHA-256 of the model file
    method: str = ""  # "" for a prediction
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    baseline_digest: str = ""  # baseline or background the method compared against
    input_digest: str = ""  # HMAC-SHA256 under the server's key of dtype, shape and bytes
    input_dtype: str = ""
    input_shape: tuple[int, ...] = ()  # batch first
    labels: tuple[str, ...] = ()  # the model's class names (for the report), may be empty
    feature_names: tuple[str, ...] = ()  # tabular models' feature names, may be empty
    outputs: tuple[tuple[float, ...], ...] = ()  # per instance, probabilities or logits
    targets: tuple[int, ...] = ()  # the class explained (or predicted), per instance
    summary: tuple[tuple[FeatureWeight, ...], ...] = ()  # per instance, top-k by |value|
    attributions_shape: tuple[int, ...] = ()
    attributions: bytes = b""  # float32 little-endian, row-major
    quality: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # library -> version
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific facts
    encrypted_input: bytes = b""  # nonce + AES-GCM ciphertext under the subject's key

    def content(self) -> dict[str, Any]:
        """The record as JSON-ready data, binary parts replaced by their SHA-256."""
        return {
            "record_id": self.record_id,
            "kind": self.kind.value,
            "time": self.time,
            "caller": self.caller,
            "request_id": self.request_id,
            "subject_id": self.subject_id,
            "model": self.model,
            "model_version": self.model_version,
            "model_digest": self.model_digest,
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
            "baseline_digest": self.baseline_digest,
            "input_digest": self.input_digest,
            "input_dtype": self.input_dtype,
            "input_shape": list(self.input_shape),
            "labels": list(self.labels),
            "feature_names": list(self.feature_names),
            "outputs": [list(row) for row in self.outputs],
            "targets": list(self.targets),
            "summary": [
                [{"name": w.name, "value": w.value} for w in instance] for instance in self.summary
            ],
            "attributions_shape": list(self.attributions_shape),
            "attributions_sha256": _sha256(self.attributions),
            "quality": self.quality,
            "versions": self.versions,
            "details": self.details,
            "encrypted_input_sha256": _sha256(self.encrypted_input),
        }

    def canonical_content(self) -> bytes:
        return canonical_json(self.content())

    @classmethod
    def from_content(
        cls, content: dict[str, Any], attributions: bytes, encrypted_input: bytes
    ) -> AuditRecord:
        """The inverse of `content`, given the binary parts as stored beside it."""
        return cls(
            record_id=content["record_id"],
            kind=RecordKind(content["kind"]),
            time=content["time"],
            caller=content["caller"],
            request_id=content["request_id"],
            subject_id=content["subject_id"],
            model=content["model"],
            model_version=content["model_version"],
            model_digest=content["model_digest"],
            method=content["method"],
            params=content["params"],
            seed=content["seed"],
            baseline_digest=content["baseline_digest"],
            input_digest=content["input_digest"],
            input_dtype=content["input_dtype"],
            input_shape=tuple(content["input_shape"]),
            labels=tuple(content["labels"]),
            feature_names=tuple(content["feature_names"]),
            outputs=tuple(tuple(row) for row in content["outputs"]),
            targets=tuple(content["targets"]),
            summary=tuple(
                tuple(FeatureWeight(w["name"], w["value"]) for w in instance)
                for instance in content["summary"]
            ),
            attributions_shape=tuple(content["attributions_shape"]),
            attributions=attributions,
            quality=content["quality"],
            versions=content["versions"],
            details=content["details"],
            encrypted_input=encrypted_input,
        )


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (orjson: a tenth of the standard encoder's time, which
    was a measurable share of every audited request). JSON has no NaN or Inf: a non-finite
    float is written as null, so a model's NaN output reads back as None. The hash covers
    these bytes as stored, never a re-encoding, so the encoder only has to be deterministic."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def finite_or_none(value: float) -> float | None:
    """Quality figures may be Inf (a relative error over a zero gap): stored as null."""
    return value if math.isfinite(value) else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
