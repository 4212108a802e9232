"""The message protocol: what a client asks of a worker, and what the worker answers.

A worker is a message handler, ``Worker.handle(message, peer) -> Reply``; a transport only
carries these records, serialized with :mod:`bastion.serde` or, in memory, as they are.

>>> from bastion.messages import Get, Reply
>>> Get(obj_id=7)
Get(obj_id=7, with_grad=False)
>>> Reply(value=3).ok
True
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

# ---------------------------------------------------------------------------- values


@dataclass(slots=True)
class Ref:
    """An object held by the receiving worker, named by its id (a pointer on the wire)."""

    id: int


@dataclass(slots=True)
class TensorSpec:
    """What a client learns of a tensor a worker now holds: enough to build a pointer."""

    id: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool = False


@dataclass(slots=True)
class ObjectSpec:
    """A non-tensor object a worker now holds (a number, a list...): ``type_name`` says what."""

    id: int
    type_name: str


@dataclass(slots=True)
class ErrorInfo:
    """A refusal or failure, by exception class name and message."""

    type_name: str
    message: str


# -------------------------------------------------------------------------- messages


@dataclass(slots=True)
class Create:
    """Store ``value`` (a tensor or plain data) on the worker. ``origin`` is send, move or call.

    ``tags`` and ``description`` are what its owner says of it (``worker.search`` finds it).
    """

    value: Any
    obj_id: int | None = None
    origin: str = "send"
    tags: tuple[str, ...] = ()
    description: str | None = None


@dataclass(slots=True)
class Get:
    """Return an object and drop it from the worker; with ``with_grad``, its ``.grad`` too."""

    obj_id: int
    with_grad: bool = False


@dataclass(slots=True)
class Move:
    """Send an object straight to the worker at ``destination``, keeping its id."""

    obj_id: int
    destination: str


@dataclass(slots=True)
class Delete:
    """Drop objects whose last pointer was collected; unknown ids are ignored."""

    obj_ids: list[int]


@dataclass(slots=True)
class Clear:
    """Drop every object the worker holds."""


@dataclass(slots=True)
class RunOp:
    """Run the torch function named ``op`` on the worker; ``Ref`` arguments name its objects."""

    op: str
    args: tuple
    kwargs: dict
    grad_enabled: bool = True


@dataclass(slots=True)
class CallFunction:
    """Run shipped code (cloudpickle bytes); only workers started with ``allow_code=True`` do.

    The result stays on the worker (the reply describes it), or with ``return_value`` it is
    the reply's value: one round trip, nothing left behind.
    """

    code: bytes
    args: tuple
    kwargs: dict
    grad_enabled: bool = True
    return_value: bool = False


@dataclass(slots=True)
class ListObjects:
    """Describe every object the worker holds: ``{id: TensorSpec | ObjectSpec}``."""


@dataclass(slots=True)
class Tag:
    """Add ``tags`` to an object, and set its ``description`` unless None."""

    obj_id: int
    tags: tuple[str, ...] = ()
    description: str | None = None


@dataclass(slots=True)
class Search:
    """Find the objects carrying every one of ``tags``: ``[(spec, tags, description), ...]``."""

    tags: tuple[str, ...]


@dataclass(slots=True)
class BudgetQuery:
    """How much of its privacy budget the asking peer has spent on the worker, and has left."""


@dataclass(slots=True)
class Reply:
    """A worker's answer: a ``value``, or an ``error``.

    ``cause`` keeps the original exception when no serialization happened (in-memory
    transport), so tracebacks lead to the real failure; it never crosses a wire.
    """

    value: Any = None
    error: ErrorInfo | None = None
    cause: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when the request succeeded."""
        return self.error is None


#: Every record the wire format carries, in a fixed order: the position is the wire code.
RECORDS: tuple[type, ...] = (
    Ref,
    TensorSpec,
    ObjectSpec,
    ErrorInfo,
    Create,
    Get,
    Move,
    Delete,
    Clear,
    RunOp,
    CallFunction,
    ListObjects,
    Reply,
    Tag,
    Search,
    BudgetQuery,
)

#: The fields each record carries on the wire (``Reply.cause`` stays local).
WIRE_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls) if f.name != "cause") for cls in RECORDS
}

MESSAGES: tuple[type, ...] = (
    Create, Get, Move, Delete, Clear, RunOp, CallFunction, ListObjects, Tag, Search,
    BudgetQuery,
)  # fmt: skip
