"""`sidelight audit ...`: verify the log (and, with --sign, sign a checkpoint of what was
verified), show, report and replay a record, prune, erase a subject, export the public key and
the checkpoints. They work on the store directly (the same `--audit-dir`/`--audit-url` as the
server), so a regulator's copy of the database and the exported public key and checkpoints are
enough to verify it; plain `verify` writes nothing to either."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from sidelight.errors import NotFound
from sidelight.settings import AuditSettings


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the log lives: for `serve`, `worker` and every `audit` command."""
    parser.add_argument(
        "--audit-dir",
        type=Path,
        default=AuditSettings.data_dir,
        help="the audit log's keys and (by default) its SQLite store",
    )
    parser.add_argument(
        "--audit-url", default="", help="postgresql://... to share one store between replicas"
    )
    parser.add_argument(
        "--audit-url-file",
        type=Path,
        help="a file holding the --audit-url (a mounted secret: kept out of the process list)",
    )


def add_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="the audit log: verify, show, report, replay, ...")
    actions = audit.add_subparsers(required=True, metavar="action")

    verify = actions.add_parser("verify", help="check the hash chain and signed checkpoints")
    add_audit_arguments(verify)
    verify.add_argument("--public-key", type=Path, help="PEM (default: the data dir's key)")
    verify.add_argument(
        "--checkpoints", type=Path, action="append", default=[], help="exported .jsonl"
    )
    verify.add_argument("--json", action="store_true", help="the report as JSON")
    verify.add_argument(
        "--sign",
        action="store_true",
        help="if the log verifies, sign a checkpoint of the head verified, store it and the "
        "run's outcome (exported as metrics); exit 1 and sign nothing if it does not",
    )
    verify.set_defaults(run=_verify)

    show = actions.add_parser("show", help="one record, as JSON")
    add_audit_arguments(show)
    show.add_argument("record_id")
    show.set_defaults(run=_show)

    report = actions.add_parser("report", help="a readable HTML report of one record")
    add_audit_arguments(report)
    report.add_argument("record_id")
    report.add_argument("--out", type=Path, help="default: audit-report-ID.html")
    report.add_argument("--instance", type=int)
    report.add_argument("--input", type=Path, help=".npy of the inputs (else the stored ones)")
    report.set_defaults(run=_report)

    replay = actions.add_parser("replay", help="recompute a recorded explanation and compare")
    add_audit_arguments(replay)
    replay.add_argument("record_id")
    replay.add_argument("--model-repository", type=Path, default=Path("var/model-repository"))
    replay.add_argument("--input", type=Path, help=".npy of the inputs (else the stored ones)")
    replay.add_argument("--tolerance", type=float, default=1e-4)
    replay.set_defaults(run=_replay)

    prune = actions.add_parser("prune", help="remove records older than a period, signed")
    add_audit_arguments(prune)
    prune.add_argument("--older-than-days", type=float, required=True)
    prune.set_defaults(run=_prune)

    erase = actions.add_parser("erase", help="destroy a subject's key (crypto-shredding)")
    add_audit_arguments(erase)
    erase.add_argument("subject_id")
    erase.set_defaults(run=_erase)

    key = actions.add_parser("export-key", help="the checkpoint signing key's public half")
    add_audit_arguments(key)
    key.add_argument("--out", type=Path, required=True)
    key.set_defaults(run=_export_key)

    checkpoints = actions.add_parser("export-checkpoints", help="signed checkpoints, .jsonl")
    add_audit_arguments(checkpoints)
    checkpoints.add_argument("--out", type=Path, required=True)
    checkpoints.set_defaults(run=_export_checkpoints)


def settings_from(args: argparse.Namespace, mode: str = "strict") -> AuditSettings:
    return AuditSettings(mode=mode, data_dir=args.audit_dir, url=args.audit_url)


def _open(args: argparse.Namespace) -> Any:
    from sidelight.audit.log import AuditLog

    if not args.audit_url and not (args.audit_dir / "audit.db").exists():
        raise ValueError(f"no audit log in {args.audit_dir} (give --audit-dir or --audit-url)")
    log = AuditLog.open(settings_from(args), writing=False)
    assert log is not None
    return log


