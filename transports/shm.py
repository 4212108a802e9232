"""The shared-memory transport: workers in other processes on this machine, ``shm://NAME``.

Control frames go over a Unix socket in Linux's abstract namespace (``\\0bastion-shm-NAME``:
no file to leave behind); tensor bytes go through shared memory. Each side of a connection
owns one region, an anonymous ``memfd`` mapped by both processes, reused from frame to
frame (a prefaulted region copies at ~12 GB/s here; a fresh segment per transfer is slower
than TCP). When a frame needs more room, the sender grows its region and passes the new
file descriptor with the frame (``SCM_RIGHTS``); only that handle crosses the socket.

Nothing is ever created in ``/dev/shm``: a memfd lives as long as a process holds it, so a
peer killed with SIGKILL leaks nothing.

A frame on the socket is one flag byte (1: a new region's descriptor rides with it), then a
``bastion.serde`` frame without its buffers; buffer ``i`` sits in the sender's region at the
offset the frame layout gives it (``serde.padding``). Requests and replies alternate on a
connection, so a region is never written while its reader still copies out of it.

Peers authenticate first with the same HMAC challenge-response as TCP
(:mod:`bastion.transports.handshake`).

>>> from bastion.transports.shm import ShmTransport
>>> ShmTransport.scheme
'shm'
"""

from __future__ import annotations

import mmap
import os
import socket
from typing import Any

import torch

from bastion import serde
from bastion.errors import (
    ConfigurationError,
    ConnectionLost,
    FrameError,
    SerializationError,
    TransportError,
)
from bastion.logs import get_logger
from bastion.plugins.hookspecs import hookimpl
from bastion.transports.base import Transport
from bastion.transports.handshake import authkey_bytes, greet_worker
from bastion.transports.stream import StreamConnection, StreamServer, lost

log = get_logger("bastion.transports.shm")

_NEW_REGION = 1
_MIN_REGION = 1 << 20
_RECV_CHUNK = 1 << 16


def _socket_name(address: str) -> bytes:
    name = address.removeprefix("shm://")
    if not name or "/" in name or "\0" in name or len(name) > 90:
        raise ConfigurationError(f"{address!r} is not a shared-memory address like 'shm://M1'")
    return b"\0bastion-shm-" + name.encode()


