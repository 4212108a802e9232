"""A conformance suite for transports: check a transport with one pytest class.

Subclass ``TransportContract`` in a test module and give it a ``serve_worker`` fixture that
serves a ``bastion.Worker`` and returns a connected ``BaseWorker`` handle::

    import pytest
    from bastion.testing import TransportContract

    class TestMyTransport(TransportContract):
        @pytest.fixture
        def serve_worker(self):
            servers = []
            def serve(worker):
                served = my_transport.serve(worker, "my://somewhere", authkey=b"k")
                servers.append(served)
                return bastion.BaseWorker(worker.id, served.address,
                                          my_transport.connect(served.address, authkey=b"k"))
            yield serve
            for served in servers:
                served.close()

Every test here then runs against the transport. Register the transport's plugin first
(installed, or ``bastion.plugins.pm.register(module)``): in the move test the source worker
reaches the destination by address, through the plugin manager, as in production. The
built-in transports pass it (``tests/transports/test_conformance.py``).

>>> issubclass(TransportContract, object)
True
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import pytest
import torch

import bastion as sy
from bastion.client import BaseWorker
from bastion.worker import Worker

_ids = itertools.count()


def run_concurrently(work: Callable[[int], object], count: int) -> None:
    """Run ``work(0)`` ... ``work(count - 1)`` on as many threads at once, wait for all, and
    re-raise the first failure (an assertion inside a thread fails the test).

    >>> seen = []
    >>> run_concurrently(seen.append, 3)
    >>> sorted(seen)
    [0, 1, 2]
    """
    failures: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            work(k)
        except BaseException as exc:  # collected and re-raised below
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


class TransportContract:
    """The behaviour every transport must show; subclasses provide ``serve_worker``."""

    @pytest.fixture
    def serve_worker(self) -> Callable[[Worker], BaseWorker]:  # pragma: no cover - abstract
        raise NotImplementedError("define a serve_worker fixture in your subclass")

    @pytest.fixture
    def pair(self, serve_worker: Callable[[Worker], BaseWorker]):
        workers = [Worker(f"contract-{next(_ids)}") for _ in range(2)]
        handles = [serve_worker(worker) for worker in workers]
        yield list(zip(workers, handles))
        for worker in workers:
            worker.close()

    def test_send_get_is_bitwise_exact(self, pair) -> None:
        _, handle = pair[0]
        for tensor in (torch.randn(3, 4), torch.arange(10, dtype=torch.int16),
                       torch.tensor(True), torch.zeros(0, 3), torch.randn(2, dtype=torch.cfloat)):
            back = handle.send(tensor).get()
            assert back.dtype == tensor.dtype and torch.equal(back, tensor)

    def test_ops_run_remotely(self, pair) -> None:
        worker, handle = pair[0]
        x = handle.send(torch.tensor([1.0, 2.0]))
        y = (x * 3 + 1).sum()
        assert isinstance(y, sy.PointerTensor) and y.location is handle
        assert y.get().item() == 11.0
        handle._flush_deletes()  # the intermediates were collected
        assert list(worker.store) == [x.id_at_location]

    def test_large_tensor(self, pair) -> None:
        _, handle = pair[0]
        tensor = torch.randn(4 * 2**20)  # 16 MiB
        assert torch.equal(handle.send(tensor).get(), tensor)

    def test_errors_travel_and_the_worker_keeps_serving(self, pair) -> None:
        _, handle = pair[0]
        x = handle.send(torch.ones(2))
        with pytest.raises(RuntimeError):
            x + handle.send(torch.ones(3))
        x.get()
        with pytest.raises(sy.ObjectNotFoundError):
            x.get()
        with pytest.raises(sy.PermissionDenied):
            handle._request(sy.messages.RunOp("os.system", ("true",), {}))
        assert handle.send(torch.tensor([4])).get().item() == 4

    def test_peer_is_recorded(self, pair) -> None:
        worker, handle = pair[0]
        handle.send(torch.ones(1)).get()
        assert [e.peer for e in worker.log.events()] == [sy.local_worker.id] * 2

    def test_direct_move_between_two_workers(self, pair) -> None:
        (source, a), (destination, b) = pair
        pointer = a.send(torch.tensor([7, 8]))
        obj_id = pointer.id_at_location
        pointer.move(b)
        assert obj_id not in source.store and obj_id in destination.store
        (arrival,) = destination.log.events(kind="create")
        assert arrival.peer == source.id and arrival.origin == "move"
        assert torch.equal(pointer.get(), torch.tensor([7, 8]))

    def test_concurrent_requests(self, pair) -> None:
        _, handle = pair[0]
        base = handle.send(torch.arange(4.0))

        def work(k: int) -> None:
            for _ in range(50):
                assert torch.equal((base + k).get(), torch.arange(4.0) + k)

        run_concurrently(work, 4)