def _verify(args: argparse.Namespace) -> int:
    """Read-only unless --sign: a copy of the store and the exported public key are enough,
    and nothing is written to either (no table created, no key file made in --audit-dir)."""
    from sidelight.audit.checkpoint import load_checkpoints
    from sidelight.audit.signing import load_public_key
    from sidelight.audit.verify import verify

    extra = [c for path in args.checkpoints for c in load_checkpoints(path)]
    if args.sign:
        if args.public_key:
            raise ValueError("--sign verifies with the signing key itself: no --public-key")
        return _verify_and_sign(args, extra)
    public_key = (
        load_public_key(args.public_key.read_bytes())
        if args.public_key
        else _signer(args).public_key
    )
    store = _open_store(args, create=False)
    try:
        report = verify(store, public_key, extra)
    finally:
        store.close()
    if args.json:
        print(json.dumps(_report_json(report), indent=1))
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _verify_and_sign(args: argparse.Namespace, extra: list[Any]) -> int:
    from sidelight.audit.attest import verify_and_sign

    signer = _signer(args)
    store = _open_store(args, create=True)  # an older store gains audit_verifications
    try:
        outcome = verify_and_sign(store, signer, extra)
    finally:
        store.close()
    signed = outcome.checkpoint
    if args.json:
        data = _report_json(outcome.report)
        data["checkpoint"] = json.loads(signed.to_json()) if signed else None
        data["unsigned_because"] = outcome.unsigned_because or None
        print(json.dumps(data, indent=1))
    else:
        _print_report(outcome.report)
        if signed is not None:
            checkpoint = signed.checkpoint
            print(
                f"signed a checkpoint of seq {checkpoint.seq} (hash {checkpoint.hash.hex()}, "
                f"chain from seq {checkpoint.anchor.seq}, key {signed.key_id[:16]}):"
            )
            print(signed.to_json())
        elif outcome.report.ok:
            print(f"nothing signed: {outcome.unsigned_because}")
        else:
            print("nothing signed")
    return 0 if signed is not None or (outcome.report.ok and outcome.report.tip is None) else 1


def _signer(args: argparse.Namespace) -> Any:
    """The data directory's signing key, only read (a Secret mounted read-only holds it)."""
    from sidelight.audit.signing import SIGNING_KEY_FILE, Signer

    path = args.audit_dir / SIGNING_KEY_FILE
    if not path.exists():
        raise ValueError(f"no signing key {path} (give --audit-dir, or --public-key to verify)")
    return Signer.load(path)


def _open_store(args: argparse.Namespace, *, create: bool) -> Any:
    from sidelight.audit.store import AuditStore

    if not args.audit_url and not (args.audit_dir / "audit.db").exists():
        raise ValueError(f"no audit log in {args.audit_dir} (give --audit-dir or --audit-url)")
    return AuditStore.open(settings_from(args).store_url, create=create)


def _report_json(report: Any) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "records_checked": report.records_checked,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "checkpoints_checked": report.checkpoints_checked,
        "problems": [
            {
                "kind": p.kind.value,
                "seq": p.seq,
                "record_id": p.record_id,
                "message": p.message,
            }
            for p in report.problems
        ],
        "more_problems": report.more_problems,
    }


def _print_report(report: Any) -> None:
    last = report.last_checkpoint
    signed = f"; last signed checkpoint at seq {last.seq}" if last else "; no checkpoint yet"
    print(
        f"{report.records_checked} records (seq {report.first_seq}..{report.last_seq}), "
        f"{report.checkpoints_checked} checkpoints{signed}"
    )
    for problem in report.problems:
        where = f"seq {problem.seq}" if problem.seq is not None else "-"
        record = f" record {problem.record_id}" if problem.record_id else ""
        print(f"  {problem.kind.value.upper()} at {where}{record}: {problem.message}")
    if report.more_problems:
        print(f"  ... and {report.more_problems} more")
    print("OK: the log verifies" if report.ok else "FAILED: the log does not verify")


def _show(args: argparse.Namespace) -> int:
    log = _open(args)
    try:
        stored = log.store.get(args.record_id)
    finally:
        log.close()
    content = stored.record.content()
    print(
        json.dumps(
            {
                "seq": stored.seq,
                "prev_hash": stored.prev_hash.hex(),
                "hash": stored.hash.hex(),
                "has_encrypted_input": bool(stored.record.encrypted_input),
                "record": content,
            },
            indent=1,
        )
    )
    return 0


def integrity_line(log: Any, stored: Any) -> str:
    """This record's own link and the newest signed checkpoint that covers it."""
    from sidelight.audit.chain import link_hash
    from sidelight.audit.signing import SignatureCheck, verify_checkpoint

    linked = link_hash(stored.prev_hash, stored.record) == stored.hash
    covering = None
    for signed in reversed(log.store.checkpoints()):
        if signed.checkpoint.seq < stored.seq:
            break
        if verify_checkpoint(signed, log.signer.public_key) is SignatureCheck.VALID:
            covering = signed
    parts = [
        f"Record {stored.seq} of the log",
        "its hash matches its content" if linked else "ITS HASH DOES NOT MATCH ITS CONTENT",
    ]
    if covering is not None:
        when = datetime.datetime.fromtimestamp(covering.checkpoint.time, datetime.UTC)
        parts.append(
            f"covered by the checkpoint signed at {when:%Y-%m-%d %H:%M:%S} UTC "
            f"(seq {covering.checkpoint.seq}, key {covering.key_id[:16]})"
        )
    else:
        parts.append("not yet covered by a signed checkpoint")
    return "; ".join(parts) + ". The whole chain: sidelight audit verify."


