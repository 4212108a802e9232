"""Garbage collection of remote objects when their last local pointer goes."""

from __future__ import annotations

import gc
import tracemalloc

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


def test_no_leak_across_100k_send_op_delete_cycles(m1):
    template = torch.ones(4)

    def cycle(n: int) -> None:
        for _ in range(n):
            p = template.send(m1)
            q = p + 1
            del p, q

    cycle(2_000)  # warm caches and lazy tables
    gc.collect()
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    cycle(100_000)
    gc.collect()
    end, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(m1._objects) == 0
    growth = end - start
    assert growth < 512 * 1024, f"Python memory grew by {growth} bytes over 100k cycles"
