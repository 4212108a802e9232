"""One event in full (``show``) and the integrity of a whole log (``verify``).

>>> import os, tempfile
>>> from bastion.stores import EventLog
>>> path = os.path.join(tempfile.mkdtemp(), "doc.db")
>>> with EventLog(path, "M1") as log:
...     _ = log.append("create", object_id=1, peer="me", dtype="float32", shape=(2, 3),
...                    digest="ab" * 32)
...     _ = log.append("get", object_id=1, peer="me", digest="ab" * 32)
>>> record = describe(path, 2)
>>> record["kind"], record["shape"], record["size"], record["payload_from"]
('get', [2, 3], 24, 'create #1')
>>> verify_log(path).ok
True
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

from bastion.audit.export import event_record
from bastion.audit.reader import AuditLog, opened
from bastion.audit.summary import payload_bytes
from bastion.stores import VerifyResult, expected_hash, verify


def describe(url: str | os.PathLike[str] | AuditLog, seq: int,
             worker: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Event ``seq`` of ``worker`` as plain data, with its payload's dtype, shape, digest and
    ``size`` in bytes (looked up in the object's ``create`` when the event does not carry
    them: ``payload_from`` says where), and whether its hash matches its fields."""
    with opened(url) as log:
        event = log.event(seq, worker)
        record = event_record(event)
        record["payload_from"] = "this event" if event.dtype is not None else None
        if event.dtype is None and event.object_id is not None:
            creates = [
                e
                for e in log.object_events(event.worker, event.object_id)
                if e.kind == "create" and e.seq < event.seq
            ]
            if creates:
                create = creates[-1]
                record["dtype"] = create.dtype
                record["shape"] = None if create.shape is None else list(create.shape)
                record["payload_from"] = f"create #{create.seq}"
        shape = record["shape"]
        record["size"] = payload_bytes(record["dtype"], None if shape is None else tuple(shape))
        if record["digest"] and log.has_table("bastion_payloads"):
            rows = log.query(sa.text("SELECT nbytes FROM bastion_payloads WHERE digest = :d")
                             .bindparams(d=record["digest"]))  # fmt: skip
            record["stored"] = f"{rows[0][0]} bytes" if rows else "no"
        record["chain"] = (
            "its hash matches its fields"
            if expected_hash(event) == event.hash
            else "its hash does NOT match its fields: the row was changed"
        )
        return record


def verify_log(url: str | os.PathLike[str], worker: str | None = None) -> VerifyResult:
    """``bastion.stores.verify`` on a database checked first to be a bastion log (and to
    hold ``worker``), so that bad input gets the same errors as every audit command."""
    with AuditLog(url) as log:
        if worker is not None:
            log.worker(worker)
    return verify(url, worker=worker)