def _inputs(args: argparse.Namespace, log: Any, record: Any) -> Any:
    import numpy as np

    if args.input is not None:
        return np.load(args.input, allow_pickle=False)
    if not record.encrypted_input:
        return None
    plain = log.subjects.decrypt_input(record.subject_id, record.encrypted_input, record.record_id)
    from sidelight.tensors import DTYPES

    return np.frombuffer(plain, dtype=DTYPES[record.input_dtype]).reshape(record.input_shape)


def _report(args: argparse.Namespace) -> int:
    from sidelight.audit.report import write_report

    log = _open(args)
    try:
        stored = log.store.get(args.record_id)
        try:
            inputs = _inputs(args, log, stored.record)
        except NotFound as exc:  # the subject was erased: the report goes without the input
            print(f"note: the stored input cannot be read ({exc})", file=sys.stderr)
            inputs = None
        integrity = integrity_line(log, stored)
    finally:
        log.close()
    out = args.out or Path(f"audit-report-{args.record_id}.html")
    write_report(stored.record, out, instance=args.instance, inputs=inputs, integrity=integrity)
    print(f"wrote {out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    import torch

    from sidelight.audit.replay import replay
    from sidelight.methods.catalog import check_model
    from sidelight.models.registry import ModelRegistry

    log = _open(args)
    try:
        stored = log.store.get(args.record_id)
        inputs = _inputs(args, log, stored.record)
        key = log.input_key
    finally:
        log.close()
    if inputs is None:
        print(
            "error: the record keeps no input (give --input, the instances as .npy)",
            file=sys.stderr,
        )
        return 2
    registry = ModelRegistry.load(args.model_repository, [torch.device("cpu")], check_model)
    result = replay(stored.record, registry, inputs, key, tolerance=args.tolerance)
    print(
        f"replay of {args.record_id} ({stored.record.model} v{stored.record.model_version}, "
        f"{stored.record.method}, seed {stored.record.seed}): {result.message}"
    )
    print(
        f"  model digest {'matches' if result.model_matches else 'DIFFERS'}; input digest "
        f"{'matches' if result.input_matches else 'DIFFERS'}; largest attribution difference "
        f"{result.max_abs_difference:.3e} ({result.relative_difference:.2e} relative); "
        f"outputs {result.outputs_difference:.3e}"
    )
    return 0 if result.matches else 1


def _prune(args: argparse.Namespace) -> int:
    from sidelight.audit.retention import prune

    log = _open(args)
    try:
        result = prune(log.store, log.signer, older_than_s=args.older_than_days * 86400.0)
    finally:
        log.close()
    when = datetime.datetime.fromtimestamp(result.cutoff, datetime.UTC)
    print(
        f"removed {result.removed} records made before {when:%Y-%m-%d %H:%M:%S} UTC; "
        f"the chain now starts at seq {result.first_kept_seq}"
        + (
            f" (signed anchor at seq {result.checkpoint.checkpoint.seq})"
            if result.checkpoint
            else ""
        )
    )
    return 0


def _erase(args: argparse.Namespace) -> int:
    log = _open(args)
    try:
        erasure = log.subjects.erase(args.subject_id)
    finally:
        log.close()
    key = "destroyed" if erasure.key_existed else "absent"
    print(
        f"erased subject {args.subject_id!r}: key {key}, "
        f"{erasure.records_with_input} stored inputs now unreadable; "
        f"recorded as {erasure.stored.record.record_id} (seq {erasure.stored.seq})"
    )
    return 0


def _export_key(args: argparse.Namespace) -> int:
    log = _open(args)
    try:
        args.out.write_bytes(log.signer.public_key_pem())
    finally:
        log.close()
    print(f"wrote {args.out} (key id {log.signer.key_id})")
    return 0


def _export_checkpoints(args: argparse.Namespace) -> int:
    from sidelight.audit.checkpoint import export_checkpoints

    log = _open(args)
    try:
        count = export_checkpoints(args.out, log.store.checkpoints())
    finally:
        log.close()
    print(f"wrote {count} signed checkpoints to {args.out}")
    return 0
