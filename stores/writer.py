"""The event log's writer process: hash chains and SQLite inserts, off the worker's CPU.

A batched log in a SQLite file hands its queued events to one writer process per Python
process (started on first use as ``python -I .../bastion/stores/writer.py``). The thread that
runs a worker's operations then only numbers each event and queues a tuple; every 512 events
(or every ``flush_interval``) the queue crosses a pipe as one MessagePack frame, and the
writer chains the hashes, encodes the rows and commits them in one transaction, on another
CPU. The writer imports nothing from bastion (the standard library, blake3 and msgpack), so
it starts in tens of milliseconds; it commits each batch as it arrives and exits when its
input closes, so what was handed to it survives a crash (even SIGKILL) of the worker.

Frames both ways are a 4-byte big-endian length and a MessagePack array::

    parent -> writer   ["open", key, path, worker_id, last_hash, timeout, temporary]
                       ["batch", key, events, payload_rows, snapshots, flags]
                       ["sync", key]
                       ["close", key]
    writer -> parent   ["ready", 0]                      (first, once it runs)
                       ["ok", key, last_hash, hashes, count]
                       ["error", key, message]           (later batches of key are refused)
                       ["closed", key]                   (the file is released if unused)

``flags``: ``WANT_HASHES`` (the reply lists each event's hash, for observers) and ``SYNC``
(reply now). ``ok`` acknowledges the ``count`` batches committed since the last one; the
writer answers at once when asked (``SYNC``, ``sync``, ``WANT_HASHES``) and otherwise at most
every ``ACK_EVERY`` seconds, so that the worker's process is not woken for every batch.

The chain's encoding lives here (:func:`chain_hash`, :func:`encode_rows`) and nowhere else:
the log's own inline writer and :func:`bastion.stores.event_hash` use these functions too.

>>> h = chain_hash("", ("w", 1, 0.5, "create", 7, None, "send", None, (), "float32", (2,),
...                     None, "{}"))
>>> len(h), h == chain_hash("", ("w", 1, 0.5, "create", 7, None, "send", None, [],
...                                "float32", [2], None, "{}"))
(64, True)
"""

from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import blake3
import msgpack

_HEADER = struct.Struct(">I")
WANT_HASHES, SYNC = 1, 2
#: the longest a committed batch waits for its acknowledgement (unless one is asked for)
ACK_EVERY = 0.5
#: how long a new writer process may take to say it is ready (seconds)
START_TIMEOUT = 20.0
#: how large a frame the writer accepts (a batch is capped far below: 512 events and 32 MiB)
MAX_FRAME = 1 << 30
_packers = threading.local()


