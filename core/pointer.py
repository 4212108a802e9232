"""Pointers: local handles to objects that stay on a worker.

A ``PointerTensor`` is a ``torch.Tensor`` subclass whose local data is a zero-stride view of
one element: it knows the remote shape and dtype, costs no memory, and every torch function,
method, operator or property that reaches it through ``__torch_function__`` runs on its
worker and returns pointers. Non-tensor results come back as an ``ObjectPointer``; bring any
value here with ``.get()``.

>>> import torch, bastion as sy
>>> m1 = sy.VirtualWorker(id="doc-ptr")
>>> x = m1.send(torch.tensor([1.0, 2.0]))
>>> y = (x * 3).sum()
>>> type(y).__name__, y.shape
('PointerTensor', torch.Size([]))
>>> y.get()
tensor(9.)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from bastion import ops
from bastion.client import BaseWorker, local_worker
from bastion.errors import (
    LocationError,
    ObjectNotFoundError,
    RemoteValueError,
    SerializationError,
)
from bastion.ids import new_id
from bastion.messages import Get, Move, ObjectSpec, Ref, RunOp, Tag, TensorSpec
from bastion.worker import check_description, normalize_tags

_DisableSubclass = torch._C.DisableTorchFunctionSubclass


_PLACEHOLDERS: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}


def _placeholder(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """One element of ``dtype`` seen as ``shape`` (stride 0 everywhere): no memory.

    Pointers share these (one per shape and dtype); their value means nothing and is never
    read, since every function that reaches a pointer goes to its worker or reads only shape
    and dtype.
    """
    key = (shape, dtype)
    placeholder = _PLACEHOLDERS.get(key)
    if placeholder is None:
        if len(_PLACEHOLDERS) > 4096:
            _PLACEHOLDERS.clear()
        placeholder = torch.zeros((), dtype=dtype).expand(shape)
        _PLACEHOLDERS[key] = placeholder
    return placeholder


class _PointerMixin:
    """What every pointer has: location, id_at_location, owner, get, GC."""

    location: BaseWorker
    id_at_location: int

    def _check_live(self) -> None:
        gone = self.__dict__.get("_gone")
        if gone is not None:
            raise ObjectNotFoundError(
                f"{self!r} no longer points to anything: its object was {gone}. "
                "Send the data again to get a new pointer."
            )

    def _consume(self, why: str) -> None:
        self.__dict__["_gone"] = why

    def __del__(self) -> None:
        try:
            state = self.__dict__
        except Exception:  # half-built or interpreter shutting down
            return
        if state.get("_gone") is None and state.get("garbage_collect_data"):
            location = state.get("location")
            if location is not None:
                location._schedule_delete(state["id_at_location"], self._nbytes())

    def _nbytes(self) -> int:
        return 0

    # ------------------------------------------------------------------ tags

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags its owner gave the object (what ``worker.search`` matches)."""
        return self.__dict__.get("_tags", ())

    @property
    def description(self) -> str | None:
        """What its owner says the object is."""
        return self.__dict__.get("_description")

    def tag(self, *tags: str) -> Any:
        """Add tags to the object on its worker; returns this pointer."""
        self._check_live()
        new = normalize_tags(tags)
        self.location._request(Tag(self.id_at_location, new, None))
        self.__dict__["_tags"] = normalize_tags((*self.tags, *new))
        return self

    def describe(self, description: str) -> Any:
        """Set the object's description on its worker; returns this pointer."""
        self._check_live()
        check_description(description)
        self.location._request(Tag(self.id_at_location, (), description))
        self.__dict__["_description"] = description
        return self


def _init_pointer(pointer: Any, location: BaseWorker, obj_id: int) -> None:
    pointer.__dict__.update(
        location=location,
        id_at_location=obj_id,
        owner=local_worker,
        id=new_id(),
        garbage_collect_data=True,
        _gone=None,
    )


