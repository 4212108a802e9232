"""The worker's data side (``Worker``): an object store, an event log, a privacy guard, and
``handle(message, peer)``, the same code whatever transport carried the message. The handles
pointers talk to (``BaseWorker``, ``VirtualWorker``) are in :mod:`bastion.client`.

>>> import torch
>>> from bastion.messages import Create, Get
>>> worker = Worker("doc-M1")
>>> spec = worker.handle(Create(torch.tensor([1, 2])), peer="me").value
>>> worker.handle(Get(spec.id), peer="me").value
tensor([1, 2])
>>> worker.close()
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle
import torch

from bastion import ops, plugins, serde
from bastion.errors import (
    ConfigurationError,
    PermissionDenied,
    SerializationError,
    UnsupportedOperation,
    error_from_wire,
)
from bastion.events import dtype_name, payload_digest
from bastion.guard import PrivacyGuard, value_digest
from bastion.ids import new_id
from bastion.logs import get_logger
from bastion.messages import (
    BudgetQuery,
    CallFunction,
    Clear,
    Create,
    Delete,
    ErrorInfo,
    Get,
    ListObjects,
    Move,
    ObjectSpec,
    Ref,
    Reply,
    RunOp,
    Search,
    Tag,
    TensorSpec,
)
from bastion.privacy import Budget, BudgetReport, ReleasePolicy
from bastion.stores import EventLog
from bastion.stores.eventlog import _canonical
from bastion.stores.objects import ObjectStore
from bastion.stores.replay import ReplayedStore

log = get_logger("bastion.worker")


def _spec(obj_id: int, value: Any) -> TensorSpec | ObjectSpec:
    if isinstance(value, torch.Tensor):
        return TensorSpec(obj_id, tuple(value.shape), value.dtype, value.requires_grad)
    return ObjectSpec(obj_id, type(value).__name__)


_FLAT = frozenset({int, float, bool, str, type(None)})
#: the ``detail`` of a ``create`` event by where its payload went
_PAYLOAD_DETAIL = {None: None, "db": '{"payload":"db"}', "file": '{"payload":"file"}'}
#: The detail of a ``get`` whose value left through the ``dp`` release policy (noised).
_RELEASED_DP = _canonical({"released": "dp"})


def _notify_plugins(build: Any) -> None:
    """Hand written events to ``bastion_event`` plugins, building them only if any listen."""
    if plugins.has_observers():
        for event in build():
            plugins.observe(event)


_notify_plugins.wanted = plugins.has_observers  # type: ignore[attr-defined]


def _is_structseq(value: Any) -> bool:
    return type(value).__module__ == "torch.return_types"


MAX_TAGS, MAX_TAG_CHARS, MAX_DESCRIPTION_CHARS = 64, 256, 65536


def normalize_tags(tags: str | Iterable[Any]) -> tuple[str, ...]:
    """Tags as a tuple of distinct non-empty strings, in order; a list among them is flattened.

    >>> normalize_tags(["#digits", ("#train", "#digits")])
    ('#digits', '#train')
    """
    flat: list[str] = []
    for tag in [tags] if isinstance(tags, str) else tags:
        flat.extend([tag] if isinstance(tag, str) else tag if isinstance(tag, (list, tuple))
                    else [tag])  # fmt: skip
    for tag in flat:
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS or tag != tag.strip():
            raise ConfigurationError(
                f"a tag is a non-empty string of at most {MAX_TAG_CHARS} characters without "
                f"surrounding spaces, such as '#digits'; got {tag!r}"
            )
    out = tuple(dict.fromkeys(flat))
    if len(out) > MAX_TAGS:
        raise ConfigurationError(f"{len(out)} tags on one object; at most {MAX_TAGS}")
    return out


def check_description(description: Any) -> str | None:
    """``description`` if it is None or a string of at most 65,536 characters."""
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS
    ):
        raise ConfigurationError(
            f"a description is a string of at most {MAX_DESCRIPTION_CHARS} characters, got "
            f"{type(description).__name__}"
            + (f" of {len(description)}" if isinstance(description, str) else "")
        )
    return description


class Worker:
    """A worker's data side: its objects, its event log, and the handler of every request.

    ``db`` is where events go: ``None`` (an in-memory SQLite database), a file path or any
    SQLAlchemy URL. A worker started on a log that already holds its events comes back with
    the objects it held (``recovered`` says how). Created objects' payloads are stored with
    the log (``payloads``; default: unless it is in memory), large ones as files in
    ``blob_dir``; a snapshot every ``snapshot_every`` events keeps recovery short. Code
    (``CallFunction``) runs only when ``allow_code`` is true.
    """

    def __init__(
        self,
        id: str,
        *,
        db: str | None = None,
        durability: str = "batched",
        allow_code: bool = False,
        connect_options: dict[str, Any] | None = None,
        payloads: bool | None = None,
        blob_dir: str | None = None,
        snapshot_every: int | None = 10_000,
    ) -> None:
        if snapshot_every is not None and snapshot_every < 1:
            raise ConfigurationError(
                f"snapshot_every takes a positive number of events or None, not {snapshot_every}"
            )
        self.id = id
        self.store = ObjectStore(id)
        self.log = EventLog(db, id, durability=durability, observer=_notify_plugins,
                            payloads=payloads, blob_dir=blob_dir)  # fmt: skip
        self.snapshot_every = snapshot_every
        #: how this worker came back from its log (``None`` for a new log)
        self.recovered: ReplayedStore | None = None
        if self.log.last_seq:
            try:
                self._recover()
            except BaseException:
                self.log.close()
                raise
        self._next_snapshot = self._snapshot_due()
        self.allow_code = allow_code
        #: options for the connections this worker opens itself (moves): authkey, ssl_context...
        self.connect_options = dict(connect_options or {})
        self._lock = threading.RLock()
        self._peers: dict[str, Any] = {}
        #: shipped functions already unpickled, by peer and bytes (the newest FUNCTION_CACHE
        #: kept): one peer's function, with the state it keeps, never runs for another
        self._functions: dict[tuple[str, bytes], Callable[..., Any]] = {}
        self._handlers = {
            Create: self._create,
            Get: self._get,
            Move: self._move,
            Delete: self._delete,
            Clear: self._clear,
            RunOp: self._run_op,
            CallFunction: self._call,
            ListObjects: self._list,
            BudgetQuery: self._budget,
            Tag: self._tag,
            Search: self._search,
        }
        #: private objects, what derives from them, release policy and budgets (bastion.guard)
        self.privacy = PrivacyGuard(self)
        if self.recovered is not None:  # a restarted worker stays as private as it was
            self.privacy.restore()

    # ------------------------------------------------------------------ entry point

    def handle(self, message: Any, peer: str) -> Reply:
        """Answer one request from ``peer``; a refused or failed request never stops the worker."""
        handler = self._handlers.get(type(message))
        try:
            if handler is None:
                raise SerializationError(
                    f"worker {self.id} got a {type(message).__name__}, which is not a bastion "
                    "message"
                )
            with self._lock:
                reply = Reply(handler(message, peer))
                if self.log._next_seq > self._next_snapshot:
                    self.snapshot()
                return reply
        except Exception as exc:  # the reply carries it; the worker keeps serving
            return Reply(error=ErrorInfo(type(exc).__name__, str(exc)), cause=exc)

    def _recover(self) -> None:
        state = self.log.replay()
        for obj_id, value in state.items():
            self.store.objects[obj_id] = value
            self.store.digests[obj_id] = state.digests[obj_id]
            if obj_id in state.details:
                self.store.details[obj_id] = _canonical(state.details[obj_id])
        self.recovered = state
        if state.missing:
            log.warning("worker.recovered_without_payloads", worker=self.id,
                        missing=len(state.missing))  # fmt: skip
        log.info("worker.recovered", worker=self.id, objects=len(state), seq=state.seq,
                 snapshot=state.snapshot_seq, events_read=state.events_read)  # fmt: skip

    def _snapshot_due(self) -> float:
        if self.snapshot_every is None:
            return float("inf")
        return self.log._next_seq + self.snapshot_every - 1

    def snapshot(self) -> int:
        """Record the store as it stands (ids, digests, details) so that replay and recovery
        read only the events after it; returns its ``seq``. Taken every ``snapshot_every``
        events by itself."""
        with self._lock:
            details = self.store.details
            seq = self.log.snapshot(
                [(oid, digest, details.get(oid)) for oid, digest in self.store.digests.items()]
            )
            self._next_snapshot = self._snapshot_due()
            return seq

    def close(self) -> None:
        """Flush and close the event log and any connections this worker opened."""
        for connection in self._peers.values():
            connection.close()
        self._peers.clear()
        self.log.close()

    # ------------------------------------------------------------------ helpers

    def _fresh_id(self) -> int:
        obj_id = new_id()
        while obj_id in self.store:
            obj_id = new_id()
        return obj_id

    def _record_create(
        self, obj_id: int, value: Any, peer: str, origin: str, op: str | None = None,
        inputs: tuple[int, ...] = (), detail: dict[str, Any] | None = None,
    ) -> TensorSpec | ObjectSpec:
        """Log the ``create`` of ``value`` under ``obj_id`` (and keep its payload); returns
        what the client learns. ``detail`` (plain JSON data) stays with the object: it is
        in its ``create`` event, in snapshots, and back after replay or recovery."""
        digest = payload_digest(value)
        store = self.store
        store.digests[obj_id] = digest
        where = self.log.store_payload(digest, value)
        if detail:
            store.details[obj_id] = _canonical(detail)
            detail_json = _canonical({**detail, "payload": where} if where else detail)
        elif obj_id in store.details:  # an in-place change keeps the object's detail
            kept = json.loads(store.details[obj_id])
            detail_json = _canonical({**kept, "payload": where} if where else kept)
        else:
            detail_json = _PAYLOAD_DETAIL[where]
        if isinstance(value, torch.Tensor):
            shape = tuple(value.shape)
            self.log.record("create", obj_id, peer, origin, op, inputs, dtype_name(value.dtype),
                            shape, digest, detail_json)  # fmt: skip
            return TensorSpec(obj_id, shape, value.dtype, value.requires_grad)
        kind = type(value).__name__
        self.log.record("create", obj_id, peer, origin, op, inputs, kind, None, digest,
                        detail_json)  # fmt: skip
        return ObjectSpec(obj_id, kind)

    def _digest(self, obj_id: int, value: Any) -> str:
        digest = self.store.digests.get(obj_id)
        return digest if digest is not None else payload_digest(value)

    def record_denied(self, peer: str, request: str, why: str, **detail: Any) -> PermissionDenied:
        """Record a refused request as a ``denied`` event; returns the error to raise or send.

        Transports call it too, e.g. for a peer that failed authentication.
        """
        self.log.append("denied", peer=peer, op=detail.pop("op", None),
                        object_id=detail.pop("object_id", None),
                        detail={"request": request, "why": why, **detail})
        log.warning("request denied", worker=self.id, peer=peer, request=request, why=why)
        return PermissionDenied(f"worker {self.id} refused {request} from {peer}: {why}")

    def _resolve_args(self, args: tuple, inputs: dict[int, int]) -> tuple:
        """Fast path for the usual flat argument tuple of Refs and plain values."""
        objects = self.store.objects
        resolved = []
        for arg in args:
            kind = type(arg)
            if kind is Ref:
                obj = objects.get(arg.id)
                if obj is None:
                    raise self.store.not_found(arg.id)
                inputs[id(obj)] = arg.id
                resolved.append(obj)
            elif kind in _FLAT:
                resolved.append(arg)
            else:
                resolved.append(self._resolve(arg, inputs))
        return tuple(resolved)

    def _resolve(self, value: Any, inputs: dict[int, int]) -> Any:
        kind = type(value)
        if kind is Ref:
            obj = self.store.get(value.id)
            inputs[id(obj)] = value.id
            return obj
        if kind is tuple or kind is list:
            return kind([self._resolve(item, inputs) for item in value])
        if kind is dict:
            return {key: self._resolve(item, inputs) for key, item in value.items()}
        if kind is slice:
            return slice(
                self._resolve(value.start, inputs),
                self._resolve(value.stop, inputs),
                self._resolve(value.step, inputs),
            )
        return value

    def _keep(self, value: Any, inputs: dict[int, int], peer: str, origin: str, op: str,
              taint: frozenset[int] | None = None) -> Any:  # fmt: skip
        """Store one result; a result that *is* an input keeps that input's id (in-place).

        ``taint``: the private objects the result is computed from (None: none)."""
        obj_id = inputs.get(id(value))
        if obj_id is None:
            obj_id = self._fresh_id()
        self.store.objects[obj_id] = value
        detail = None if taint is None else self._derived(obj_id, taint)
        return self._record_create(obj_id, value, peer, origin, op, tuple(inputs.values()),
                                   detail)  # fmt: skip

    def _store_result(
        self, result: Any, inputs: dict[int, int], peer: str, origin: str, op: str,
        taint: frozenset[int] | None = None,
    ) -> Any:
        if result is None:
            return None
        if isinstance(result, torch.Tensor):
            return self._keep(result, inputs, peer, origin, op, taint)
        if (type(result) in (tuple, list) or _is_structseq(result)) and all(
            item is None or isinstance(item, torch.Tensor) for item in result
        ):
            items = [
                None if item is None else self._keep(item, inputs, peer, origin, op, taint)
                for item in result
            ]
            return type(result)(items)
        return self._keep(result, inputs, peer, origin, op, taint)

    def _derived(self, obj_id: int, taint: frozenset[int]) -> dict[str, Any]:
        """The ``create`` detail of an object derived from ``taint``: its privacy label, and
        the tags and description it had (an in-place write keeps them)."""
        label = self.privacy.label(obj_id, taint)
        kept = self.store.details.get(obj_id)
        return label if kept is None else {**json.loads(kept), **label}

    def _taint_written(self, result: Any, written: set[int], taint: frozenset[int], peer: str,
                       origin: str, op: str, inputs: dict[int, int]) -> None:  # fmt: skip
        """Objects a tainted operation wrote into become derived: a new version each."""
        returned = {id(result)}
        if type(result) in (tuple, list) or _is_structseq(result):
            returned.update(id(item) for item in result)
        objects = self.store.objects
        for obj_id in written:
            value = objects[obj_id]
            if id(value) not in returned:  # results are recorded when they are stored
                detail = self._derived(obj_id, taint)
                if (self.store.details.get(obj_id) == _canonical(detail)
                        and self.store.digests.get(obj_id) == payload_digest(value)):  # fmt: skip
                    continue  # neither its bytes nor its flags changed: no new version
                self._record_create(obj_id, value, peer, origin, op, tuple(inputs.values()),
                                    detail)  # fmt: skip

    def _connect(self, address: str) -> Any:
        connection = self._peers.get(address)
        if connection is None:
            connection = plugins.connect(address, peer=self.id, **self.connect_options)
            self._peers[address] = connection
        return connection

    # ------------------------------------------------------------------ handlers

    def _create(self, message: Create, peer: str) -> TensorSpec | ObjectSpec:
        detail = None
        if message.tags or message.description is not None:
            tags = normalize_tags(message.tags)
            description = check_description(message.description)
            detail = {"tags": list(tags), "description": description}
        obj_id = message.obj_id if message.obj_id is not None else self._fresh_id()
        self.store.put(obj_id, message.value)
        return self._record_create(obj_id, message.value, peer, message.origin, detail=detail)

    def _get(self, message: Get, peer: str) -> Any:
        obj = self.store.get(message.obj_id)
        if not isinstance(obj, torch.Tensor):
            serde.encode(obj)  # refuse what cannot travel before anything changes
        released = None
        if self.privacy.labels:  # refused, released as it is, or released with noise
            released = self.privacy.check_get(message.obj_id, obj, peer, message.with_grad)
            self.privacy.forget((message.obj_id,))
        if released is not None:
            value, grad, digest = released
            self.store.pop(message.obj_id)
            self.log.append("get", object_id=message.obj_id, peer=peer, digest=digest,
                            detail={"released": "dp"})
            return (value, grad) if message.with_grad else value
        digest = self._digest(message.obj_id, obj)
        self.store.pop(message.obj_id)
        self.log.append("get", object_id=message.obj_id, peer=peer, digest=digest)
        if not message.with_grad:
            return obj
        grad = obj.grad if isinstance(obj, torch.Tensor) and obj.is_leaf else None
        return (obj, grad)

    def _move(self, message: Move, peer: str) -> Any:
        obj = self.store.get(message.obj_id)
        if self.privacy.labels:
            self.privacy.check_move(message.obj_id, peer, message.destination)
        connection = self._connect(message.destination)
        tags, description = self._described(message.obj_id)
        reply = connection.request(Create(obj, message.obj_id, "move", tags, description))
        if reply.error is not None:
            raise error_from_wire(reply.error.type_name, reply.error.message)
        digest = self._digest(message.obj_id, obj)
        self.store.pop(message.obj_id)
        self.privacy.forget((message.obj_id,))
        self.log.append(
            "move",
            object_id=message.obj_id,
            peer=connection.worker_id,
            digest=digest,
            detail={"destination": message.destination, "new_id": reply.value.id,
                    "requested_by": peer},
        )
        return reply.value

    def _delete(self, message: Delete, peer: str) -> int:
        dropped = 0
        record = self.log.record
        obj_ids = message.obj_ids
        if self.privacy.originals:
            obj_ids = self.privacy.filter_delete(obj_ids, peer, "delete")
            self.privacy.forget(obj_ids)
        elif self.privacy.labels:
            self.privacy.forget(obj_ids)
        for obj_id in obj_ids:
            if self.store.discard(obj_id):
                dropped += 1
                record("delete", obj_id, peer, None, None, (), None, None, None, None)
        return dropped

    def _clear(self, message: Clear, peer: str) -> int:
        if self.privacy.originals:  # another owner's private objects stay
            ids = self.privacy.filter_delete(list(self.store.objects), peer, "clear")
            for obj_id in ids:
                self.store.discard(obj_id)
            self.privacy.forget(ids)
        else:
            ids = self.store.clear()
            self.privacy.forget(ids)
        self.log.append("clear", peer=peer, detail={"ids": ids})
        return len(ids)

    def _run_op(self, message: RunOp, peer: str) -> Any:
        try:
            func = ops.resolve(message.op)
        except UnsupportedOperation as exc:
            raise self.record_denied(peer, "run", str(exc), op=str(message.op)) from None
        inputs: dict[int, int] = {}
        args = self._resolve_args(message.args, inputs)
        kwargs = self._resolve(message.kwargs, inputs) if message.kwargs else {}
        taint = self.privacy.taint(inputs.values()) if self.privacy.labels else None
        if taint is not None:
            return self._run_tainted(message, func, args, kwargs, inputs, taint, peer)
        if message.grad_enabled == torch.is_grad_enabled():
            result = func(*args, **kwargs)
        else:
            with torch.set_grad_enabled(message.grad_enabled):
                result = func(*args, **kwargs)
        return self._store_result(result, inputs, peer, "op", message.op)

    def _run_tainted(self, message: RunOp, func: Any, args: tuple, kwargs: dict,
                     inputs: dict[int, int], taint: frozenset[int], peer: str) -> Any:  # fmt: skip
        """An op on private data: its results, and whatever it wrote into, become derived;
        its errors say nothing of the data."""
        versions = self.privacy.snapshot(inputs)
        failure = None
        try:
            with torch.set_grad_enabled(message.grad_enabled):
                result = func(*args, **kwargs)
        except Exception as exc:
            failure = _withheld(exc, message.op, self.id, peer)
        if failure is not None:
            raise failure
        written = self.privacy.written(message.op, kwargs, inputs, versions)
        if written:
            self._taint_written(result, written, taint, peer, "op", message.op, inputs)
        return self._store_result(result, inputs, peer, "op", message.op, taint)

    def _call(self, message: CallFunction, peer: str) -> Any:
        if not self.allow_code:
            raise self.record_denied(
                peer, "call", "this worker does not run shipped code; start it with "
                "allow_code=True to allow it"
            )
        key = (peer, message.code)  # a peer's function, and its state, are its own
        func = self._functions.get(key)
        if func is None:
            func = cloudpickle.loads(message.code)
            self._functions[key] = func
            while len(self._functions) > self.FUNCTION_CACHE:
                del self._functions[next(iter(self._functions))]
        inputs: dict[int, int] = {}
        args = self._resolve(message.args, inputs)
        kwargs = self._resolve(message.kwargs, inputs)
        name = getattr(func, "__qualname__", type(func).__name__)
        taint = self.privacy.call_taint(inputs.values(), peer) if self.privacy.sources else None
        failure = None
        try:
            with torch.set_grad_enabled(message.grad_enabled):
                result = func(*args, **kwargs)
        except Exception as exc:
            if taint is None:
                raise
            failure = _withheld(exc, name, self.id, peer)
        if failure is not None:
            raise failure
        if taint is not None:  # shipped code may have written into any argument
            written = self.privacy.written(name, kwargs, inputs, {}, everything=True)
            kept = None if message.return_value else result  # a returned value is not stored
            self._taint_written(kept, written, taint, peer, "call", name, inputs)
        if message.return_value:
            return self._return_value(result, inputs, peer, name, taint)
        return self._store_result(result, inputs, peer, "call", name, taint)

    def _return_value(self, result: Any, inputs: dict[int, int], peer: str, name: str,
                      taint: frozenset[int] | None) -> Any:  # fmt: skip
        """The value of a shipped function leaves the worker: one ``get`` event for it, and
        when the call touched private data, the release policy decides first (refused: a
        ``denied`` event; allowed: a ``release`` event; dp: it leaves clipped and noised)."""
        digest = released = None
        if taint is not None:  # what left is audited: its digest is in the events
            digest = value_digest(result)
            released = self.privacy.release(taint, result, peer, "call", digest=digest)
            if released is not None:
                result, digest = released
        self.log.record("get", None, peer, "call", name, tuple(inputs.values()), None, None,
                        digest, _RELEASED_DP if released is not None else None)  # fmt: skip
        return result

    #: How many distinct shipped functions a worker keeps unpickled (and their state, such as
    #: a model built on the first call), so that shipping the same bytes again costs no
    #: unpickling.
    FUNCTION_CACHE = 16

    def _list(self, message: ListObjects, peer: str) -> dict[int, Any]:
        return {obj_id: _spec(obj_id, obj) for obj_id, obj in self.store.objects.items()}

    def _budget(self, message: BudgetQuery, peer: str) -> dict[str, Any]:
        return self.privacy.budget_report(peer).__dict__.copy()

    def _described(self, obj_id: int) -> tuple[tuple[str, ...], str | None]:
        """An object's tags and description: they live in its ``create`` detail."""
        detail = self.store.details.get(obj_id)
        if detail is None:
            return (), None
        detail = json.loads(detail)
        return tuple(detail.get("tags", ())), detail.get("description")

    def _tag(self, message: Tag, peer: str) -> None:
        """Tags and a description added later: a new version of the object's ``create`` (an
        op named ``tag`` of the object itself), so they are in the log, snapshots and
        recovery like those given at ``send``."""
        obj = self.store.get(message.obj_id)
        tags, description = self._described(message.obj_id)
        tags = normalize_tags((*tags, *normalize_tags(message.tags)))
        if message.description is not None:
            description = check_description(message.description)
        kept = json.loads(self.store.details.get(message.obj_id) or "{}")
        detail = {**kept, "tags": list(tags), "description": description}
        self._record_create(message.obj_id, obj, peer, "op", "tag", (message.obj_id,), detail)

    def _search(self, message: Search, peer: str) -> list[tuple[Any, list[str], str | None]]:
        wanted = set(normalize_tags(message.tags))
        if not wanted:
            raise ConfigurationError("search for at least one tag, e.g. search('#digits')")
        found, objects = [], self.store.objects
        for obj_id, detail in self.store.details.items():
            if '"tags"' not in detail or obj_id not in objects:
                continue
            tags, description = self._described(obj_id)
            if wanted.issubset(tags):
                found.append((_spec(obj_id, objects[obj_id]), list(tags), description))
        return found

    # ------------------------------------------------------------------ data owner

    def register(
        self,
        value: torch.Tensor,
        *,
        private: bool = True,
        owner: str | None = None,
        tags: Iterable[str] = (),
        description: str | None = None,
        policy: ReleasePolicy | str | None = None,
    ) -> int:
        """Put the data owner's ``value`` on this worker; returns its object id.

        ``private``: only ``owner`` may fetch or move it, and what is computed from it leaves
        only as the release ``policy`` says (None: the worker's, see ``set_release_policy``).
        ``owner`` is the peer id allowed to fetch it over a transport; the default, None, lets
        no peer fetch it (the owner holds this ``Worker``). ``tags`` and ``description`` say
        what it is: peers find it with ``search`` (and compute on it there).

        >>> import torch, bastion as sy
        >>> worker = sy.Worker("doc-register")
        >>> obj_id = worker.register(torch.ones(2), tags=["#ones"])
        >>> worker.privacy.sources[obj_id].tags
        ('#ones',)
        >>> [spec.id == obj_id for spec, _, _ in worker.handle(Search(("#ones",)), "me").value]
        [True]
        """
        if not isinstance(value, torch.Tensor):
            raise SerializationError(
                f"register() takes a tensor, not a {type(value).__name__}; wrap the data with "
                "torch.tensor(...) first"
            )
        tags = normalize_tags(tags)
        check_description(description)
        if not private and (policy is not None or owner is not None):
            raise ConfigurationError(
                "owner and policy apply to private data: register(..., private=True)"
            )
        with self._lock:
            obj_id = self._fresh_id()
            self.store.put(obj_id, value)
            detail = self.privacy.register(obj_id, owner, tags, policy) if private else {}
            if tags:
                detail["tags"] = list(tags)
            if description is not None:  # both where search finds them (``_described``)
                detail["description"] = description
            self._record_create(obj_id, value, owner or self.id, "register", detail=detail)
        log.info("data registered", worker=self.id, object_id=obj_id, private=private)
        return obj_id

    def set_release_policy(
        self, policy: ReleasePolicy | str = "deny", *, budget: Budget | None = None
    ) -> None:
        """Set what may leave of objects computed from private data: ``"deny"`` (the
        default), ``"allow"`` or ``DP(noise_multiplier, clip)``, and each peer's DP ``budget``.

        Objects registered with their own ``policy`` keep it. The change is a ``policy`` event.
        """
        with self._lock:
            detail = self.privacy.set_policy(policy, budget)
            self.log.append("policy", peer=self.id, detail=detail)

    def privacy_budget(self, peer: str) -> BudgetReport:
        """What ``peer`` has spent of its DP budget on this worker, and has left."""
        with self._lock:
            return self.privacy.budget_report(peer)


def _withheld(exc: Exception, op: str, worker: str, peer: str) -> Exception:
    """The error a peer sees when an operation on private data fails: its type, not its
    message (messages may quote values, e.g. an out-of-range index)."""
    log.warning("operation on private data failed", worker=worker, peer=peer, op=op,
                error=f"{type(exc).__name__}: {exc}")  # fmt: skip
    message = (f"{op} failed on private data; the message is withheld from peers (the data "
               "owner's log has it)")
    try:
        error = type(exc)(message)
    except Exception:
        error = RuntimeError(message)
    return error


__all__ = ["Worker", "check_description", "normalize_tags"]
