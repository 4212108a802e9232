"""Payloads are stored once per digest, in the database or as blob files, and come back
bitwise; replay rebuilds any moment of a worker's store from the log alone."""

from __future__ import annotations

import datetime
import sqlite3

import pytest
import torch

import bastion as sy
from bastion.stores import EventLog, replay


def _count(path, sql):
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchone()[0]


def test_the_same_tensor_sent_a_hundred_times_is_stored_once(tmp_path):
    path = tmp_path / "m1.db"
    with sy.VirtualWorker(id="once", db=str(path)) as m1:
        pointers = [m1.send(torch.arange(10.0)) for _ in range(100)]
        pointers.append(m1.send(torch.arange(11.0)))
        assert len(m1._objects) == 101
    assert _count(path, "select count(*) from bastion_events where kind = 'create'") == 101
    assert _count(path, "select count(*) from bastion_payloads") == 2
    del pointers


def test_large_payloads_go_to_files_beside_the_database(tmp_path):
    path = tmp_path / "m1.db"
    big = torch.randn(512, 1024)  # 2 MiB: over the 1 MiB default
    with sy.VirtualWorker(id="files", db=str(path)) as m1:
        ptrs = [m1.send(big), m1.send(big.clone())]  # same content, same file
    files = [p for p in (tmp_path / "m1.db.blobs").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].stat().st_size == big.nbytes
    assert _count(path, "select count(*) from bastion_payloads where data is null") == 1
    assert _count(path, "select max(length(data)) from bastion_payloads") is None
    [again, _] = replay(path).values()
    assert torch.equal(again, big)
    del ptrs


@pytest.mark.parametrize("value", [
    torch.tensor([True, False]),
    torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
    torch.tensor([1 + 2j, 3 - 4j]),
    torch.arange(12, dtype=torch.int16).reshape(3, 4).t(),  # not contiguous
    torch.empty(0, 3),
    torch.tensor(7),
    torch.tensor([-0.0, float("nan"), float("inf")]),
], ids=["bool", "bfloat16", "complex", "strided", "empty", "scalar", "special"])  # fmt: skip
def test_payloads_come_back_bitwise(tmp_path, value):
    path = tmp_path / "m1.db"
    with sy.VirtualWorker(id="bitwise", db=str(path)) as m1:
        ptr = m1.send(value)
    [back] = replay(path).values()
    assert back.dtype == value.dtype and back.shape == value.shape
    assert back.contiguous().reshape(-1).view(torch.uint8).tolist() == (
        value.contiguous().reshape(-1).view(torch.uint8).tolist()
    )
    del ptr


def test_plain_values_are_stored_in_the_wire_format(tmp_path):
    path = tmp_path / "m1.db"
    with sy.VirtualWorker(id="values", db=str(path)) as m1:
        x = m1.send(torch.tensor([[1, 2], [3, 4]]))
        rows = x.tolist()  # ObjectPointers: a list and an int stay on the worker
        total = x.sum().item()
    state = replay(path)
    assert state[rows.id_at_location] == [[1, 2], [3, 4]]
    assert state[total.id_at_location] == 10
    del x


def test_an_in_memory_log_keeps_no_payloads_unless_asked(hook):
    with sy.VirtualWorker(hook, id="mem") as m1:
        assert m1.audit.payloads is False
        x = m1.send(torch.ones(2))
        assert m1.audit.replay().missing == [x.id_at_location]
    with sy.VirtualWorker(hook, id="mem-kept", payloads=True) as m1:
        x = m1.send(torch.ones(2))
        assert torch.equal(m1.audit.replay()[x.id_at_location], torch.ones(2))


def test_an_in_place_change_is_a_new_version_and_the_old_one_stays(tmp_path, hook):
    path = tmp_path / "m1.db"
    with sy.VirtualWorker(hook, id="inplace", db=str(path)) as m1:
        x = m1.send(torch.zeros(3))
        before = m1.audit.last_seq
        x.add_(1)
        assert torch.equal(m1.audit.replay(until=before)[x.id_at_location], torch.zeros(3))
        assert torch.equal(m1.audit.replay()[x.id_at_location], torch.ones(3))


def test_replay_until_a_time_and_a_datetime(tmp_path):
    path = tmp_path / "m1.db"
    with sy.VirtualWorker(id="times", db=str(path)) as m1:
        x = m1.send(torch.tensor([1.0]))
        m1.audit.flush()
        [first] = m1.audit.events()
        y = m1.send(torch.tensor([2.0]))
    assert list(replay(path, until=first.ts)) == [x.id_at_location]
    moment = datetime.datetime.fromtimestamp(first.ts + 1e-3)
    assert len(replay(path, until=moment)) in (1, 2)
    assert list(replay(path, until=first.ts - 1)) == []
    del x, y


def test_replay_names_its_worker_when_a_database_holds_several(tmp_path):
    path = tmp_path / "shared.db"
    a = sy.VirtualWorker(id="A", db=str(path))
    b = sy.VirtualWorker(id="B", db=str(path))
    pa, pb = a.send(torch.ones(1)), b.send(torch.zeros(1))
    pa.move(b)
    a.close(), b.close()
    with pytest.raises(sy.ConfigurationError, match="several workers"):
        replay(path)
    assert list(replay(path, worker="A")) == []
    assert sorted(replay(path, worker="B")) == sorted([pa.id_at_location, pb.id_at_location])
    with EventLog(str(path), "B") as log:
        [moved_in] = [e for e in log.events(kind="create") if e.origin == "move"]
        assert moved_in.peer == "A"


@pytest.mark.parametrize("until, error, match", [
    (99, sy.EventLogError, "no event 99"),
    (-1, sy.ConfigurationError, "start at 1"),
    ("yesterday", sy.ConfigurationError, "until takes"),
])  # fmt: skip
def test_replay_refuses_what_is_not_a_moment_of_the_log(tmp_path, until, error, match):
    path = tmp_path / "m1.db"
    with sy.VirtualWorker(id="bad-until", db=str(path)) as m1:
        m1.send(torch.ones(1))
    with pytest.raises(error, match=match):
        replay(path, until=until)
