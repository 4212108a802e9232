"""Mutual HMAC challenge-response on a shared key, before any message is decoded.

1. worker -> client: ``b"BSTN"`` and a 32-byte nonce ``Ns``.
2. client -> worker: its id (u8 length + UTF-8), ``HMAC(key, Ns || id)``, its nonce ``Nc``.
3. worker -> client: ``b"\\x00"`` (refused: the worker records a ``denied`` event and
   closes), or ``b"\\x01"``, its id, ``HMAC(key, Nc || worker id)``.

HMAC is SHA-256; comparisons are constant-time. Every read has a fixed bound, so a peer
cannot make either side allocate before it proved it holds the key.

>>> authkey_bytes("secret")
b'secret'
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
from typing import Any

from bastion.errors import ConfigurationError, ConnectionLost, PermissionDenied

MAGIC = b"BSTN"
NONCE = 32
DIGEST = 32


def authkey_bytes(authkey: bytes | str | None) -> bytes:
    """The shared key as bytes; a missing or empty key is a configuration error."""
    if isinstance(authkey, str):
        authkey = authkey.encode()
    if not isinstance(authkey, bytes) or not authkey:
        raise ConfigurationError(
            "this transport needs a shared key: pass authkey=... (bytes or str) to serve() "
            "and connect(), or set BASTION_AUTHKEY for `bastion serve`"
        )
    return authkey


def _mac(key: bytes, nonce: bytes, name: bytes) -> bytes:
    return hmac.new(key, nonce + name, hashlib.sha256).digest()


def _read(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionLost("the peer closed the connection during authentication")
        data += chunk
    return bytes(data)


def _name(value: str) -> bytes:
    encoded = value.encode()
    if not 0 < len(encoded) < 256:
        raise ConfigurationError(f"worker and peer ids take 1 to 255 bytes, got {value!r}")
    return bytes([len(encoded)]) + encoded


def greet_worker(sock: socket.socket, key: bytes, peer: str, address: str) -> str:
    """Client side: prove we hold ``key`` as ``peer``; returns the worker's verified id."""
    head = _read(sock, len(MAGIC) + NONCE)
    if head[: len(MAGIC)] != MAGIC:
        raise ConnectionLost(f"{address} does not speak bastion's protocol")
    server_nonce, client_nonce = head[len(MAGIC) :], secrets.token_bytes(NONCE)
    name = _name(peer)
    sock.sendall(name + _mac(key, server_nonce, name[1:]) + client_nonce)
    verdict = _read(sock, 1)
    if verdict != b"\x01":
        raise PermissionDenied(f"the worker at {address} refused us: wrong authkey")
    worker_name = _read(sock, _read(sock, 1)[0])
    if not hmac.compare_digest(_read(sock, DIGEST), _mac(key, client_nonce, worker_name)):
        raise PermissionDenied(f"the worker at {address} could not prove it holds the authkey")
    return worker_name.decode()


def accept_peer(sock: socket.socket, key: bytes, worker: Any) -> str | None:
    """Worker side: challenge the peer; its verified id, or None (refused and recorded)."""
    server_nonce = secrets.token_bytes(NONCE)
    sock.sendall(MAGIC + server_nonce)
    raw_name = _read(sock, _read(sock, 1)[0])
    proof, client_nonce = _read(sock, DIGEST), _read(sock, NONCE)
    peer = raw_name.decode(errors="replace")
    if not hmac.compare_digest(proof, _mac(key, server_nonce, raw_name)):
        # Recorded before the peer hears of it: whoever sees the refusal finds the event.
        worker.record_denied(peer, "connect", "authentication failed: wrong authkey")
        sock.sendall(b"\x00")
        return None
    own = _name(worker.id)
    sock.sendall(b"\x01" + own + _mac(key, client_nonce, own[1:]))
    return peer
