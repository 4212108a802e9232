"""A worker's object store as it stood at a point of its log, from the events alone.

:func:`store_at` projects the events up to the point: ``create`` adds (or replaces) an
object, ``get``, ``move`` and ``delete`` remove one, ``clear`` drops the ids it lists; other
kinds change nothing. It needs no payloads and answers with ids, dtype, shape and digest.
:func:`export_store` writes the tensors themselves, rebuilt by
``bastion.stores.replay`` from the payloads the log stores.

>>> import os, tempfile
>>> from bastion.stores import EventLog
>>> path = os.path.join(tempfile.mkdtemp(), "doc.db")
>>> with EventLog(path, "M1") as log:
...     _ = log.append("create", object_id=1, peer="me", dtype="float32", shape=(2,))
...     _ = log.append("create", object_id=2, peer="me", dtype="int64", shape=())
...     _ = log.append("get", object_id=1, peer="me")
>>> sorted(store_at(path, 2)["M1"]), sorted(store_at(path)["M1"])
([1, 2], [2])
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
import torch

from bastion.audit.reader import AuditLog, Point, _ints, format_ts, opened
from bastion.errors import AuditError
from bastion.stores.eventlog import events_table

_T = events_table.c
_GONE = frozenset({"get", "move", "delete"})


@dataclass(frozen=True)
class ObjectState:
    """An object held at the replayed point: what the ``create`` that made it recorded."""

    object_id: int
    dtype: str | None
    shape: tuple[int, ...] | None
    digest: str | None
    seq: int  #: the ``create`` it comes from
    origin: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return asdict(self)


def _targets(log: AuditLog, at: Point | None, worker: str | None) -> dict[str, int | None]:
    """``{worker: last seq to apply}`` (``None``: to the end)."""
    if isinstance(at, int):
        return {log.worker(worker): at}
    names = [log.worker(worker)] if worker is not None else log.workers()
    if at is None:
        return dict.fromkeys(names)
    return {name: log.seq_at(name, at) for name in names}


def store_at(
    url: str | os.PathLike[str] | AuditLog, at: Point | None = None, worker: str | None = None
) -> dict[str, dict[int, ObjectState]]:
    """``{worker: {object_id: ObjectState}}`` as each store stood after ``at``.

    ``at``: a ``seq`` (then one worker: ``worker``, or the only one in the database), a time
    (``datetime`` or POSIX seconds: every worker, or only ``worker``), or ``None`` for now.
    """
    with opened(url) as log:
        if isinstance(at, int) and at < 0:
            raise AuditError(f"seq {at} is not a place in a log: seqs start at 1")
        result = {}
        for name, last in _targets(log, at, worker).items():
            result[name] = _project(log, name, last)
        return result


def _project(log: AuditLog, worker: str, last: int | None) -> dict[int, ObjectState]:
    query = (sa.select(_T.seq, _T.kind, _T.object_id, _T.dtype, _T.shape, _T.digest, _T.origin,
                       sa.case((_T.kind == "clear", _T.detail), else_=None))
             .where(_T.worker_id == worker).order_by(_T.seq))  # fmt: skip
    if last is not None:
        query = query.where(_T.seq <= last)
    store: dict[int, ObjectState] = {}
    for seq, kind, oid, dtype, shape, digest, origin, detail in log.stream(query):
        if kind == "create" and oid is not None:
            store[oid] = ObjectState(oid, dtype, _ints(shape), digest, seq, origin)
        elif kind in _GONE:
            store.pop(oid, None)
        elif kind == "clear":
            try:
                ids = json.loads(detail).get("ids", []) if detail else []
            except (ValueError, AttributeError):
                ids = list(store)  # an unreadable clear: it cleared everything
            for dropped in ids:
                store.pop(dropped, None)
    return dict(sorted(store.items(), key=lambda item: item[1].seq))


def export_store(
    url: str | os.PathLike[str], directory: str | os.PathLike[str], at: Point | None = None,
    worker: str | None = None,
) -> list[str]:  # fmt: skip
    """Write each worker's tensors at ``at`` into ``directory``; returns the files written.

    Per worker: ``<worker>.safetensors`` (the tensors, keyed by object id as text) and
    ``<worker>.json`` (every object: id, dtype, shape, digest, and for what is not a tensor
    its type and ``repr``, or that its payload was not stored). Needs the payloads the log
    keeps (``bastion.stores.replay``).
    """
    import bastion.stores as stores

    replay = getattr(stores, "replay", None)
    if replay is None:
        raise AuditError("this bastion does not store payloads, so tensors cannot be rebuilt; "
                         "list what the store held without --export")  # fmt: skip
    from safetensors.torch import save_file

    with opened(url) as log:
        targets = _targets(log, at, worker)
        states = {name: _project(log, name, last) for name, last in targets.items()}
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, last in targets.items():
        rebuilt = replay(os.fspath(url), name, until=last)
        tensors, manifest = {}, []
        missing = set(getattr(rebuilt, "missing", ()))
        for oid, state in states[name].items():
            entry: dict[str, Any] = state.to_dict()
            value = rebuilt.get(oid)
            if isinstance(value, torch.Tensor):
                tensors[str(oid)] = value.detach().cpu().contiguous().clone()
                entry["key"] = str(oid)
            elif oid in missing or oid not in rebuilt:
                entry["missing"] = "the log holds no payload for it"
            else:
                entry["type"], entry["repr"] = type(value).__name__, repr(value)
            manifest.append(entry)
        stem = os.path.join(os.fspath(directory), _safe(name))
        save_file(tensors, stem + ".safetensors", metadata={"worker": name, "seq": str(last or "")})
        point = at.isoformat() if isinstance(at, dt.datetime) else at
        head = {"worker": name, "at": point, "seq": last,
                "written": format_ts(dt.datetime.now(dt.timezone.utc).timestamp())}  # fmt: skip
        with open(stem + ".json", "w") as out:  # one object a line: easy to read and to diff
            out.write(json.dumps(head)[:-1] + ', "objects": [\n')
            out.write(",\n".join("  " + json.dumps(entry) for entry in manifest))
            out.write("\n]}\n")
        written += [stem + ".safetensors", stem + ".json"]
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
