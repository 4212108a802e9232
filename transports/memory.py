"""The in-memory transport: workers in this process, reached as ``memory://<id>``.

By default a request goes to the worker as a Python object, with only its tensors copied
at the boundary (so a client and a worker never share memory, as over a wire). With
``serialize=True`` every message and reply takes the full encode/decode path of
:mod:`bastion.serde`, byte for byte what a network transport carries.

>>> from bastion import plugins
>>> class Echo:
...     def handle(self, message, peer):
...         from bastion.messages import Reply
...         return Reply(value=(peer, message.obj_id))
>>> server = plugins.serve(Echo(), "memory://echo-doc", serialize=True)
>>> from bastion.messages import Get
>>> plugins.connect("memory://echo-doc", peer="me").request(Get(5)).value
('me', 5)
>>> server.close()
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch

from bastion import serde
from bastion.errors import ConnectionLost, TransportError
from bastion.messages import CallFunction, Create, Ref, Reply, RunOp
from bastion.plugins.hookspecs import hookimpl
from bastion.transports.base import Connection, Server, Transport

_ATOMS = frozenset({int, float, bool, str, type(None), Ref})


def isolate(value: Any) -> Any:
    """``value`` with every tensor replaced by a detached copy (keeping ``requires_grad``)."""
    if type(value) in _ATOMS:
        return value
    if isinstance(value, torch.Tensor):
        copy = value.detach().clone()
        if value.requires_grad:
            copy.requires_grad_(True)
        return copy
    kind = type(value)
    if kind is tuple or kind is list:
        if _ATOMS.issuperset(map(type, value)):
            return value
        return kind([isolate(item) for item in value])
    if kind is dict:
        if not value or _ATOMS.issuperset(map(type, value.values())):
            return value
        return {key: isolate(item) for key, item in value.items()}
    return value


def _isolate_message(message: Any) -> Any:
    kind = type(message)
    if kind is Create:
        return Create(isolate(message.value), message.obj_id, message.origin, message.tags,
                      message.description)  # fmt: skip
    if kind is RunOp:
        args, kwargs = isolate(message.args), isolate(message.kwargs)
        if args is message.args and kwargs is message.kwargs:
            return message
        return RunOp(message.op, args, kwargs, message.grad_enabled)
    if kind is CallFunction:
        return CallFunction(message.code, isolate(message.args), isolate(message.kwargs),
                            message.grad_enabled, message.return_value)  # fmt: skip
    return message


class MemoryServer(Server):
    """A worker registered under ``memory://<name>`` in this process."""

    def __init__(self, transport: MemoryTransport, worker: Any, address: str, serialize: bool):
        self.transport = transport
        self.worker = worker
        self.address = address
        self.serialize = serialize
        self.closed = False

    def close(self) -> None:
        """Unregister; connections made earlier fail with ``ConnectionLost``."""
        self.closed = True
        self.transport._unregister(self)


class MemoryConnection(Connection):
    """A direct line to an in-process worker; ``peer`` is who the worker sees asking."""

    def __init__(self, server: MemoryServer, peer: str, serialize: bool) -> None:
        self._server = server
        self.address = server.address
        self.worker_id = getattr(server.worker, "id", server.address)
        self.peer = peer
        self.serialize = serialize
        self._handle = server.worker.handle

    def request(self, message: Any) -> Reply:
        """Hand ``message`` to the worker (encoded and decoded when ``serialize``)."""
        if self._server.closed:
            raise ConnectionLost(
                f"the in-memory worker at {self.address} was closed; create it again"
            )
        if self.serialize:
            _, decoded = serde.decode(serde.encode_bytes(message, serde.KIND_MESSAGE))
            reply = self._handle(decoded, self.peer)
            _, answer = serde.decode(serde.encode_bytes(reply, serde.KIND_REPLY))
            return answer
        reply = self._handle(_isolate_message(message), self.peer)
        if reply.value is not None and reply.error is None:
            reply.value = isolate(reply.value)
        return reply


class MemoryTransport(Transport):
    """Workers in this process, by name. A newer worker under a taken name replaces the older."""

    scheme = "memory"

    def __init__(self) -> None:
        self._servers: weakref.WeakValueDictionary[str, MemoryServer] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()

    def serve(self, worker: Any, address: str, *, serialize: bool = False, **options: Any):
        """Register ``worker`` at ``address`` (``memory://<name>``)."""
        if options:
            raise TransportError(f"memory transport has no options {sorted(options)}")
        server = MemoryServer(self, worker, address, serialize)
        with self._lock:
            self._servers[address] = server
        return server

    #: Options of network transports that mean nothing in one process (a worker's own
    #: connect options are passed along when it moves an object here).
    IGNORED_OPTIONS = frozenset({"authkey", "timeout", "ssl_context", "server_hostname"})

    def connect(
        self, address: str, *, peer: str = "me", serialize: bool | None = None, **options: Any
    ) -> MemoryConnection:
        """Connect to the worker at ``address``; ``serialize`` defaults to the server's mode."""
        unknown = set(options) - self.IGNORED_OPTIONS
        if unknown:
            raise TransportError(f"memory transport has no options {sorted(unknown)}")
        server = self._servers.get(address)
        if server is None or server.closed:
            raise TransportError(
                f"no in-memory worker is served at {address}; create it first "
                "(VirtualWorker(id=...)) in this process"
            )
        return MemoryConnection(server, peer, server.serialize if serialize is None else serialize)

    def _unregister(self, server: MemoryServer) -> None:
        with self._lock:
            if self._servers.get(server.address) is server:
                del self._servers[server.address]


@hookimpl
def bastion_transports() -> list[type]:
    """The memory transport, registered like any plugin's."""
    return [MemoryTransport]
