"""A corrupted, truncated, locked, foreign or newer database gives a clear error naming the
file and the problem, never a traceback from deep inside SQLAlchemy."""

from __future__ import annotations

import sqlite3

import pytest
import torch

import bastion as sy
from bastion.stores import EventLog, replay, verify


@pytest.fixture
def real_log(tmp_path):
    path = tmp_path / "real.db"
    with sy.VirtualWorker(id="real", db=str(path)) as worker:
        pointers = [worker.send(torch.randn(64)) for _ in range(200)]
    del pointers
    return path


def _all_ways_of_opening(path):
    yield lambda: EventLog(str(path), "real")
    yield lambda: replay(path)
    yield lambda: verify(path)


def test_a_corrupted_file_is_named(tmp_path):
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database at all, just some bytes" * 100)
    for open_it in _all_ways_of_opening(path):
        with pytest.raises(sy.EventLogError, match="corrupt.db.*not a database"):
            open_it()


def test_a_truncated_file_is_named(real_log):
    data = real_log.read_bytes()
    real_log.write_bytes(data[: len(data) // 3])
    for way in (lambda: replay(real_log), lambda: verify(real_log)):
        with pytest.raises(sy.EventLogError, match="real.db"):
            way()


def test_a_foreign_database_is_refused(tmp_path):
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table invoices (id integer primary key, total real)")
    for open_it in _all_ways_of_opening(path):
        with pytest.raises(sy.EventLogError, match="foreign.db.* not a bastion event log"):
            open_it()
    with sqlite3.connect(path) as conn:  # and nothing was added to it
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert tables == {"invoices"}


def test_a_missing_file_is_named_by_the_readers(tmp_path):
    for way in (replay, verify):
        with pytest.raises(sy.EventLogError, match="nowhere.db.*does not exist"):
            way(tmp_path / "nowhere.db")
    assert not (tmp_path / "nowhere.db").exists()


def test_a_log_from_a_newer_bastion_is_refused(real_log):
    with sqlite3.connect(real_log) as conn:
        conn.execute("update bastion_schema set version = 99")
    for open_it in _all_ways_of_opening(real_log):
        with pytest.raises(sy.EventLogError, match="newer bastion"):
            open_it()


def test_a_locked_database_fails_the_write_clearly_and_the_worker_serves_on(tmp_path):
    path = tmp_path / "locked.db"
    worker = sy.VirtualWorker(id="locked", db=f"sqlite:///{path}?timeout=0.1",
                              durability="strict")  # fmt: skip
    x = worker.send(torch.ones(2))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("begin exclusive")
    try:
        with pytest.raises(sy.EventLogError, match="locked.db.*database is locked"):
            worker.send(torch.zeros(2))
    finally:
        holder.execute("rollback")
        holder.close()
    assert torch.equal((x * 2).get(), torch.full((2,), 2.0))  # and the kept events follow
    worker.close()
    assert verify(path).ok
