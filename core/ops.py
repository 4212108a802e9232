"""Which torch functions run on a worker, and the names they travel under.

The set is exactly the functions PyTorch routes through ``__torch_function__``
(``torch.overrides.get_overridable_functions()``, plus the property setters), so anything
that can reach a pointer has a name, and a worker resolves a name only from this table:
``torch.load`` or ``os.system`` can never be asked for.

>>> import torch
>>> from bastion import ops
>>> ops.name_of(torch.add)
'torch.add'
>>> ops.resolve('Tensor.__add__') is torch.Tensor.__add__
True
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch.overrides import get_overridable_functions

from bastion.errors import UnsupportedOperation


def _func_name(func: Callable) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def _namespace_name(namespace: object) -> str:
    if inspect.ismodule(namespace):
        return namespace.__name__
    if namespace is torch.Tensor:
        return "Tensor"
    # a Tensor property (getset_descriptor or property): its getter is Tensor.<name>.__get__
    name = getattr(namespace, "__name__", None)
    if name is None and isinstance(namespace, property) and namespace.fget is not None:
        name = namespace.fget.__name__
    return f"Tensor.{name}"


#: Overridable functions a worker still refuses: they hand out internals (storage, addresses,
#: pickling state) or take callables, which no message can carry anyway.
DENIED_SUFFIXES: tuple[str, ...] = (
    "__reduce__",
    "__reduce_ex__",
    "__setstate__",
    "__deepcopy__",
    "_hook",
    "data_ptr",
    "storage",
    "untyped_storage",
    "share_memory_",
    "module_load",
)


@functools.cache
def _tables() -> tuple[dict[Callable, str], dict[str, Callable]]:
    by_func: dict[Callable, str] = {}
    by_name: dict[str, Callable] = {}

    def add(name: str, func: Callable) -> None:
        if func in by_func or name.endswith(DENIED_SUFFIXES):
            return
        # Two functions may share a name in one namespace (a Python wrapper and the C method
        # of Tensor.pow); the later ones get a numbered name, the same on every side.
        base, n = name, 0
        while name in by_name:
            n += 1
            name = f"{base}#{n}"
        by_func[func] = name
        by_name[name] = func

    for namespace, funcs in get_overridable_functions().items():
        prefix = _namespace_name(namespace)
        for func in funcs:
            add(f"{prefix}.{_func_name(func)}", func)
        setter = getattr(namespace, "__set__", None)
        if prefix.startswith("Tensor.") and setter is not None:
            add(f"{prefix}.__set__", setter)
    return by_func, by_name


def name_of(func: Callable) -> str:
    """The wire name of a torch function; ``UnsupportedOperation`` when there is none."""
    try:
        return _tables()[0][func]
    except (KeyError, TypeError):
        raise UnsupportedOperation(
            f"{getattr(func, '__qualname__', func)!r} cannot run on a worker: bastion runs only "
            "torch functions that dispatch through __torch_function__. Fetch the data with "
            ".get() if you are allowed to, or ship a function to a worker started with "
            "allow_code=True."
        ) from None


def resolve(name: str) -> Callable:
    """The torch function for a wire name; ``UnsupportedOperation`` for anything else."""
    func = _tables()[1].get(name) if isinstance(name, str) else None
    if func is None:
        raise UnsupportedOperation(f"{name!r} is not a torch operation this worker runs.")
    return func

