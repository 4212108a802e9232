"""The handles pointers talk to: ``BaseWorker`` (a worker reached through a transport
connection), ``VirtualWorker`` (a :class:`bastion.worker.Worker` served in this process, as
in PySyft) and ``local_worker`` ("me", the owner of every pointer).

>>> import torch, bastion as sy
>>> m1 = sy.VirtualWorker(id="doc-M1")
>>> p = m1.send(torch.tensor([1, 2]))
>>> len(m1._objects)
1
>>> (p + p).get()
tensor([2, 4])
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import cloudpickle
import torch
import torch.nn as nn

from bastion import plugins
from bastion.errors import (
    ConfigurationError,
    LocationError,
    SerializationError,
    error_from_wire,
)
from bastion.ids import new_id
from bastion.logs import get_logger
from bastion.messages import (
    BudgetQuery,
    CallFunction,
    Clear,
    Create,
    Delete,
    ListObjects,
    ObjectSpec,
    Search,
    TensorSpec,
)
from bastion.privacy import Budget, BudgetReport, ReleasePolicy
from bastion.stores import EventLog
from bastion.worker import Worker, _spec, check_description, normalize_tags

log = get_logger("bastion.client")


class LocalWorker:
    """The data scientist's own side ("me"): the ``owner`` of every pointer it holds."""

    def __init__(self, id: str = "me") -> None:
        self.id = id

    def __repr__(self) -> str:
        return f"<LocalWorker id:{self.id}>"


#: The local worker of this process (PySyft's ``sy.local_worker``).
local_worker = LocalWorker()