def chain_hash(prev_hash: str, fields: Sequence[Any]) -> str:
    """BLAKE3 (hex) over ``prev_hash`` and ``msgpack(fields)`` (tuples and lists pack alike)."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer()
    hasher = blake3.blake3(prev_hash.encode())
    hasher.update(packer.pack(fields))
    return hasher.hexdigest()


def int_list(values: Sequence[int]) -> str:
    """``(2, 3)`` -> ``"[2,3]"``: how ``inputs`` and ``shape`` are stored."""
    return "[" + ",".join(map(str, values)) + "]"


_SHAPE_TEXT: dict[tuple[int, ...], str] = {}


def encode_rows(
    worker: str, prev: str, batch: Sequence[Sequence[Any]]
) -> tuple[list[tuple[Any, ...]], str]:
    """Rows of ``bastion_events`` for queued events, chained from ``prev``; and the last hash.

    Each queued event is ``(seq, ts, kind, object_id, peer, origin, op, inputs, dtype, shape,
    digest, detail_json)``.
    """
    rows, shapes = [], _SHAPE_TEXT
    for item in batch:
        seq, ts, kind, oid, peer, origin, op, inputs, dtype, shape, digest, detail = item
        h = chain_hash(prev, (worker, seq, ts, kind, oid, peer, origin, op, inputs, dtype,
                              shape, digest, detail or "{}"))  # fmt: skip
        inputs_json = int_list(inputs) if inputs else None
        if shape is None:
            shape_json = None
        else:
            shape = tuple(shape)
            shape_json = shapes.get(shape)
            if shape_json is None:
                if len(shapes) > 4096:
                    shapes.clear()
                shape_json = shapes[shape] = int_list(shape)
        rows.append((worker, seq, ts, kind, oid, peer, origin, op, inputs_json, dtype,
                     shape_json, digest, detail, prev, h))  # fmt: skip
        prev = h
    return rows, prev


EVENTS_SQL = (
    "INSERT INTO bastion_events (worker_id, seq, ts, kind, object_id, peer, origin, op, inputs,"
    " dtype, shape, digest, detail, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
PAYLOADS_SQL = (
    "INSERT OR IGNORE INTO bastion_payloads (digest, kind, dtype, shape, nbytes, data, path)"
    " VALUES (?,?,?,?,?,?,?)"
)
SNAPSHOTS_SQL = "INSERT INTO bastion_snapshots (worker_id, seq, ts, objects) VALUES (?,?,?,?)"


class WriterGone(Exception):
    """The writer process cannot take frames (it exited, or this process was forked)."""


class Channel:
    """This process's end of its writer process, shared by every batched SQLite-file log.

    ``open`` registers a log and the function that receives the writer's replies for it
    (called on the channel's reader thread); ``send`` queues a frame (it blocks only while
    the pipe is full, which is the back-pressure a slow disk should exert).
    """

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )  # fmt: skip
        self._out = self._proc.stdin.fileno()  # type: ignore[union-attr]
        self._replies = _Frames(self._proc.stdout)
        self._await_ready(START_TIMEOUT)
        _widen_pipe(self._out)
        self._pid = os.getpid()
        self._send_lock = threading.Lock()
        self._handlers: dict[int, weakref.WeakMethod[Callable[[list[Any]], None]]] = {}
        self._closing: dict[int, threading.Event] = {}
        self._next_key = 0
        self.alive = True
        self._reader = threading.Thread(
            target=self._read_forever, name="bastion-eventlog-writer", daemon=True
        )
        self._reader.start()

    def _await_ready(self, timeout: float) -> None:
        """Wait for the writer's first frame; a child that is not a writer is stopped."""
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        message = self._replies.next() if ready else None
        if not message or message[0] != "ready":
            self._proc.kill()
            self._proc.wait()
            raise WriterGone(
                f"{sys.executable} -I {os.path.abspath(__file__)} did not start an event log "
                f"writer within {timeout:g} s; logs write inline"
            )

    @property
    def pid(self) -> int:
        """The writer process's pid."""
        return self._proc.pid

    def open(self, on_reply: Callable[[list[Any]], None], path: str, worker_id: str,
             last_hash: str, timeout: float, temporary: bool = False) -> int:  # fmt: skip
        """Register one log (``on_reply`` a bound method); returns its key. A ``temporary``
        file is deleted (with its folder) once no log uses it, or when this process exits."""
        with self._send_lock:
            self._next_key += 1
            key = self._next_key
        self._handlers[key] = weakref.WeakMethod(on_reply)  # type: ignore[arg-type]
        self.send(["open", key, path, worker_id, last_hash, timeout, temporary])
        return key

    def close_key(self, key: int, wait: float = 0.0) -> None:
        """Forget one log; the writer closes the file once no log uses it (waiting up to
        ``wait`` seconds for that, so that a closed log leaves a complete database file)."""
        self._handlers.pop(key, None)
        done = self._closing[key] = threading.Event()
        try:
            self.send(["close", key])
            done.wait(wait)
        except WriterGone:
            pass
        finally:
            self._closing.pop(key, None)

    def send(self, message: list[Any] | bytes) -> None:
        """Send one message (or one already :func:`pack`-ed)."""
        data = message if isinstance(message, bytes) else pack(message)
        if not self.alive or os.getpid() != self._pid:
            raise WriterGone("the event log's writer process is gone")
        view = memoryview(_HEADER.pack(len(data)) + data)
        try:
            with self._send_lock:
                while view:
                    view = view[os.write(self._out, view) :]
        except OSError as exc:
            self.alive = False
            raise WriterGone(f"the event log's writer process is gone: {exc}") from exc

    def shutdown(self, timeout: float = 10.0) -> None:
        """Close the pipe and wait for the writer to commit what it holds and exit."""
        if os.getpid() != self._pid:
            return
        self.alive = False
        with self._send_lock:
            try:
                self._proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout)

    def _read_forever(self) -> None:
        while True:
            message = self._replies.next()
            if message is None:
                break
            if message[0] == "closed":
                done = self._closing.get(message[1])
                if done is not None:
                    done.set()
                continue
            ref = self._handlers.get(message[1])
            handler = ref() if ref is not None else None
            if handler is not None:
                handler(message)
        self.alive = False
        for done in list(self._closing.values()):
            done.set()
        for key, ref in list(self._handlers.items()):
            handler = ref()
            if handler is not None:
                handler(["error", key, "the event log's writer process exited"])


