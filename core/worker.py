"""The worker's data side (``Worker``): its state, its event log, a privacy guard, and
``handle(message, peer)``, the same code whatever transport carried the message. Every
request runs as validate, decide, append, apply (see :class:`Worker`). The handles
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

import builtins
import threading
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle
import torch

from bastion import ops, plugins, serde
from bastion.errors import (
    WIRE_ERRORS,
    BastionError,
    ConfigurationError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDenied,
    SerializationError,
    UnsupportedOperation,
    error_from_wire,
)
from bastion.events import dtype_name, payload_digest
from bastion.guard import PrivacyGuard, Verdict, value_digest, writes_arguments
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
from bastion.stores.state import Change, WorkerState, apply

log = get_logger("bastion.worker")


def _spec(obj_id: int, value: Any) -> TensorSpec | ObjectSpec:
    if isinstance(value, torch.Tensor):
        return TensorSpec(obj_id, tuple(value.shape), value.dtype, value.requires_grad)
    return ObjectSpec(obj_id, type(value).__name__)


_FLAT = frozenset({int, float, bool, str, type(None)})
#: the ``detail`` of a ``create`` event by where its payload went
_PAYLOAD_DETAIL = {None: None, "db": '{"payload":"db"}', "file": '{"payload":"file"}'}
#: The detail of a ``get`` whose value left through the ``dp`` release policy (noised).
_RELEASED_DP_DETAIL = {"released": "dp"}
_RELEASED_DP = _canonical(_RELEASED_DP_DETAIL)


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

    ``db`` is where events go: ``None`` (a private temporary log), a file path or any
    SQLAlchemy URL. A worker started on a log that already holds its events comes back with
    the objects it held (``recovered`` says how). Created objects' payloads are stored with
    the log (``payloads``; default: unless it is private), large ones as files in
    ``blob_dir``; a snapshot every ``snapshot_every`` events keeps recovery short. Code
    (``CallFunction``) runs only when ``allow_code`` is true.

    Every request runs as **validate, decide, append, apply**: the request is checked (a
    value the log cannot keep faithfully is refused before any event), the privacy guard
    gives its verdict (changing nothing), the events are appended, and only then does
    :func:`bastion.stores.state.apply` change :attr:`state`. A request whose append fails
    changes nothing. No lock is held across a network call: a move sends its object while
    other requests go on, and ops that write no argument compute outside the lock.
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
        self.log = EventLog(db, id, durability=durability, observer=_notify_plugins,
                            payloads=payloads, blob_dir=blob_dir)  # fmt: skip
        #: what this worker holds and knows, exactly as far as its events say
        self.state = WorkerState(id)
        self.snapshot_every = snapshot_every
        #: how this worker came back from its log (``None`` for a new log)
        self.recovered: ReplayedStore | None = None
        #: the one lock around the state and the order of appends (never held across a
        #: network call)
        self._lock = threading.RLock()
        #: objects on their way to another worker: not fetched, written or moved meanwhile
        self._leaving: set[int] = set()
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
        self._peers: dict[str, Any] = {}
        self._peers_lock = threading.Lock()
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
        self.privacy = PrivacyGuard(self.state)

    @property
    def store(self) -> ObjectStore:
        """The objects this worker holds (``store.objects`` is PySyft's ``_objects``)."""
        return self.state.store

    # ------------------------------------------------------------------ entry point

    def handle(self, message: Any, peer: str) -> Reply:
        """Answer one request from ``peer``; a refused or failed request never stops the worker
        and changes nothing. The error a peer sees is composed here: bastion's own errors and
        Python's builtin exceptions keep their class, anything else is reported as a plain
        ``Exception`` (a peer never chooses the name that comes back)."""
        handler = self._handlers.get(type(message))
        try:
            if handler is None:
                raise SerializationError(
                    f"worker {self.id} got a {type(message).__name__}, which is not a bastion "
                    "message"
                )
            return Reply(handler(message, peer))
        except Exception as exc:  # the reply carries it; the worker keeps serving
            return Reply(error=ErrorInfo(_wire_name(exc), str(exc)), cause=exc)

    def _recover(self) -> None:
        replayed = self.log.replay()
        self.state = replayed.state
        self.recovered = replayed
        if replayed.missing:  # logged without their bytes: gone, and the log says so
            log.warning("worker.recovered_without_payloads", worker=self.id,
                        missing=len(replayed.missing))  # fmt: skip
            for obj_id in replayed.missing:
                self._commit("delete", object_id=obj_id, peer=self.id,
                             detail={"recovery": "the log holds no payload for it"})
        log.info("worker.recovered", worker=self.id, objects=len(replayed), seq=replayed.seq,
                 snapshot=replayed.snapshot_seq, events_read=replayed.events_read)  # fmt: skip

    def _snapshot_due(self) -> float:
        if self.snapshot_every is None:
            return float("inf")
        return self.log._next_seq + self.snapshot_every - 1

    def snapshot(self) -> int:
        """Record the state as it stands (objects by digest, their meta, privacy labels,
        sources, policy and budgets spent) so that replay and recovery read only the events
        after it; returns its ``seq``. Taken every ``snapshot_every`` events by itself."""
        with self._lock:
            seq = self.log.snapshot(self.state.snapshot_text())
            self._next_snapshot = self._snapshot_due()
            return seq

    def close(self) -> None:
        """Flush and close the event log and any connections this worker opened."""
        with self._peers_lock:
            connections, self._peers = list(self._peers.values()), {}
        for connection in connections:
            connection.close()
        self.log.close()

    # ------------------------------------------------------------------ append, then apply

    def _commit(
        self, kind: str, value: Any = None, *, object_id: int | None = None,
        peer: str | None = None, origin: str | None = None, op: str | None = None,
        inputs: tuple[int, ...] = (), dtype: str | None = None,
        shape: tuple[int, ...] | None = None, digest: str | None = None,
        detail: dict[str, Any] | None = None, detail_json: str | None = None,
    ) -> None:
        """Append one event, then apply it to the state (the caller holds the lock). When
        the log refuses the event (``EventLogError``) the state is left as it was."""
        if detail_json is None and detail:
            detail_json = _canonical(detail)
        self.log.record(kind, object_id=object_id, peer=peer, origin=origin, op=op,
                        inputs=inputs, dtype=dtype, shape=shape, digest=digest,
                        detail_json=detail_json)  # fmt: skip
        apply(self.state, Change(kind, object_id, peer, digest, detail), value)
        if self.log._next_seq > self._next_snapshot:
            self.snapshot()

    def _commit_create(
        self, obj_id: int, value: Any, peer: str, origin: str, op: str | None = None,
        inputs: tuple[int, ...] = (), meta: dict[str, Any] | None = None,
    ) -> TensorSpec | ObjectSpec:
        """Record the ``create`` of ``value`` under ``obj_id`` (keeping its payload) and
        apply it; returns what the client learns. ``meta`` (plain JSON data: tags,
        description, privacy label) stays with the object; None keeps the meta it had (an
        in-place change). Its ``requires_grad`` and ``Parameter`` flags are added here."""
        if meta is None:
            meta = self.state.store.details.get(obj_id)
        meta = _with_flags(meta, value)
        digest = payload_digest(value)
        where = self.log.store_payload(digest, value)
        if meta:
            detail_json = _canonical({**meta, "payload": where} if where else meta)
        else:
            detail_json = _PAYLOAD_DETAIL[where]
        if isinstance(value, torch.Tensor):
            shape = tuple(value.shape)
            self._commit("create", value, object_id=obj_id, peer=peer, origin=origin, op=op,
                         inputs=inputs, dtype=dtype_name(value.dtype), shape=shape,
                         digest=digest, detail=meta, detail_json=detail_json)  # fmt: skip
            return TensorSpec(obj_id, shape, value.dtype, value.requires_grad)
        kind = type(value).__name__
        self._commit("create", value, object_id=obj_id, peer=peer, origin=origin, op=op,
                     inputs=inputs, dtype=kind, digest=digest, detail=meta,
                     detail_json=detail_json)  # fmt: skip
        return ObjectSpec(obj_id, kind)

    def _deny(self, peer: str, request: str, why: str, **detail: Any) -> PermissionDenied:
        return self.record_denied(peer, request, why, **detail)

    def record_denied(self, peer: str, request: str, why: str, **detail: Any) -> PermissionDenied:
        """Record a refused request as a ``denied`` event; returns the error to raise or send.

        Transports call it too, e.g. for a peer that failed authentication.
        """
        with self._lock:
            self._commit("denied", peer=peer, op=detail.pop("op", None),
                         object_id=detail.pop("object_id", None),
                         detail={"request": request, "why": why, **detail})  # fmt: skip
        log.warning("request denied", worker=self.id, peer=peer, request=request, why=why)
        return PermissionDenied(f"worker {self.id} refused {request} from {peer}: {why}")

    def _release(self, verdict: Verdict | None, obj_id: int | None, peer: str, request: str,
                 digest: str | None = None) -> None:  # fmt: skip
        """Act on the guard's verdict: refuse (a ``denied`` event), or record the release."""
        if verdict is None:
            return
        if verdict.why is not None:
            raise self._deny(peer, request, verdict.why, object_id=obj_id)
        if verdict.release is not None:
            self._commit("release", object_id=obj_id, peer=peer,
                         digest=verdict.digest or digest, detail=verdict.release)  # fmt: skip
            log.info("private-derived data released", worker=self.id, peer=peer,
                     object_id=obj_id, mechanism=verdict.release["mechanism"])  # fmt: skip

    # ------------------------------------------------------------------ helpers

    def _fresh_id(self) -> int:
        obj_id = new_id()
        while obj_id in self.state.store:
            obj_id = new_id()
        return obj_id

    def _present(self, obj_id: int, request: str) -> Any:
        """The object under ``obj_id``, unless it is gone or on its way to another worker."""
        if obj_id in self._leaving:
            raise ObjectNotFoundError(
                f"object {obj_id} on worker {self.id} is being moved to another worker; "
                f"nothing was done. {request} it where it arrives."
            )
        return self.state.store.get(obj_id)

    def _digest(self, obj_id: int, value: Any) -> str:
        digest = self.state.store.digests.get(obj_id)
        return digest if digest is not None else payload_digest(value)

    def _resolve_args(self, args: tuple, inputs: dict[int, int]) -> tuple:
        """Fast path for the usual flat argument tuple of Refs and plain values."""
        objects = self.state.store.objects
        resolved = []
        for arg in args:
            kind = type(arg)
            if kind is Ref:
                obj = objects.get(arg.id)
                if obj is None:
                    raise self.state.store.not_found(arg.id)
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
            obj = self.state.store.get(value.id)
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
        """Store one result; a result that *is* a held input keeps that input's id (in-place).

        ``taint``: the private objects the result is computed from (None: none)."""
        if isinstance(value, torch.Tensor):
            serde.check_tensor(value)
        obj_id = inputs.get(id(value))
        if obj_id is None or self.state.store.objects.get(obj_id) is not value:
            obj_id = self._fresh_id()  # a new object (or its input left meanwhile)
        meta = None if taint is None else self._derived(obj_id, taint)
        return self._commit_create(obj_id, value, peer, origin, op, tuple(inputs.values()), meta)

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
            for item in result:  # all or nothing: check every part before the first event
                if item is not None:
                    serde.check_tensor(item)
            items = [
                None if item is None else self._keep(item, inputs, peer, origin, op, taint)
                for item in result
            ]
            return type(result)(items)
        return self._keep(result, inputs, peer, origin, op, taint)

    def _derived(self, obj_id: int, taint: frozenset[int]) -> dict[str, Any]:
        """The meta of an object derived from ``taint``: its privacy label, and the tags and
        description it had (an in-place write keeps them)."""
        label = self.privacy.label(obj_id, taint)
        kept = self.state.store.details.get(obj_id)
        return label if kept is None else {**kept, **label}

    def _taint_written(self, result: Any, written: set[int], taint: frozenset[int], peer: str,
                       origin: str, op: str, inputs: dict[int, int]) -> None:  # fmt: skip
        """Objects a tainted operation wrote into become derived: a new version each."""
        returned = {id(result)}
        if type(result) in (tuple, list) or _is_structseq(result):
            returned.update(id(item) for item in result)
        objects = self.state.store.objects
        for obj_id in written:
            value = objects[obj_id]
            if id(value) not in returned:  # results are recorded when they are stored
                meta = self._derived(obj_id, taint)
                if (self.state.store.details.get(obj_id) == _with_flags(meta, value)
                        and self.state.store.digests.get(obj_id) == payload_digest(value)):
                    continue  # neither its bytes nor its flags changed: no new version
                self._commit_create(obj_id, value, peer, origin, op, tuple(inputs.values()),
                                    meta)  # fmt: skip

    def _connect(self, address: str) -> Any:
        with self._peers_lock:
            connection = self._peers.get(address)
            if connection is None:
                connection = plugins.connect(address, peer=self.id, **self.connect_options)
                self._peers[address] = connection
            return connection

    # ------------------------------------------------------------------ handlers

    def _create(self, message: Create, peer: str) -> TensorSpec | ObjectSpec:
        value = message.value
        _check_storable(value)
        meta = None
        if message.tags or message.description is not None:
            tags = normalize_tags(message.tags)
            description = check_description(message.description)
            meta = {"tags": list(tags), "description": description}
        with self._lock:
            obj_id = message.obj_id if message.obj_id is not None else self._fresh_id()
            if obj_id in self.state.store:
                raise ObjectExistsError(
                    f"object id {obj_id} is already in use on worker {self.id}; nothing was "
                    "stored. Send it again to get a fresh id."
                )
            return self._commit_create(obj_id, value, peer, message.origin, meta=meta or {})

    def _get(self, message: Get, peer: str) -> Any:
        obj_id = message.obj_id
        with self._lock:
            obj = self._present(obj_id, "get")
            verdict = None
            if self.state.labels:  # refused, released as it is, or released with noise
                verdict = self.privacy.check_get(obj_id, obj, peer, message.with_grad)
            if verdict is not None and verdict.why is not None:
                raise self._deny(peer, "get", verdict.why, object_id=obj_id)
            if verdict is None or not verdict.noised:
                _check_travels(obj, obj_id, self.id)  # what cannot travel stays, unrecorded
            digest = self._digest(obj_id, obj)
            self._release(verdict, obj_id, peer, "get", digest)
            if verdict is not None and verdict.noised:
                value, grad = verdict.value
                self._commit("get", object_id=obj_id, peer=peer, digest=verdict.digest,
                             detail=_RELEASED_DP_DETAIL, detail_json=_RELEASED_DP)
                return (value, grad) if message.with_grad else value
            self._commit("get", object_id=obj_id, peer=peer, digest=digest)
        if not message.with_grad:
            return obj
        grad = obj.grad if isinstance(obj, torch.Tensor) and obj.is_leaf else None
        return (obj, grad)

    def _move(self, message: Move, peer: str) -> Any:
        obj_id = message.obj_id
        with self._lock:
            obj = self._present(obj_id, "move")
            verdict = None
            if self.state.labels:
                verdict = self.privacy.check_move(obj_id, peer, message.destination)
                if verdict is not None and verdict.why is not None:
                    raise self._deny(peer, "move", verdict.why, object_id=obj_id)
            tags, description = self._described(obj_id)
            self._leaving.add(obj_id)
        try:  # the network call: no lock held, other requests go on
            connection = self._connect(message.destination)
            reply = connection.request(Create(obj, obj_id, "move", tags, description))
        except BaseException:
            with self._lock:
                self._leaving.discard(obj_id)
            raise
        with self._lock:
            self._leaving.discard(obj_id)
            if reply.error is not None:
                raise error_from_wire(reply.error.type_name, reply.error.message)
            digest = self._digest(obj_id, obj)
            self._release(verdict, obj_id, peer, "move", digest)
            self._commit("move", object_id=obj_id, peer=connection.worker_id, digest=digest,
                         detail={"destination": message.destination, "new_id": reply.value.id,
                                 "requested_by": peer})  # fmt: skip
        return reply.value

    def _delete(self, message: Delete, peer: str) -> int:
        with self._lock:
            objects, leaving = self.state.store.objects, self._leaving
            obj_ids = [i for i in message.obj_ids if i in objects and i not in leaving]
            if self.state.originals:
                obj_ids, kept = self.privacy.filter_delete(obj_ids, peer)
                if kept:
                    self._deny(peer, "delete", "private objects are deleted only by their "
                               "owner; they were kept", ids=kept)
            for obj_id in obj_ids:
                self._commit("delete", object_id=obj_id, peer=peer)
            return len(obj_ids)

    def _clear(self, message: Clear, peer: str) -> int:
        with self._lock:
            ids = [i for i in self.state.store.objects if i not in self._leaving]
            if self.state.originals:  # another owner's private objects stay
                ids, kept = self.privacy.filter_delete(ids, peer)
                if kept:
                    self._deny(peer, "clear", "private objects are deleted only by their "
                               "owner; they were kept", ids=kept)
            self._commit("clear", peer=peer, detail={"ids": ids})
            return len(ids)

    def _run_op(self, message: RunOp, peer: str) -> Any:
        try:
            func = ops.resolve(message.op)
        except UnsupportedOperation as exc:
            raise self._deny(peer, "run", str(exc), op=str(message.op)) from None
        with self._lock:
            inputs: dict[int, int] = {}
            args = self._resolve_args(message.args, inputs)
            kwargs = self._resolve(message.kwargs, inputs) if message.kwargs else {}
            self._check_not_leaving(inputs)
            taint = self.privacy.taint(inputs.values()) if self.state.labels else None
            if taint is not None:
                return self._run_tainted(message, func, args, kwargs, inputs, taint, peer)
            if writes_arguments(message.op, kwargs):  # it changes what it reads: in the lock
                result = _call_op(func, args, kwargs, message.grad_enabled)
                return self._store_result(result, inputs, peer, "op", message.op)
        result = _call_op(func, args, kwargs, message.grad_enabled)  # other requests go on
        with self._lock:
            return self._store_result(result, inputs, peer, "op", message.op)

    def _check_not_leaving(self, inputs: dict[int, int]) -> None:
        if self._leaving:
            for obj_id in inputs.values():
                self._present(obj_id, "use")

    def _run_tainted(self, message: RunOp, func: Any, args: tuple, kwargs: dict,
                     inputs: dict[int, int], taint: frozenset[int], peer: str) -> Any:  # fmt: skip
        """An op on private data: its results, and whatever it wrote into, become derived;
        its errors say nothing of the data."""
        versions = self.privacy.snapshot(inputs)
        failure = None
        try:
            result = _call_op(func, args, kwargs, message.grad_enabled)
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
            raise self._deny(
                peer, "call", "this worker does not run shipped code; start it with "
                "allow_code=True to allow it"
            )
        key = (peer, message.code)  # a peer's function, and its state, are its own
        with self._lock:
            func = self._functions.get(key)
            if func is None:
                func = cloudpickle.loads(message.code)
                self._functions[key] = func
                while len(self._functions) > self.FUNCTION_CACHE:
                    del self._functions[next(iter(self._functions))]
            inputs: dict[int, int] = {}
            args = self._resolve(message.args, inputs)
            kwargs = self._resolve(message.kwargs, inputs)
            self._check_not_leaving(inputs)
            name = getattr(func, "__qualname__", type(func).__name__)
            taint = (self.privacy.call_taint(inputs.values(), peer) if self.state.sources
                     else None)  # fmt: skip
            failure = None
            try:
                result = _call_op(func, args, kwargs, message.grad_enabled)
            except Exception as exc:
                if taint is None:
                    raise
                failure = _withheld(exc, name, self.id, peer)
            if failure is not None:
                raise failure
            if taint is not None:  # shipped code may have written into any argument
                written = self.privacy.written(name, kwargs, inputs, {}, everything=True)
                kept = None if message.return_value else result  # a returned value is not kept
                self._taint_written(kept, written, taint, peer, "call", name, inputs)
            if message.return_value:
                return self._return_value(result, inputs, peer, name, taint)
            return self._store_result(result, inputs, peer, "call", name, taint)

    def _return_value(self, result: Any, inputs: dict[int, int], peer: str, name: str,
                      taint: frozenset[int] | None) -> Any:  # fmt: skip
        """The value of a shipped function leaves the worker: one ``get`` event for it, and
        when the call touched private data, the release policy decides first (refused: a
        ``denied`` event; allowed: a ``release`` event; dp: it leaves clipped and noised)."""
        digest = None
        verdict = None
        if taint is not None:  # what left is audited: its digest is in the events
            digest = value_digest(result)
            verdict = self.privacy.release(taint, result, peer, "call", digest=digest)
            if verdict is not None and verdict.why is not None:
                raise self._deny(peer, "call", verdict.why)
            if verdict is None or not verdict.noised:
                _check_travels(result, None, self.id)
        self._release(verdict, None, peer, "call", digest)
        noised = verdict is not None and verdict.noised
        if noised:
            result, digest = verdict.value, verdict.digest
        self._commit("get", peer=peer, origin="call", op=name, inputs=tuple(inputs.values()),
                     digest=digest, detail=_RELEASED_DP_DETAIL if noised else None,
                     detail_json=_RELEASED_DP if noised else None)  # fmt: skip
        return result

    #: How many distinct shipped functions a worker keeps unpickled (and their state, such as
    #: a model built on the first call), so that shipping the same bytes again costs no
    #: unpickling.
    FUNCTION_CACHE = 16

    def _list(self, message: ListObjects, peer: str) -> dict[int, Any]:
        with self._lock:
            return {obj_id: _spec(obj_id, obj)
                    for obj_id, obj in self.state.store.objects.items()}  # fmt: skip

    def _budget(self, message: BudgetQuery, peer: str) -> dict[str, Any]:
        with self._lock:
            return self.privacy.budget_report(peer).__dict__.copy()

    def _described(self, obj_id: int) -> tuple[tuple[str, ...], str | None]:
        """An object's tags and description: they live in its meta."""
        meta = self.state.store.details.get(obj_id)
        if meta is None:
            return (), None
        return tuple(meta.get("tags", ())), meta.get("description")

    def _tag(self, message: Tag, peer: str) -> None:
        """Tags and a description added later: a new version of the object's ``create`` (an
        op named ``tag`` of the object itself), so they are in the log, snapshots and
        recovery like those given at ``send``."""
        with self._lock:
            obj = self._present(message.obj_id, "tag")
            tags, description = self._described(message.obj_id)
            tags = normalize_tags((*tags, *normalize_tags(message.tags)))
            if message.description is not None:
                description = check_description(message.description)
            kept = self.state.store.details.get(message.obj_id) or {}
            meta = {**kept, "tags": list(tags), "description": description}
            self._commit_create(message.obj_id, obj, peer, "op", "tag", (message.obj_id,), meta)

    def _search(self, message: Search, peer: str) -> list[tuple[Any, list[str], str | None]]:
        wanted = set(normalize_tags(message.tags))
        if not wanted:
            raise ConfigurationError("search for at least one tag, e.g. search('#digits')")
        with self._lock:
            found, store = [], self.state.store
            for obj_id, meta in store.details.items():
                tags = meta.get("tags")
                if tags and obj_id in store.objects and wanted.issubset(tags):
                    found.append((_spec(obj_id, store.objects[obj_id]), list(tags),
                                  meta.get("description")))  # fmt: skip
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
        _check_storable(value)
        tags = normalize_tags(tags)
        check_description(description)
        if not private and (policy is not None or owner is not None):
            raise ConfigurationError(
                "owner and policy apply to private data: register(..., private=True)"
            )
        meta = self.privacy.source_detail(owner, tags, policy) if private else {}
        if tags:
            meta["tags"] = list(tags)
        if description is not None:  # both where search finds them (``_described``)
            meta["description"] = description
        with self._lock:
            obj_id = self._fresh_id()
            self._commit_create(obj_id, value, owner or self.id, "register", meta=meta)
        log.info("data registered", worker=self.id, object_id=obj_id, private=private)
        return obj_id

    def set_release_policy(
        self, policy: ReleasePolicy | str = "deny", *, budget: Budget | None = None
    ) -> None:
        """Set what may leave of objects computed from private data: ``"deny"`` (the
        default), ``"allow"`` or ``DP(noise_multiplier, clip)``, and each peer's DP ``budget``.

        Objects registered with their own ``policy`` keep it. The change is a ``policy`` event.
        """
        detail = self.privacy.policy_detail(policy, budget)
        with self._lock:
            self._commit("policy", peer=self.id, detail=detail)

    def privacy_budget(self, peer: str) -> BudgetReport:
        """What ``peer`` has spent of its DP budget on this worker, and has left."""
        with self._lock:
            return self.privacy.budget_report(peer)


def _call_op(func: Callable[..., Any], args: tuple, kwargs: dict, grad_enabled: bool) -> Any:
    if grad_enabled == torch.is_grad_enabled():
        return func(*args, **kwargs)
    with torch.set_grad_enabled(grad_enabled):
        return func(*args, **kwargs)


def _with_flags(meta: dict[str, Any] | None, value: Any) -> dict[str, Any] | None:
    """``meta`` saying whether ``value`` requires grad and is a ``Parameter`` (recovery
    gives both back); keys only when true, so plain tensors keep no meta at all."""
    grad = isinstance(value, torch.Tensor) and value.requires_grad
    parameter = isinstance(value, torch.nn.Parameter)
    if meta:
        if meta.get("requires_grad", False) == grad and meta.get("parameter", False) == parameter:
            return meta
        meta = {k: v for k, v in meta.items() if k not in ("requires_grad", "parameter")}
    elif not grad and not parameter:
        return None
    else:
        meta = {}
    if grad:
        meta["requires_grad"] = True
    if parameter:
        meta["parameter"] = True
    return meta


def _check_storable(value: Any) -> None:
    """Refuse, before any event, a value the log cannot keep faithfully."""
    if isinstance(value, torch.Tensor):
        serde.check_tensor(value)
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise SerializationError(
                f"a {type(value).__name__} (a tensor subclass) is not kept as it is; send "
                "torch.Tensor(value) or value.as_subclass(torch.Tensor)"
            )
    elif type(value) not in _FLAT:
        serde.encode(value)


def _check_travels(value: Any, obj_id: int | None, worker: str) -> None:
    """Refuse, before anything is recorded, a value that cannot be sent; the message is the
    worker's own (it never quotes the value)."""
    if isinstance(value, torch.Tensor) or type(value) in _FLAT:
        return
    try:
        serde.encode(value)
    except SerializationError:
        what = "the value" if obj_id is None else f"object {obj_id}"
        raise SerializationError(
            f"{what} on worker {worker} is a {type(value).__name__} that bastion's wire format "
            "does not carry; it stays on the worker"
        ) from None


def _wire_name(exc: BaseException) -> str:
    """The class name a peer is told: bastion's errors and Python's builtins keep theirs."""
    name = type(exc).__name__
    if name in WIRE_ERRORS and type(exc) is WIRE_ERRORS[name]:
        return name
    if isinstance(exc, BastionError):
        return next(cls.__name__ for cls in type(exc).__mro__ if cls.__name__ in WIRE_ERRORS
                    and cls is WIRE_ERRORS[cls.__name__])  # fmt: skip
    if getattr(builtins, name, None) is type(exc):
        return name
    return "Exception"


def _withheld(exc: Exception, op: str, worker: str, peer: str) -> Exception:
    """The error a peer sees when an operation on private data fails: a class bastion or
    Python defines (never one the peer's code named) and a message the worker composes
    (messages may quote values, e.g. an out-of-range index). The owner's log has the rest."""
    log.warning("operation on private data failed", worker=worker, peer=peer, op=op,
                error=f"{type(exc).__name__}: {exc}")  # fmt: skip
    message = (f"{op} failed on private data; the message is withheld from peers (the data "
               "owner's log has it)")
    name = _wire_name(exc)
    cls = WIRE_ERRORS.get(name) or getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    try:
        return cls(message)
    except Exception:
        return RuntimeError(message)


__all__ = ["Worker", "check_description", "normalize_tags"]
