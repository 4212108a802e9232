"""Payloads, stored once per content digest, so that a log can rebuild its objects.

A payload is the content of one created object: a tensor's dtype, shape and bytes, or a
plain value in the wire format (never pickle). It is keyed by the digest its ``create`` event
carries (:func:`bastion.events.payload_digest`), so the same tensor sent a hundred times, or
held by several workers of one database, is stored once. Small payloads live in the table
``bastion_payloads``; payloads of ``blob_threshold`` bytes or more go to content-addressed
files ``<blob_dir>/<digest[:2]>/<digest>`` beside the database (for a SQLite file, the
folder ``<file>.blobs``), so a 1 GiB tensor does not bloat SQLite.

Snapshots (table ``bastion_snapshots``) list a worker's objects and their digests as they
stood after one ``seq``: replay and recovery start from the latest one and read only the
events after it.

>>> import torch
>>> from bastion.events import payload_digest
>>> t = torch.arange(3.0)
>>> row = capture(t, payload_digest(t), blob_dir=None, threshold=1 << 20)
>>> row.kind, row.dtype, row.shape, row.nbytes
('tensor', 'float32', '[3]', 12)
>>> load(row, None)
tensor([0., 1., 2.])
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from typing import Any, NamedTuple

import sqlalchemy as sa
import torch

from bastion import serde
from bastion.errors import EventLogError, SerializationError
from bastion.events import dtype_name, payload_digest, tensor_bytes

metadata = sa.MetaData()
payloads_table = sa.Table(
    "bastion_payloads",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),  # "tensor" or "object"
    sa.Column("dtype", sa.String(32), nullable=True),
    sa.Column("shape", sa.Text, nullable=True),
    sa.Column("nbytes", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=True),  # NULL when the payload is a file
    sa.Column("path", sa.String(255), nullable=True),  # relative to the blob folder
)
snapshots_table = sa.Table(
    "bastion_snapshots",
    metadata,
    sa.Column("worker_id", sa.String(255), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.Double, nullable=False),
    # JSON: [[object_id, digest, detail or null], ...] of the store after event ``seq``
    sa.Column("objects", sa.Text, nullable=False),
)


class PayloadRow(NamedTuple):
    """One row of ``bastion_payloads``."""

    digest: str
    kind: str
    dtype: str | None
    shape: str | None
    nbytes: int
    data: bytes | None
    path: str | None


_DTYPES = {dtype_name(d): d for d in vars(torch).values() if isinstance(d, torch.dtype)}


def default_blob_dir(url: str) -> str | None:
    """``<file>.blobs`` beside a SQLite file; ``None`` (payloads in the database) otherwise."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        database = parsed.database
        if database.startswith("file:"):  # a read-only URI: file:/path?mode=ro
            database = database[5:]
        return database + ".blobs"
    return None


def capture(
    value: Any, digest: str, *, blob_dir: str | None, threshold: int, fsync: bool = False
) -> PayloadRow | None:
    """The payload row of ``value`` (its bytes copied now, or written to a blob file).

    ``None`` for a value that has no safe encoding (it is logged, but cannot be replayed).
    """
    if isinstance(value, torch.Tensor):
        data = tensor_bytes(value)
        shape = "[" + ",".join(map(str, value.shape)) + "]"
        dtype = dtype_name(value.dtype)
        if blob_dir is not None and data.nbytes >= threshold:
            path = _write_blob(blob_dir, digest, data, fsync)
            return PayloadRow(digest, "tensor", dtype, shape, data.nbytes, None, path)
        return PayloadRow(digest, "tensor", dtype, shape, data.nbytes, bytes(data), None)
    try:
        data = bytes(serde.encode_bytes(value))
    except SerializationError:
        return None
    return PayloadRow(digest, "object", None, None, len(data), data, None)


def _write_blob(blob_dir: str, digest: str, data: memoryview, fsync: bool) -> str:
    relative = os.path.join(digest[:2], digest)
    path = os.path.join(blob_dir, relative)
    if os.path.exists(path):  # content-addressed: already there means already right
        return relative
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                if fsync:
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if fsync:
            _fsync_dir(folder)
    except OSError as exc:
        raise EventLogError(f"cannot write the payload file {path}: {exc}") from exc
    return relative


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes(row: PayloadRow, blob_dir: str | None) -> bytes:
    """The stored bytes of ``row``, from the database or its blob file."""
    if row.data is not None:
        return bytes(row.data)
    if row.path is None or blob_dir is None:
        raise EventLogError(
            f"payload {row.digest[:16]}... is a file, but no blob folder is known; pass blob_dir"
        )
    path = os.path.join(blob_dir, row.path)
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise EventLogError(f"cannot read the payload file {path}: {exc.strerror}") from exc


def load(row: PayloadRow, blob_dir: str | None) -> Any:
    """The object ``row`` stores: a fresh tensor (bitwise the one captured) or a plain value."""
    data = read_bytes(row, blob_dir)
    if row.kind == "object":
        return serde.decode(bytearray(data))[1]
    dtype = _DTYPES.get(row.dtype or "")
    if dtype is None:
        raise EventLogError(f"payload {row.digest[:16]}... has an unknown dtype {row.dtype!r}")
    shape = _shape(row.shape)
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def check(row: PayloadRow, blob_dir: str | None) -> str | None:
    """Why ``row`` does not hold (missing file, wrong size, content not its digest), or None."""
    try:
        value = load(row, blob_dir)
    except (EventLogError, SerializationError, RuntimeError, ValueError) as exc:
        return str(exc)
    if row.kind == "tensor" and value.nbytes != row.nbytes:
        return f"its payload has {value.nbytes} bytes, {row.nbytes} were recorded"
    if payload_digest(value) != row.digest:
        return "its payload does not match its digest: the stored content was changed"
    return None


def load_many(
    conn: sa.Connection, digests: Iterable[str], blob_dir: str | None
) -> dict[str, PayloadRow]:
    """The payload rows of ``digests`` that are stored, by digest (read in chunks)."""
    wanted = list(dict.fromkeys(digests))
    found: dict[str, PayloadRow] = {}
    t = payloads_table.c
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for row in conn.execute(sa.select(payloads_table).where(t.digest.in_(chunk))):
            found[row.digest] = PayloadRow(*row)
    return found


def _shape(text: str | None) -> tuple[int, ...]:
    if not text or len(text) <= 2:
        return ()
    return tuple(map(int, text[1:-1].split(",")))


def insert_ignoring_duplicates(conn: sa.Connection, rows: list[PayloadRow]) -> None:
    """Insert payload rows; a digest already stored is skipped (same digest, same content)."""
    if not rows:
        return
    values = [row._asdict() for row in rows]
    dialect = conn.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        t = payloads_table.c
        have = set(conn.scalars(sa.select(t.digest).where(t.digest.in_([r.digest for r in rows]))))
        values = [v for v in values if v["digest"] not in have]
        if values:
            conn.execute(payloads_table.insert(), values)
        return
    conn.execute(insert(payloads_table).on_conflict_do_nothing(), values)
