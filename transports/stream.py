"""A thread-per-connection server and a client connection over any connected stream socket.

A transport brings its sockets and a *channel* that carries frames over one of them::

    class Channel:
        sock: socket.socket
        def send(self, obj, kind) -> None: ...
        def recv(self, first_timeout=None) -> tuple[int, Any]: ...
        def close(self) -> None: ...

``recv`` waits as long as the socket's timeout says for a frame to begin, then (with
``first_timeout``) sets that timeout for the rest of the frame. A ``FrameError`` (a
``SerializationError``) means the whole frame was read and only decoding failed: the
stream is still in step. TCP (``bastion.transports.tcp``) and shared memory
(``bastion.transports.shm``) both serve through :class:`StreamServer` and connect through
:class:`StreamConnection`.

Peers authenticate (:mod:`bastion.transports.handshake`) before any frame is decoded. Each
connection has its own thread with blocking sockets: asyncio costs 4x on the request path.
Socket failures become ``ConnectionLost`` in one place, :func:`lost`.

>>> import socket
>>> lost(socket.timeout("timed out"), "tcp://127.0.0.1:7001")
ConnectionLost('no answer from tcp://127.0.0.1:7001 in time: ...')
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from bastion import serde
from bastion.errors import ConnectionLost, FrameError, SerializationError
from bastion.logs import get_logger
from bastion.messages import ErrorInfo, Reply
from bastion.transports.base import Connection, Server
from bastion.transports.handshake import accept_peer

__all__ = ["StreamConnection", "StreamServer", "lost"]

log = get_logger("bastion.transports.stream")


def lost(exc: BaseException, address: str) -> ConnectionLost:
    """What a socket failure talking to ``address`` means to the caller: ``ConnectionLost``."""
    if isinstance(exc, ConnectionLost):
        return exc if address in str(exc) else ConnectionLost(f"{address}: {exc}")
    if isinstance(exc, (socket.timeout, BlockingIOError)):
        return ConnectionLost(
            f"no answer from {address} in time: the worker may be stuck or busy with a long "
            "operation; pass a larger timeout= when connecting"
        )
    if isinstance(exc, SerializationError):
        return ConnectionLost(f"{address} sent a malformed frame ({exc}); connect again")
    why = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
    return ConnectionLost(f"the connection to {address} broke ({why}: {exc}); connect again")


def _shutdown(sock: socket.socket) -> None:
    """Wake whoever blocks on ``sock`` (the base method: a TLS socket keeps its state)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _in_step(exc: SerializationError) -> bool:
    return isinstance(exc, FrameError)


class StreamConnection(Connection):
    """A client's authenticated line to a worker; one request in flight at a time.

    Threads may share it: requests queue on a lock. A socket failure, a timeout or a frame
    that breaks the stream closes it and raises ``ConnectionLost``, as does every request
    after that.
    """

    def __init__(self, channel: Any, address: str, worker_id: str) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._closed = False
        self.address = address
        self.worker_id = worker_id

    def request(self, message: Any) -> Reply:
        """Send ``message`` and wait for the worker's ``Reply``."""
        with self._lock:
            if self._closed:
                raise ConnectionLost(f"the connection to {self.address} is closed; connect again")
            try:
                self._channel.send(message, serde.KIND_MESSAGE)
            except SerializationError:  # encoding failed before a byte was written
                raise
            except BaseException as exc:
                self._close_locked()
                if isinstance(exc, (OSError, ConnectionLost)):
                    raise lost(exc, self.address) from exc
                raise
            try:
                kind, reply = self._channel.recv()
            except SerializationError as exc:
                if _in_step(exc):
                    raise
                self._close_locked()
                raise lost(exc, self.address) from exc
            except BaseException as exc:  # out of step with the worker (even on Ctrl-C)
                self._close_locked()
                if isinstance(exc, (OSError, ConnectionLost)):
                    raise lost(exc, self.address) from exc
                raise
        if kind != serde.KIND_REPLY or type(reply) is not Reply:
            raise SerializationError(f"{self.address} answered with something not a reply")
        return reply

    def _close_locked(self) -> None:
        if not self._closed:
            self._closed = True
            self._channel.close()

    def close(self) -> None:
        """Close the connection; a request in flight fails with ``ConnectionLost``. Idempotent."""
        if self._closed:
            return
        _shutdown(self._channel.sock)  # wakes a request blocked on the socket: it lets go
        with self._lock:
            self._close_locked()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.address} worker:{self.worker_id} {state}>"


