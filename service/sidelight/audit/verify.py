"""Checking the audit log, and saying what was done to it.

`verify(store, public_key, checkpoints)` reads one snapshot of the store, a page at a time (its
memory does not grow with the log), and reports every problem by kind, seq and record:

    modified            a record's content, a stored blob (attributions, encrypted input) or
                        a column no longer matches what its hash covers; or its hash was
                        recomputed, which the next record's link, the head or a signed
                        checkpoint contradicts
    deleted             records missing inside the chain (a gap), or at its start with no
                        signed anchor for where it now starts
    reordered           a record links to one stored at another position
    inserted            a record whose link does not belong to the chain: it links to nothing
                        stored while the chain runs on around it, forks off a record the
                        chain continues from, or lies beyond the head
    truncated           records cut off the end: a signed checkpoint (or the head) names a seq
                        beyond the last stored record
    renumbered          seqs changed while the links are intact
    bad_signature       a checkpoint that claims the trusted key but was changed after signing
    wrong_key           a checkpoint signed by another key
    forked              two checkpoints signed by the trusted key disagree about one seq
    unsigned_retention  a RETENTION record whose first kept seq no signed anchor attests

Only checkpoints signed by the trusted public key are believed; they come from the store and,
better, from an exported file kept elsewhere (`sidelight.audit.checkpoint`). The stored chain
must start at an anchor such a checkpoint names (or at seq 1 after GENESIS).

Each record is checked on its own (its hash, its blobs, its columns), then its link to the one
before it. Where a link breaks, the store is asked which stored record has the hash it links
to, and which records link to the hashes around the break (both indexed); that tells a moved
record from an inserted or a missing one, so the report names the tampering, not only where
it shows.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sidelight.audit.chain import GENESIS_ANCHOR, Anchor, Head, link_content
from sidelight.audit.checkpoint import Checkpoint, SignedCheckpoint
from sidelight.audit.record import RecordKind
from sidelight.audit.signing import SignatureCheck, key_id, verify_checkpoint
from sidelight.audit.store import PAGE_SIZE, AuditReader, AuditStore, RawRecord


class ProblemKind(enum.StrEnum):
    MODIFIED = "modified"
    DELETED = "deleted"
    REORDERED = "reordered"
    INSERTED = "inserted"
    TRUNCATED = "truncated"
    RENUMBERED = "renumbered"
    BAD_SIGNATURE = "bad_signature"
    WRONG_KEY = "wrong_key"
    FORKED = "forked"
    UNSIGNED_RETENTION = "unsigned_retention"


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    seq: int | None  # where it shows: the record's, or the first missing one's
    record_id: str  # "" when no stored record is at fault (missing records, checkpoints)
    message: str


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    problems: tuple[Problem, ...]
    more_problems: int  # found beyond max_problems, not listed
    records_checked: int
    first_seq: int | None
    last_seq: int | None
    checkpoints_checked: int
    last_checkpoint: Checkpoint | None  # the latest signed head the chain matched
    # The last record walked to (seq and hash) and where the walked chain starts (its first
    # record's seq and the hash it links to); None when no record is stored. When `ok`, what
    # `verify --sign` signs (`sidelight.audit.attest`).
    tip: Head | None = None
    start: Anchor | None = None


def verify(
    store: AuditStore,
    public_key: Ed25519PublicKey,
    checkpoints: Iterable[SignedCheckpoint] = (),
    *,
    page_size: int = PAGE_SIZE,
    max_problems: int = 1000,
) -> VerifyReport:
    """Check the whole stored chain against `public_key`, the store's checkpoints and the
    extra `checkpoints` given (e.g. `load_checkpoints(exported_file)`). Where two signed
    checkpoints disagree about a seq (forked), the chain is compared with the one given last:
    the exported ones, kept out of the store's reach."""
    with store.reader() as reader:
        verification = _Verification(reader, public_key, max_problems)
        return verification.run(checkpoints, page_size)


@dataclass(frozen=True)
class _Link:
    """What the next record's check needs of the one before it (not its blobs)."""

    seq: int
    hash: bytes
    record_id: str