_channel: Channel | None = None
_channel_lock = threading.Lock()


_unavailable: str | None = None  # why a writer could not start (then none is tried again)


def channel() -> Channel:
    """This process's writer channel, started on first use (and again if it died); raises
    :class:`WriterGone` for good once a writer failed to start."""
    global _channel, _unavailable
    with _channel_lock:
        if _unavailable is not None:
            raise WriterGone(_unavailable)
        if _channel is None or not _channel.alive or _channel._pid != os.getpid():
            try:
                _channel = Channel()
            except (OSError, WriterGone) as exc:
                _unavailable = str(exc)
                raise WriterGone(_unavailable) from exc
        return _channel


def available() -> bool:
    """Whether this process has (or can start) a writer process."""
    try:
        channel()
    except WriterGone:
        return False
    return True


def shutdown() -> None:
    """Stop this process's writer, once every log has flushed (called at interpreter exit)."""
    global _channel
    with _channel_lock:
        current, _channel = _channel, None
    if current is not None:
        current.shutdown()


def _forget_after_fork() -> None:
    global _channel, _channel_lock
    _channel, _channel_lock = None, threading.Lock()  # the child starts its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe (Linux) so a batch rarely waits for the writer to read."""
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except (ImportError, OSError):
        pass


def pack(message: list[Any]) -> bytes:
    """The MessagePack body of a frame."""
    return msgpack.packb(message)


def unpack(data: bytes) -> Any:
    """A frame's body back as tuples (what :func:`pack` was given, lists as tuples)."""
    return msgpack.unpackb(data, use_list=False)


class _Frames:
    """Frames from a stream, read in large chunks: ``next(block=False)`` returns ``()`` unless
    a whole frame has already arrived; ``None`` at the end of the input."""

    def __init__(self, stream: Any) -> None:
        self._read = getattr(stream, "read1", stream.read)  # at most what is there (a pipe)
        self._buffer, self._at = bytearray(), 0

    def next(self, block: bool = True) -> Any:
        buffer = self._buffer
        while True:
            available = len(buffer) - self._at
            if available >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, self._at)
                if size > MAX_FRAME:
                    raise ValueError(f"frame of {size} bytes is over the writer's limit")
                end = self._at + _HEADER.size + size
                if len(buffer) >= end:
                    message = unpack(bytes(memoryview(buffer)[self._at + _HEADER.size : end]))
                    self._at = end
                    return message
            if not block:
                return ()
            del buffer[: self._at]
            self._at = 0
            chunk = self._read(1 << 20)
            if not chunk:
                return None
            buffer += chunk


# ---------------------------------------------------------------- the writer process


class _Log:
    __slots__ = ("path", "worker", "prev", "failed", "unacked", "acked_at", "temporary",
                 "timeout")  # fmt: skip

    def __init__(self, path: str, worker: str, prev: str, temporary: bool, timeout: float) -> None:
        self.path, self.worker, self.prev, self.failed = path, worker, prev, None
        self.temporary, self.timeout = temporary, timeout
        self.unacked, self.acked_at = 0, time.monotonic()


#: how many queued batches of one log the writer commits in one transaction, at most
GROUP = 16


