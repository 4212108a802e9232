"""Counts over a whole log: events by kind, peer and worker, payload bytes, time span, rate.

Two grouped scans answer everything but the time span, which comes from each worker's first
and last event on the primary key.

>>> import os, tempfile
>>> from bastion.stores import EventLog
>>> path = os.path.join(tempfile.mkdtemp(), "doc.db")
>>> with EventLog(path, "M1") as log:
...     _ = log.append("create", object_id=1, peer="me", dtype="float32", shape=(2, 3))
...     _ = log.append("get", object_id=1, peer="me")
>>> s = stats(path)
>>> s.events, s.by_kind, s.bytes_created
(2, {'create': 1, 'get': 1}, 24)
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import sqlalchemy as sa
import torch

from bastion.audit.reader import AuditLog, opened
from bastion.stores.eventlog import events_table

_T = events_table.c


@cache
def itemsize(dtype: str) -> int | None:
    """Bytes per element of a torch dtype named ``dtype`` (``None`` if it names none)."""
    value = getattr(torch, dtype, None)
    return value.itemsize if isinstance(value, torch.dtype) else None


def payload_bytes(dtype: str | None, shape: tuple[int, ...] | None) -> int | None:
    """Bytes of a tensor payload from its dtype name and shape (``None``: not a tensor)."""
    if dtype is None or shape is None:
        return None
    size = itemsize(dtype)
    if size is None:
        return None
    count = 1
    for dim in shape:
        count *= dim
    return count * size


@dataclass
class Stats:
    """What :func:`stats` found. ``bytes_created`` adds up the tensor payload of every
    ``create`` (dtype size times elements); ``bytes_stored`` is what the log's payload store
    holds (each distinct content once), when the log stores payloads."""

    events: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    by_peer: dict[str, int] = field(default_factory=dict)
    by_worker: dict[str, int] = field(default_factory=dict)
    objects_created: int = 0
    bytes_created: int = 0
    bytes_stored: int | None = None
    first_ts: float | None = None
    last_ts: float | None = None

    @property
    def events_per_minute(self) -> float:
        """Events over the span between the first and the last (0 for an empty log)."""
        if not self.events or self.first_ts is None or self.last_ts is None:
            return 0.0
        minutes = max(self.last_ts - self.first_ts, 1e-3) / 60
        return self.events / minutes

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with ``events_per_minute``."""
        return {**asdict(self), "events_per_minute": round(self.events_per_minute, 3)}


def _add(counts: dict[str, int], key: str | None, count: int) -> None:
    name = "-" if key is None else key
    counts[name] = counts.get(name, 0) + count


def stats(url: str | os.PathLike[str] | AuditLog, worker: str | None = None) -> Stats:
    """Counts over the log at ``url`` (every worker, or only ``worker``)."""
    with opened(url) as log:
        return _stats(log, worker)


def _stats(log: AuditLog, worker: str | None) -> Stats:
    result = Stats()
    names = [log.worker(worker)] if worker is not None else log.workers()
    for name in names:  # counted on the object index alone: no table rows read
        count = log.query(sa.select(sa.func.count()).where(_T.worker_id == name))[0][0]
        result.by_worker[name] = count
        result.events += count
    # Two grouped scans of the table, side by side on two connections (SQLite sorts to group:
    # two narrow sorts at once take half the time of one wide one). A plain ``worker_id = ?``
    # would make SQLite walk the object index and fetch rows in random order: slower still.
    where = [] if worker is None else [sa.func.coalesce(_T.worker_id, "") == names[0]]
    by_kind_peer = (sa.select(_T.kind, _T.peer, sa.func.count()).where(*where)
                    .group_by(_T.kind, _T.peer))  # fmt: skip
    payloads = (sa.select(_T.dtype, _T.shape, sa.func.count()).where(_T.kind == "create", *where)
                .group_by(_T.dtype, _T.shape))  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        counted, created = pool.map(log.query, (by_kind_peer, payloads))
    for kind, peer, count in counted:
        _add(result.by_kind, kind, count)
        _add(result.by_peer, peer, count)
    for dtype, shape, count in created:
        result.objects_created += count
        try:
            dims = tuple(json.loads(shape)) if shape else None
        except ValueError:
            dims = None
        size = payload_bytes(dtype, dims)
        if size is not None:
            result.bytes_created += count * size
    for name in names:
        bounds = log.bounds(name)
        if bounds is not None:
            first, last = bounds[0].ts, bounds[1].ts
            result.first_ts = first if result.first_ts is None else min(result.first_ts, first)
            result.last_ts = last if result.last_ts is None else max(result.last_ts, last)
    if worker is None and log.has_table("bastion_payloads"):
        stored = log.query(sa.text("SELECT sum(nbytes) FROM bastion_payloads"))[0][0]
        result.bytes_stored = int(stored or 0)
    result.by_kind = dict(sorted(result.by_kind.items(), key=lambda kv: -kv[1]))
    result.by_peer = dict(sorted(result.by_peer.items(), key=lambda kv: -kv[1]))
    return result


def timeline(
    url: str | os.PathLike[str] | AuditLog, buckets: int = 60
) -> tuple[float, float, list[dict[str, int]]]:
    """Events per kind in ``buckets`` equal slices of the log's time span:
    ``(start, slice width in seconds, [{kind: count}, ...])``."""
    with opened(url) as log:
        s = _stats(log, None)
        if s.first_ts is None or s.last_ts is None:
            return 0.0, 0.0, []
        width = max((s.last_ts - s.first_ts) / buckets, 1e-6)
        slot = sa.cast((_T.ts - s.first_ts) / width, sa.Integer)
        rows = log.query(sa.select(slot, _T.kind, sa.func.count()).group_by(slot, _T.kind))
    counts: list[dict[str, int]] = [{} for _ in range(buckets)]
    for index, kind, count in rows:
        bucket = counts[min(max(int(index), 0), buckets - 1)]
        bucket[kind] = bucket.get(kind, 0) + count
    return s.first_ts, width, counts
