"""Landing memory for large tensors that arrive over a transport, reused instead of fresh.

A tensor received over tcp or shm needs memory of its own to land in. Fresh memory costs a
page fault per 4 KiB page on first touch: for 256 MiB that is ~40 ms here, a third of a
loopback transfer. So buffers of ``MIN_BYTES`` or more come from a pool of anonymous
mappings: the tensor built on a buffer keeps it leased, and when the tensor and every view
of it are gone the mapping goes back to the pool, its pages still mapped, for the next
tensor of a similar size (PyTorch's CUDA caching allocator keeps freed blocks the same way).
At most ``limit`` bytes wait idle in the pool; ``clear()`` hands them back to the system.

The pool's size comes from ``BASTION_BUFFER_POOL_MB`` (default 512; ``0`` turns it off).

>>> from bastion import buffers
>>> view = buffers.take(2 << 20)
>>> view.nbytes, view.readonly
(2097152, False)
>>> del view
>>> buffers.pool.stats()["idle_bytes"] >= 2 << 20
True
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import threading
import weakref
from typing import Any

import torch

from bastion.errors import ConfigurationError

#: Buffers smaller than this come from ``torch.empty`` (PyTorch's allocator reuses them).
MIN_BYTES = 1 << 20
_GRAIN = 2 << 20  # mappings are whole multiples of this
_ENV = "BASTION_BUFFER_POOL_MB"


class _Region:
    """One anonymous mapping; leased to one buffer at a time."""

    __slots__ = ("map", "size", "pid")

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size)
        self.size = size
        self.pid = os.getpid()

    def unmap(self) -> None:
        try:
            self.map.close()
        except BufferError:  # its last lease is still being torn down: unmapped when it is
            pass


class BufferPool:
    """Writable buffers for received tensors, from mappings that are reused when freed.

    >>> pool = BufferPool(limit=64 << 20)
    >>> a = pool.take(4 << 20)
    >>> del a
    >>> b = pool.take(3 << 20)  # the 4 MiB mapping again, pages already in place
    >>> pool.stats()["reused"]
    1
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ConfigurationError(f"a buffer pool holds 0 bytes or more, not {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._idle: list[_Region] = []  # least recently freed first
        self._returned: collections.deque[_Region] = collections.deque()
        self._leases: dict[int, tuple[weakref.ref, _Region]] = {}
        self._counts = {"fresh": 0, "reused": 0, "unpooled": 0}

    def take(self, nbytes: int) -> memoryview:
        """A writable byte buffer of ``nbytes`` (contents undefined), to fill and build on."""
        if nbytes < MIN_BYTES or nbytes > self.limit:
            with self._lock:
                self._counts["unpooled"] += 1
            return memoryview(torch.empty(nbytes, dtype=torch.uint8).numpy())
        with self._lock:
            self._collect()
            region = self._best_fit(nbytes)
            self._counts["reused" if region else "fresh"] += 1
        if region is None:
            region = _Region(-(-nbytes // _GRAIN) * _GRAIN)
        # The lease is a ctypes array over the mapping: memoryviews, slices of them and
        # tensors built on any of them all keep it alive, so its death means "all gone".
        lease = (ctypes.c_ubyte * nbytes).from_buffer(region.map)
        ref = weakref.ref(lease, self._on_free)
        self._leases[id(ref)] = (ref, region)
        return memoryview(lease).cast("B")

    def _best_fit(self, nbytes: int) -> _Region | None:
        fits = [r for r in self._idle if nbytes <= r.size <= 2 * nbytes]
        if not fits:
            return None
        region = min(fits, key=lambda r: r.size)
        self._idle.remove(region)
        return region

    def _on_free(self, ref: weakref.ref) -> None:
        entry = self._leases.pop(id(ref), None)
        if entry is None:
            return
        self._returned.append(entry[1])
        # Runs wherever the last view died, maybe inside take() on this thread: never block.
        if self._lock.acquire(blocking=False):
            try:
                self._collect()
            finally:
                self._lock.release()

    def _collect(self) -> None:
        """Move freed regions to the idle list, then trim it to ``limit`` (lock held)."""
        pid = os.getpid()
        while self._returned:
            region = self._returned.popleft()
            if region.pid == pid:  # a region inherited over fork is copy-on-write: drop it
                self._idle.append(region)
            else:
                region.unmap()
        idle = sum(r.size for r in self._idle)
        while self._idle and idle > self.limit:
            region = self._idle.pop(0)
            idle -= region.size
            region.unmap()

    def clear(self) -> int:
        """Unmap every idle buffer; returns the bytes handed back to the system."""
        with self._lock:
            self._collect()
            freed = sum(r.size for r in self._idle)
            for region in self._idle:
                region.unmap()
            self._idle.clear()
        return freed

    def stats(self) -> dict[str, Any]:
        """Idle and leased bytes, and how many buffers were fresh, reused or too small/large."""
        with self._lock:
            self._collect()
            idle = sum(r.size for r in self._idle)
        leased = sum(region.size for _, region in list(self._leases.values()))
        return {"limit": self.limit, "idle_bytes": idle, "leased_bytes": leased, **self._counts}

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        for region in self._idle:
            region.unmap()
        self._idle.clear()


def _limit_from_environment() -> int:
    value = os.environ.get(_ENV, "512")
    try:
        megabytes = int(value)
        if megabytes < 0:
            raise ValueError
    except ValueError:
        raise ConfigurationError(
            f"{_ENV} takes a whole number of MiB (0 turns the pool off), not {value!r}"
        ) from None
    return megabytes << 20


#: The process's pool, used by the built-in transports.
pool = BufferPool(_limit_from_environment())
os.register_at_fork(after_in_child=pool._after_fork)


def take(nbytes: int) -> memoryview:
    """A writable buffer of ``nbytes`` from the process's pool (see :class:`BufferPool`)."""
    return pool.take(nbytes)
