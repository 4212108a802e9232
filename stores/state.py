"""A worker's state as its events say, and the one rule that changes it: :func:`apply`.

A worker answers a request in four steps: it **validates** the request, its privacy guard
**decides** (a verdict, changing nothing), the worker **appends** the request's events to its
log, and only then **applies** them to its :class:`WorkerState`. Replay, recovery and the
audit tool's replay rebuild a state by applying the events they read back, through the same
:func:`apply`, so the live store can never hold what the log lacks.

- ``create`` puts (or replaces) the object, its digest, its meta (tags, description,
  flags) and its privacy label (``private``, or ``derived`` from its sources);
- ``get``, ``move`` and ``delete`` remove the object, its meta and its label; ``clear``
  removes the ids it lists;
- ``policy`` sets the worker's release policy and budget; a ``gaussian`` ``release`` adds a
  step to the peer's privacy accounting;
- the other kinds (``denied``, ...) change nothing.

>>> state = WorkerState("M1")
>>> apply(state, Change("create", 7, "me", "d1", {"private": True, "owner": "me"}), "x")
>>> state.store.objects, state.labels, sorted(state.sources)
({7: 'x'}, {7: frozenset({7})}, [7])
>>> apply(state, Change("get", 7, "me"))
>>> state.store.objects, state.labels, sorted(state.sources)
({}, {}, [7])
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from bastion.stores.objects import ObjectStore

#: the kinds that take one object away
_GONE = frozenset({"get", "move", "delete"})


class Change(NamedTuple):
    """An event as :func:`apply` reads it: any object with these attributes will do (a
    :class:`bastion.events.Event` read back from the log is one). ``detail`` is plain JSON
    data; its ``payload`` key (where the log keeps the bytes) is not part of the state."""

    kind: str
    object_id: int | None = None
    peer: str | None = None
    digest: str | None = None
    detail: dict[str, Any] | None = None


class WorkerState:
    """What a worker holds and knows, exactly as far as its events say.

    ``store``: the objects, their digests and their meta (the ``create`` detail: tags,
    description, ``requires_grad``, ``parameter``, privacy label). ``labels``: live private
    or private-derived objects -> the private ids they come from; ``originals``: the live
    private objects themselves; ``sources``: every object ever registered private (its
    ``owner``, ``tags`` and ``policy``), so derived data keeps its owner after the source is
    gone; ``policy``: the last ``policy`` event's detail; ``dp_steps``: each peer's Gaussian
    releases as ``(noise_multiplier, sample_rate)``, ``dp_total`` all of them.
    ``created``: when asked for (``track=True``, the audit tool), each live object's
    ``create`` event.
    """

    __slots__ = ("store", "labels", "originals", "sources", "policy", "dp_steps", "dp_total",
                 "created")  # fmt: skip

    def __init__(self, worker_id: str, *, track: bool = False) -> None:
        self.store = ObjectStore(worker_id)
        self.labels: dict[int, frozenset[int]] = {}
        self.originals: set[int] = set()
        self.sources: dict[int, dict[str, Any]] = {}
        self.policy: dict[str, Any] | None = None
        self.dp_steps: dict[str, list[tuple[float, float]]] = {}
        self.dp_total: list[tuple[float, float]] = []
        self.created: dict[int, Any] | None = {} if track else None

    # ------------------------------------------------------------------ snapshots

    def snapshot_text(self) -> str:
        """The state without the objects' bytes, as JSON (a snapshot: replay starts there and
        loads each object's payload by its digest)."""
        store = self.store
        return json.dumps({
            "objects": [[oid, store.digests.get(oid), store.details.get(oid)]
                        for oid in store.objects],
            "sources": [[oid, source] for oid, source in self.sources.items()],
            "policy": self.policy,
            "dp_steps": self.dp_steps,
            "dp_total": self.dp_total,
        }, separators=(",", ":"), sort_keys=True)  # fmt: skip

    @classmethod
    def from_snapshot(cls, worker_id: str, text: str, *, track: bool = False) -> WorkerState:
        """The state a :meth:`snapshot_text` recorded, objects as ``None`` until loaded. Reads
        the older snapshots too (a bare list of ``[id, digest, detail]``)."""
        state = cls(worker_id, track=track)
        data = json.loads(text)
        if isinstance(data, list):
            data = {"objects": data}
        for oid, digest, detail in data.get("objects", ()):
            # sources first: a derived label names them, a private one is one
            apply(state, Change("create", oid, None, digest, detail), None)
        for oid, source in data.get("sources", ()):
            state.sources[oid] = source
        state.policy = data.get("policy")
        state.dp_steps = {peer: [tuple(s) for s in steps]
                          for peer, steps in (data.get("dp_steps") or {}).items()}  # fmt: skip
        state.dp_total = [tuple(s) for s in data.get("dp_total") or ()]
        return state


def apply(state: WorkerState, event: Any, value: Any = None) -> None:
    """Change ``state`` as ``event`` says (``value``: a ``create``'s object, ``None`` in a
    replay that loads payloads afterwards). The only code that changes a worker's state."""
    kind = event.kind
    if kind == "create":
        oid = event.object_id
        store = state.store
        store.objects[oid] = value
        digest = event.digest
        if digest is not None:
            store.digests[oid] = digest
        else:
            store.digests.pop(oid, None)
        detail = event.detail
        if detail and "payload" in detail:
            detail = {key: item for key, item in detail.items() if key != "payload"}
        if detail:
            store.details[oid] = detail
            if detail.get("private"):
                state.sources[oid] = {"owner": detail.get("owner"),
                                      "tags": detail.get("tags", []),
                                      "policy": detail.get("policy")}  # fmt: skip
                state.labels[oid] = frozenset((oid,))
                state.originals.add(oid)
            elif detail.get("derived"):
                state.labels[oid] = frozenset(detail["sources"])
                state.originals.discard(oid)
            elif state.labels:
                _unlabel(state, oid)
        else:
            store.details.pop(oid, None)
            if state.labels:
                _unlabel(state, oid)
        if state.created is not None:
            state.created[oid] = event
    elif kind in _GONE:
        _drop(state, event.object_id)
    elif kind == "clear":
        for oid in (event.detail or {}).get("ids", ()):
            _drop(state, oid)
    elif kind == "policy":
        state.policy = event.detail
    elif kind == "release":
        detail = event.detail or {}
        if detail.get("mechanism") == "gaussian":
            step = (float(detail["noise_multiplier"]), float(detail.get("sample_rate", 1.0)))
            state.dp_steps.setdefault(event.peer, []).append(step)
            state.dp_total.append(step)


def _unlabel(state: WorkerState, oid: int) -> None:
    if state.labels.pop(oid, None) is not None:
        state.originals.discard(oid)


def _drop(state: WorkerState, oid: int | None) -> None:
    store = state.store
    store.objects.pop(oid, None)
    store.digests.pop(oid, None)
    store.details.pop(oid, None)
    if state.labels:
        _unlabel(state, oid)
    if state.created is not None:
        state.created.pop(oid, None)


def restore_flags(value: Any, detail: dict[str, Any] | None) -> Any:
    """A tensor rebuilt from its payload with the flags its ``create`` recorded: a
    ``Parameter`` again, ``requires_grad`` again."""
    if not detail or not (detail.get("requires_grad") or detail.get("parameter")):
        return value
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    if detail.get("parameter"):
        return torch.nn.Parameter(value, requires_grad=bool(detail.get("requires_grad")))
    if value.dtype.is_floating_point or value.dtype.is_complex:
        return value.requires_grad_(True)
    return value


__all__ = ["Change", "WorkerState", "apply", "restore_flags"]
