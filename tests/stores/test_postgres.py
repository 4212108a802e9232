"""The event log on a real PostgreSQL server: several workers in one database, payloads in
the database, replay, verify and recovery, exactly as on SQLite.

``.ci/run`` installs and starts PostgreSQL and sets ``BASTION_TEST_POSTGRES_URL`` and
``BASTION_REQUIRE_POSTGRES=1``: there, a server that cannot be reached fails the tests.
Elsewhere they are skipped, saying why, when no server answers.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
import torch

import bastion as sy
from bastion.stores import EventLog, replay, verify


def _ids(*names: str) -> list[str]:
    run = uuid.uuid4().hex[:8]  # the database outlives a test run: ids never collide
    return [f"{name}-{run}" for name in names]


def test_workers_share_one_postgres_database_without_mixing(pg_url, hook):
    a_id, b_id = _ids("A", "B")
    a = sy.VirtualWorker(hook, id=a_id, db=pg_url)
    b = sy.VirtualWorker(hook, id=b_id, db=pg_url, durability="strict")
    x = a.send(torch.arange(5.0))
    y = x * 2
    y.move(b)
    assert torch.equal((y + 1).get(), torch.arange(5.0) * 2 + 1)
    a.close(), b.close()
    with EventLog(pg_url, a_id) as log:
        assert [e.kind for e in log.events()] == ["create", "create", "move"]
    with EventLog(pg_url, b_id) as log:
        kinds = [(e.kind, e.origin, e.peer) for e in log.events()]
    assert kinds[0] == ("create", "move", a_id) and ("get", None, "me") in kinds
    assert verify(pg_url, worker=a_id).ok and verify(pg_url, worker=b_id).ok
    assert list(replay(pg_url, a_id)) == [x.id_at_location]
    assert torch.equal(replay(pg_url, a_id)[x.id_at_location], torch.arange(5.0))


def test_a_worker_comes_back_from_postgres(pg_url, hook):
    [w_id] = _ids("R")
    w = sy.VirtualWorker(hook, id=w_id, db=pg_url, snapshot_every=5)
    kept = [w.send(torch.full((3,), float(i))) for i in range(8)]
    w.close()
    again = sy.VirtualWorker(hook, id=w_id, db=pg_url)
    try:
        assert again._worker.recovered.snapshot_seq > 0
        assert [again._objects[p.id_at_location][0].item() for p in kept] == list(range(8))
    finally:
        again.close()


def test_tampering_in_postgres_is_named(pg_url, hook):
    [w_id] = _ids("T")
    with sy.VirtualWorker(hook, id=w_id, db=pg_url) as w:
        w.send(torch.ones(2)), w.send(torch.zeros(2))
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("update bastion_events set peer = 'mallory' "
                             "where worker_id = :w and seq = 2"), {"w": w_id})  # fmt: skip
    engine.dispose()
    result = verify(pg_url, worker=w_id)
    assert not result.ok and result.seq == 2 and "changed" in result.reason
