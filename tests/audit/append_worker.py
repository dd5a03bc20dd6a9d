"""A process of its own that opens the store at argv[1] and writes argv[3] records named
argv[2]-<n> through an AuditWriter, in small waves so that processes interleave. Prints the
seqs it was given, as JSON. Started by test_writer.py, several at once."""

from __future__ import annotations

import json
import sys
import time

from sidelight.audit.record import AuditRecord, RecordKind
from sidelight.audit.store import AuditStore
from sidelight.audit.writer import AuditWriter

if __name__ == "__main__":
    url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = AuditStore.open(url)
    writer = AuditWriter(store, max_batch=16)
    futures = []
    for n in range(count):
        record = AuditRecord(
            record_id=f"{prefix}-{n}",
            kind=RecordKind.EXPLANATION,
            time=time.time(),
            subject_id=prefix,
            model="m",
            attributions=n.to_bytes(4, "little"),
        )
        futures.append(writer.submit(record))
        if n % 10 == 9:
            futures[-1].result(120)  # a wave committed before the next: processes interleave
    seqs = [future.result(120) for future in futures]
    writer.close()
    store.close()
    print(json.dumps(seqs))
