"""The TCP transport: workers anywhere, ``tcp://HOST:PORT``, optionally over TLS.

A frame is :mod:`bastion.serde`'s, sent as it is encoded: the header and meta in one part,
each tensor straight from its memory (``sendmsg`` gathers the parts, no joined copy), and
received into a buffer allocated once per tensor (``recv_into``; large ones come from
:mod:`bastion.buffers`, already faulted in). Peers authenticate with
an HMAC challenge-response on a shared key before any frame is decoded
(:mod:`bastion.transports.handshake`); a refused peer is a ``denied`` event.

>>> from bastion.transports.tcp import parse_address
>>> parse_address("tcp://127.0.0.1:7001")
('127.0.0.1', 7001)
>>> parse_address("tcp://[::1]:7001")
('::1', 7001)
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from bastion import buffers as _buffers
from bastion import serde
from bastion.errors import (
    ConfigurationError,
    ConnectionLost,
    FrameError,
    SerializationError,
    TransportError,
)
from bastion.plugins.hookspecs import hookimpl
from bastion.transports.base import Transport
from bastion.transports.handshake import authkey_bytes, greet_worker
from bastion.transports.stream import StreamConnection, StreamServer, lost

_CHUNK = 1 << 16
_IOV_MAX = 512


def parse_address(address: str) -> tuple[str, int]:
    """``tcp://host:port`` -> ``(host, port)``; IPv6 hosts in brackets."""
    rest = address.removeprefix("tcp://") if isinstance(address, str) else ""
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535 or rest == address:
        raise ConfigurationError(f"{address!r} is not a TCP address like 'tcp://127.0.0.1:7001'")
    return host, int(port)


def _format(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class TcpChannel:
    """Frames over one connected (possibly TLS) socket."""

    def __init__(self, sock: socket.socket, limits: serde.Limits) -> None:
        self.sock = sock
        self.limits = limits
        self._pending = bytearray()
        self._gather = not isinstance(sock, ssl.SSLSocket)  # SSL sockets have no sendmsg

    def send(self, obj: Any, kind: int) -> None:
        parts = serde.encode(obj, kind, limits=self.limits)
        if len(parts) == 1 or not self._gather:
            for part in parts:
                self.sock.sendall(part)
            return
        views = [memoryview(part).cast("B") for part in parts]
        while views:
            sent = self.sock.sendmsg(views[:_IOV_MAX])
            while views and sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            if sent:
                views[0] = views[0][sent:]

    def recv(self, first_timeout: float | None = None) -> tuple[int, Any]:
        if not self._pending:
            self._fill()  # may wait as long as the socket's timeout says
        if first_timeout is not None:
            self.sock.settimeout(first_timeout)  # ...but a frame, once begun, must finish
        header = serde.parse_header(self._take(serde.HEADER.size), self.limits)
        lengths = serde.frame_layout(header, self._take(header.table_len), self.limits)
        meta = self._take(header.meta_len)
        offset = serde.HEADER.size + header.table_len + header.meta_len
        buffers = []
        for length in lengths:
            self._take(serde.padding(offset))
            offset += serde.padding(offset) + length
            view = _buffers.take(length)  # large ones reused from the pool: no page faults
            got = min(len(self._pending), length)
            view[:got] = self._pending[:got]
            del self._pending[:got]
            while got < length:
                n = self.sock.recv_into(view[got:])
                if n == 0:
                    raise ConnectionLost("the peer closed the connection in the middle of a frame")
                got += n
            buffers.append(view)
        try:
            return header.kind, serde.decode_parts(meta, buffers, self.limits)
        except SerializationError as exc:  # read whole: the stream is still in step
            raise FrameError(str(exc)) from exc

    def _fill(self) -> None:
        chunk = self.sock.recv(_CHUNK)
        if not chunk:
            raise ConnectionLost("the peer closed the connection")
        self._pending += chunk

    def _take(self, size: int) -> bytes:
        while len(self._pending) < size:
            self._fill()
        taken = bytes(self._pending[:size])
        del self._pending[:size]
        return taken

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class TcpTransport(Transport):
    """Workers reached over TCP: ``tcp://HOST:PORT`` (port 0 picks a free one to serve on)."""

    scheme = "tcp"

    def serve(
        self,
        worker: Any,
        address: str,
        *,
        authkey: bytes | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        limits: serde.Limits = serde.DEFAULT_LIMITS,
        backlog: int = 128,
        **options: Any,
    ) -> StreamServer:
        """Serve ``worker`` at ``address``; peers must prove they hold ``authkey``."""
        _no_options(options)
        key = authkey_bytes(authkey)
        host, port = parse_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(backlog)
        except OSError as exc:
            listener.close()
            raise TransportError(f"cannot serve at {address}: {exc}") from exc
        real = _format(host, listener.getsockname()[1])

        def channel(sock: socket.socket) -> TcpChannel:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return TcpChannel(sock, limits)

        wrap = None
        if ssl_context is not None:
            def wrap(sock: socket.socket) -> socket.socket:
                return ssl_context.wrap_socket(sock, server_side=True)

        return StreamServer(worker, listener, real, authkey=key, timeout=timeout,
                            make_channel=channel, wrap=wrap)  # fmt: skip

    def connect(
        self,
        address: str,
        *,
        peer: str = "me",
        authkey: bytes | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 30.0,
        limits: serde.Limits = serde.DEFAULT_LIMITS,
        **options: Any,
    ) -> StreamConnection:
        """Connect to the worker at ``address`` as ``peer``; every call waits ``timeout`` s."""
        _no_options(options)
        key = authkey_bytes(authkey)
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise TransportError(f"cannot reach a worker at {address}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            worker_id = greet_worker(sock, key, peer, address)
        except (OSError, ConnectionLost) as exc:
            sock.close()
            raise lost(exc, address) from exc
        except BaseException:
            sock.close()
            raise
        return StreamConnection(TcpChannel(sock, limits), address, worker_id)


def _no_options(options: dict[str, Any]) -> None:
    if options:
        raise TransportError(f"the tcp transport has no options {sorted(options)}")


@hookimpl
def bastion_transports() -> list[type]:
    """The TCP transport, registered like any plugin's."""
    return [TcpTransport]