class PointerTensor(_PointerMixin, torch.Tensor):
    """A tensor that lives on ``location`` under ``id_at_location``; ``owner`` is "me".

    >>> import torch, bastion as sy
    >>> m1 = sy.VirtualWorker(id="doc-pt")
    >>> p = m1.send(torch.zeros(2, 3))
    >>> isinstance(p, torch.Tensor), p.shape, p.location is m1
    (True, torch.Size([2, 3]), True)
    """

    @staticmethod
    def _make(location: BaseWorker, spec: TensorSpec, leaf: bool | None = None) -> PointerTensor:
        """A pointer to ``spec``; ``leaf`` defaults to what an op result is (no grad: a leaf)."""
        pointer = torch.Tensor._make_subclass(
            PointerTensor, _placeholder(spec.shape, spec.dtype), False
        )
        _init_pointer(pointer, location, spec.id)
        state = pointer.__dict__
        state["_requires_grad"] = spec.requires_grad
        state["_leaf"] = not spec.requires_grad if leaf is None else leaf
        state["_shape"] = spec.shape
        state["_itemsize"] = spec.dtype.itemsize
        return pointer

    def _nbytes(self) -> int:
        shape = self.__dict__.get("_shape")
        return math.prod(shape) * self.__dict__["_itemsize"] if shape is not None else 0

    def _update(self, spec: TensorSpec) -> None:
        """An in-place op changed the remote object: follow its shape, dtype and grad flag."""
        state = self.__dict__
        state["_requires_grad"] = spec.requires_grad
        state["_shape"] = spec.shape
        state["_itemsize"] = spec.dtype.itemsize
        with _DisableSubclass():
            same = self.shape == spec.shape and self.dtype == spec.dtype
        if not same:
            with _DisableSubclass(), torch.no_grad():
                torch.Tensor.set_(self, _placeholder(spec.shape, spec.dtype))

    # ------------------------------------------------------------------ PySyft API

    def get(self) -> torch.Tensor:
        """Bring the tensor here; the worker no longer holds it and this pointer is spent."""
        self._check_live()
        value = self.location._request(Get(self.id_at_location))
        self._consume("fetched with .get()")
        return value

    def move(self, worker: BaseWorker) -> PointerTensor:
        """Send the object straight from its worker to ``worker``; it keeps its id there.

        The pointer follows it (and is returned, so ``p = p.move(m2)`` also works).
        """
        self._check_live()
        if not isinstance(worker, BaseWorker):
            raise LocationError(
                f"cannot move {self!r} to {worker!r}: move to a worker (VirtualWorker or "
                "connected worker); use .get() to bring it here"
            )
        if worker is self.location:
            return self
        self.location._request(Move(self.id_at_location, worker.address))
        self.__dict__["location"] = worker
        return self

    def copy(self) -> PointerTensor:
        """A new object on the same worker holding a copy of this one's data."""
        with torch.no_grad():
            duplicate = torch.Tensor.clone(self)
        if self.__dict__["_requires_grad"]:
            duplicate.requires_grad_(True)
        return duplicate

    # ------------------------------------------------------------------ Python protocol

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        state = self.__dict__
        location = state.get("location")
        where = getattr(location, "id", "?")
        suffix = "" if state.get("_gone") is None else f" ({state['_gone']})"
        return (
            f"({type(self).__name__} {local_worker.id}:{state.get('id')} -> "
            f"{where}:{state.get('id_at_location')}){suffix}"
        )

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __len__(self) -> int:
        with _DisableSubclass():
            return torch.Tensor.__len__(self)

    def __hash__(self) -> int:
        return id(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise SerializationError(
            f"{self!r} cannot be pickled: a pointer is only meaningful to its owner"
        )

    def __deepcopy__(self, memo: dict) -> PointerTensor:
        return self.copy()

    def _needs_value(self, what: str) -> RemoteValueError:
        return RemoteValueError(
            f"{what} of {self!r} needs its value, which lives on {self.location.id}; "
            "call .get() first"
        )

    def __bool__(self) -> bool:
        raise self._needs_value("bool()")

    def __int__(self) -> int:
        raise self._needs_value("int()")

    def __float__(self) -> float:
        raise self._needs_value("float()")

    def __complex__(self) -> complex:
        raise self._needs_value("complex()")

    def __index__(self) -> int:
        raise self._needs_value("use as an index")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._needs_value("numpy conversion")

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        raise self._needs_value("numpy()")

    # ------------------------------------------------------------------ dispatch

    @classmethod
    def __torch_function__(
        cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        local = _LOCAL.get(func)
        if local is not None:
            return local(func, args, kwargs or {})
        return _run_remote(func, args, kwargs or {})


class PointerParameter(PointerTensor, nn.Parameter):
    """An ``nn.Parameter`` whose data went to a worker with ``model.send(worker)``.

    The parameter object itself changes class in place (so optimizers holding it stay valid);
    ``model.get()`` turns it back into a plain ``nn.Parameter``.
    """

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        return PointerTensor.__repr__(self)


class ObjectPointer(_PointerMixin):
    """A non-tensor result (a number, a list, ``None`` is returned as is) living on a worker.

    >>> import torch, bastion as sy
    >>> m1 = sy.VirtualWorker(id="doc-op")
    >>> n = m1.send(torch.tensor([1.5])).item()
    >>> n.type_name, n.get()
    ('float', 1.5)
    """

    def __init__(self, location: BaseWorker, spec: ObjectSpec) -> None:
        _init_pointer(self, location, spec.id)
        self.type_name = spec.type_name

    def get(self) -> Any:
        """Bring the value here; the worker no longer holds it."""
        self._check_live()
        value = self.location._request(Get(self.id_at_location))
        self._consume("fetched with .get()")
        return value

    def __repr__(self) -> str:
        return (
            f"(ObjectPointer[{self.type_name}] {local_worker.id}:{self.id} -> "
            f"{self.location.id}:{self.id_at_location})"
        )

    def __bool__(self) -> bool:
        raise RemoteValueError(
            f"bool() of {self!r} needs its value, which lives on {self.location.id}; "
            "call .get() first"
        )


# ============================================================================ dispatch


class _Call:
    """The state of converting one call's arguments: where it runs, which pointers it names."""

    __slots__ = ("location", "pointers")

    def __init__(self) -> None:
        self.location: BaseWorker | None = None
        self.pointers: dict[int, Any] = {}

    def ref(self, pointer: Any) -> Ref:
        pointer._check_live()
        location = pointer.location
        if self.location is None:
            self.location = location
        elif location is not self.location:
            raise LocationError(
                f"{pointer!r} is on worker {location.id} but the other arguments are on "
                f"worker {self.location.id}; move them to one worker first "
                f"(e.g. .move({self.location.id!r}))"
            )
        self.pointers[pointer.id_at_location] = pointer
        return Ref(pointer.id_at_location)


_PLAIN = (int, float, bool, str, type(None), complex)
_KEEP = (torch.dtype, torch.device, torch.layout, torch.memory_format, torch.Size)


def _to_wire(value: Any, call: _Call) -> Any:
    if isinstance(value, _PointerMixin):
        return call.ref(value)
    kind = type(value)
    if kind in _PLAIN or isinstance(value, _KEEP) or value is Ellipsis:
        return value
    if isinstance(value, torch.Tensor):
        return value  # a plain tensor travels along with the request
    if kind is tuple or kind is list:
        return kind([_to_wire(item, call) for item in value])
    if kind is dict or kind is OrderedDict:  # a state_dict travels as a plain dict
        return {key: _to_wire(item, call) for key, item in value.items()}
    if kind is slice:
        return slice(
            _to_wire(value.start, call), _to_wire(value.stop, call), _to_wire(value.step, call)
        )
    raise SerializationError(
        f"cannot pass a {kind.__name__} to a worker: arguments of remote operations are "
        "tensors, pointers, numbers, strings, slices, dtypes and lists or tuples of them"
    )


def _from_wire(value: Any, location: BaseWorker, call: _Call) -> Any:
    kind = type(value)
    if kind is TensorSpec:
        pointer = call.pointers.get(value.id)
        if pointer is not None and isinstance(pointer, PointerTensor):
            pointer._update(value)
            return pointer
        return PointerTensor._make(location, value)
    if kind is ObjectSpec:
        return ObjectPointer(location, value)
    if kind is tuple or kind is list or kind.__module__ == "torch.return_types":
        return kind([_from_wire(item, location, call) for item in value])
    return value


def _run_remote(func: Callable, args: tuple, kwargs: dict) -> Any:
    name = ops.name_of(func)
    call = _Call()
    wire_args = tuple([_to_wire(arg, call) for arg in args])
    wire_kwargs = {key: _to_wire(arg, call) for key, arg in kwargs.items()} if kwargs else {}
    location = call.location
    if location is None:  # e.g. a spent pointer inside a structure we do not walk
        raise ObjectNotFoundError(f"no live pointer among the arguments of {name}")
    value = location._request(RunOp(name, wire_args, wire_kwargs, torch.is_grad_enabled()))
    return _from_wire(value, location, call)


# ------------------------------------------------------------ functions answered locally


def _local_meta(func: Callable, args: tuple, kwargs: dict) -> Any:
    """Shape, dtype and the like: the placeholder knows them, no round trip."""
    for arg in args:
        if isinstance(arg, PointerTensor):
            arg._check_live()
    with _DisableSubclass():
        return func(*args, **kwargs)


def _requires_grad_get(func: Callable, args: tuple, kwargs: dict) -> bool:
    return args[0].__dict__["_requires_grad"]


def _is_leaf_get(func: Callable, args: tuple, kwargs: dict) -> bool:
    return args[0].__dict__["_leaf"]


def _requires_grad_set(func: Callable, args: tuple, kwargs: dict) -> None:
    _run_remote(func, args, kwargs)
    args[0].__dict__["_requires_grad"] = bool(args[1])


def _data_set(func: Callable, args: tuple, kwargs: dict) -> None:
    pointer, source = args
    _run_remote(func, args, kwargs)
    if isinstance(source, PointerTensor):
        with _DisableSubclass():
            shape, dtype = source.shape, source.dtype
        pointer._update(TensorSpec(pointer.id_at_location, tuple(shape), dtype,
                                   pointer.__dict__["_requires_grad"]))


def _repr(func: Callable, args: tuple, kwargs: dict) -> str:
    return repr(args[0])


def _needs_value(func: Callable, args: tuple, kwargs: dict) -> Any:
    raise args[0]._needs_value(f"{getattr(func, '__name__', 'this call')}()")


def _build_local_table() -> dict[Callable, Callable]:
    T = torch.Tensor
    table: dict[Callable, Callable] = {}
    meta = [T.size, T.dim, T.ndimension, T.numel, T.nelement, T.is_floating_point,
            T.is_complex, T.is_signed, T.element_size, T.get_device]
    for name in ("shape", "ndim", "dtype", "device", "layout", "itemsize", "nbytes"):
        meta.append(getattr(T, name).__get__)
    for name in dir(T):
        if name.startswith("is_") and hasattr(getattr(T, name), "__get__") and not callable(
            getattr(T, name)
        ):
            meta.append(getattr(T, name).__get__)
    for func in meta:
        table[func] = _local_meta
    table[T.requires_grad.__get__] = _requires_grad_get
    table[T.requires_grad.__set__] = _requires_grad_set
    table[T.is_leaf.__get__] = _is_leaf_get
    table[T.data.__set__] = _data_set
    for func in (T.__repr__, T.__format__):
        table[func] = _repr
    for func in (T.__array__, T.__array_wrap__, T.__reduce_ex__, T.__deepcopy__):
        table[func] = _needs_value
    return table


_LOCAL = _build_local_table()
