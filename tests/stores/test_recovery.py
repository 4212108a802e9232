"""A worker started on its log comes back with exactly the objects it held; snapshots keep
that short; strict mode loses nothing acknowledged, even to SIGKILL."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import torch

import bastion as sy
from bastion.messages import Create, Delete, Ref, RunOp
from bastion.stores import verify


def test_a_virtual_worker_restarted_on_its_log_has_its_objects_back(tmp_path, hook):
    db = str(tmp_path / "m1.db")
    m1 = sy.VirtualWorker(hook, id="M1", db=db)
    x = m1.send(torch.tensor([1.0, 2.0]))
    y = x * 3
    z = m1.send(torch.arange(4)).view(2, 2)  # the arange is collected: only its view stays
    gone = m1.send(torch.ones(1))
    gone.get()
    held = {oid: value.clone() for oid, value in m1._objects.items()}
    m1.close()

    again = sy.VirtualWorker(hook, id="M1", db=db)
    try:
        assert set(again._objects) == set(held) == {x.id_at_location, y.id_at_location,
                                                    z.id_at_location}  # fmt: skip
        for oid, value in held.items():
            assert torch.equal(again._objects[oid], value)
        assert again._worker.recovered.seq == again.audit.last_seq
        # the restarted worker goes on appending to the same, intact chain
        w = again.send(torch.zeros(1))
        assert (w + 1).get().item() == 1.0
    finally:
        again.close()
    assert verify(db).ok


def test_a_client_reconnecting_to_a_restarted_worker_uses_its_pointers_again(tmp_path):
    db, key = str(tmp_path / "r1.db"), "reconnect-key"
    first = sy.spawn("tcp", id="R1", db=db, durability="strict", authkey=key)
    x = first.send(torch.tensor([1.0, 2.0, 3.0]))
    y = x + 10
    first.kill()
    with pytest.raises(sy.ConnectionLost):
        y.get()
    second = sy.spawn("tcp", id="R1", db=db, authkey=key)
    try:
        first.reconnect(second.address)
        assert torch.equal((y - x).get(), torch.full((3,), 10.0))
        assert torch.equal(x.get(), torch.tensor([1.0, 2.0, 3.0]))
        other = sy.spawn("tcp", id="R2", authkey=key)
        with pytest.raises(sy.ConfigurationError, match="R2"):
            first.reconnect(other.address)
        other.close()
    finally:
        second.close()
        first.close()


def test_snapshots_keep_recovery_to_the_tail(tmp_path, hook):
    db = str(tmp_path / "snap.db")
    m1 = sy.VirtualWorker(hook, id="S1", db=db, snapshot_every=50)
    kept = [m1.send(torch.tensor([float(i)])) for i in range(40)]
    for i in range(45):  # each: a create and, once collected, a delete
        (kept[i % 40] * 2).sum()
    last = m1.audit.last_seq
    m1.close()
    again = sy.VirtualWorker(hook, id="S1", db=db, snapshot_every=50)
    try:
        state = again._worker.recovered
        assert state.snapshot_seq > 0 and state.events_read == last - state.snapshot_seq < 50
        assert sorted(again._objects) == sorted(p.id_at_location for p in kept)
        assert [again._objects[p.id_at_location].item() for p in kept] == list(range(40))
    finally:
        again.close()


def test_recovery_of_a_million_event_log_reads_only_the_tail(tmp_path):
    db = str(tmp_path / "big.db")
    worker = sy.Worker("B1", db=db, snapshot_every=None)
    spec = worker.handle(Create(torch.tensor([4.0, 2.0])), "me").value
    worker.close()
    # A million more events as a busy worker leaves them (a create, then its delete),
    # written straight to SQLite, then a snapshot at the end of them.
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "insert into bastion_events (worker_id, seq, ts, kind, object_id, peer, prev_hash,"
            " hash) values ('B1', ?, 0, ?, ?, 'me', '', '')",
            ((seq, "create" if seq % 2 == 0 else "delete", 10**6 + seq // 2)
             for seq in range(2, 1_000_002)),
        )  # fmt: skip
        [digest] = conn.execute("select digest from bastion_events where seq = 1").fetchone()
        conn.execute(
            "insert into bastion_snapshots values ('B1', 1000001, 0, ?)",
            (f'[[{spec.id},"{digest}",null]]',),
        )
    again = sy.Worker("B1", db=db, snapshot_every=None)
    try:
        assert again.recovered.snapshot_seq == 1_000_001
        assert again.recovered.events_read == 0
        assert torch.equal(again.store.get(spec.id), torch.tensor([4.0, 2.0]))
        again.handle(Delete([spec.id]), "me")
    finally:
        again.close()
    third = sy.Worker("B1", db=db, snapshot_every=None)
    assert third.recovered.events_read == 1 and len(third.store) == 0
    third.close()


def test_strict_mode_keeps_every_acknowledged_send_through_sigkill(tmp_path):
    db, key = str(tmp_path / "crash.db"), "crash-key"
    worker = sy.spawn("tcp", id="C1", db=db, durability="strict", authkey=key)
    acknowledged: dict[int, float] = {}
    errors: list[BaseException] = []

    worker.garbage_collect = False  # pointers dropped here must not delete what was sent

    def stream() -> None:
        i = 0
        try:
            while True:
                pointer = worker.send(torch.full((64,), float(i)))
                acknowledged[pointer.id_at_location] = float(i)
                i += 1
        except sy.BastionError as exc:
            errors.append(exc)

    sender = threading.Thread(target=stream)
    sender.start()
    while len(acknowledged) < 50:
        time.sleep(0.01)
    worker.kill()  # SIGKILL, mid-stream
    sender.join(30)
    assert not sender.is_alive() and isinstance(errors[0], sy.ConnectionLost)
    assert verify(db).ok  # the log is readable and intact
    again = sy.spawn("tcp", id="C1", db=db, authkey=key)
    try:
        listing = again.list_objects()
        assert set(acknowledged) <= set(listing)
        assert len(listing) - len(acknowledged) <= 1  # at most the send in flight
        for oid, value in list(acknowledged.items())[::10]:
            pointer = sy.PointerTensor._make(again, listing[oid], leaf=True)
            assert pointer.get()[0].item() == value
    finally:
        again.close()
        worker.close()


def test_recovery_brings_back_create_details(tmp_path):
    db = str(tmp_path / "detail.db")
    worker = sy.Worker("D1", db=db)
    obj_id = worker.register(torch.ones(1), owner="me", tags=["#one"])
    worker.handle(RunOp("Tensor.add_", (Ref(obj_id), 1), {}, False), "me")  # a new version
    worker.close()
    again = sy.Worker("D1", db=db)
    assert again.store.details[obj_id] == {"private": True, "owner": "me", "tags": ["#one"],
                                           "policy": None}  # fmt: skip
    assert again.privacy.originals == {obj_id} and torch.equal(again.store.objects[obj_id],
                                                               torch.full((1,), 2.0))
    again.close()
