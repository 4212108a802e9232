"""The pool of landing buffers for received tensors (bastion.buffers)."""

from __future__ import annotations

import gc
import os
import sys
import threading

import pytest
import torch

import bastion as sy
from bastion import buffers
from bastion.buffers import MIN_BYTES, BufferPool

MiB = 1 << 20


def _address(view: memoryview) -> int:
    return torch.frombuffer(view, dtype=torch.uint8).data_ptr()


def test_a_freed_buffer_is_reused_with_its_pages():
    pool = BufferPool(limit=64 * MiB)
    first = pool.take(4 * MiB)
    where = _address(first)
    del first
    again = pool.take(3 * MiB)
    assert _address(again) == where
    assert pool.stats()["reused"] == 1 and pool.stats()["fresh"] == 1


def test_a_buffer_stays_leased_while_any_view_of_it_lives():
    pool = BufferPool(limit=64 * MiB)
    view = pool.take(4 * MiB)
    tensor = torch.frombuffer(view, dtype=torch.uint8).view(torch.float32)[10:20]
    tensor.fill_(7.0)
    slice_of_view = view[100:200]
    del view
    gc.collect()
    other = pool.take(4 * MiB)  # must not be the same memory
    torch.frombuffer(other, dtype=torch.uint8).fill_(0)
    assert tensor.tolist() == [7.0] * 10
    assert pool.stats()["leased_bytes"] == 8 * MiB
    del tensor, other
    assert pool.stats()["leased_bytes"] == 4 * MiB  # the slice still holds the first one
    del slice_of_view
    assert pool.stats()["leased_bytes"] == 0
    assert pool.stats()["idle_bytes"] == 8 * MiB


def test_small_and_oversized_buffers_bypass_the_pool():
    pool = BufferPool(limit=8 * MiB)
    small = pool.take(MIN_BYTES - 1)
    huge = pool.take(9 * MiB)
    assert small.nbytes == MIN_BYTES - 1 and huge.nbytes == 9 * MiB
    del small, huge
    stats = pool.stats()
    assert stats["unpooled"] == 2 and stats["fresh"] == 0 and stats["idle_bytes"] == 0


def test_idle_bytes_stay_under_the_limit_oldest_freed_going_first():
    pool = BufferPool(limit=10 * MiB)
    a, b, c = pool.take(4 * MiB), pool.take(4 * MiB), pool.take(4 * MiB)
    kept = {_address(b), _address(c)}
    del a, b, c  # a is freed first, so a is unmapped when c would take the pool over 10 MiB
    assert pool.stats()["idle_bytes"] == 8 * MiB
    again = pool.take(4 * MiB)
    assert _address(again) in kept and pool.stats()["reused"] == 1


def test_a_much_larger_idle_buffer_is_not_spent_on_a_small_one():
    pool = BufferPool(limit=64 * MiB)
    big = pool.take(32 * MiB)
    del big
    small = pool.take(2 * MiB)
    assert pool.stats()["fresh"] == 2 and pool.stats()["idle_bytes"] == 32 * MiB
    del small


def test_clear_hands_idle_buffers_back():
    pool = BufferPool(limit=64 * MiB)
    views = [pool.take(2 * MiB) for _ in range(3)]
    del views
    assert pool.clear() == 6 * MiB
    assert pool.stats()["idle_bytes"] == 0


def test_threads_taking_and_freeing_at_once_lose_nothing():
    pool = BufferPool(limit=16 * MiB)

    def churn():
        for _ in range(50):
            view = pool.take(2 * MiB)
            view[0] = 1
            del view

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = pool.stats()
    assert stats["leased_bytes"] == 0 and stats["idle_bytes"] <= 16 * MiB
    assert stats["fresh"] + stats["reused"] == 200


def test_a_forked_child_starts_with_no_idle_buffers():
    pool = buffers.pool
    view = pool.take(2 * MiB)
    del view
    assert pool.stats()["idle_bytes"] >= 2 * MiB
    pid = os.fork()
    if pid == 0:  # the child: inherited pages are copy-on-write, not worth reusing
        os._exit(0 if pool.stats()["idle_bytes"] == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pool.stats()["idle_bytes"] >= 2 * MiB  # the parent keeps its own


def test_bad_limits_are_configuration_errors(monkeypatch):
    with pytest.raises(sy.ConfigurationError, match="0 bytes or more"):
        BufferPool(limit=-1)
    monkeypatch.setenv("BASTION_BUFFER_POOL_MB", "lots")
    with pytest.raises(sy.ConfigurationError, match="BASTION_BUFFER_POOL_MB"):
        buffers._limit_from_environment()
    monkeypatch.setenv("BASTION_BUFFER_POOL_MB", "0")
    assert buffers._limit_from_environment() == 0


def test_a_buffer_larger_than_the_room_left_is_unmapped_as_it_dies(monkeypatch):
    raised = []
    monkeypatch.setattr(sys, "unraisablehook", raised.append)  # errors in a weakref callback
    pool = BufferPool(limit=3 * MiB)
    view = pool.take(3 * MiB)  # its mapping is 4 MiB: over the limit once idle
    del view  # trimmed inside its own release, while the lease is still being torn down
    gc.collect()
    assert raised == []
    assert pool.stats()["idle_bytes"] == 0 and pool.stats()["leased_bytes"] == 0
