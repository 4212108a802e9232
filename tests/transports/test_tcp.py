"""The TCP transport: the contract, authentication, TLS, failures that never hang, and
direct moves between workers on different transports."""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
import torch

import bastion as sy
from bastion import plugins
from bastion.client import BaseWorker
from bastion.testing import TransportContract, run_concurrently
from bastion.transports.shm import ShmTransport
from bastion.transports.tcp import TcpTransport
from bastion.worker import Worker

KEY = b"tcp-test-key"
_names = itertools.count()


def _serve_tcp(worker: Worker, **options) -> tuple[object, BaseWorker]:
    transport = TcpTransport()
    server = transport.serve(worker, "tcp://127.0.0.1:0", authkey=KEY, **options)
    worker.connect_options = {"authkey": KEY}
    connection = transport.connect(server.address, authkey=KEY, timeout=5.0)
    return server, BaseWorker(worker.id, server.address, connection)


class TestTcpContract(TransportContract):
    @pytest.fixture
    def serve_worker(self):
        servers = []

        def serve(worker):
            server, handle = _serve_tcp(worker)
            servers.append(server)
            return handle

        yield serve
        for server in servers:
            server.close()


@pytest.fixture
def served():
    worker = Worker(f"tcp-served-{next(_names)}")
    server, handle = _serve_tcp(worker, timeout=2.0)
    yield worker, server, handle
    server.close()
    worker.close()


def test_the_server_reports_the_port_it_chose(served):
    _, server, _ = served
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0


def test_a_wrong_key_is_refused_recorded_and_the_worker_keeps_serving(served):
    worker, server, handle = served
    with pytest.raises(sy.PermissionDenied, match="wrong authkey"):
        TcpTransport().connect(server.address, authkey=b"guess", peer="mallory")
    (denied,) = worker.log.events(kind="denied")
    assert denied.peer == "mallory" and "authentication failed" in denied.detail["why"]
    assert handle.send(torch.tensor([2])).get().item() == 2


def test_garbage_and_bad_frames_do_not_stop_the_server(served):
    worker, server, handle = served
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    for payload in (b"GET / HTTP/1.1\r\n\r\n", os.urandom(5000)):
        with socket.create_connection((host, int(port)), timeout=2) as raw:
            raw.sendall(payload)
    assert handle.send(torch.tensor([5])).get().item() == 5


def test_a_frame_with_a_bad_meta_gets_an_error_reply_and_the_line_stays_up(served):
    _, _, handle = served
    from bastion import serde

    frame = serde.encode_bytes(sy.messages.Get(1))
    frame[-1] = 0xC1  # a byte msgpack never uses: the meta no longer decodes
    channel = handle._connection._channel
    channel.sock.sendall(frame)
    kind, reply = channel.recv()
    assert kind == serde.KIND_REPLY and reply.error.type_name == "SerializationError"
    assert handle.send(torch.tensor([6])).get().item() == 6


def test_a_worker_that_goes_away_gives_connection_lost(served):
    worker, server, handle = served
    pointer = handle.send(torch.ones(1))
    server.close()
    with pytest.raises(sy.ConnectionLost):
        pointer + 1
    with pytest.raises(sy.TransportError, match="cannot reach"):
        TcpTransport().connect(server.address, authkey=KEY, timeout=1.0)


def test_a_silent_peer_gives_connection_lost_after_the_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    started = time.monotonic()
    with pytest.raises(sy.ConnectionLost, match="in time"):
        TcpTransport().connect(f"tcp://127.0.0.1:{listener.getsockname()[1]}", authkey=KEY,
                               timeout=0.5)  # fmt: skip
    assert time.monotonic() - started < 5
    listener.close()


def test_many_concurrent_clients(served):
    worker, server, _ = served

    def client(k: int) -> None:
        connection = TcpTransport().connect(server.address, authkey=KEY, peer=f"c{k}")
        handle = BaseWorker(worker.id, server.address, connection)
        base = handle.send(torch.tensor([float(k)]))
        for i in range(100):
            assert (base + i).get().item() == k + i
        connection.close()

    run_concurrently(client, 8)
    peers = {e.peer for e in worker.log.events(kind="create")}
    assert peers == {f"c{k}" for k in range(8)}


def _self_signed(tmp_path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def test_tls_round_trip(tmp_path):
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=cert)
    worker = Worker("tls-worker")
    transport = TcpTransport()
    server = transport.serve(worker, "tcp://127.0.0.1:0", authkey=KEY, ssl_context=server_context)
    try:
        connection = transport.connect(server.address, authkey=KEY, ssl_context=client_context)
        handle = BaseWorker(worker.id, server.address, connection)
        big = torch.randn(1 << 20)
        assert torch.equal(handle.send(big).get(), big)
        with pytest.raises(sy.ConnectionLost):  # a client that does not trust the cert
            transport.connect(server.address, authkey=KEY,
                              ssl_context=ssl.create_default_context())  # fmt: skip
    finally:
        server.close()
        worker.close()


@pytest.mark.parametrize("source_kind,destination_kind", [("tcp", "shm"), ("shm", "tcp")])
def test_direct_moves_across_transports(source_kind, destination_kind):
    def serve(kind, worker):
        if kind == "tcp":
            return _serve_tcp(worker)
        transport = ShmTransport()
        address = f"shm://{worker.id}-{os.getpid()}"
        server = transport.serve(worker, address, authkey=KEY)
        worker.connect_options = {"authkey": KEY}
        return server, BaseWorker(worker.id, address, transport.connect(address, authkey=KEY))

    assert {"tcp", "shm"} <= set(plugins.transports())
    source, destination = Worker(f"src-{source_kind}"), Worker(f"dst-{destination_kind}")
    (s1, a), (s2, b) = serve(source_kind, source), serve(destination_kind, destination)
    try:
        pointer = a.send(torch.arange(6).reshape(2, 3))
        obj_id = pointer.id_at_location
        pointer.move(b)
        assert obj_id not in source.store and obj_id in destination.store
        assert destination.log.events(kind="create")[0].peer == source.id
        assert torch.equal(pointer.get(), torch.arange(6).reshape(2, 3))
    finally:
        for server in (s1, s2):
            server.close()
        source.close()
        destination.close()


def test_connect_spawn_and_the_cli_over_tcp(tmp_path):
    db = tmp_path / "m7.db"
    worker = sy.spawn("tcp", id="M7", db=str(db), durability="strict")
    try:
        assert worker.address.startswith("tcp://127.0.0.1:")
        pointer = worker.send(torch.tensor([1.0, 2.0]))
        assert torch.equal((pointer * 2).get(), torch.tensor([2.0, 4.0]))
        assert len(worker._objects) == 1
    finally:
        worker.close()  # SIGTERM: the child flushes its log and exits
    assert worker.process.returncode == 0
    from bastion.stores import EventLog

    with EventLog(str(db), "M7") as log:
        assert [e.kind for e in log.events()][:3] == ["create", "create", "get"]
