"""Safety of the wire: hostile bytes thrown at a live TCP worker.

Each attack gets an error reply or a closed connection within the timeout; no receive
buffer is larger than the configured limit; nothing is unpickled; an honest client
connected alongside keeps working and loses nothing.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion import serde
from bastion.client import BaseWorker
from bastion.errors import ConnectionLost
from bastion.messages import Create, Get, Ref, RunOp
from bastion.transports import tcp as tcp_module
from bastion.transports.handshake import greet_worker
from bastion.transports.tcp import TcpChannel, TcpTransport
from bastion.worker import Worker

KEY = b"fuzz-key"
LIMITS = serde.Limits(max_frame_bytes=1 << 20, max_meta_bytes=1 << 14, max_buffers=8)
TIMEOUT = 0.3


class Pickled:
    """Unpickling this would create a file: the proof that something was unpickled."""

    marker = ""

    def __reduce__(self):
        return (open, (Pickled.marker, "w"))


@pytest.fixture(scope="module")
def live():
    worker = Worker("fuzzed")
    transport = TcpTransport()
    server = transport.serve(worker, "tcp://127.0.0.1:0", authkey=KEY, timeout=TIMEOUT,
                             limits=LIMITS)  # fmt: skip
    honest = BaseWorker(worker.id, server.address,
                        transport.connect(server.address, authkey=KEY, limits=LIMITS))  # fmt: skip
    kept = honest.send(torch.arange(10.0))
    yield worker, server, honest, kept
    server.close()
    worker.close()


@pytest.fixture(scope="module")
def allocations():
    """Every receive buffer the TCP channel allocates, by size."""
    sizes: list[int] = []
    real = tcp_module._buffers

    class Recording:
        @staticmethod
        def take(size):
            sizes.append(int(size))
            return real.take(size)

    tcp_module._buffers = Recording()
    yield sizes
    tcp_module._buffers = real


def _frame(message=None) -> bytes:
    return bytes(serde.encode_bytes(message if message is not None else Get(1)))


def _header(magic=serde.MAGIC, version=serde.VERSION, kind=serde.KIND_MESSAGE, meta=8, n=0):
    return serde.HEADER.pack(magic, version, kind, 0, meta, n)


ATTACKS = st.one_of(
    st.binary(min_size=1, max_size=2048).map(lambda b: ("random", b)),
    st.integers(1, 60).map(lambda k: ("truncated", _frame(Create(torch.ones(8)))[:k])),
    st.binary(min_size=4, max_size=4).filter(lambda m: m != serde.MAGIC)
    .map(lambda m: ("magic", _header(magic=m) + b"\x00" * 8)),
    st.integers(0, 255).filter(lambda v: v != serde.VERSION)
    .map(lambda v: ("version", _header(version=v) + b"\x00" * 8)),
    st.integers(LIMITS.max_meta_bytes + 1, 2**32 - 1)
    .map(lambda n: ("oversized meta", _header(meta=n))),
    st.integers(LIMITS.max_buffers + 1, 2**32 - 1)
    .map(lambda n: ("too many buffers", _header(n=n))),
    st.integers(LIMITS.max_frame_bytes, 2**63)
    .map(lambda n: ("oversized buffer", _header(meta=1, n=1) + struct.pack("<Q", n) + b"\xc0")),
    st.binary(min_size=1, max_size=64)
    .map(lambda junk: ("bad meta", _header(meta=len(junk)) + junk)),
)  # fmt: skip


def _closes(sock: socket.socket) -> bool:
    """True when the peer closes the line (whatever it says first) before the deadline."""
    sock.settimeout(TIMEOUT * 10)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def _outcome(sock: socket.socket) -> str:
    """'closed' or 'error reply', whichever comes first; fails on a hang or a success."""
    sock.settimeout(TIMEOUT * 10)
    try:
        kind, reply = TcpChannel(sock, LIMITS).recv()
    except ConnectionLost:
        return "closed"
    except OSError:
        return "closed"
    assert kind == serde.KIND_REPLY and reply.error is not None, reply
    return "error reply"


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(attack=ATTACKS, authenticated=st.booleans())
def test_hostile_frames_get_an_error_or_a_closed_line(live, allocations, attack, authenticated):
    worker, server, honest, kept = live
    _, payload = attack
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        if authenticated:
            greet_worker(sock, KEY, "mallory", server.address)
            sock.sendall(payload)
            _outcome(sock)
        else:  # the payload stands where the handshake's answer should
            sock.sendall(payload)
            assert _closes(sock)
    assert time.monotonic() - started < TIMEOUT * 10 + 2
    assert all(size <= LIMITS.max_frame_bytes for size in allocations)
    assert torch.equal((kept + 0).get(), torch.arange(10.0)), "the honest client lost nothing"


def test_a_pickle_in_the_meta_is_never_unpickled(live, tmp_path):
    worker, server, honest, kept = live
    Pickled.marker = str(tmp_path / "unpickled")
    meta = pickle.dumps(RunOp("torch.add", (Pickled(),), {}))
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        greet_worker(sock, KEY, "mallory", server.address)
        sock.sendall(_header(meta=len(meta)) + meta)
        assert _outcome(sock) in ("closed", "error reply")
    assert not os.path.exists(Pickled.marker)
    assert torch.equal((kept * 1).get(), torch.arange(10.0))


def test_unauthenticated_peers_are_recorded(live):
    worker, server, honest, kept = live
    before = len(worker.log.events(kind="denied"))
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.recv(36)  # the challenge
        sock.sendall(b"\x03eve" + b"\x00" * 64)  # a name, a wrong proof, a nonce
        assert sock.recv(1) == b"\x00"
    assert len(worker.log.events(kind="denied")) == before + 1
    assert worker.log.events(kind="denied")[-1].peer == "eve"
    assert honest._request(RunOp("Tensor.sum", (Ref(kept.id_at_location),), {})) is not None
