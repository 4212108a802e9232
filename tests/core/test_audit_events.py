"""Every worker records create, get, move, delete, clear and denied events."""

from __future__ import annotations

import sqlite3

import pytest
import torch

import bastion as sy
from bastion.events import payload_digest


def test_send_op_get_are_recorded_in_order_with_lineage(m1):
    data = torch.tensor([1.0, 2.0])
    x = data.send(m1)
    y = x * 2
    y_id, x_id = y.id_at_location, x.id_at_location
    y.get()
    events = m1.audit.events()
    assert [e.kind for e in events] == ["create", "create", "get"]
    assert [e.seq for e in events] == [1, 2, 3]
    send, op, get = events
    assert (send.object_id, send.origin, send.peer) == (x_id, "send", "me")
    assert send.dtype == "float32" and send.shape == (2,)
    assert send.digest == payload_digest(data)
    assert (op.object_id, op.origin, op.op, op.inputs) == (y_id, "op", "Tensor.mul", (x_id,))
    assert (get.object_id, get.peer) == (y_id, "me")
    assert get.digest == payload_digest(data * 2)
    assert all(e.worker == m1.id for e in events)
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash


def test_move_is_recorded_on_both_workers(m1, m2):
    p = torch.tensor([1, 2]).send(m1)
    obj_id = p.id_at_location
    p.move(m2)
    (move,) = m1.audit.events(kind="move")
    assert move.object_id == obj_id and move.peer == m2.id
    assert move.detail["destination"] == m2.address and move.detail["new_id"] == obj_id
    arrived = m2.audit.events(kind="create")
    assert [(e.object_id, e.origin, e.peer) for e in arrived] == [(obj_id, "move", m1.id)]
    assert arrived[0].digest == move.digest


def test_clear_records_the_dropped_ids(m1):
    ids = {torch.tensor([i]).send(m1).id_at_location for i in range(3)}
    # the pointers were collected at once: three deletes, then nothing left to clear
    m1.clear_objects()
    kept = [torch.tensor([i]).send(m1) for i in range(2)]
    m1.clear_objects()
    clears = m1.audit.events(kind="clear")
    assert clears[0].detail["ids"] == []
    assert sorted(clears[1].detail["ids"]) == sorted(p.id_at_location for p in kept)
    assert {e.object_id for e in m1.audit.events(kind="delete")} == ids


def test_refused_requests_are_recorded_as_denied(m1):
    with pytest.raises(sy.PermissionDenied, match="allow_code"):
        m1._request(sy.messages.CallFunction(b"not even code", (), {}))
    with pytest.raises(sy.PermissionDenied, match="not a torch operation"):
        m1._request(sy.messages.RunOp("os.system", ("true",), {}))
    denied = m1.audit.events(kind="denied")
    assert [e.detail["request"] for e in denied] == ["call", "run"]
    assert denied[1].op == "os.system" and all(e.peer == "me" for e in denied)
    assert torch.tensor([1]).send(m1).get().item() == 1, "the worker keeps serving"


def test_events_filter_by_kind_and_object(m1):
    p = torch.tensor([1]).send(m1)
    q = torch.tensor([2]).send(m1)
    p.get()
    assert [e.kind for e in m1.audit.events(object_id=p.id_at_location)] == ["create", "get"]
    assert [e.object_id for e in m1.audit.events(kind="create")] == [
        p.id_at_location, q.id_at_location,
    ]


def test_events_go_to_a_sqlite_file(make_worker, tmp_path):
    path = tmp_path / "audit.db"
    worker = make_worker("filed", db=str(path))
    torch.tensor([1]).send(worker).get()
    worker.close()
    rows = sqlite3.connect(path).execute(
        "select kind from bastion_events where worker_id = ? order by seq", (worker.id,)
    ).fetchall()
    assert [kind for (kind,) in rows] == ["create", "get"]


def test_in_place_ops_record_a_new_version_of_the_same_object(m1):
    x = torch.tensor([1.0]).send(m1)
    x.add_(1)
    creates = m1.audit.events(kind="create", object_id=x.id_at_location)
    assert [e.origin for e in creates] == ["send", "op"]
    assert creates[1].op == "Tensor.add_"
    assert creates[1].digest == payload_digest(torch.tensor([2.0]))
