"""An object's history as a tree: where it came from, what was computed from it, who fetched
it, where it moved — across workers whose logs are in the same database or given alongside.

An object *instance* starts at a ``create`` on one worker (a send, an op or call result, or
the arrival of a move) and ends at its ``get``, ``move``, ``delete`` or ``clear``; an in-place
op records a new version of the same id in between. The tree has two branches:

- *came from*: the instance's origin, and recursively the origins of its inputs (an in-place
  version leads to the version before it; a move leads into the source worker's log);
- *what happened*: each op that used it (and what happened to that result, recursively),
  each new version, and how it ended; a move leads into the destination worker's log.

Every line names the worker and ``seq`` of the event it comes from.

>>> import os, tempfile, torch, bastion as sy
>>> path = os.path.join(tempfile.mkdtemp(), "doc.db")
>>> with sy.VirtualWorker(id="doc-M1", db=path) as m1:
...     x = m1.send(torch.tensor([1.0, 2.0]))
...     y = (x + x).get()
>>> tree = lineage(path, x.id_at_location)
>>> print(tree.render())  # doctest: +ELLIPSIS
object ...
├── came from
│   └── ... on doc-M1 #1: sent by me, float32[2]
└── what happened
    └── doc-M1 #1 create ...: sent by me, float32[2]
        └── doc-M1 #2 used by Tensor.add -> ...
            └── doc-M1 #3 fetched by me
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bastion.audit.reader import AuditLog, opened, to_event
from bastion.errors import AuditError
from bastion.events import EVENT_KINDS, Event
from bastion.stores.eventlog import events_table

_T = events_table.c
_ENDS = frozenset({"get", "move", "delete"})


@dataclass
class LineageNode:
    """One line of a lineage tree: ``text``, the event it comes from, and its children.

    ``relation`` says how it hangs on its parent: ``object``, ``section``, ``origin``,
    ``input``, ``source``, ``created``, ``used``, ``version``, ``fetched``, ``moved``,
    ``arrived``, ``deleted``, ``cleared``, ``event`` (another kind), ``missing``, ``more``.
    """

    text: str
    relation: str
    worker: str | None = None
    seq: int | None = None
    object_id: int | None = None
    children: list[LineageNode] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON): the fields, with ``children`` nested."""
        return {"text": self.text, "relation": self.relation, "worker": self.worker,
                "seq": self.seq, "object_id": self.object_id,
                "children": [child.to_dict() for child in self.children]}  # fmt: skip

    def walk(self) -> Iterator[LineageNode]:
        """This node and every node under it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def render(self) -> str:
        """The tree drawn with box characters, one node a line."""
        lines = [self.text]

        def draw(node: LineageNode, prefix: str) -> None:
            for i, child in enumerate(node.children):
                last = i == len(node.children) - 1
                lines.append(prefix + ("└── " if last else "├── ") + child.text)
                draw(child, prefix + ("    " if last else "│   "))

        draw(self, "")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def payload_text(event: Event) -> str:
    """``float32[2, 3]`` for a tensor, the type name for another object, ``""`` if unknown."""
    if event.dtype is None:
        return ""
    if event.shape is None:
        return event.dtype
    return f"{event.dtype}[{', '.join(map(str, event.shape))}]"


def origin_text(event: Event) -> str:
    """How a ``create`` came about: ``sent by me``, ``Tensor.add of 1, 2 (by me)``..."""
    if event.origin == "send":
        how = f"sent by {event.peer}"
    elif event.origin in ("op", "call"):
        inputs = ", ".join(map(str, event.inputs)) or "no input"
        how = f"{event.op or event.origin} of {inputs} (by {event.peer})"
    elif event.origin == "move":
        how = f"moved in from {event.peer}"
    else:
        how = f"{event.origin or 'created'} by {event.peer}"
    payload = payload_text(event)
    return f"{how}, {payload}" if payload else how


def release_text(event: Event) -> str:
    """What a ``release`` let out: ``allow`` or ``gaussian sigma=1, epsilon +0.47 = 2.1``."""
    d = event.detail
    if d.get("mechanism") != "gaussian":
        return str(d.get("mechanism", "?"))
    return (f"gaussian sigma={d.get('sigma', 0):.4g}, epsilon +{d.get('epsilon_spent', 0):.4g}"
            f" = {d.get('epsilon_total', 0):.4g} of {d.get('epsilon_budget', 0):g}")


class _Walker:
    def __init__(self, logs: list[AuditLog], max_nodes: int) -> None:
        self.where: dict[str, AuditLog] = {}
        for log in logs:
            for worker in log.workers():
                self.where.setdefault(worker, log)
        self.budget = max_nodes
        self.truncated = False
        self._events: dict[tuple[str, int], list[Event]] = {}
        self.seen: set[tuple[str, int]] = set()

    def node(self, *args: Any, **kwargs: Any) -> LineageNode:
        self.budget -= 1
        return LineageNode(*args, **kwargs)

    def full(self) -> bool:
        if self.budget <= 0:
            self.truncated = True
        return self.budget <= 0

    def events(self, worker: str, object_id: int) -> list[Event]:
        key = (worker, object_id)
        if key not in self._events:
            log = self.where.get(worker)
            self._events[key] = [] if log is None else log.object_events(worker, object_id)
        return self._events[key]

    def creates(self, object_id: int) -> list[Event]:
        found = [
            e
            for w in self.where
            for e in self.events(w, object_id)
            if e.kind == "create" and object_id not in e.inputs
        ]  # not in-place versions
        return sorted(found, key=lambda e: (e.ts, e.worker, e.seq))

    # ------------------------------------------------------------------ instances

    def span(self, create: Event) -> tuple[list[Event], Event | None]:
        """The events of an instance after its ``create``, and the event that ended it (then
        only events of kinds this bastion does not know, until the id is created again)."""
        after, end = [], None
        for event in self.events(create.worker, create.object_id):
            if event.seq <= create.seq:
                continue
            if event.kind == "create" and create.object_id not in event.inputs:
                break  # a new instance under the same id: this one ended unrecorded (clear)
            if end is None or event.kind not in EVENT_KINDS:
                after.append(event)
            if end is None and event.kind in _ENDS:
                end = event
        if end is None:
            limit = after[-1].seq if after else create.seq
            end = self.clear_after(create.worker, create.object_id, limit)
            if end is not None:
                after.append(end)
        return after, end

    def clear_after(self, worker: str, object_id: int, seq: int) -> Event | None:
        log = self.where[worker]
        for event in log.events(worker=worker, kind="clear", since=seq + 1):
            if object_id in event.detail.get("ids", ()):
                return event
        return None

    def uses(self, worker: str, object_id: int, lo: int, hi: int | None) -> list[Event]:
        """``create``s of other objects with ``object_id`` among their inputs, in (lo, hi)."""
        text = str(object_id)
        contains = sa.or_(_T.inputs == f"[{text}]", _T.inputs.like(f"[{text},%"),
                          _T.inputs.like(f"%,{text},%"), _T.inputs.like(f"%,{text}]"))  # fmt: skip
        query = sa.select(events_table).where(
            _T.worker_id == worker,
            _T.seq > lo,
            _T.kind == "create",
            contains,
            _T.object_id != object_id,
        )
        if hi is not None:
            query = query.where(_T.seq < hi)
        return [to_event(r) for r in self.where[worker].query(query.order_by(_T.seq))]

    def before(self, worker: str, object_id: int, seq: int) -> Event | None:
        """The latest ``create`` of ``object_id`` on ``worker`` before ``seq``."""
        found = None
        for event in self.events(worker, object_id):
            if event.seq >= seq:
                break
            if event.kind == "create":
                found = event
        return found

    def counterpart(self, worker: str, object_id: int, kind: str, peer: str,
                    ts: float, match: Any) -> Event | None:  # fmt: skip
        """The other side of a move: the event of ``kind`` in ``worker``'s log closest in time."""
        if worker not in self.where:
            return None
        candidates = [e for e in self.events(worker, object_id) if e.kind == kind and match(e)]
        return min(candidates, key=lambda e: (e.peer != peer, abs(e.ts - ts)), default=None)

    # ------------------------------------------------------------------ the two branches

    def ancestry(self, create: Event, relation: str = "origin") -> LineageNode:
        node = self.node(f"{create.object_id} on {create.worker} #{create.seq}: "
                         f"{origin_text(create)}", relation, create.worker, create.seq,
                         create.object_id)  # fmt: skip
        if self.full():
            return node
        if create.origin in ("op", "call"):
            for oid in dict.fromkeys(create.inputs):
                source = self.before(create.worker, oid, create.seq)
                if source is None:
                    node.children.append(
                        self.node(
                            f"{oid} on {create.worker}: no create before #{create.seq} in the log",
                            "missing",
                            create.worker,
                            None,
                            oid,
                        )
                    )
                else:
                    label = "version" if oid == create.object_id else "input"
                    node.children.append(self.ancestry(source, label))
        elif create.origin == "move" and create.peer is not None:
            move = self.counterpart(
                create.peer,
                create.object_id,
                "move",
                create.worker,
                create.ts,
                lambda e: e.detail.get("new_id") == create.object_id,
            )
            if move is None:
                node.children.append(
                    self.node(
                        f"{create.peer}'s log is not here: add it with --with DB",
                        "missing",
                        create.peer,
                        None,
                        create.object_id,
                    )
                )
            else:
                source = self.before(move.worker, move.object_id, move.seq)
                if source is not None:
                    node.children.append(self.ancestry(source, "source"))
        return node

    def forward(self, create: Event, relation: str = "created") -> LineageNode:
        self.seen.add((create.worker, create.seq))
        node = self.node(f"{create.worker} #{create.seq} create {create.object_id}: "
                         f"{origin_text(create)}", relation, create.worker, create.seq,
                         create.object_id)  # fmt: skip
        after, end = self.span(create)
        hi = end.seq if end is not None else None
        items = [(e.seq, e) for e in after]
        items += [(e.seq, e) for e in self.uses(create.worker, create.object_id, create.seq, hi)]
        for _, event in sorted(items, key=lambda item: item[0]):
            if self.full():
                node.children.append(LineageNode("... more (raise --max-nodes)", "more"))
                break
            node.children.append(self.step(create, event))
        return node

    def step(self, create: Event, event: Event) -> LineageNode:
        where = f"{event.worker} #{event.seq}"
        oid = create.object_id
        if event.kind == "create" and event.object_id != oid:
            if (event.worker, event.seq) in self.seen:
                return self.node(
                    f"{where} used by {event.op} -> {event.object_id} (shown above)",
                    "used",
                    event.worker,
                    event.seq,
                    event.object_id,
                )
            child = self.forward(event, "used")
            child.text = f"{where} used by {event.op} -> {event.object_id}"
            return child
        if event.kind == "create":
            return self.node(
                f"{where} changed in place by {event.op}", "version", event.worker, event.seq, oid
            )
        if event.kind == "get":
            return self.node(
                f"{where} fetched by {event.peer}", "fetched", event.worker, event.seq, oid
            )
        if event.kind == "delete":
            return self.node(
                f"{where} deleted (pointer released by {event.peer})",
                "deleted",
                event.worker,
                event.seq,
                oid,
            )
        if event.kind == "clear":
            return self.node(
                f"{where} cleared by {event.peer}", "cleared", event.worker, event.seq, oid
            )
        if event.kind == "move":
            return self.moved(event)
        if event.kind == "release":
            return self.node(
                f"{where} released to {event.peer} ({release_text(event)})", "released",
                event.worker, event.seq, oid,
            )  # fmt: skip
        if event.kind == "denied":
            return self.node(
                f"{where} {event.detail.get('request')} refused to {event.peer}: "
                f"{event.detail.get('why')}", "event", event.worker, event.seq, oid,
            )  # fmt: skip
        detail = f" {event.detail}" if event.detail else ""
        return self.node(
            f"{where} {event.kind} by {event.peer}{detail}", "event", event.worker, event.seq, oid
        )

    def moved(self, move: Event) -> LineageNode:
        by = move.detail.get("requested_by")
        node = self.node(f"{move.worker} #{move.seq} moved to {move.peer}"
                         + (f" (requested by {by})" if by else ""), "moved", move.worker,
                         move.seq, move.object_id)  # fmt: skip
        new_id = move.detail.get("new_id", move.object_id)
        if move.peer not in self.where:
            node.children.append(
                self.node(
                    f"{move.peer}'s log is not here: add it with --with DB",
                    "missing",
                    move.peer,
                    None,
                    new_id,
                )
            )
            return node
        arrival = self.counterpart(
            move.peer, new_id, "create", move.worker, move.ts, lambda e: e.origin == "move"
        )
        if arrival is None:
            node.children.append(
                self.node(
                    f"{move.peer} has no record of its arrival", "missing", move.peer, None, new_id
                )
            )
        elif not self.full():
            node.children.append(self.forward(arrival, "arrived"))
        return node