class _Verification:
    def __init__(self, reader: AuditReader, public_key: Ed25519PublicKey, cap: int) -> None:
        self._reader = reader
        self._public_key = public_key
        self._cap = cap
        self._problems: dict[tuple[ProblemKind, int | None], Problem] = {}
        self._more = 0
        self._signed: dict[int, Checkpoint] = {}  # seq -> checkpoint signed by the trusted key
        self._anchors: dict[int, set[bytes]] = {GENESIS_ANCHOR.seq: {GENESIS_ANCHOR.prev_hash}}
        self._inserted: set[int] = set()  # seqs already reported inserted
        self._checkpoints_checked = 0
        self._last_checkpoint: Checkpoint | None = None
        self._head = Head(0, b"")

    def run(self, extra: Iterable[SignedCheckpoint], page_size: int) -> VerifyReport:
        self._believe(chain(self._reader.checkpoints(), extra))
        self._head = self._reader.head()
        first: _Link | None = None
        start: Anchor | None = None
        previous: _Link | None = None
        checked = 0
        for raw in self._reader.raw_records(page_size=page_size):
            checked += 1
            start = start or Anchor(raw.seq, raw.prev_hash)
            self._check_record(raw)
            if previous is None:
                self._check_start(raw)
            elif not self._linked(previous, raw):
                self._check_break(previous, raw)
            self._check_checkpoint(raw)
            if raw.kind == RecordKind.RETENTION:
                self._check_retention(raw)
            previous = _Link(raw.seq, raw.hash, raw.record_id)
            first = first or previous
        self._check_end(previous)
        return VerifyReport(
            ok=not self._problems,
            problems=tuple(self._problems.values()),
            more_problems=self._more,
            records_checked=checked,
            first_seq=first.seq if first else None,
            last_seq=previous.seq if previous else None,
            checkpoints_checked=self._checkpoints_checked,
            last_checkpoint=self._last_checkpoint,
            tip=Head(previous.seq, previous.hash) if previous else None,
            start=start,
        )

    # -- checkpoints ---------------------------------------------------------------------

    def _believe(self, checkpoints: Iterable[SignedCheckpoint]) -> None:
        """Keep the checkpoints the trusted key signed; report the others."""
        trusted = key_id(self._public_key)[:16]
        for signed in checkpoints:
            self._checkpoints_checked += 1
            checkpoint = signed.checkpoint
            verdict = verify_checkpoint(signed, self._public_key)
            if verdict is SignatureCheck.WRONG_KEY:
                self._report(
                    ProblemKind.WRONG_KEY,
                    checkpoint.seq,
                    "",
                    f"the checkpoint at seq {checkpoint.seq} is signed by key "
                    f"{signed.key_id[:16]}…, not by the trusted key {trusted}…",
                )
                continue
            if verdict is SignatureCheck.BAD_SIGNATURE:
                self._report(
                    ProblemKind.BAD_SIGNATURE,
                    checkpoint.seq,
                    "",
                    f"the checkpoint at seq {checkpoint.seq} does not match its signature: "
                    "it was changed after it was signed",
                )
                continue
            known = self._signed.get(checkpoint.seq)
            if known is not None and known.hash != checkpoint.hash:
                self._report(
                    ProblemKind.FORKED,
                    checkpoint.seq,
                    "",
                    f"two checkpoints signed by the trusted key disagree about seq "
                    f"{checkpoint.seq}: the key signed two histories",
                )
            self._signed[checkpoint.seq] = checkpoint
            self._anchors.setdefault(checkpoint.anchor.seq, set()).add(checkpoint.anchor.prev_hash)

    def _check_checkpoint(self, raw: RawRecord) -> None:
        signed = self._signed.get(raw.seq)
        if signed is None:
            return
        if signed.hash == raw.hash:
            if self._last_checkpoint is None or signed.seq > self._last_checkpoint.seq:
                self._last_checkpoint = signed
            return
        moved = [seq for seq in self._reader.seqs_with_hash(signed.hash) if seq != raw.seq]
        if not moved:
            self._report(
                ProblemKind.MODIFIED,
                raw.seq,
                raw.record_id,
                f"its hash differs from the one signed for seq {raw.seq}: this record or one "
                "before it was changed and the hashes recomputed from there",
            )
        elif not self._problems:  # otherwise explained by records inserted or removed before
            self._report(
                ProblemKind.RENUMBERED,
                raw.seq,
                raw.record_id,
                f"the record signed at seq {raw.seq} is stored at seq {moved[0]}",
            )

    def _check_retention(self, raw: RawRecord) -> None:
        try:
            first_kept = int(json.loads(raw.content)["details"]["first_kept_seq"])
        except (ValueError, KeyError, TypeError):
            return  # reported as modified: its content no longer hashes or parses
        if first_kept not in self._anchors:
            self._report(
                ProblemKind.UNSIGNED_RETENTION,
                raw.seq,
                raw.record_id,
                f"it says records before seq {first_kept} were removed, but no checkpoint "
                "signed by the trusted key anchors the chain there",
            )

    # -- records and links -------------------------------------------------------------------

    def _check_record(self, raw: RawRecord) -> None:
        if link_content(raw.prev_hash, raw.content.encode()) != raw.hash:
            self._report(
                ProblemKind.MODIFIED,
                raw.seq,
                raw.record_id,
                "its content does not hash to its stored hash",
            )
        try:
            content = json.loads(raw.content)
        except ValueError:
            content = None
        if not isinstance(content, dict):
            self._report(
                ProblemKind.MODIFIED, raw.seq, raw.record_id, "its content is not a JSON object"
            )
            return
        differing = [name for name, key, stored in _columns(raw) if content.get(key) != stored]
        if differing:
            self._report(
                ProblemKind.MODIFIED,
                raw.seq,
                raw.record_id,
                f"its stored {', '.join(differing)} differ from what its hashed content says",
            )

    def _linked(self, previous: _Link, raw: RawRecord) -> bool:
        consecutive = raw.seq == previous.seq + 1 and raw.prev_hash == previous.hash
        return consecutive or raw.prev_hash in self._anchors.get(raw.seq, ())

    def _check_start(self, raw: RawRecord) -> None:
        if raw.prev_hash in self._anchors.get(raw.seq, ()):
            return
        later = [seq for seq in self._reader.seqs_with_hash(raw.prev_hash) if seq > raw.seq]
        start = max((seq for seq in self._anchors if seq <= raw.seq), default=None)
        if later:
            self._reordered(raw, later[0])
        elif any(raw.prev_hash in hashes for hashes in self._anchors.values()):
            self._report(
                ProblemKind.RENUMBERED,
                raw.seq,
                raw.record_id,
                f"the chain's first record is stored at seq {raw.seq}, not where its anchor is",
            )
        elif start is None:
            self._inserted.add(raw.seq)
            self._report(
                ProblemKind.INSERTED,
                raw.seq,
                raw.record_id,
                f"it is stored before seq {min(self._anchors)}, where the chain starts",
            )
        else:
            self._report(
                ProblemKind.DELETED,
                start,
                "",
                f"records {start}..{raw.seq - 1} are missing: no checkpoint signed by the "
                f"trusted key anchors the chain at seq {raw.seq}",
            )

    def _check_break(self, previous: _Link, raw: RawRecord) -> None:
        """`raw` does not link to `previous`, the record stored before it: say why."""
        reader = self._reader
        if raw.prev_hash == previous.hash:
            self._report(
                ProblemKind.RENUMBERED,
                raw.seq,
                raw.record_id,
                f"its seq follows {previous.seq}, yet it links to the record at seq {previous.seq}",
            )
            return
        if any(raw.prev_hash in hashes for hashes in self._anchors.values()):
            self._report(
                ProblemKind.REORDERED,
                raw.seq,
                raw.record_id,
                "it links to where the chain starts, yet is stored after other records",
            )
            return
        targets = [seq for seq in reader.seqs_with_hash(raw.prev_hash) if seq != raw.seq]
        if not targets:
            self._broken_to_nothing(previous, raw)
            return
        later = [seq for seq in targets if seq > raw.seq]
        if later:
            self._reordered(raw, later[0])
            return
        target = max(targets)  # before `previous`: the records in between are skipped
        skipped = range(target + 1, previous.seq + 1)
        if all(seq in self._inserted for seq in skipped):
            return  # those were reported inserted already; this link is the chain resuming
        referenced = bool(reader.seqs_linking_to(raw.hash))
        if not referenced and self._certified(previous):
            self._insert(
                raw.seq, raw.record_id, f"it links back to record {target}, not to the last"
            )
            return
        first_skipped = reader.at(target + 1)
        forks = first_skipped is not None and first_skipped.prev_hash == raw.prev_hash
        if forks and not reader.seqs_linking_to(previous.hash):
            for seq in skipped:
                self._inserted.add(seq)
            self._report(
                ProblemKind.INSERTED,
                target + 1,
                first_skipped.record_id if first_skipped else "",
                f"records {target + 1}..{previous.seq} do not belong to the chain: record "
                f"{raw.seq} links past them to record {target}",
            )
            return
        self._reordered(raw, target)

    def _broken_to_nothing(self, previous: _Link, raw: RawRecord) -> None:
        """`raw` links to a hash no stored record has."""
        if raw.seq > previous.seq + 1:
            self._report(
                ProblemKind.DELETED,
                previous.seq + 1,
                "",
                f"records {previous.seq + 1}..{raw.seq - 1} are missing",
            )
            return
        continues = any(seq > raw.seq for seq in self._reader.seqs_linking_to(previous.hash))
        certified = self._certified(previous)
        if not self._reader.seqs_linking_to(raw.hash) and (continues or certified):
            self._insert(raw.seq, raw.record_id, "it links to no stored record")
        elif certified:
            self._report(
                ProblemKind.MODIFIED,
                raw.seq,
                raw.record_id,
                "its link was changed: it no longer names the record before it",
            )
        else:
            self._report(
                ProblemKind.MODIFIED,
                previous.seq,
                previous.record_id,
                f"record {raw.seq} links to a different hash: this record was changed and its "
                "hash recomputed (or one after it removed and the seqs closed up)",
            )

    def _check_end(self, last: _Link | None) -> None:
        """The head row and the signed checkpoints against the last stored record."""
        tail = last.seq if last else 0
        beyond = max((seq for seq in self._signed if seq > tail), default=None)
        if beyond is not None:
            self._report(
                ProblemKind.TRUNCATED,
                tail + 1,
                "",
                f"a checkpoint was signed at seq {beyond} but the log ends at seq {tail}: "
                f"records {tail + 1}..{beyond} are missing",
            )
        head = self._head
        if last is None or (head.seq == last.seq and head.hash == last.hash):
            if last is None and head.seq > 0:
                self._report(
                    ProblemKind.TRUNCATED, 1, "", f"no record is stored; the head is at {head.seq}"
                )
            return
        where = self._reader.seqs_with_hash(head.hash)
        if head.seq in where:
            self._insert(head.seq + 1, "", f"it lies beyond the head, seq {head.seq}")
        elif where:
            if not self._problems:
                self._report(
                    ProblemKind.RENUMBERED,
                    where[0],
                    "",
                    f"the head record, seq {head.seq}, is stored at seq {where[0]}",
                )
        elif head.seq > tail:
            self._report(
                ProblemKind.TRUNCATED,
                tail + 1,
                "",
                f"the head is at seq {head.seq} but the log ends at seq {tail}",
            )
        else:
            at_head = self._reader.at(head.seq)
            self._report(
                ProblemKind.MODIFIED,
                head.seq,
                at_head.record_id if at_head else "",
                "its hash is not the one the head recorded: it was changed and its hash recomputed",
            )

    # -- helpers -------------------------------------------------------------------------

    def _certified(self, link: _Link) -> bool:
        """The head row or a signed checkpoint vouches for this record at this seq."""
        signed = self._signed.get(link.seq)
        if signed is not None and signed.hash == link.hash:
            return True
        return self._head.seq == link.seq and self._head.hash == link.hash

    def _reordered(self, raw: RawRecord, target: int) -> None:
        where = "after" if target > raw.seq else "before the record stored ahead of"
        self._report(
            ProblemKind.REORDERED,
            raw.seq,
            raw.record_id,
            f"it links to the record stored at seq {target}, {where} it",
        )

    def _insert(self, seq: int, record_id: str, why: str) -> None:
        self._inserted.add(seq)
        self._report(
            ProblemKind.INSERTED, seq, record_id, f"it does not belong to the chain: {why}"
        )

    def _report(self, kind: ProblemKind, seq: int | None, record_id: str, message: str) -> None:
        key = (kind, seq)
        if key in self._problems:
            return
        if len(self._problems) >= self._cap:
            self._more += 1
            return
        where = f"seq {seq}" if seq is not None else "the log"
        self._problems[key] = Problem(kind, seq, record_id, f"{where}: {message}")


def _columns(raw: RawRecord) -> list[tuple[str, str, Any]]:
    """Each stored column and blob: its name, the content key that vouches for it, and what
    the content should say."""
    return [
        ("record_id", "record_id", raw.record_id),
        ("kind", "kind", raw.kind),
        ("time", "time", raw.time),
        ("subject_id", "subject_id", raw.subject_id),
        ("model", "model", raw.model),
        ("attributions", "attributions_sha256", hashlib.sha256(raw.attributions).hexdigest()),
        (
            "encrypted_input",
            "encrypted_input_sha256",
            hashlib.sha256(raw.encrypted_input).hexdigest(),
        ),
    ]