class _Region:
    """A memfd mapped into this process: the bytes of the frames one side sends."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.map = mmap.mmap(fd, size) if size else None
        self.view = torch.frombuffer(self.map, dtype=torch.uint8) if size else None

    @classmethod
    def create(cls, size: int) -> _Region:
        fd = os.memfd_create("bastion-shm", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size)

    def close(self) -> None:
        self.view = None
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # a tensor view is still alive; the GC unmaps it later
                pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Channel:
    """Frames over one connected Unix socket plus the two regions of the connection."""

    def __init__(self, sock: socket.socket, limits: serde.Limits) -> None:
        self.sock = sock
        self.limits = limits
        self.mine = _Region(-1, 0)
        self.theirs = _Region(-1, 0)

    def send(self, obj: Any, kind: int) -> None:
        control, buffers = serde.encode_split(obj, kind, limits=self.limits)
        offset, spans = 0, []
        for part in buffers:
            view = memoryview(part).cast("B")
            offset += serde.padding(offset)
            spans.append((offset, view))
            offset += view.nbytes
        flag = 0
        if offset > self.mine.size:
            self.mine.close()
            self.mine = _Region.create(max(offset, 2 * self.mine.size, _MIN_REGION))
            flag = _NEW_REGION
        for start, view in spans:
            if view.nbytes:
                target = self.mine.view[start : start + view.nbytes]
                target.copy_(torch.frombuffer(view, dtype=torch.uint8))
        if flag:
            socket.send_fds(self.sock, [bytes([flag])], [self.mine.fd])
            self.sock.sendall(control)
        else:
            self.sock.sendall(b"\x00" + control)

    def recv(self, first_timeout: float | None = None) -> tuple[int, Any]:
        # One recvmsg usually brings the flag, any descriptor and the whole control frame.
        data, fds, _flags, _addr = socket.recv_fds(self.sock, _RECV_CHUNK, 1)
        if first_timeout is not None:
            self.sock.settimeout(first_timeout)
        if not data:
            raise ConnectionLost("the peer closed the shared-memory connection")
        if data[0] == _NEW_REGION:
            if len(fds) != 1:
                raise SerializationError("a new shared-memory region came without its handle")
            self.theirs.close()
            self.theirs = _Region(fds[0], os.fstat(fds[0]).st_size)
        else:
            for fd in fds:
                os.close(fd)
        pending = bytearray(data[1:])
        header = serde.parse_header(self._take(pending, serde.HEADER.size), self.limits)
        lengths = serde.frame_layout(header, self._take(pending, header.table_len), self.limits)
        meta = self._take(pending, header.meta_len)
        if pending:
            raise SerializationError("a shared-memory frame carried bytes after its meta")
        offset, buffers = 0, []
        for length in lengths:
            offset += serde.padding(offset)
            if offset + length > self.theirs.size:
                raise SerializationError("a frame points past the sender's shared memory")
            # torch.empty, not bytearray: no zero-filling pass before the copy
            buffer = torch.empty(length, dtype=torch.uint8)
            buffer.copy_(self.theirs.view[offset : offset + length])
            buffers.append(buffer.numpy())
            offset += length
        try:
            return header.kind, serde.decode_parts(meta, buffers, self.limits)
        except SerializationError as exc:  # read whole: the stream is still in step
            raise FrameError(str(exc)) from exc

    def _take(self, pending: bytearray, size: int) -> bytes:
        """The next ``size`` bytes: from what was already received, then from the socket."""
        while len(pending) < size:
            chunk = self.sock.recv(max(size - len(pending), _RECV_CHUNK))
            if not chunk:
                raise ConnectionLost("the peer closed the shared-memory connection mid-frame")
            pending += chunk
        taken = bytes(pending[:size])
        del pending[:size]
        return taken

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.mine.close()
            self.theirs.close()


class ShmTransport(Transport):
    """Workers on this machine in other processes: ``shm://NAME``."""

    scheme = "shm"

    def serve(self, worker: Any, address: str, *, authkey: bytes | str | None = None,
              timeout: float = 30.0, limits: serde.Limits = serde.DEFAULT_LIMITS,
              **options: Any) -> StreamServer:  # fmt: skip
        """Serve ``worker`` at ``address``; peers must prove they hold ``authkey``."""
        _no_options(options)
        key = authkey_bytes(authkey)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(_socket_name(address))
            listener.listen(64)
        except OSError as exc:
            listener.close()
            raise TransportError(
                f"cannot serve at {address}: {exc} (is it served already?)"
            ) from exc
        return StreamServer(worker, listener, address, authkey=key, timeout=timeout,
                            make_channel=lambda sock: _Channel(sock, limits))  # fmt: skip

    def connect(self, address: str, *, peer: str = "me", authkey: bytes | str | None = None,
                timeout: float = 30.0, limits: serde.Limits = serde.DEFAULT_LIMITS,
                **options: Any) -> StreamConnection:  # fmt: skip
        """Connect to the worker at ``address`` as ``peer``; every call waits ``timeout`` s."""
        _no_options(options)
        key = authkey_bytes(authkey)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(_socket_name(address))
            worker_id = greet_worker(sock, key, peer, address)
        except (OSError, ConnectionLost) as exc:
            sock.close()
            if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
                raise TransportError(f"no worker is served at {address}") from exc
            raise lost(exc, address) from exc
        except BaseException:
            sock.close()
            raise
        return StreamConnection(_Channel(sock, limits), address, worker_id)


def _no_options(options: dict[str, Any]) -> None:
    unknown = set(options) - {"ssl_context", "server_hostname"}
    if unknown:
        raise TransportError(f"the shm transport has no options {sorted(unknown)}")


@hookimpl
def bastion_transports() -> list[type]:
    """The shared-memory transport, registered like any plugin's."""
    return [ShmTransport]
