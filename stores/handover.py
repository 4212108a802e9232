"""How an :class:`~bastion.stores.EventLog` hands its batches to the writer process.

The log's side of :mod:`bastion.stores.writer`: it queues events as before, and ``_send``
packs the queue into one frame for the writer instead of writing it; the writer's answers
arrive on the channel's reader thread (``_on_reply``). Batches stay packed in ``_inflight``
until acknowledged, so that if the writer exits or a commit fails the log can take them back
(``_drain_writer``), drop what the database already holds (``_resync``) and write inline from
then on. A mixin: it works on the log's own state (queue, locks, chain).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from bastion.errors import EventLogError
from bastion.events import Event
from bastion.logs import get_logger
from bastion.stores import writer as _writer
from bastion.stores.payloads import PayloadRow

_log = get_logger("bastion.stores.eventlog")
_warned_unavailable = False


class WriterHandover:
    """The writer-process half of :class:`~bastion.stores.EventLog` (a mixin)."""

    _channel: _writer.Channel | None
    _temp_path: str | None

    @property
    def writer_pid(self) -> int | None:
        """The pid of the writer process this log hands its batches to (``None``: inline)."""
        channel = self._channel
        return None if channel is None else channel.pid

    def _writer_path(self) -> str | None:
        """The file a writer process may write this log to: batched, SQLite, a plain path."""
        if self._temp_path is not None:
            return self._temp_path
        parsed = sa.make_url(self.url)
        if (self._strict or not self._sqlite or parsed.query
                or parsed.database in (None, "", ":memory:")
                or parsed.database.startswith("file:")):  # fmt: skip
            return None
        return parsed.database

    def _start_writer(self, path: str) -> None:
        try:
            channel = _writer.channel()
            self._key = channel.open(self._on_reply, path, self.worker_id, self._last_hash, 5.0,
                                     temporary=self._temp_path is not None)  # fmt: skip
        except (OSError, _writer.WriterGone) as exc:
            global _warned_unavailable
            if not _warned_unavailable:  # once per process: every later log would say the same
                _warned_unavailable = True
                _log.warning("eventlog.writer_unavailable", worker=self.worker_id, error=str(exc),
                             action="logs write inline")  # fmt: skip
            return
        self._channel = channel

    def _send(self) -> None:
        """Hand the queue to the writer process (holding ``_flush_lock``: batches in order);
        once the writer has failed, write inline instead."""
        if self._channel is None or self._writer_error is not None:
            self._flush_locked()
        else:
            self._hand_over()

    def _hand_over(self, sync: bool = False) -> bool:
        """Send the queue as one batch (``sync``: asking for an answer now); whether it did."""
        with self._lock:
            if self._writer_error is not None:
                return False
            batch, self._pending = self._pending, []
            payload_rows, self._pending_payloads = self._pending_payloads, []
            snapshots, self._pending_snapshots = self._pending_snapshots, []
            self._pending_payload_bytes = 0
            self._eager = self._strict
        if not batch and not payload_rows and not snapshots:
            return False
        self._last_flush = time.monotonic()
        rows = [(s["worker_id"], s["seq"], s["ts"], s["objects"]) for s in snapshots]
        flags = (_writer.WANT_HASHES if self._observing() else 0) | (_writer.SYNC if sync else 0)
        frame = _writer.pack(["batch", self._key, batch, payload_rows, rows, flags])
        del batch, payload_rows, snapshots
        with self._lock:
            self._inflight.append(frame)
        try:
            self._channel.send(frame)  # type: ignore[union-attr]
        except _writer.WriterGone as exc:
            with self._lock:
                self._writer_error = str(exc)
        return True

    def _observing(self) -> bool:
        """Whether written events must be built for the observer (its ``wanted``, if any)."""
        observer = self.observer
        if observer is None:
            return False
        wanted = getattr(observer, "wanted", None)
        return True if wanted is None else bool(wanted())

    def _on_reply(self, message: list[Any]) -> None:
        """A reply of the writer process (on the channel's reader thread)."""
        built = None
        with self._lock:
            if self._channel is None:  # taken over already: a late reply
                return
            if message[0] == "ok" and self._writer_error is None:
                frames = [self._inflight.popleft() for _ in range(min(message[4],
                                                                       len(self._inflight)))]
                if message[3] and len(frames) == 1:  # asked for: one batch, answered at once
                    built = (_writer.unpack(frames[0])[2], self._last_hash, message[3])
                self._last_hash = message[2]
            elif message[0] == "error" and self._writer_error is None:
                self._writer_error = str(message[2])
            self._acked.notify_all()
        if built is not None:
            try:
                self.observer(lambda: _events_of(self.worker_id, *built))  # type: ignore[misc]
            except Exception as exc:  # an observer never breaks the log
                _log.warning("eventlog.observer_failed", worker=self.worker_id, error=str(exc))

    def _drain_writer(self) -> None:
        """Send the queue, wait until the writer has committed it; on a failure of the writer,
        take its unacknowledged batches back and write inline from now on."""
        if not self._hand_over(sync=True) and self._inflight:
            try:
                self._channel.send(["sync", self._key])  # type: ignore[union-attr]
            except _writer.WriterGone as exc:
                with self._lock:
                    self._writer_error = self._writer_error or str(exc)
        with self._lock:
            while self._inflight and self._writer_error is None:
                self._acked.wait(1.0)
                if self._channel is not None and not self._channel.alive:
                    self._acked.wait(0.5)  # let the reader deliver the last replies
                    if self._inflight and self._writer_error is None:
                        self._writer_error = "the event log's writer process exited"
            if self._writer_error is None:
                return
            why, channel, self._channel = self._writer_error, self._channel, None
            self._writer_error = None
            batches = [_writer.unpack(frame)[2:5] for frame in self._inflight]
            self._inflight.clear()
            self._pending[:0] = [event for batch in batches for event in batch[0]]
            self._pending_payloads[:0] = [PayloadRow(*row) for batch in batches for row in batch[1]]
            self._pending_snapshots[:0] = [
                dict(zip(("worker_id", "seq", "ts", "objects"), row))
                for batch in batches for row in batch[2]
            ]
        if channel is not None:
            channel.close_key(self._key)
        _log.warning("eventlog.writer_failed", worker=self.worker_id, error=why,
                     action="writing inline from now on")  # fmt: skip
        self._resync()

    def _resync(self) -> None:
        """Drop from the queue what the writer committed but could not acknowledge (it
        exited in between): the rows at those ``seq``s that are these very events."""
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return
        from bastion.stores.eventlog import _reason, events_table  # eventlog imports this

        t = events_table.c
        try:
            with self._read_lock, self._engine.connect() as conn:
                stored = conn.execute(
                    sa.select(t.seq, t.ts, t.kind, t.object_id, t.hash)
                    .where(t.worker_id == self.worker_id)
                    .where(t.seq.between(pending[0][0], pending[-1][0]))
                    .order_by(t.seq)
                ).all()
        except SQLAlchemyError as exc:
            raise EventLogError(
                f"cannot read the event log at {self._safe_url()}: {_reason(exc)}"
            ) from exc
        done = 0
        for row, event in zip(stored, pending):
            if (row.seq, row.ts, row.kind, row.object_id) != event[:4]:
                break  # not ours: the inline write will say why
            done += 1
        if done:
            last_seq = pending[done - 1][0]
            with self._lock:
                self._last_hash = stored[done - 1].hash
                del self._pending[:done]
                self._pending_snapshots = [
                    s for s in self._pending_snapshots if s["seq"] > last_seq
                ]

    def _remove_temp(self) -> None:
        """Delete the temporary file of a private log that writes inline (and its folder)."""
        if self._temp_path is not None:
            shutil.rmtree(os.path.dirname(self._temp_path), ignore_errors=True)



def _events_of(worker: str, batch: list[Any], prev: str, hashes: Sequence[str]) -> list[Event]:
    """The ``Event``s of a batch the writer process committed, given its hashes."""
    events = []
    for item, hash_ in zip(batch, hashes):
        seq, ts, kind, oid, peer, origin, op, inputs, dtype, shape, digest, detail = item
        events.append(Event(seq, ts, worker, kind, oid, peer, origin, op, tuple(inputs), dtype,
                            None if shape is None else tuple(shape), digest,
                            json.loads(detail) if detail else {}, prev, hash_))  # fmt: skip
        prev = hash_
    return events


