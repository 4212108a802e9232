"""Garbage collection of remote objects when their last local pointer goes."""

from __future__ import annotations

import gc
import os

import torch


def test_collecting_the_last_pointer_deletes_the_remote_object(m1):
    p = torch.tensor([1]).send(m1)
    obj_id = p.id_at_location
    assert obj_id in m1._objects
    del p
    assert obj_id not in m1._objects
    assert [e.object_id for e in m1.audit.events(kind="delete")] == [obj_id]


def test_garbage_collection_can_be_switched_off_per_worker(make_worker):
    keeper = make_worker("keeper", garbage_collect=False)
    p = torch.tensor([1]).send(keeper)
    obj_id = p.id_at_location
    del p
    assert obj_id in keeper._objects


def test_garbage_collection_can_be_switched_off_per_pointer(m1):
    p = torch.tensor([1]).send(m1)
    p.garbage_collect_data = False
    obj_id = p.id_at_location
    del p
    assert obj_id in m1._objects


def test_spent_pointers_do_not_delete_anything(m1, m2):
    p = torch.tensor([1]).send(m1)
    p.get()
    del p
    gc.collect()
    assert m1.audit.events(kind="delete") == []


def test_a_moved_pointer_deletes_on_its_new_worker(m1, m2):
    q = torch.tensor([2]).send(m1).move(m2)
    obj_id = q.id_at_location
    del q
    assert obj_id not in m2._objects
    assert m1.audit.events(kind="delete") == []
    assert [e.object_id for e in m2.audit.events(kind="delete")] == [obj_id]


def test_objects_reached_only_through_cycles_are_collected(m1):
    holder: list = []
    holder.append(holder)
    holder.append(torch.ones(2).send(m1))
    del holder
    gc.collect()
    assert len(m1._objects) == 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_leak_across_100k_send_op_delete_cycles(make_worker, tmp_path, serialize):
    """100k cycles on a direct worker (20k through the wire format, which is slower).

    The log goes to a file so that SQLite's pages stay out of the process's memory: what
    grows then is what bastion keeps.
    """
    worker = make_worker("leak", db=str(tmp_path / "leak.db"))
    template = torch.ones(4)
    cycles = 20_000 if serialize else 100_000

    def cycle(n: int) -> None:
        for _ in range(n):
            p = template.send(worker)
            q = p + 1
            del p, q

    cycle(5_000)  # warm caches, lazy tables and the database's page cache
    gc.collect()
    objects_before, rss_before = len(gc.get_objects()), _rss_bytes()
    cycle(cycles)
    gc.collect()
    assert len(worker._objects) == 0 and not worker._pending_deletes
    assert len(gc.get_objects()) - objects_before < 500, "Python objects piled up"
    growth = _rss_bytes() - rss_before
    assert growth < 16 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB over {cycles} cycles"
    assert len(worker.audit.events(kind="delete", limit=None)) == 2 * (cycles + 5_000)
