"""A bastion transport plugin: workers on this machine, reached as ``pipe://NAME``.

A worker served at ``pipe://NAME`` listens on the Unix socket file ``NAME.sock`` in
``$BASTION_PIPE_DIR`` (default: ``<temp dir>/bastion-pipe-<uid>``, readable by you alone).
Peers first prove they hold the shared ``authkey`` (bastion's HMAC handshake, as over TCP);
then each message and reply travels as an 8-byte length followed by the whole
``bastion.serde`` frame. bastion's ``StreamServer`` and ``StreamConnection`` run the
server threads and the client side; this module only brings the sockets and the channel.

>>> import torch, bastion as sy
>>> served = sy.serve("pipe://doc-pipe", id="doc-pipe", authkey="a shared secret")
>>> worker = sy.connect("pipe://doc-pipe", authkey="a shared secret")
>>> (worker.send(torch.ones(2)) * 3).get()
tensor([3., 3.])
>>> worker.close(); served.close()
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

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

_LENGTH = struct.Struct("<Q")  # the length prefix of every frame: 8 bytes, little-endian


def socket_path(address: str) -> Path:
    """The socket file of the worker at ``pipe://NAME``.

    >>> socket_path("pipe://M1").name
    'M1.sock'
    """
    name = address.removeprefix("pipe://") if isinstance(address, str) else ""
    if not name or name == address or "/" in name or "\0" in name:
        raise ConfigurationError(f"{address!r} is not a pipe address like 'pipe://M1'")
    folder = os.environ.get("BASTION_PIPE_DIR")
    folder = folder or os.path.join(tempfile.gettempdir(), f"bastion-pipe-{os.getuid()}")
    return Path(folder) / f"{name}.sock"


class PipeChannel:
    """Frames over one connected socket, each sent as one length-prefixed blob."""

    def __init__(self, sock: socket.socket, limits: serde.Limits = serde.DEFAULT_LIMITS) -> None:
        self.sock = sock
        self.limits = limits

    def send(self, obj: Any, kind: int) -> None:
        """Encode ``obj`` (a message or a reply) and write it; raises before writing if it can't."""
        frame = serde.encode_bytes(obj, kind, limits=self.limits)
        self.sock.sendall(_LENGTH.pack(len(frame)))
        self.sock.sendall(frame)

    def recv(self, first_timeout: float | None = None) -> tuple[int, Any]:
        """Read one frame: ``(kind, value)``. See ``bastion.transports.stream`` for the rules."""
        head = memoryview(bytearray(_LENGTH.size))
        got = self.sock.recv_into(head)  # waits as long as the socket's timeout says...
        if got == 0:
            raise ConnectionLost("the peer closed the connection")
        if first_timeout is not None:
            self.sock.settimeout(first_timeout)  # ...but a frame, once begun, must finish
        self._read_into(head[got:])
        (size,) = _LENGTH.unpack(head)
        if size > self.limits.max_frame_bytes:  # refused before anything is allocated
            raise SerializationError(f"a {size}-byte frame is over Limits.max_frame_bytes")
        frame = bytearray(size)
        self._read_into(memoryview(frame))
        try:
            return serde.decode(frame, self.limits)
        except SerializationError as exc:  # read whole: the stream is still in step
            raise FrameError(str(exc)) from exc

    def _read_into(self, view: memoryview) -> None:
        while view.nbytes:
            got = self.sock.recv_into(view)
            if got == 0:
                raise ConnectionLost("the peer closed the connection in the middle of a frame")
            view = view[got:]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class PipeServer(StreamServer):
    """bastion's ``StreamServer``, which also removes the socket file when it closes."""

    def __init__(self, worker: Any, listener: socket.socket, address: str, **kwargs: Any) -> None:
        self.path = Path(listener.getsockname())
        self._inode = self.path.stat().st_ino
        super().__init__(worker, listener, address, **kwargs)

    def close(self) -> None:
        """Stop serving and remove the socket file (unless a newer server took the name)."""
        super().close()
        try:
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass


class PipeTransport(Transport):
    """Workers in other processes (or threads) on this machine: ``pipe://NAME``."""

    scheme = "pipe"

    def serve(self, worker: Any, address: str, *, authkey: bytes | str | None = None,
              timeout: float = 30.0, limits: serde.Limits = serde.DEFAULT_LIMITS,
              **options: Any) -> PipeServer:  # fmt: skip
        """Serve ``worker`` at ``address``; peers must prove they hold ``authkey``."""
        _check_options(options, ignored=frozenset())
        key = authkey_bytes(authkey)
        path = socket_path(address)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            if _answers(path):
                raise TransportError(f"cannot serve at {address}: a worker is served there")
            path.unlink()  # left behind by a process that died without closing its server
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            listener.listen(64)
        except OSError as exc:
            listener.close()
            raise TransportError(f"cannot serve at {address} ({path}): {exc}") from exc
        return PipeServer(worker, listener, address, authkey=key, timeout=timeout,
                          make_channel=lambda sock: PipeChannel(sock, limits))  # fmt: skip

    def connect(self, address: str, *, peer: str = "me", authkey: bytes | str | None = None,
                timeout: float = 30.0, limits: serde.Limits = serde.DEFAULT_LIMITS,
                **options: Any) -> StreamConnection:  # fmt: skip
        """Connect to the worker at ``address`` as ``peer``; every call waits ``timeout`` s."""
        _check_options(options, ignored=_OTHER_TRANSPORTS_OPTIONS)
        key = authkey_bytes(authkey)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path(address)))
            worker_id = greet_worker(sock, key, peer, address)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise TransportError(f"no worker is served at {address}") from exc
        except (OSError, ConnectionLost) as exc:
            sock.close()
            raise lost(exc, address) from exc  # bastion's ConnectionLost, with advice
        except BaseException:  # PermissionDenied (wrong authkey), a bad address...
            sock.close()
            raise
        return StreamConnection(PipeChannel(sock, limits), address, worker_id)


def _answers(path: Path) -> bool:
    """Whether a live server listens on the socket file ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


#: A worker passes the same connect options to every transport it moves objects through,
#: so connect() accepts (and ignores) those of TLS transports.
_OTHER_TRANSPORTS_OPTIONS = frozenset({"ssl_context", "server_hostname"})


def _check_options(options: dict[str, Any], ignored: frozenset[str]) -> None:
    unknown = set(options) - ignored
    if unknown:
        raise TransportError(f"the pipe transport has no options {sorted(unknown)}")


@hookimpl
def bastion_transports() -> list[type]:
    """What this plugin adds to bastion: one transport class."""
    return [PipeTransport]
