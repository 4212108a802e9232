"""A worker's audit log: append-only, hash-chained, group-committed, on SQLAlchemy Core.

Each worker appends to its own sequence (``seq`` 1, 2, 3... with no gaps) in the table
``bastion_events``; several workers may share one database because ``worker_id`` is part of
every key. Every row carries the hash of the row before it (:func:`event_hash`), so an edited,
inserted or deleted row breaks the chain.

``append`` is on the path of every pointer operation, so it only validates, numbers the event
and queues it. In ``batched`` mode the queue is written with one ``executemany`` in one
transaction when it reaches ``batch_size``, by a process-wide flusher thread every
``flush_interval`` seconds, on ``flush``/``events``/``close``, and at interpreter exit. In
``strict`` mode ``append`` returns only once its row is committed (``synchronous=FULL`` on
SQLite). Hashes and JSON are computed at flush time, in ``seq`` order.

A batched log in a SQLite file hands each batch to a writer process instead
(:mod:`bastion.stores.writer`), which chains, encodes and commits it on another CPU; ``flush``
waits for its commit. If the writer fails, the log takes its unacknowledged batches back and
writes inline from then on.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from operator import index
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.schema import CreateIndex, CreateTable

from bastion.errors import ConfigurationError, EventLogError
from bastion.events import EVENT_KINDS, Event
from bastion.logs import get_logger
from bastion.stores import flusher as _flusher
from bastion.stores import payloads as _payloads
from bastion.stores import writer as _writer
from bastion.stores.handover import WriterHandover
from bastion.stores.payloads import PayloadRow, payloads_table, snapshots_table

SCHEMA_VERSION = 1
DURABILITY_MODES = ("batched", "strict")

_log = get_logger("bastion.stores.eventlog")
_KINDS = frozenset(EVENT_KINDS)
_INT = frozenset({int})
_TEXT = frozenset({str, type(None)})


def _make_canonical() -> Callable[[Any], str]:
    """Compact, key-sorted, ASCII JSON. ``json.dumps`` builds its C encoder on every call;
    building it once makes hashing at flush time a third cheaper."""
    slow = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode

    def default(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    try:
        encode = json.encoder.c_make_encoder(  # type: ignore[misc]
            None, default, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, True
        )
        sample = [1.5, "é", {"b": None, "a": ()}]
        if "".join(encode(sample, 0)) != slow(sample):
            return slow
    except TypeError:  # no C accelerator, or another signature
        return slow
    return lambda value: "".join(encode(value, 0))


_canonical = _make_canonical()

metadata = sa.MetaData()
events_table = sa.Table(
    "bastion_events",
    metadata,
    sa.Column("worker_id", sa.String(255), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.Double, nullable=False),  # Double: exact, the hash covers it
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("object_id", sa.BigInteger, nullable=True),
    sa.Column("peer", sa.String(255), nullable=True),
    sa.Column("origin", sa.String(32), nullable=True),
    sa.Column("op", sa.String(255), nullable=True),
    sa.Column("inputs", sa.Text, nullable=True),
    sa.Column("dtype", sa.String(32), nullable=True),
    sa.Column("shape", sa.Text, nullable=True),
    sa.Column("digest", sa.String(128), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # One secondary index (lineage looks objects up); each index costs ~0.8 µs per append.
    sa.Index("ix_bastion_events_object", "worker_id", "object_id"),
)
schema_table = sa.Table(
    "bastion_schema", metadata, sa.Column("version", sa.Integer, nullable=False)
)


#: The fields of an :class:`Event` that :func:`event_hash` covers after ``prev_hash``, in order.
HASHED_FIELDS = ("worker", "seq", "ts", "kind", "object_id", "peer", "origin", "op", "inputs",
                 "dtype", "shape", "digest", "detail")  # fmt: skip


def event_hash(
    prev_hash: str,
    worker: str,
    seq: int,
    ts: float,
    kind: str,
    object_id: int | None,
    peer: str | None,
    origin: str | None,
    op: str | None,
    inputs: Sequence[int],
    dtype: str | None,
    shape: Sequence[int] | None,
    digest: str | None,
    detail: dict[str, Any] | str | None,
) -> str:
    """BLAKE3 (hex) over ``prev_hash`` and the MessagePack encoding of every field of an event.

    The encoding is ``msgpack.packb([worker, seq, ts, kind, object_id, peer, origin, op,
    inputs, dtype, shape, detail])`` with ``inputs`` and ``shape`` as lists (``shape`` may be
    nil) and ``detail`` as its compact, key-sorted JSON text (``"{}"`` when missing), plus
    ``digest`` in its place after ``shape``: unambiguous, and about twice as fast as JSON.
    The first event of a worker has ``prev_hash=""``.
    """
    if not isinstance(detail, str):
        detail = _canonical(detail) if detail else "{}"
    fields = (worker, seq, ts, kind, object_id, peer, origin, op, tuple(inputs), dtype,
              None if shape is None else tuple(shape), digest, detail)  # fmt: skip
    return _writer.chain_hash(prev_hash, fields)


def expected_hash(event: Event) -> str:
    """The hash ``event`` must carry given its fields and ``prev_hash`` (for verifying a chain)."""
    return event_hash(event.prev_hash, *(getattr(event, name) for name in HASHED_FIELDS))


class EventLog(WriterHandover):
    """The append-only event log of one worker in one SQLAlchemy database.

    ``url``: ``None`` for a private in-memory SQLite database, a SQLAlchemy URL, or a file path
    (SQLite, WAL). ``durability``: ``"batched"`` (group commit) or ``"strict"`` (each ``append``
    is committed before it returns). ``writer``: hand batches to the writer process (default:
    yes for a batched log in a plain SQLite file, the only kind it serves, unless the
    environment sets ``BASTION_EVENTLOG_WRITER=0``).

    >>> with EventLog(None, "alice") as log:
    ...     log.append("create", object_id=7, origin="send", dtype="float32", shape=(2,))
    ...     log.append("get", object_id=7, peer="bob")
    ...     [(e.seq, e.kind, e.shape) for e in log.events()]
    1
    2
    [(1, 'create', (2,)), (2, 'get', None)]
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None,
        worker_id: str,
        *,
        durability: str = "batched",
        batch_size: int = 512,
        flush_interval: float = 0.2,
        observer: Callable[[Callable[[], list[Event]]], None] | None = None,
        payloads: bool | None = None,
        blob_dir: str | os.PathLike[str] | None = None,
        blob_threshold: int = 1 << 20,
        writer: bool | None = None,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ConfigurationError(
                f"durability must be 'batched' or 'strict', not {durability!r}"
            )
        if not isinstance(worker_id, str) or not worker_id:
            raise ConfigurationError(f"worker_id must be a non-empty string, not {worker_id!r}")
        if batch_size < 1 or flush_interval <= 0:
            raise ConfigurationError(
                "batch_size must be at least 1 and flush_interval a positive number of seconds"
            )
        self.url = _resolve_url(url)
        self.worker_id = worker_id
        self.durability = durability
        self.batch_size = batch_size
        #: called after each written batch with a function that builds its ``Event``s
        #: (built only if asked for: observing costs nothing when nobody listens); an
        #: observer with a ``wanted()`` attribute is asked first, before each batch
        self.observer = observer
        self.flush_interval = flush_interval
        #: whether created objects' payloads are stored (default: unless the log is in memory)
        self.payloads = self.url != "sqlite://" if payloads is None else bool(payloads)
        self.blob_threshold = blob_threshold
        self._strict = durability == "strict"
        self._eager = self._strict  # write at every record (strict, or payload bytes piled up)
        self._stored: dict[str, str] = {}  # digests known to be stored (or queued): "db"/"file"
        self._pending_payloads: list[PayloadRow] = []
        self._pending_payload_bytes = 0
        self._pending_snapshots: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # seq numbers and the pending list
        self._flush_lock = threading.Lock()  # one writer (and, in memory, one user) at a time
        self._pending: list[tuple[Any, ...]] = []
        self._closed = False
        self._failing = False
        self._last_flush = time.monotonic()
        #: where a private "in-memory" log really lives: a temporary file that the writer
        #: process writes (deleted at close); None for every other log
        self._temp_path: str | None = None
        engine_url = self.url
        wanted = writer is not False and os.environ.get("BASTION_EVENTLOG_WRITER") != "0"
        if self.url == "sqlite://" and not self._strict and wanted and _writer.available():
            folder = tempfile.mkdtemp(prefix="bastion-log-")
            self._temp_path = os.path.join(folder, "events.db")
            engine_url = "sqlite:///" + self._temp_path
        # A private log's own process only reads it, rarely: it holds no file open meanwhile.
        self._engine = _make_engine(engine_url, durability, pooled=self._temp_path is None)
        #: where payloads of ``blob_threshold`` bytes or more go (``None``: in the database)
        self.blob_dir = (
            os.path.abspath(blob_dir) if blob_dir is not None
            else _payloads.default_blob_dir(self.url)
        )
        # A private in-memory database is one shared connection: serialize readers too.
        memory = isinstance(self._engine.pool, StaticPool)
        self._read_lock = self._flush_lock if memory else contextlib.nullcontext()
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._insert_sql = str(events_table.insert().compile(dialect=self._engine.dialect))
        path = self._writer_path()
        if writer and path is None:
            self._engine.dispose()
            self._remove_temp()
            raise ConfigurationError(
                "writer=True needs a batched log in a SQLite file (a path or sqlite:///path)"
            )
        try:
            self._next_seq, self._last_hash = self._setup()
        except BaseException:
            self._engine.dispose()
            self._remove_temp()
            raise
        # Batches handed to the writer process and not yet acknowledged, oldest first.
        # (Kept packed: the tuples are freed at once, which keeps the op thread's memory warm.)
        self._inflight: deque[bytes] = deque()
        self._acked = threading.Condition(self._lock)
        self._writer_error: str | None = None
        self._channel: _writer.Channel | None = None
        self._key = 0
        if writer is None:
            writer = path is not None and wanted
        if writer:
            self._start_writer(path)  # type: ignore[arg-type]
        _flusher.register(self)

    def _setup(self) -> tuple[int, str]:
        t = events_table.c
        try:
            with self._engine.connect() as conn:
                conn.execution_options(bastion_immediate=True)
                with conn.begin():
                    _refuse_foreign(conn, self._safe_url())
                    for table in (events_table, schema_table, payloads_table, snapshots_table):
                        conn.execute(CreateTable(table, if_not_exists=True))
                    for index in events_table.indexes:
                        conn.execute(CreateIndex(index, if_not_exists=True))
                    version = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar()
                    if version is None:
                        conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
                    last = conn.execute(
                        sa.select(t.seq, t.hash)
                        .where(t.worker_id == self.worker_id)
                        .order_by(t.seq.desc())
                        .limit(1)
                    ).first()
        except SQLAlchemyError as exc:
            raise EventLogError(
                f"cannot open the event log at {self._safe_url()}: {_reason(exc)}. Check that "
                "the URL is right, the database reachable and the path writable."
            ) from exc
        if version is not None and version > SCHEMA_VERSION:
            raise EventLogError(
                f"the event log at {self._safe_url()} was written by a newer bastion (schema "
                f"version {version}, this one reads {SCHEMA_VERSION}); upgrade bastion."
            )
        return (1, "") if last is None else (last.seq + 1, last.hash)

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the latest event recorded (0 for an empty log)."""
        return self._next_seq - 1

    def store_payload(self, digest: str, value: Any) -> str | None:
        """Keep ``value``'s content under ``digest`` (once per digest); where it went.

        Returns ``"db"`` or ``"file"``, or ``None`` when payloads are off or the value has
        no safe encoding. The bytes are copied (or written to their file) now, so a later
        in-place change cannot alter what the log keeps.
        """
        if not self.payloads:
            return None
        where = self._stored.get(digest)
        if where is not None:
            return where
        row = _payloads.capture(value, digest, blob_dir=self.blob_dir,
                                threshold=self.blob_threshold, fsync=self._strict)  # fmt: skip
        if row is None:
            return None
        where = "db" if row.path is None else "file"
        with self._lock:
            if len(self._stored) >= 1 << 20:
                self._stored.clear()  # a duplicate insert is ignored; this only saves work
            self._stored[digest] = where
            self._pending_payloads.append(row)
            self._pending_payload_bytes += len(row.data or b"")
            if self._pending_payload_bytes >= _MAX_PENDING_PAYLOAD_BYTES:
                self._eager = True
        return where

    def snapshot(self, objects: str | Sequence[tuple[int, str, str | None]]) -> int:
        """Record that after the latest event the worker stood as ``objects`` says: the JSON
        text of :meth:`bastion.stores.state.WorkerState.snapshot_text`, or ``(object_id,
        digest, detail JSON or None)`` each. Returns the snapshot's ``seq``."""
        text = objects if isinstance(objects, str) else "[" + ",".join(
            f"[{oid},{json.dumps(digest)},{detail or 'null'}]" for oid, digest, detail in objects
        ) + "]"
        with self._lock:
            seq = self._next_seq - 1
            self._pending_snapshots.append(
                {"worker_id": self.worker_id, "seq": seq, "ts": time.time(), "objects": text}
            )
        return seq

    def replay(self, until: int | float | Any = None) -> Any:
        """This worker's objects as they stood after event ``until`` (a ``seq``, a
        ``datetime`` or a POSIX time; default: now). See :func:`bastion.stores.replay`."""
        from bastion.stores.replay import replay_connection

        self.flush()
        with self._read_lock, self._engine.connect() as conn:
            return replay_connection(conn, self.worker_id, until, self.blob_dir,
                                     source=self._safe_url())  # fmt: skip

    def append(
        self,
        kind: str,
        *,
        object_id: int | None = None,
        peer: str | None = None,
        origin: str | None = None,
        op: str | None = None,
        inputs: Sequence[int] = (),
        dtype: str | None = None,
        shape: Sequence[int] | None = None,
        digest: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Record one event and return its ``seq`` (committed on return in strict mode)."""
        if kind not in _KINDS:
            raise ConfigurationError(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
        # Checked here, cheaply, so that a bad value can never poison a later flush.
        if object_id is not None and type(object_id) is not int:
            object_id = _to_ints((object_id,))[0]
        inputs = tuple(inputs)
        if not _INT.issuperset(map(type, inputs)):
            inputs = _to_ints(inputs)
        if shape is not None:
            shape = tuple(shape)
            if not _INT.issuperset(map(type, shape)):
                shape = _to_ints(shape)
        if not _TEXT.issuperset((type(peer), type(origin), type(op), type(dtype), type(digest))):
            raise ConfigurationError("peer, origin, op, dtype and digest take strings (or None)")
        detail_json = None
        if detail:
            try:
                detail_json = _canonical(detail)
            except (TypeError, ValueError, RecursionError) as exc:
                raise ConfigurationError(f"event detail must be plain JSON data: {exc}") from exc
        return self.record(kind, object_id, peer, origin, op, inputs, dtype, shape, digest,
                           detail_json)  # fmt: skip

    def record(
        self,
        kind: str,
        object_id: int | None,
        peer: str | None,
        origin: str | None,
        op: str | None,
        inputs: tuple[int, ...],
        dtype: str | None,
        shape: tuple[int, ...] | None,
        digest: str | None,
        detail_json: str | None,
    ) -> int:
        """``append`` without the checks, for callers whose values are already well-typed
        (the worker, on every operation): ints, tuples of ints, strings, canonical JSON."""
        with self._lock:
            if self._closed:
                raise EventLogError(f"the event log of {self.worker_id!r} is closed")
            seq = self._next_seq
            self._next_seq = seq + 1
            pending = self._pending
            pending.append((seq, _now(), kind, object_id, peer, origin, op, inputs, dtype, shape,
                            digest, detail_json))  # fmt: skip
            if len(pending) < self.batch_size and not self._eager:
                return seq
        # A full batch, strict mode, or many payload bytes queued: write (or hand over) now.
        if self._channel is not None and self._writer_error is None:
            with self._flush_lock:
                self._send()
        else:
            self.flush()
        return seq

    def flush(self) -> None:
        """Write every pending event, in ``seq`` order, in one transaction; with a writer
        process, return once it has committed everything queued so far."""
        with self._flush_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._channel is not None:
            self._drain_writer()
            if self._channel is not None:
                return
        with self._lock:
            batch, self._pending = self._pending, []
            payload_rows, self._pending_payloads = self._pending_payloads, []
            snapshots, self._pending_snapshots = self._pending_snapshots, []
            self._pending_payload_bytes = 0
            self._eager = self._strict
        self._last_flush = time.monotonic()
        if not batch and not payload_rows and not snapshots:
            return
        rows, last_hash = self._encode(batch)
        try:
            with self._engine.begin() as conn:
                _payloads.insert_ignoring_duplicates(conn, payload_rows)
                if snapshots:
                    conn.execute(snapshots_table.insert(), snapshots)
                if not rows:
                    pass
                elif self._sqlite:
                    conn.exec_driver_sql(self._insert_sql, rows)  # 2x faster than Core here
                else:  # Core picks the dialect's fast multi-row path
                    keys = events_table.c.keys()
                    conn.execute(events_table.insert(), [dict(zip(keys, r)) for r in rows])
        except SQLAlchemyError as exc:
            with self._lock:
                self._pending[:0] = batch  # keep them, in order, for the next flush
                self._pending_payloads[:0] = payload_rows
                self._pending_snapshots[:0] = snapshots
            if isinstance(exc, IntegrityError):
                hint = f"another EventLog writes as {self.worker_id!r}; use one per worker"
            else:
                hint = "the events are kept and retried at the next flush"
            raise EventLogError(
                f"cannot write {len(batch)} events to {self._safe_url()}: {_reason(exc)}; {hint}."
            ) from exc
        self._last_hash = last_hash
        if self.observer is not None and rows:
            try:
                self.observer(lambda: [_event(row) for row in rows])
            except Exception as exc:  # an observer never breaks the log
                _log.warning("eventlog.observer_failed", worker=self.worker_id, error=str(exc))

    def _encode(self, batch: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], str]:
        return _writer.encode_rows(self.worker_id, self._last_hash, batch)

    def events(
        self,
        kind: str | None = None,
        object_id: int | None = None,
        peer: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """This worker's events, oldest first; ``since``/``until`` are inclusive ``seq`` bounds."""
        if kind is not None and kind not in _KINDS:
            raise ConfigurationError(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
        if self._closed:
            raise EventLogError(f"the event log of {self.worker_id!r} is closed")
        self.flush()
        t = events_table.c
        query = sa.select(events_table).where(t.worker_id == self.worker_id)
        for column, value in ((t.kind, kind), (t.object_id, object_id), (t.peer, peer)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(t.seq >= since)
        if until is not None:
            query = query.where(t.seq <= until)
        # By object: SQLite would walk the primary key in seq order rather than use the object
        # index if asked for ORDER BY seq; one object's events are few, so sort them here.
        by_object = object_id is not None
        if not by_object:
            query = query.order_by(t.seq).limit(limit)
        try:
            with self._read_lock, self._engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise EventLogError(f"cannot read events from {self._safe_url()}: {exc}") from exc
        if by_object:
            rows = sorted(rows, key=lambda row: row.seq)[:limit]
        return [_event(row) for row in rows]

    def close(self) -> None:
        """Flush, then release the database; calling it again does nothing."""
        self._close(wait=True)

    def _close(self, wait: bool) -> None:
        with self._flush_lock:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
            try:
                if self._channel is not None and not wait:
                    self._hand_over()  # the writer commits it; nobody is left to wait
                else:
                    self._flush_locked()
            finally:
                self._engine.dispose()  # first: a temporary file is deleted once released
                if self._channel is not None:
                    self._channel.close_key(self._key, wait=30.0 if wait else 0.0)
                else:
                    self._remove_temp()

    def _inherited_by_fork(self) -> bool:
        """In a forked child: close this log to the child unless it is a real in-memory
        database (the child's own copy); whether it was closed."""
        if self.url == "sqlite://" and self._temp_path is None:
            return False
        self._closed, self._channel, self._temp_path = True, None, None
        self._pending, self._pending_payloads, self._pending_snapshots = [], [], []
        self._inflight.clear()
        self._lock, self._flush_lock = threading.Lock(), threading.Lock()
        self._acked = threading.Condition(self._lock)
        self._engine.dispose(close=False)  # SQLAlchemy's advice: leave the parent's connections
        return True

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # An EventLog dropped without close() still writes what it queued.
        with contextlib.suppress(Exception):
            if not self._closed:
                self._close(wait=False)  # may run on any thread, the writer's reader too

    def __repr__(self) -> str:
        return f"EventLog({self._safe_url()!r}, {self.worker_id!r}, durability={self.durability!r})"

    def _safe_url(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def _background_flush(self) -> None:
        if self._closed or not (self._pending or self._pending_payloads
                                or self._pending_snapshots or self._writer_error):  # fmt: skip
            return
        try:
            with self._flush_lock:
                self._send()  # to the writer process, or inline
        except EventLogError as exc:
            if not self._failing:  # once per run of failures, not every tick
                _log.warning("eventlog.flush_failed", worker=self.worker_id, error=str(exc))
            self._failing = True
        else:
            self._failing = False


_MAX_PENDING_PAYLOAD_BYTES = 32 << 20
_now = time.time
_OWN_TABLES = frozenset({"bastion_events", "bastion_schema", "bastion_payloads",
                         "bastion_snapshots"})  # fmt: skip


def _refuse_foreign(conn: sa.Connection, where: str) -> None:
    """A database that holds other tables but no bastion log is someone else's: refuse it."""
    if conn.dialect.name != "sqlite":  # a server database may hold other applications' tables
        return
    tables = set(sa.inspect(conn).get_table_names())
    if tables and "bastion_schema" not in tables:
        others = ", ".join(sorted(tables - _OWN_TABLES)[:5])
        raise EventLogError(
            f"{where} is not a bastion event log (it holds other tables: {others}); "
            "give each worker's log its own database or file"
        )


def _reason(exc: SQLAlchemyError) -> object:
    return getattr(exc, "orig", None) or exc


def _resolve_url(url: str | os.PathLike[str] | None) -> str:
    if url is None:
        return "sqlite://"
    url = os.fspath(url)
    if "://" in url:
        return url
    return "sqlite:///" + os.path.abspath(url)


def _make_engine(url: str, durability: str, pooled: bool = True) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
        options: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite and parsed.database in (None, "", ":memory:"):
            # One connection shared with the flusher thread, or each thread gets its own database.
            options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        engine = sa.create_engine(parsed, **options)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise EventLogError(
            f"cannot use {url!r} as an event log: {exc}. Pass None (in memory), a file path, "
            "or a SQLAlchemy URL such as 'sqlite:///events.db'."
        ) from exc
    if sqlite:
        synchronous = "FULL" if durability == "strict" else "NORMAL"

        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (SQLAlchemy's recipe)
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.close()

        def on_begin(conn: sa.Connection) -> None:
            # Opening takes the write lock up front so that concurrent openers wait their turn.
            immediate = conn.get_execution_options().get("bastion_immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        sa.event.listen(engine, "connect", on_connect)
        sa.event.listen(engine, "begin", on_begin)
    return engine


def _event(row: Sequence[Any]) -> Event:
    (worker, seq, ts, kind, oid, peer, origin, op, inputs, dtype, shape, digest, detail,
     prev_hash, hash_) = row  # fmt: skip
    details = json.loads(detail) if detail else {}
    return Event(seq, ts, worker, kind, oid, peer, origin, op, _ints(inputs) or (), dtype,
                 _ints(shape), digest, details, prev_hash, hash_)  # fmt: skip


def _to_ints(values: tuple[Any, ...]) -> tuple[int, ...]:
    try:
        return tuple(int(index(value)) for value in values)
    except TypeError as exc:
        raise ConfigurationError(f"object_id, inputs and shape take integers: {exc}") from exc


def _ints(text: str | None) -> tuple[int, ...] | None:
    """``"[2,3]"`` -> ``(2, 3)``: the inverse of the int lists :meth:`EventLog._encode` writes."""
    if text is None:
        return None
    return tuple(map(int, text[1:-1].split(","))) if len(text) > 2 else ()
