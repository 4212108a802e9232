"""Replay: a worker's object store as it stood after any event, rebuilt from its log alone.

Replay starts from the latest snapshot at or before the target (or from nothing), applies
only the events after it through the worker's own rule (:func:`bastion.stores.state.apply`),
then loads the payloads of what is left. The same code brings a restarted worker back
(:class:`bastion.Worker` on an existing log).

>>> import os, tempfile, torch
>>> import bastion as sy
>>> path = os.path.join(tempfile.mkdtemp(), "m1.db")
>>> with sy.VirtualWorker(id="doc-replay", db=path) as m1:
...     x = m1.send(torch.tensor([1.0, 2.0]))
...     y = x + x
...     seq = m1.audit.last_seq
...     y.get()
tensor([2., 4.])
>>> then = replay(path, until=seq)
>>> sorted(then.values(), key=len)[0]
tensor([1., 2.])
>>> len(then), len(replay(path))
(2, 1)
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from bastion.errors import ConfigurationError, EventLogError
from bastion.stores import payloads as _payloads
from bastion.stores.eventlog import (
    SCHEMA_VERSION,
    _reason,
    _resolve_url,
    events_table,
    schema_table,
)
from bastion.stores.payloads import snapshots_table
from bastion.stores.state import Change, WorkerState, apply, restore_flags


class ReplayedStore(dict):
    """``{object_id: object}`` as replay rebuilt it, with where it came from.

    ``seq``: the last event applied; ``snapshot_seq``: the snapshot it started from (0: none);
    ``events_read``: how many events were read after it; ``digests`` and ``details``: each
    object's content digest and ``create`` detail; ``missing``: ids whose payload was not
    stored (logged without payloads, or not encodable), left out of the mapping;
    ``state``: the whole :class:`~bastion.stores.state.WorkerState` (privacy labels, policy
    and budgets too), the missing objects as ``None``.
    """

    def __init__(self, worker: str, seq: int) -> None:
        super().__init__()
        self.worker = worker
        self.seq = seq
        self.snapshot_seq = 0
        self.events_read = 0
        self.digests: dict[int, str] = {}
        self.details: dict[int, dict[str, Any]] = {}
        self.missing: list[int] = []
        self.state: WorkerState | None = None


def log_location(url: str | os.PathLike[str]) -> tuple[str, str, str | None]:
    """``(SQLAlchemy URL, the name to give it in messages, SQLite file path or None)`` of a
    log to read; a file path stands for a SQLite file."""
    text = os.fspath(url)
    if "://" not in text:
        path = os.path.abspath(text)
        return "sqlite:///" + path, text, path
    try:
        parsed = sa.make_url(text)
    except (SQLAlchemyError, ValueError) as exc:
        raise EventLogError(f"{text!r} is neither a file path nor a database URL: {exc}") from exc
    name = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise EventLogError("an in-memory database holds no log to read; give a file path")
        return text, name, os.path.abspath(parsed.database)
    return text, name, None


def open_read_only(url: str | os.PathLike[str]) -> sa.Engine:
    """An engine on an existing bastion log that cannot write: SQLite opens with ``mode=ro``
    (a missing file is an error, never created), PostgreSQL sessions are read-only.

    Raises :class:`bastion.EventLogError` naming the file for a missing file, a file that is
    not a database or not a bastion log, and a log written by a newer bastion.
    """
    resolved, name, path = log_location(url)
    if path is not None:
        if not os.path.isfile(path):
            raise EventLogError(f"no event log at {name}: the file does not exist")
        engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    else:
        try:
            engine = sa.create_engine(resolved)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise EventLogError(
                f"cannot open {name}: {exc}. Give a SQLite file path or a SQLAlchemy URL whose "
                "driver is installed"
            ) from None
        if engine.dialect.name == "postgresql":  # the server refuses writes too
            sa.event.listen(engine, "connect", _read_only_session)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if not {"bastion_events", "bastion_schema"} <= tables:
                raise EventLogError(
                    f"{name} is not a bastion event log (it has no bastion_events table)"
                )
            version = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar()
        if version is not None and version > SCHEMA_VERSION:
            raise EventLogError(
                f"the event log at {name} was written by a newer bastion (schema version "
                f"{version}; this one reads up to {SCHEMA_VERSION}): upgrade bastion to read it"
            )
    except SQLAlchemyError as exc:
        engine.dispose()
        raise EventLogError(
            f"{name} is not a readable bastion event log: {_reason(exc)}"
        ) from exc
    except BaseException:
        engine.dispose()
        raise
    return engine


def _read_only_session(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    cursor.close()
    dbapi_conn.commit()


def replay(
    url: str | os.PathLike[str],
    worker: str | None = None,
    *,
    until: int | float | datetime.datetime | None = None,
    blob_dir: str | os.PathLike[str] | None = None,
) -> ReplayedStore:
    """Rebuild ``worker``'s store from the log at ``url`` as it stood after ``until``.

    ``until``: a ``seq`` (int), a ``datetime`` or POSIX time (float: the last event at or
    before it), or ``None`` for the end of the log. ``worker`` may be left out when the
    database holds one worker. Payload files are looked for in ``blob_dir`` (default: the
    ``.blobs`` folder beside a SQLite file). Read-only.
    """
    resolved = _resolve_url(url)
    engine = open_read_only(url)
    folder = os.path.abspath(blob_dir) if blob_dir else _payloads.default_blob_dir(resolved)
    try:
        with engine.connect() as conn:
            if worker is None:
                worker = _only_worker(conn, resolved)
            elif not _has_events(conn, worker):
                raise EventLogError(f"the event log at {url} holds no events of worker {worker!r}")
            return replay_connection(conn, worker, until, folder, source=str(url))
    except SQLAlchemyError as exc:
        raise EventLogError(f"cannot replay the event log at {url}: {_reason(exc)}") from exc
    finally:
        engine.dispose()


def _has_events(conn: sa.Connection, worker: str) -> bool:
    t = events_table.c
    return conn.execute(sa.select(t.seq).where(t.worker_id == worker).limit(1)).first() is not None


def _only_worker(conn: sa.Connection, url: str) -> str:
    workers = list(conn.scalars(sa.select(events_table.c.worker_id).distinct().limit(11)))
    if len(workers) == 1:
        return workers[0]
    if not workers:
        raise EventLogError(f"the event log at {url} holds no events")
    raise ConfigurationError(
        f"the event log at {url} holds several workers ({', '.join(sorted(workers)[:10])}); "
        "say which with worker=..."
    )


def _target_seq(conn: sa.Connection, worker: str, until: Any, source: str) -> int:
    t = events_table.c
    last = sa.select(sa.func.max(t.seq)).where(t.worker_id == worker)
    if until is None:
        return int(conn.execute(last).scalar() or 0)
    if isinstance(until, datetime.datetime):
        until = until.timestamp()
    if isinstance(until, bool) or not isinstance(until, (int, float)):
        raise ConfigurationError(
            f"until takes a seq (int), a datetime or a POSIX time, not {type(until).__name__}"
        )
    if isinstance(until, float):
        return int(conn.execute(last.where(t.ts <= until)).scalar() or 0)
    if until < 0:
        raise ConfigurationError(f"until={until}: sequence numbers start at 1 (0: before any)")
    top = conn.execute(last).scalar() or 0
    if until > top:
        raise EventLogError(
            f"worker {worker!r} has no event {until} in {source} (its last is {top})"
        )
    return until


def raw_batches(conn: sa.Connection, query: sa.Select, batch: int) -> Iterator[list[tuple]]:
    """``query``'s rows as plain tuples from the DB-API cursor, ``batch`` at a time."""
    compiled = query.compile(dialect=conn.dialect)
    params: Any = compiled.params
    if compiled.positiontup is not None:
        params = tuple(compiled.params[name] for name in compiled.positiontup)
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        while rows := cursor.fetchmany(batch):
            yield rows
    finally:
        cursor.close()