class BaseWorker:
    """A worker as its pointers see it: an id, an address, and a connection to it.

    Deletes from garbage-collected pointers are queued and sent before the next request,
    so a collection can never interleave with another request on the same connection.
    """

    def __init__(self, id: str, address: str, connection: Any, *, garbage_collect: bool = True):
        self.id = id
        self.address = address
        self.garbage_collect = garbage_collect
        self._connection = connection
        self._pending_deletes: collections.deque[int] = collections.deque()
        self._pending_bytes = 0

    # ------------------------------------------------------------------ requests

    #: Deletes from collected pointers go out in batches: at this many ids, or this many
    #: bytes of remote data, or whenever someone looks at the worker's objects or log.
    delete_batch = 256
    delete_batch_bytes = 16 * 2**20

    def _request(self, message: Any) -> Any:
        if self._pending_bytes >= self.delete_batch_bytes or (
            len(self._pending_deletes) >= self.delete_batch
        ):
            self._flush_deletes()
        reply = self._connection.request(message)
        if reply.error is not None:
            error = error_from_wire(reply.error.type_name, reply.error.message)
            raise error from reply.cause
        return reply.value

    def _flush_deletes(self) -> None:
        ids: list[int] = []
        pending = self._pending_deletes
        self._pending_bytes = 0
        while pending:
            try:
                ids.append(pending.popleft())
            except IndexError:
                break
        if ids:
            reply = self._connection.request(Delete(ids))
            if reply.error is not None:
                log.warning("delete failed", worker=self.id, error=reply.error.message)

    def _schedule_delete(self, obj_id: int, nbytes: int = 0) -> None:
        if self.garbage_collect:
            self._pending_deletes.append(obj_id)
            self._pending_bytes += nbytes

    # ------------------------------------------------------------------ public API

    def send(
        self, obj: torch.Tensor | nn.Module, *, tags: Iterable[str] = (),
        description: str | None = None,
    ) -> Any:
        """Send a tensor (returns a ``PointerTensor``) or a module (its parameters become pointers).

        ``tags`` and ``description`` (added to those the tensor carries, see ``tag()``) let
        the worker's peers find it with ``search``.

        >>> import torch, bastion as sy
        >>> ptr = sy.VirtualWorker(id="doc-send").send(torch.ones(2), tags=["#ones"])
        >>> ptr.shape, ptr.tags
        (torch.Size([2]), ('#ones',))
        """
        from bastion.modules import send_module
        from bastion.pointer import ObjectPointer, PointerTensor

        if isinstance(obj, nn.Module):
            return send_module(obj, self)
        if isinstance(obj, (PointerTensor, ObjectPointer)):
            raise SerializationError(
                f"{obj!r} is already a pointer; use .move({self.id!r}) to move its object"
            )
        if not isinstance(obj, torch.Tensor):
            raise SerializationError(
                f"cannot send a {type(obj).__name__} to {self.id}: bastion sends tensors and "
                "nn.Modules; wrap the data with torch.tensor(...) first"
            )
        own = obj.__dict__
        if tags or description is not None or "_tags" in own or "_description" in own:
            tags = normalize_tags((*own.get("_tags", ()), *normalize_tags(tags)))
            if description is None:
                description = own.get("_description")
            spec = self._request(Create(obj, None, "send", tags, check_description(description)))
            pointer = PointerTensor._make(self, spec, leaf=True)
            pointer.__dict__.update(_tags=tags, _description=description)
            return pointer
        spec = self._request(Create(obj))
        return PointerTensor._make(self, spec, leaf=True)

    def search(self, *tags: str | Iterable[str]) -> list[Any]:
        """Pointers to the objects carrying every one of ``tags`` (``search("#digits")``).

        The pointers do not delete their objects when collected: the data is its owner's.

        >>> import torch, bastion as sy
        >>> bob = sy.VirtualWorker(id="doc-search")
        >>> _ = bob.send(torch.ones(2), tags=["#digits", "#train"], description="ones")
        >>> [(p.shape, p.description) for p in bob.search("#digits", "#train")]
        [(torch.Size([2]), 'ones')]
        >>> bob.search("#digits", "#test")
        []
        """
        from bastion.pointer import ObjectPointer, PointerTensor

        self._flush_deletes()
        found = []
        for spec, found_tags, description in self._request(Search(normalize_tags(tags))):
            if isinstance(spec, TensorSpec):
                pointer = PointerTensor._make(self, spec, leaf=True)
            else:
                pointer = ObjectPointer(self, spec)
            pointer.__dict__.update(garbage_collect_data=False, _tags=tuple(found_tags),
                                    _description=description)  # fmt: skip
            found.append(pointer)
        return found

    def call(self, func: Callable[..., Any] | bytes, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` on the worker and return its value, in one round trip.

        Pointers among the arguments stand for the objects they point to there; tensors and
        plain values travel along. ``func`` is shipped with cloudpickle (or give the bytes of
        ``cloudpickle.dumps(func)``, to pickle a function called often once); the worker must
        run with ``allow_code=True`` and refuses otherwise with ``PermissionDenied``. The
        value must be something the wire format carries (tensors, numbers, dicts...). The
        worker keeps the functions it unpickled (the last ``Worker.FUNCTION_CACHE``) by peer
        and bytes: the same bytes shipped again by the same peer reuse the same function, with
        any state it holds. When the call read private data (see ``Worker.register``), the
        value leaves only as the worker's release policy says.

        >>> import torch, bastion as sy
        >>> bob = sy.VirtualWorker(id="doc-call", allow_code=True)
        >>> x = bob.send(torch.tensor([1.0, 2.0]))
        >>> bob.call(lambda t, k: (t * k).sum(), x, 3)
        tensor(9.)
        """
        from bastion.pointer import _Call, _to_wire

        code = func if isinstance(func, bytes) else cloudpickle.dumps(func)
        call = _Call()
        wire_args = tuple([_to_wire(arg, call) for arg in args])
        wire_kwargs = {key: _to_wire(value, call) for key, value in kwargs.items()}
        if call.location is not None and call.location is not self:
            raise LocationError(
                f"call() on worker {self.id} got a pointer to an object on {call.location.id}; "
                f"move it to {self.id} first"
            )
        message = CallFunction(code, wire_args, wire_kwargs, torch.is_grad_enabled(), True)
        return self._request(message)

    def clear_objects(self) -> BaseWorker:
        """Drop every object on this worker (pointers to them raise ``ObjectNotFoundError``)."""
        self._flush_deletes()
        self._request(Clear())
        return self

    def privacy_budget(self) -> BudgetReport:
        """What this peer has spent of its differential-privacy budget on the worker.

        >>> import bastion as sy
        >>> sy.VirtualWorker(id="doc-budget").privacy_budget().spent
        0.0
        """
        return BudgetReport(**self._request(BudgetQuery()))

    def list_objects(self) -> dict[int, TensorSpec | ObjectSpec]:
        """What the worker holds, as ``{id: TensorSpec | ObjectSpec}``."""
        self._flush_deletes()
        return self._request(ListObjects())

    @property
    def objects(self) -> Mapping[int, Any]:
        """A read-only view of the worker's objects."""
        return MappingProxyType(self._objects)

    @property
    def _objects(self) -> dict[int, Any]:
        return self.list_objects()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id:{self.id} address:{self.address}>"


def _db_default(db: str | None) -> str | None:
    return db if db is not None else os.environ.get("BASTION_DB") or None


class VirtualWorker(BaseWorker):
    """A worker in this process, as in PySyft: ``VirtualWorker(hook, id="M1")``.

    ``serialize=True`` sends every request through the full wire encoding; ``db`` takes a
    file path or SQLAlchemy URL for the event log (default: in-memory SQLite; a log that
    already holds this worker's events brings its objects back); ``garbage_collect=False``
    keeps objects when their pointers are collected. ``payloads``, ``blob_dir`` and
    ``snapshot_every`` are :class:`Worker`'s.

    >>> import torch, bastion as sy
    >>> hook = sy.TorchHook(torch)
    >>> bob = sy.VirtualWorker(hook, id="doc-bob")
    >>> bob
    <VirtualWorker id:doc-bob #objects:0>
    >>> hook.unhook()
    """

    def __init__(
        self,
        hook: Any = None,
        id: str | None = None,
        *,
        db: str | None = None,
        serialize: bool = False,
        durability: str = "batched",
        allow_code: bool = False,
        garbage_collect: bool = True,
        payloads: bool | None = None,
        blob_dir: str | None = None,
        snapshot_every: int | None = 10_000,
    ) -> None:
        from bastion.hook import TorchHook

        if hook is not None and not isinstance(hook, TorchHook):
            raise ConfigurationError(
                f"VirtualWorker's first argument is a TorchHook, got {type(hook).__name__}; "
                "write VirtualWorker(hook, id='M1') or VirtualWorker(id='M1')"
            )
        if id is None:
            id = f"worker-{new_id() % 10**6:06d}"
        if not isinstance(id, str) or not id or any(c in id for c in "/ \t\n"):
            raise ConfigurationError(
                f"worker id must be a non-empty string without spaces or '/', got {id!r}"
            )
        self._worker = Worker(
            id, db=_db_default(db), durability=durability, allow_code=allow_code,
            payloads=payloads, blob_dir=blob_dir, snapshot_every=snapshot_every,
        )
        address = f"memory://{id}"
        self._server = plugins.serve(self._worker, address, serialize=serialize)
        connection = plugins.connect(address, peer=local_worker.id)
        super().__init__(id, address, connection, garbage_collect=garbage_collect)
        self.serialize = serialize

    @property
    def _objects(self) -> dict[int, Any]:
        """The worker's live ``{id: object}`` dict, as PySyft exposed it."""
        self._flush_deletes()
        return self._worker.store.objects

    def register(
        self,
        value: torch.Tensor,
        *,
        private: bool = True,
        tags: Iterable[str] = (),
        description: str | None = None,
        policy: ReleasePolicy | str | None = None,
    ) -> Any:
        """Put your data on this in-process worker as its owner; returns a pointer to it.

        You (this handle's peer id) are the owner: only you may fetch or move it; what
        other peers compute from it leaves only as the release ``policy`` says (see
        ``Worker.register``). The data stays when the pointer is collected.

        >>> import torch, bastion as sy
        >>> alice = sy.VirtualWorker(id="doc-vregister")
        >>> x = alice.register(torch.tensor([1.0, 2.0]), tags=["#ages"])
        >>> (x * 2).get()
        tensor([2., 4.])
        >>> [p.tags for p in alice.search("#ages")]
        [('#ages',)]
        """
        from bastion.pointer import PointerTensor
        from bastion.transports.memory import isolate

        self._flush_deletes()
        obj_id = self._worker.register(
            isolate(value) if isinstance(value, torch.Tensor) else value, private=private,
            owner=self._connection.peer if private else None, tags=tags, description=description,
            policy=policy,
        )
        pointer = PointerTensor._make(self, _spec(obj_id, self._worker.store.get(obj_id)),
                                      leaf=True)  # fmt: skip
        pointer.__dict__.update(garbage_collect_data=False, _tags=normalize_tags(tags),
                                _description=description)  # fmt: skip
        return pointer

    def set_release_policy(
        self, policy: ReleasePolicy | str = "deny", *, budget: Budget | None = None
    ) -> None:
        """Set what may leave of objects computed from private data (``Worker``'s method)."""
        self._worker.set_release_policy(policy, budget=budget)

    @property
    def audit(self) -> EventLog:
        """This worker's event log: ``audit.events(kind="move")``."""
        self._flush_deletes()
        return self._worker.log

    def close(self) -> None:
        """Stop serving and flush the event log."""
        if not self._server.closed:
            self._flush_deletes()
        self._server.close()
        self._worker.close()

    def __enter__(self) -> VirtualWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._server.closed:
            return f"<VirtualWorker id:{self.id} closed>"
        return f"<VirtualWorker id:{self.id} #objects:{len(self._objects)}>"


__all__ = ["BaseWorker", "LocalWorker", "VirtualWorker", "local_worker"]
