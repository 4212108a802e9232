"""The shared-memory transport: in-process server for the contract, child processes for
the parts that need two processes (no segment leaks on SIGKILL, cross-process speed)."""

from __future__ import annotations

import itertools
import os
import socket

import pytest
import torch

import bastion as sy
from bastion.client import BaseWorker
from bastion.testing import TransportContract
from bastion.transports.shm import ShmTransport
from bastion.worker import Worker

KEY = b"shm-test-key"
_names = itertools.count()


class TestShmContract(TransportContract):
    @pytest.fixture
    def serve_worker(self):
        transport, servers = ShmTransport(), []

        def serve(worker):
            address = f"shm://{worker.id}-{os.getpid()}-{next(_names)}"
            servers.append(transport.serve(worker, address, authkey=KEY))
            worker.connect_options = {"authkey": KEY}
            return BaseWorker(worker.id, address, transport.connect(address, authkey=KEY))

        yield serve
        for server in servers:
            server.close()


@pytest.fixture
def served():
    transport = ShmTransport()
    worker = Worker("shm-served")
    address = f"shm://shm-served-{os.getpid()}-{next(_names)}"
    server = transport.serve(worker, address, authkey=KEY, timeout=2.0)
    yield transport, worker, address
    server.close()
    worker.close()


def test_a_wrong_key_is_refused_recorded_and_the_worker_keeps_serving(served):
    transport, worker, address = served
    with pytest.raises(sy.PermissionDenied, match="wrong authkey"):
        transport.connect(address, authkey=b"not the key", peer="mallory")
    (denied,) = worker.log.events(kind="denied")
    assert denied.peer == "mallory" and denied.detail["request"] == "connect"
    handle = BaseWorker(worker.id, address, transport.connect(address, authkey=KEY))
    assert handle.send(torch.tensor([3])).get().item() == 3


def test_garbage_on_the_socket_does_not_stop_the_server(served):
    transport, worker, address = served
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(b"\0bastion-shm-" + address.removeprefix("shm://").encode())
    raw.sendall(b"\xff" * 4096)
    raw.close()
    handle = BaseWorker(worker.id, address, transport.connect(address, authkey=KEY))
    assert handle.send(torch.tensor([5])).get().item() == 5


def test_connecting_to_nothing_is_a_transport_error():
    with pytest.raises(sy.TransportError, match="no worker is served"):
        ShmTransport().connect("shm://nobody-here", authkey=KEY)
    with pytest.raises(sy.ConfigurationError, match="shared key"):
        ShmTransport().connect("shm://nobody-here")


def test_a_spawned_worker_killed_with_sigkill_leaks_no_segment():
    before = set(os.listdir("/dev/shm"))
    worker = sy.spawn("shm", id=f"shm-kill-{os.getpid()}")
    try:
        pointer = worker.send(torch.randn(1024, 1024))  # 4 MiB through shared memory
        assert pointer.shape == (1024, 1024)
        assert torch.equal((pointer * 0).get(), torch.zeros(1024, 1024))
        worker.kill()
        with pytest.raises(sy.ConnectionLost):
            pointer + 1
    finally:
        worker.close()
    assert set(os.listdir("/dev/shm")) - before == set()
