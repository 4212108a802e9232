"""Walk a log's hash chain and name the first event that does not hold.

For each worker in the database, events must run 1, 2, 3... with no gap, each must carry
the hash of the one before it, and each ``hash`` must be what its fields give
(:func:`bastion.stores.expected_hash`). An edited row breaks its own hash; a deleted row
leaves a gap; an inserted or reordered one breaks a link. Payload digests are checked too
once payloads are stored (the event-store issue); today the chain covers the digests.

The database is opened read-only (SQLite) and read in order, a batch at a time.

>>> from bastion.stores import EventLog
>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "doc.db")
>>> with EventLog(path, "M1") as log:
...     _ = log.append("create", object_id=1)
>>> verify(path)
VerifyResult(ok=True, checked=1, worker=None, seq=None, reason=None)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from bastion.errors import EventLogError
from bastion.stores.eventlog import _event, _resolve_url, events_table, expected_hash


@dataclass(frozen=True)
class VerifyResult:
    """``ok``, how many events were checked, and where and why the first bad one fails."""

    ok: bool
    checked: int
    worker: str | None = None
    seq: int | None = None
    reason: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"intact: {self.checked} events checked"
        return f"event {self.seq} of worker {self.worker!r} fails: {self.reason}"


def _read_only(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not os.path.exists(parsed.database):
            raise EventLogError(f"no event log at {parsed.database}")
        return sa.create_engine(f"sqlite:///file:{parsed.database}?mode=ro&uri=true")
    return sa.create_engine(parsed)


def verify(url: str | os.PathLike[str], worker: str | None = None,
           batch: int = 10_000) -> VerifyResult:  # fmt: skip
    """Check the hash chain of every worker in ``url`` (or only ``worker``)."""
    engine = _read_only(_resolve_url(url))
    t = events_table.c
    checked = 0
    try:
        with engine.connect() as conn:
            query = sa.select(events_table).order_by(t.worker_id, t.seq)
            if worker is not None:
                query = query.where(t.worker_id == worker)
            current, expected_seq, prev_hash = None, 1, ""
            for rows in conn.execution_options(yield_per=batch).execute(query).partitions():
                for row in rows:
                    event = _event(row)
                    if event.worker != current:
                        current, expected_seq, prev_hash = event.worker, 1, ""
                    failure = None
                    if event.seq != expected_seq:
                        failure = f"expected seq {expected_seq}: events are missing"
                    elif event.prev_hash != prev_hash:
                        failure = "it does not link to the event before it"
                    elif event.hash != expected_hash(event):
                        failure = "its fields do not give its hash: the row was changed"
                    if failure is not None:
                        return VerifyResult(False, checked, event.worker, event.seq, failure)
                    checked += 1
                    expected_seq, prev_hash = event.seq + 1, event.hash
    except SQLAlchemyError as exc:
        raise EventLogError(f"cannot read the event log at {url}: {exc}") from exc
    finally:
        engine.dispose()
    return VerifyResult(True, checked)