class StreamServer(Server):
    """Serve ``worker`` on a listening socket: one thread accepts, one serves each peer.

    ``wrap`` (optional, e.g. TLS) turns each accepted socket into the one to talk over;
    ``make_channel`` builds the channel that carries frames over it. Both, the handshake
    and every frame once begun must finish within ``timeout`` s; an idle peer may stay
    connected indefinitely. A frame that does not decode gets an error reply when the
    stream is still in step, a closed connection otherwise; every other peer is served on.
    """

    join_timeout = 5.0  #: how long ``close()`` waits for the threads, all together

    def __init__(self, worker: Any, listener: socket.socket, address: str, *, authkey: bytes,
                 timeout: float | None, make_channel: Callable[[socket.socket], Any],
                 wrap: Callable[[socket.socket], socket.socket] | None = None) -> None:  # fmt: skip
        self.worker, self.address = worker, address
        self._listener, self._authkey, self._timeout = listener, authkey, timeout
        self._make_channel, self._wrap = make_channel, wrap
        self._lock = threading.Lock()
        self._live: dict[threading.Thread, socket.socket] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name=f"bastion-accept-{address}")  # fmt: skip
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                if self._closed or exc.errno in (errno.EBADF, errno.EINVAL):
                    return
                log.warning("accept failed", address=self.address, error=str(exc))
                time.sleep(0.05)  # out of descriptors, say: let connections end, then retry
                continue
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                      name=f"bastion-conn-{self.address}")  # fmt: skip
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                self._live[thread] = sock
            thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._live[threading.current_thread()] = sock
            closed = self._closed
        if closed:
            _shutdown(sock)

    def _serve(self, sock: socket.socket) -> None:
        channel = None
        try:
            sock.settimeout(self._timeout)
            if self._wrap is not None:
                sock = self._wrap(sock)
                self._track(sock)
            peer = accept_peer(sock, self._authkey, self.worker)
            if peer is None:
                return
            channel = self._make_channel(sock)
            self._loop(sock, channel, peer)
        except (OSError, ConnectionLost, SerializationError) as exc:
            if not self._closed:
                log.info("connection ended", address=self.address, reason=str(exc))
        except Exception as exc:  # a bug must not take the server down
            log.exception("connection failed", address=self.address, error=str(exc))
        finally:
            with self._lock:
                self._live.pop(threading.current_thread(), None)
            if channel is not None:
                channel.close()
            else:
                sock.close()

    def _loop(self, sock: socket.socket, channel: Any, peer: str) -> None:
        handle, timeout = self.worker.handle, self._timeout
        while not self._closed:
            sock.settimeout(None)  # idle peers may wait; a frame, once begun, must finish
            try:
                kind, message = channel.recv(first_timeout=timeout)
            except SerializationError as exc:
                if not _in_step(exc):
                    raise
                reply = Reply(error=ErrorInfo("SerializationError", str(exc)))
            else:
                if kind != serde.KIND_MESSAGE:
                    raise SerializationError(f"{peer} sent a frame of kind {kind}, not a message")
                reply = handle(message, peer)
            try:
                channel.send(reply, serde.KIND_REPLY)
            except SerializationError as exc:  # encoding failed: nothing was written yet
                error = ErrorInfo("SerializationError", f"the reply cannot travel: {exc}")
                channel.send(Reply(error=error), serde.KIND_REPLY)

    def close(self) -> None:
        """Stop accepting, close the listening socket and every connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = dict(self._live)
        _shutdown(self._listener)
        self._listener.close()
        for sock in live.values():
            _shutdown(sock)
        deadline = time.monotonic() + self.join_timeout
        for thread in (self._thread, *live):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} worker:{getattr(self.worker, 'id', '?')}>"
