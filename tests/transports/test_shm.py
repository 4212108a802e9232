"""The shared-memory transport: in-process server for the contract, child processes for
the parts that need two processes (no segment leaks on SIGKILL, cross-process speed)."""

from __future__ import annotations

import itertools
import os
import socket
import threading

import pytest
import torch

import bastion as sy
from bastion import serde
from bastion.client import BaseWorker
from bastion.testing import TransportContract
from bastion.transports import shm
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


# --- large frames stream through the region's slots ------------------------------------


def _channels(monkeypatch, piece=1000, slots=2):
    """Two ends of one shared-memory channel, with tiny pieces so frames stream."""
    monkeypatch.setattr(shm, "_PIECE", piece)
    monkeypatch.setattr(shm, "_SLOTS", slots)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5.0)
    b.settimeout(5.0)
    return shm._Channel(a, serde.DEFAULT_LIMITS), shm._Channel(b, serde.DEFAULT_LIMITS)


def _across(sender, receiver, obj):
    """``sender.send(obj)`` on a thread (it waits for slots) while ``receiver`` reads it."""
    errors = []

    def send():
        try:
            sender.send(obj, serde.KIND_MESSAGE)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        return receiver.recv()[1]
    finally:
        thread.join(10)
        assert not thread.is_alive() and not errors, errors


@pytest.mark.parametrize(
    "sizes", [[1], [1000], [1001], [999, 2], [3, 5000, 7, 2999], [12_345], [0, 4001, 0]]
)
def test_frames_of_any_size_cross_whole_both_ways(monkeypatch, sizes):
    left, right = _channels(monkeypatch)
    tensors = [torch.randint(0, 256, (n,), dtype=torch.uint8) for n in sizes]
    for sender, receiver in ((left, right), (right, left), (left, right)):
        got = _across(sender, receiver, tensors)
        assert [t.tolist() for t in got] == [t.tolist() for t in tensors]
    assert left.mine.size == right.mine.size == 2000  # one region each, never regrown
    left.close()
    right.close()


def test_a_large_tensor_streams_to_a_served_worker_and_back(served):
    transport, worker, address = served
    handle = BaseWorker(worker.id, address, transport.connect(address, authkey=KEY))
    tensor = torch.randn(shm._PIECE * 9 // 8 + 3)  # 4.5 pieces of float32, an odd tail
    pointer = handle.send(tensor)
    assert torch.equal(worker.store.objects[pointer.id_at_location], tensor)
    assert torch.equal(pointer.get(), tensor)


def _streamed_frame(monkeypatch, notices):
    """A raw peer announces a 5-piece frame, tells of ``notices`` pieces and hangs up."""
    left, right = _channels(monkeypatch)
    control, _ = serde.encode_split([torch.zeros(5000, dtype=torch.uint8)], serde.KIND_MESSAGE)
    region = shm._Region.create(2000)
    socket.send_fds(left.sock, [bytes([shm._NEW_REGION | shm._STREAM])], [region.fd])
    left.sock.sendall(control + b"\x01" * notices)
    left.sock.shutdown(socket.SHUT_WR)
    return left, right


def test_a_sender_that_dies_mid_frame_is_a_lost_connection(monkeypatch):
    _left, right = _streamed_frame(monkeypatch, notices=2)
    with pytest.raises(sy.ConnectionLost, match="mid-frame"):
        right.recv()


def test_a_frame_that_tells_of_extra_pieces_is_refused(monkeypatch):
    _left, right = _streamed_frame(monkeypatch, notices=6)
    with pytest.raises(sy.SerializationError, match="extra pieces"):
        right.recv()


def test_a_large_frame_claiming_to_fit_in_the_region_is_refused(monkeypatch):
    left, right = _channels(monkeypatch)
    control, _ = serde.encode_split([torch.zeros(5000, dtype=torch.uint8)], serde.KIND_MESSAGE)
    region = shm._Region.create(2000)
    socket.send_fds(left.sock, [bytes([shm._NEW_REGION])], [region.fd])
    left.sock.sendall(control)
    with pytest.raises(sy.SerializationError, match="streams if, and only if"):
        right.recv()


def test_a_receiver_that_stops_reading_fails_the_sender_not_hangs_it(monkeypatch):
    left, right = _channels(monkeypatch)
    right.sock.close()  # the peer is gone before the second slot is freed
    with pytest.raises((sy.ConnectionLost, OSError)):
        left.send([torch.zeros(5000, dtype=torch.uint8)], serde.KIND_MESSAGE)
