"""Many threads, one worker: the log's order is the order in which the store changed."""

from __future__ import annotations

import torch

import bastion as sy
from bastion.stores import verify
from bastion.testing import run_concurrently


def test_8_threads_x_2000_operations_leave_a_gapless_log_in_store_order(tmp_path):
    path = tmp_path / "busy.db"
    worker = sy.VirtualWorker(id="busy", db=str(path))

    def client(k: int) -> None:
        for i in range(500):  # 4 operations each: send, op, get, and a collected delete
            p = worker.send(torch.tensor([float(k), float(i)]))
            q = p * 2
            assert q.get().tolist() == [2.0 * k, 2.0 * i]
            del p

    run_concurrently(client, 8)
    final = set(worker._objects)
    events = worker.audit.events()
    worker.close()

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(events) == 8 * 500 * 4
    live: set[int] = set()
    for event in events:  # every event finds the store as the ones before it left it
        if event.kind == "create":
            assert event.object_id not in live or event.origin == "op"
            assert all(i in live for i in event.inputs), event
            live.add(event.object_id)
        elif event.kind in ("get", "delete", "move"):
            assert event.object_id in live, event
            live.discard(event.object_id)
    assert live == final == set()
    assert verify(path).ok