@dataclass
class Lineage:
    """The lineage of one object id: a tree (``root``) and whether it was cut short."""

    object_id: int
    root: LineageNode
    truncated: bool

    def render(self) -> str:
        """The tree drawn with box characters."""
        return self.root.render()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return {"object_id": self.object_id, "truncated": self.truncated,
                "tree": self.root.to_dict()}  # fmt: skip


def lineage(
    url: str | os.PathLike[str] | AuditLog,
    object_id: int,
    *,
    worker: str | None = None,
    also: Iterable[str | os.PathLike[str] | AuditLog] = (),
    max_nodes: int = 2000,
) -> Lineage:
    """The history of ``object_id`` as a tree, following moves into other workers' logs.

    ``worker`` starts from that worker's first instance of the id (default: the first one
    in time anywhere). ``also``: more databases holding other workers' logs. The tree stops
    growing at ``max_nodes`` nodes (``truncated`` says so).
    """
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(opened(source)) for source in (url, *also)]
        return _lineage(_Walker(logs, max_nodes), object_id, worker, logs[0].name)


def _lineage(walker: _Walker, object_id: int, worker: str | None, name: str) -> Lineage:
    creates = walker.creates(object_id)
    if worker is not None:
        if worker not in walker.where:
            raise AuditError(f"worker {worker!r} is not in {name}")
        creates = [e for e in creates if e.worker == worker]
    if not creates:
        place = f"worker {worker!r}" if worker else name
        raise AuditError(f"object {object_id} was never created in {place}; "
                         "list ids with 'bastion audit events'")  # fmt: skip
    first = next((e for e in creates if e.origin != "move"), creates[0])
    came = walker.node("came from", "section")
    came.children.append(walker.ancestry(first))
    happened = walker.node("what happened", "section")
    happened.children.append(walker.forward(first))
    for create in creates:  # instances not reached from the first one (sent again...)
        if (create.worker, create.seq) not in walker.seen and not walker.full():
            happened.children.append(walker.forward(create))
    root = LineageNode(f"object {object_id}", "object", None, None, object_id, [came, happened])
    return Lineage(object_id, root, walker.truncated)