def serve(inp: Any, out: Any) -> None:
    """The writer's loop: read frames from ``inp`` until it closes, reply on ``out``.

    Batches of one log that arrived together (in one read of the pipe) are committed in
    one transaction.
    """
    logs: dict[int, _Log] = {}
    connections: dict[str, sqlite3.Connection] = {}
    frames = _Frames(inp)

    def reply(message: list[Any]) -> None:
        data = msgpack.packb(message)
        out.write(_HEADER.pack(len(data)) + data)
        out.flush()

    def acknowledge(key: int, log: _Log, hashes: Sequence[str] = ()) -> None:
        reply(["ok", key, log.prev, hashes, log.unacked])
        log.unacked, log.acked_at = 0, time.monotonic()

    def refuse(key: int, log: _Log | None) -> None:
        why = "not open" if log is None else log.failed
        reply(["error", key, f"refused after an earlier failure: {why}"])

    reply(["ready", 0])
    carried: Any = ()
    while True:
        message = frames.next() if carried == () else carried
        carried = ()
        if message is None:
            break
        verb, key = message[0], message[1]
        log = logs.get(key)
        if verb == "open":
            path, worker, prev, timeout, temporary = message[2:7]
            logs[key] = log = _Log(path, worker, prev, temporary, timeout)
            _connection(connections, log)
        elif verb == "close":
            logs.pop(key, None)
            if log is not None and all(other.path != log.path for other in logs.values()):
                _release(connections, log)
            reply(["closed", key])
        elif log is None or log.failed is not None:
            refuse(key, log)
        elif verb == "sync":
            acknowledge(key, log)
        elif verb == "batch":
            group = [message]
            while len(group) < GROUP:
                following = frames.next(block=False)
                if following == ():
                    break
                if following is None or following[0] != "batch" or following[1] != key:
                    carried = following
                    break
                group.append(following)
            conn = _connection(connections, log)
            if conn is None:
                refuse(key, log)
                continue
            _commit(conn, log, group, reply, acknowledge)
    for log in logs.values():  # the worker's process is gone, or done
        _release(connections, log)


def _release(connections: dict[str, sqlite3.Connection], log: _Log) -> None:
    """Close ``log``'s file (and delete it if it was a private, temporary one)."""
    conn = connections.pop(log.path, None)
    if conn is not None:
        conn.close()
    if log.temporary:
        folder = os.path.dirname(log.path)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
        with contextlib.suppress(OSError):
            os.rmdir(folder)


#: files the writer keeps open at once (3 descriptors each); the least recently used is closed
MAX_OPEN = 128


def _connection(connections: dict[str, sqlite3.Connection], log: _Log) -> Any:
    """``log``'s connection, opened (again) if need be; ``None`` if its file cannot be opened."""
    conn = connections.pop(log.path, None)
    if conn is None:
        while len(connections) >= MAX_OPEN:
            connections.pop(next(iter(connections))).close()
        try:
            conn = _connect(log.path, log.timeout)
        except sqlite3.Error as exc:
            log.failed = f"cannot open {log.path}: {exc}"
            return None
    connections[log.path] = conn  # the most recently used last
    return conn


def _commit(conn: sqlite3.Connection, log: _Log, group: list[Any],
            reply: Callable[[list[Any]], None],
            acknowledge: Callable[..., None]) -> None:  # fmt: skip
    """Commit a group of one log's batches in one transaction, then acknowledge them."""
    key, prev, encoded = group[0][1], log.prev, []
    for message in group:
        rows, prev = encode_rows(log.worker, prev, message[2])
        encoded.append((rows, prev, message[5]))
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for message, (rows, _, _) in zip(group, encoded):
                if message[3]:
                    conn.executemany(PAYLOADS_SQL, message[3])
                if message[4]:
                    conn.executemany(SNAPSHOTS_SQL, message[4])
                if rows:
                    conn.executemany(EVENTS_SQL, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        log.failed = str(exc)
        reply(["error", key, log.failed])
        return
    for rows, last, flags in encoded:
        log.prev = last
        log.unacked += 1
        if flags & WANT_HASHES:
            acknowledge(key, log, [row[-1] for row in rows])
    if log.unacked and (any(flags & SYNC for _, _, flags in encoded)
                        or time.monotonic() - log.acked_at >= ACK_EVERY):  # fmt: skip
        acknowledge(key, log)


def _connect(path: str, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker; EOF ends this
    with contextlib.suppress(OSError):
        os.nice(10)  # background work: a worker sharing this CPU gets it first
    serve(sys.stdin.buffer, sys.stdout.buffer)