#: the details of creates that say only where their payload went (nothing for the state)
_PAYLOAD_ONLY = frozenset({'{"payload":"db"}', '{"payload":"file"}'})


def replay_state(
    conn: sa.Connection, worker: str, seq: int, *, track: bool = False
) -> tuple[WorkerState, int, int]:
    """``worker``'s :class:`WorkerState` after event ``seq``, objects as ``None`` (their
    payloads not loaded): the latest snapshot at or before ``seq``, then every later event
    through :func:`bastion.stores.state.apply`. Returns ``(state, snapshot seq, events read)``.
    """
    s = snapshots_table.c
    snapshot = conn.execute(
        sa.select(s.seq, s.objects)
        .where(s.worker_id == worker, s.seq <= seq)
        .order_by(s.seq.desc())
        .limit(1)
    ).first()
    start, snapshot_seq = 1, 0
    if snapshot is not None and not track:
        state = WorkerState.from_snapshot(worker, snapshot.objects)
        snapshot_seq, start = snapshot.seq, snapshot.seq + 1
    else:
        state = WorkerState(worker, track=track)
    t = events_table.c
    query = (
        sa.select(t.kind, t.object_id, t.peer, t.digest, t.detail)
        .where(t.worker_id == worker, t.seq >= start, t.seq <= seq)
        .order_by(t.seq)
    )
    count = 0
    loads, payload_only = json.loads, _PAYLOAD_ONLY
    for rows in raw_batches(conn, query, 20_000):
        count += len(rows)
        for kind, oid, peer, digest, detail in rows:
            # most creates say only where their payload went: nothing to parse
            parsed = None if not detail or detail in payload_only else loads(detail)
            apply(state, Change(kind, oid, peer, digest, parsed))
    return state, snapshot_seq, count


def replay_connection(
    conn: sa.Connection, worker: str, until: Any, blob_dir: str | None, *, source: str = "the log"
) -> ReplayedStore:
    """:func:`replay` on an open connection (an :class:`EventLog` replays its own this way)."""
    seq = _target_seq(conn, worker, until, source)
    state, snapshot_seq, count = replay_state(conn, worker, seq)
    result = ReplayedStore(worker, seq)
    result.snapshot_seq, result.events_read, result.state = snapshot_seq, count, state
    store = state.store
    rows = _payloads.load_many(conn, (d for d in store.digests.values() if d), blob_dir)
    for oid in list(store.objects):
        digest = store.digests.get(oid)
        row = rows.get(digest) if digest else None
        if row is None:
            result.missing.append(oid)
            continue
        detail = store.details.get(oid)
        value = restore_flags(_payloads.load(row, blob_dir), detail)
        store.objects[oid] = result[oid] = value
        result.digests[oid] = digest
        if detail:
            result.details[oid] = detail
    return result
