"""Every event of a log, for other tools: JSON lines or CSV, streamed in time order.

A record has every column of the log (the hash chain included) and ``time``, the timestamp
in ISO 8601 UTC. In CSV, ``inputs``, ``shape`` and ``detail`` are JSON text.

>>> import io, os, tempfile
>>> from bastion.stores import EventLog
>>> path = os.path.join(tempfile.mkdtemp(), "doc.db")
>>> with EventLog(path, "M1") as log:
...     _ = log.append("create", object_id=1, peer="me", dtype="float32", shape=(2,))
>>> out = io.StringIO()
>>> export(path, out, "csv")
1
>>> out.getvalue().splitlines()[0]
'worker,seq,ts,time,kind,object_id,peer,origin,op,inputs,dtype,shape,digest,detail,prev_hash,hash'
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, TextIO

from bastion.audit.lineage import origin_text, payload_text, release_text
from bastion.audit.reader import AuditLog, format_ts, opened
from bastion.errors import AuditError
from bastion.events import Event

FORMATS = ("jsonl", "csv")
FIELDS = ("worker", "seq", "ts", "time", "kind", "object_id", "peer", "origin", "op", "inputs",
          "dtype", "shape", "digest", "detail", "prev_hash", "hash")  # fmt: skip


def event_record(event: Event) -> dict[str, Any]:
    """An event as plain data, in :data:`FIELDS` order (lists for ``inputs`` and ``shape``)."""
    return {"worker": event.worker, "seq": event.seq, "ts": event.ts, "time": format_ts(event.ts),
            "kind": event.kind, "object_id": event.object_id, "peer": event.peer,
            "origin": event.origin, "op": event.op, "inputs": list(event.inputs),
            "dtype": event.dtype, "shape": None if event.shape is None else list(event.shape),
            "digest": event.digest, "detail": event.detail, "prev_hash": event.prev_hash,
            "hash": event.hash}  # fmt: skip


def event_summary(event: Event) -> str:
    """What an event says beyond its kind, object and peer, in a few words."""
    if event.kind == "create":
        return origin_text(event)
    if event.kind == "move":
        d = event.detail
        return f"to {event.peer} as {d.get('new_id')} (requested by {d.get('requested_by')})"
    if event.kind == "clear":
        return f"dropped {len(event.detail.get('ids', []))} objects"
    if event.kind == "denied":
        return f"{event.detail.get('request')}: {event.detail.get('why')}"
    if event.kind == "release":
        return f"{event.detail.get('request')}: {release_text(event)}"
    if event.kind == "policy":
        budget = event.detail.get("budget")
        return f"default {event.detail.get('default', {}).get('kind')}" + (
            f", budget epsilon {budget['epsilon']:g} delta {budget['delta']:g}" if budget else ""
        )
    text = payload_text(event)
    if event.detail:
        text = (text + " " if text else "") + json.dumps(event.detail, separators=(",", ":"))
    return text


def event_line(event: Event) -> str:
    """One event on one line: time, worker and seq, kind, object, peer, summary."""
    oid = "" if event.object_id is None else str(event.object_id)
    return (f"{format_ts(event.ts)}  {event.worker} #{event.seq}  {event.kind:<7} {oid:>17}  "
            f"peer={event.peer or '-'}  {event_summary(event)}").rstrip()  # fmt: skip


def export(
    url: str | os.PathLike[str] | AuditLog, out: TextIO, format: str = "jsonl", **filters: Any
) -> int:
    """Write the events of ``url`` to ``out`` as ``jsonl`` or ``csv``; returns how many.

    ``filters`` are those of :meth:`AuditLog.events` (``worker``, ``kind``, ``since``...).
    """
    if format not in FORMATS:
        raise AuditError(f"unknown export format {format!r}; use jsonl or csv")
    count = 0
    with opened(url) as log:
        if format == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(FIELDS)
            for event in log.events(**filters):
                record = event_record(event)
                for name in ("inputs", "shape", "detail"):
                    record[name] = json.dumps(record[name], separators=(",", ":"))
                writer.writerow(record.values())
                count += 1
        else:
            for event in log.events(**filters):
                out.write(json.dumps(event_record(event), separators=(",", ":")) + "\n")
                count += 1
    return count
