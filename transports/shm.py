"""The shared-memory transport: workers in other processes on this machine, ``shm://NAME``.

Control frames go over a Unix socket in Linux's abstract namespace (``\\0bastion-shm-NAME``:
no file to leave behind); tensor bytes go through shared memory. Each side of a connection
owns one region of ``_SLOTS`` slots of ``_PIECE`` bytes, an anonymous ``memfd`` mapped by
both processes and reused from frame to frame (fresh memory per transfer would pay a page
fault per 4 KiB; a reused region copies at memory speed). Its descriptor crosses once, with
the first frame that carries tensors (``SCM_RIGHTS``); after that only frames cross.

Nothing is ever created in ``/dev/shm``: a memfd lives as long as a process holds it, so a
peer killed with SIGKILL leaks nothing.

A frame on the socket is one flag byte (1: the region's descriptor rides with it; 2: the
tensors stream), then a ``bastion.serde`` frame without its buffers; the buffers' bytes,
laid end to end, go through the region:

- up to ``_PIECE`` bytes: all of them sit in the region before the frame is sent;
- more: the frame goes first, then the bytes in pieces. The sender copies piece ``k`` into
  slot ``k % _SLOTS`` and sends one byte; the receiver copies it out into the tensor's own
  memory (:mod:`bastion.buffers`) and answers one byte when the slot may be filled again
  (not for the last ``_SLOTS`` pieces). Both processes copy at once, one per CPU.

Requests and replies alternate on a connection, so a frame never starts while the previous
one is still being read.

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

from bastion import buffers as _buffers
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
_STREAM = 2
_PIECE = 4 << 20  # a frame with more tensor bytes than this streams through the region
_SLOTS = 4  # pieces in flight: the sender fills one slot while the receiver empties another
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
        self.bytes = memoryview(self.map) if size else memoryview(b"")

    @classmethod
    def create(cls, size: int) -> _Region:
        fd = os.memfd_create("bastion-shm", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size)

    def close(self) -> None:
        self.bytes.release()
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
        views = [memoryview(part).cast("B") for part in buffers]
        total = sum(view.nbytes for view in views)
        streamed = total > _PIECE
        flag = _STREAM if streamed else 0
        if total and not self.mine.size:
            self.mine = _Region.create(_PIECE * _SLOTS)
            flag |= _NEW_REGION
        if not streamed:  # one piece: the whole frame sits in the region before it is told
            _copy_piece(views, 0, total, self.mine.bytes, 0, into_region=True)
        if flag & _NEW_REGION:
            socket.send_fds(self.sock, [bytes([flag])], [self.mine.fd])
            self.sock.sendall(control)
        else:
            self.sock.sendall(bytes([flag]) + control)
        if streamed:
            self._stream(views, total)

    def _stream(self, views: list[memoryview], total: int) -> None:
        """Fill the region's slots piece by piece while the receiver empties them."""
        pieces = -(-total // _PIECE)
        freed = 0
        for k in range(pieces):
            freed = self._notices(freed, k - _SLOTS + 1)  # piece k reuses k - _SLOTS's slot
            start = k * _PIECE
            _copy_piece(views, start, min(total, start + _PIECE), self.mine.bytes,
                        (k % _SLOTS) * _PIECE, into_region=True)  # fmt: skip
            self.sock.sendall(b"\x01")

    def _notices(self, have: int, want: int) -> int:
        """Read the peer's one-byte notices until ``want`` have come; returns how many did."""
        while have < want:
            data = self.sock.recv(_RECV_CHUNK)
            if not data:
                raise ConnectionLost("the peer closed the connection mid-frame")
            have += len(data)
        return have

    def recv(self, first_timeout: float | None = None) -> tuple[int, Any]:
        # One recvmsg usually brings the flag, any descriptor and the whole control frame.
        data, fds, _flags, _addr = socket.recv_fds(self.sock, _RECV_CHUNK, 1)
        if first_timeout is not None:
            self.sock.settimeout(first_timeout)
        if not data:
            raise ConnectionLost("the peer closed the shared-memory connection")
        flag = data[0]
        if flag & _NEW_REGION:
            if len(fds) != 1:
                raise SerializationError("a new shared-memory region came without its handle")
            size = os.fstat(fds[0]).st_size
            if size > _PIECE * _SLOTS:
                os.close(fds[0])
                raise SerializationError(
                    f"a shared-memory region of {size} bytes; regions are {_PIECE * _SLOTS}"
                )
            self.theirs.close()
            self.theirs = _Region(fds[0], size)
        else:
            for fd in fds:
                os.close(fd)
        pending = bytearray(data[1:])
        header = serde.parse_header(self._take(pending, serde.HEADER.size), self.limits)
        lengths = serde.frame_layout(header, self._take(pending, header.table_len), self.limits)
        meta = self._take(pending, header.meta_len)
        total = sum(lengths)
        streamed = bool(flag & _STREAM)
        if (total > _PIECE) != streamed:
            raise SerializationError("a shared-memory frame streams if, and only if, it is large")
        if total and self.theirs.size < (_PIECE * _SLOTS if streamed else total):
            raise SerializationError("a frame points past the sender's shared memory")
        # From the pool: large buffers come back with their pages already faulted in.
        buffers = [_buffers.take(length) for length in lengths]
        if streamed:
            self._unstream(buffers, total, len(pending))
        elif pending:
            raise SerializationError("a shared-memory frame carried bytes after its meta")
        else:
            _copy_piece(buffers, 0, total, self.theirs.bytes, 0, into_region=False)
        try:
            return header.kind, serde.decode_parts(meta, buffers, self.limits)
        except SerializationError as exc:  # read whole: the stream is still in step
            raise FrameError(str(exc)) from exc

    def _unstream(self, buffers: list[memoryview], total: int, told: int) -> None:
        """Empty the sender's slots as it fills them; free each slot it will fill again."""
        pieces = -(-total // _PIECE)
        for k in range(pieces):
            told = self._notices(told, k + 1)
            start = k * _PIECE
            _copy_piece(buffers, start, min(total, start + _PIECE), self.theirs.bytes,
                        (k % _SLOTS) * _PIECE, into_region=False)  # fmt: skip
            if k + _SLOTS < pieces:
                self.sock.sendall(b"\x01")
        if told != pieces:
            raise SerializationError("a streamed shared-memory frame told of extra pieces")

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


def _copy_piece(views: list[memoryview], start: int, stop: int, region: memoryview,
                at: int, *, into_region: bool) -> None:  # fmt: skip
    """Copy bytes ``start:stop`` of the buffers laid end to end from or to ``region[at:]``.

    A plain ``memcpy`` on this thread: a streamed frame keeps both processes copying at
    once, and PyTorch's threaded copy would set four threads spinning on two cores.
    """
    offset = 0
    for view in views:
        end = offset + view.nbytes
        lo, hi = max(start, offset), min(stop, end)
        if lo < hi:
            slot = slice(at + lo - start, at + hi - start)
            if into_region:
                region[slot] = view[lo - offset : hi - offset]
            else:
                view[lo - offset : hi - offset] = region[slot]
        if end >= stop:
            break
        offset = end


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
