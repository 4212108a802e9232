"""Reading an event log for an audit: read-only, while workers may still be appending.

:class:`AuditLog` opens a database that holds one or several workers' logs (a SQLite file
path or any SQLAlchemy URL) without ever writing to it: SQLite files open with ``mode=ro``, so
a missing file is an error and never created. Every query walks the primary key
``(worker_id, seq)`` or the index ``(worker_id, object_id)``, so answers stay fast on a log of
millions of events; events of several workers are merged in time order.

Points in a log are a ``seq`` (an ``int``, per worker) or a time (a ``datetime``, or a POSIX
timestamp as a ``float``); :func:`parse_point` reads them from text.

>>> import os, tempfile
>>> from bastion.stores import EventLog
>>> path = os.path.join(tempfile.mkdtemp(), "doc.db")
>>> with EventLog(path, "M1") as log:
...     _ = log.append("create", object_id=7, origin="send", peer="me", dtype="int64", shape=(2,))
...     _ = log.append("get", object_id=7, peer="me")
>>> with AuditLog(path) as audit:
...     [(e.seq, e.kind) for e in audit.events(newest_first=True)]
[(2, 'get'), (1, 'create')]
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from bastion.errors import AuditError, EventLogError
from bastion.events import Event
from bastion.stores.eventlog import events_table
from bastion.stores.replay import log_location, open_read_only

#: A place in a log: a ``seq`` (int) or a time (``datetime``, or POSIX seconds as a float).
Point = int | float | dt.datetime

_T = events_table.c
_POSIX = re.compile(r"^@?\d+\.\d*$|^@\d+$")


def parse_point(text: str) -> Point:
    """``"42"`` -> seq 42; ``"@1764115200"`` or ``"1764115200.5"`` -> POSIX time;
    ``"2026-11-26T09:30"`` (ISO 8601; UTC unless it names a zone) -> a ``datetime``.

    >>> parse_point("42"), parse_point("@10")
    (42, 10.0)
    >>> parse_point("2026-11-26 09:30")
    datetime.datetime(2026, 11, 26, 9, 30, tzinfo=datetime.timezone.utc)
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    if _POSIX.match(text):
        return float(text.lstrip("@"))
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(
            f"{text!r} is neither a seq (e.g. 42) nor a time (e.g. 2026-11-26T09:30:00 in UTC, "
            "or @1764149400 in POSIX seconds)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def posix(when: float | dt.datetime) -> float:
    """A time as POSIX seconds (a naive ``datetime`` is taken as UTC)."""
    if isinstance(when, dt.datetime):
        return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()
    return float(when)


def format_ts(ts: float) -> str:
    """POSIX seconds as ISO 8601 UTC with milliseconds: ``2026-11-26T09:30:00.123Z``."""
    when = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _ints(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
        return tuple(int(item) for item in value)
    except (ValueError, TypeError):  # a hand-edited row: keep going, verify will name it
        return ()


def to_event(row: Sequence[Any]) -> Event:
    """A ``bastion_events`` row as an :class:`bastion.Event` (tolerant of hand-edited rows)."""
    (worker, seq, ts, kind, oid, peer, origin, op, inputs, dtype, shape, digest, detail,
     prev_hash, hash_) = row  # fmt: skip
    try:
        details = json.loads(detail) if detail else {}
        if not isinstance(details, dict):
            details = {"value": details}
    except ValueError:
        details = {"unparsed": detail}
    return Event(seq, ts, worker, kind, oid, peer, origin, op, _ints(inputs) or (), dtype,
                 _ints(shape), digest, details, prev_hash, hash_)  # fmt: skip


class AuditLog:
    """A read-only view of the event logs in one database (one worker's or several).

    ``url``: a SQLite file path or a SQLAlchemy URL. Opening checks that the database is a
    bastion log of a schema this bastion reads (:class:`bastion.EventLogError` otherwise).
    """

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url, self.name, _ = log_location(url)
        self.engine = open_read_only(url)

    # ------------------------------------------------------------------ plumbing

    def query(self, statement: Any) -> list[Any]:
        """Run one read-only statement; database errors become :class:`EventLogError`."""
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(statement))
        except SQLAlchemyError as exc:
            raise EventLogError(f"cannot read the event log at {self.name}: "
                                f"{_reason(exc)}") from exc  # fmt: skip

    def stream(self, statement: Any, batch: int = 10_000) -> Iterator[Any]:
        """Rows of a large query, a batch at a time (for exports and projections)."""
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(yield_per=batch).execute(statement)
                for rows in result.partitions():
                    yield from rows
        except SQLAlchemyError as exc:
            raise EventLogError(f"cannot read the event log at {self.name}: "
                                f"{_reason(exc)}") from exc  # fmt: skip

    def has_table(self, name: str) -> bool:
        """Whether the database has table ``name`` (e.g. stored payloads)."""
        try:
            with self.engine.connect() as conn:
                return sa.inspect(conn).has_table(name)
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        """Release the database."""
        self.engine.dispose()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({self.name!r})"

    # ------------------------------------------------------------------ workers

    def workers(self) -> list[str]:
        """The workers with events in this database, sorted (one index seek per worker)."""
        found: list[str] = []
        while True:
            query = sa.select(sa.func.min(_T.worker_id))
            if found:
                query = query.where(_T.worker_id > found[-1])
            worker = self.query(query)[0][0]
            if worker is None:
                return found
            found.append(worker)

    def worker(self, worker: str | None) -> str:
        """``worker`` if the log holds it, else the only worker; an :class:`AuditError` when
        there are several to choose from or none."""
        workers = self.workers()
        if worker is not None:
            if worker not in workers:
                raise AuditError(f"worker {worker!r} has no events in {self.name}; "
                                 f"it holds {_names(workers)}")  # fmt: skip
            return worker
        if len(workers) == 1:
            return workers[0]
        if not workers:
            raise AuditError(f"the event log at {self.name} holds no events yet")
        raise AuditError(f"{self.name} holds the logs of {_names(workers)}: "
                         "say which with --worker")  # fmt: skip

    def bounds(self, worker: str) -> tuple[Event, Event] | None:
        """The first and last event of ``worker`` (``None`` when it has none)."""
        base = sa.select(events_table).where(_T.worker_id == worker).limit(1)
        first = self.query(base.order_by(_T.seq))
        last = self.query(base.order_by(_T.seq.desc()))
        if not first:
            return None
        return to_event(first[0]), to_event(last[0])

    def seq_at(self, worker: str, when: float | dt.datetime) -> int:
        """The last ``seq`` of ``worker`` stamped at or before ``when`` (0 if none).

        Events are stamped in ``seq`` order, so this is a binary search on the primary key.
        """
        target = posix(when)
        bounds = self.bounds(worker)
        if bounds is None or bounds[0].ts > target:
            return 0
        lo, hi = bounds[0].seq, bounds[1].seq  # invariant: ts(lo) <= target
        while lo < hi:
            mid = (lo + hi + 1) // 2
            row = self.query(sa.select(_T.seq, _T.ts).where(_T.worker_id == worker,
                                                            _T.seq >= mid)
                             .order_by(_T.seq).limit(1))  # fmt: skip
            if row and row[0].ts <= target:
                lo = row[0].seq
            else:
                hi = mid - 1
        return lo

    # ------------------------------------------------------------------ events

    def event(self, seq: int, worker: str | None = None) -> Event:
        """One event, by ``seq`` (and ``worker`` when the database holds several)."""
        worker = self.worker(worker)
        rows = self.query(sa.select(events_table).where(_T.worker_id == worker, _T.seq == seq))
        if not rows:
            last = self.bounds(worker)
            span = f"its events run {last[0].seq}..{last[1].seq}" if last else "it has none"
            raise AuditError(f"worker {worker!r} has no event {seq} in {self.name}; {span}")
        return to_event(rows[0])

    def events(
        self,
        *,
        worker: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        object_id: int | None = None,
        peer: str | None = None,
        since: Point | None = None,
        until: Point | None = None,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> Iterator[Event]:
        """Events in time order (oldest first, or ``newest_first``), filtered.

        ``since``/``until`` are inclusive: a ``seq`` applies to each worker's own numbering, a
        time to every worker. Each worker is read along its primary key and the workers are
        merged by timestamp, so ``limit`` reads only what it returns.
        """
        workers = self._chosen(worker)
        kinds = [kind] if isinstance(kind, str) else list(kind) if kind is not None else None
        streams = []
        for name in workers:
            query = sa.select(events_table).where(_T.worker_id == name)
            if kinds is not None:
                query = query.where(_T.kind.in_(kinds))
            if object_id is not None:
                query = query.where(_T.object_id == object_id)
            if peer is not None:
                query = query.where(_T.peer == peer)
            query = self._range(query, name, since, until)
            if object_id is not None:  # few rows: fetched through the object index, sorted here
                found = sorted((to_event(r) for r in self.query(query)), key=lambda e: e.seq,
                               reverse=newest_first)  # fmt: skip
                streams.append(iter(found))
                continue
            order = _T.seq.desc() if newest_first else _T.seq
            streams.append(self._pages(query.order_by(order), newest_first, limit))
        if newest_first:
            merged = heapq.merge(*streams, key=lambda e: (-e.ts, e.worker, -e.seq))
        else:
            merged = heapq.merge(*streams, key=lambda e: (e.ts, e.worker, e.seq))
        for count, event in enumerate(merged):
            if limit is not None and count >= limit:
                return
            yield event

    def _chosen(self, worker: str | Iterable[str] | None) -> list[str]:
        if worker is None:
            return self.workers()
        names = [worker] if isinstance(worker, str) else list(worker)
        known = set(self.workers())
        for name in names:
            if name not in known:
                raise AuditError(f"worker {name!r} has no events in {self.name}; "
                                 f"it holds {_names(sorted(known))}")  # fmt: skip
        return names

    def _range(self, query: Any, worker: str, since: Point | None,
               until: Point | None) -> Any:  # fmt: skip
        if isinstance(since, int):
            query = query.where(_T.seq >= since)
        elif since is not None:
            query = query.where(_T.seq > self.seq_at(worker, posix(since) - 1e-6),
                                _T.ts >= posix(since))  # fmt: skip
        if isinstance(until, int):
            query = query.where(_T.seq <= until)
        elif until is not None:
            query = query.where(_T.seq <= self.seq_at(worker, until), _T.ts <= posix(until))
        return query

    def _pages(self, query: Any, newest_first: bool, limit: int | None) -> Iterator[Event]:
        """A worker's matching events, fetched a page at a time along the primary key."""
        size = min(limit, 5000) if limit else 5000
        last: int | None = None
        while True:
            page = query
            if last is not None:
                page = page.where(_T.seq < last if newest_first else _T.seq > last)
            rows = self.query(page.limit(size))
            for row in rows:
                yield to_event(row)
            if len(rows) < size:
                return
            last = rows[-1].seq
            size = min(size * 4, 50_000)

    def object_events(self, worker: str, object_id: int) -> list[Event]:
        """Every event of ``worker`` about ``object_id``, in ``seq`` order.

        Sorted here: with ``ORDER BY seq``, SQLite would walk the primary key (every event of
        the worker) instead of the object index."""
        rows = self.query(sa.select(events_table)
                          .where(_T.worker_id == worker, _T.object_id == object_id))  # fmt: skip
        return sorted((to_event(row) for row in rows), key=lambda e: e.seq)

    def follow(
        self,
        *,
        interval: float = 0.5,
        start: dict[str, int] | None = None,
        stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Event]:
        """Events appended from now on (after ``start``: ``{worker: last seq seen}``), as they
        arrive, polling every ``interval`` seconds until ``stop()`` is true.

        A worker that appears later is followed from its first event.
        """
        seen = dict(start) if start is not None else self.last_seqs()
        while not stop():
            fresh: list[Event] = []
            for worker in self.workers():
                query = (sa.select(events_table)
                         .where(_T.worker_id == worker, _T.seq > seen.get(worker, 0))
                         .order_by(_T.seq))  # fmt: skip
                rows = [to_event(row) for row in self.query(query)]
                if rows:
                    seen[worker] = rows[-1].seq
                    fresh.extend(rows)
            fresh.sort(key=lambda e: (e.ts, e.worker, e.seq))
            yield from fresh
            if not fresh:
                time.sleep(interval)

    def last_seqs(self) -> dict[str, int]:
        """``{worker: its last seq}`` now."""
        result = {}
        for worker in self.workers():
            bounds = self.bounds(worker)
            result[worker] = bounds[1].seq if bounds else 0
        return result


def _names(workers: Sequence[str]) -> str:
    shown = ", ".join(repr(w) for w in workers[:8])
    more = f" and {len(workers) - 8} more" if len(workers) > 8 else ""
    return f"{shown}{more}" if workers else "no worker"


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).splitlines()[0]


@contextlib.contextmanager
def opened(url: str | os.PathLike[str] | AuditLog) -> Iterator[AuditLog]:
    """``url`` opened as an :class:`AuditLog` for a ``with`` block (closed after it), or an
    ``AuditLog`` given as it is (left open)."""
    if isinstance(url, AuditLog):
        yield url
    else:
        with AuditLog(url) as log:
            yield log
