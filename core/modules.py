"""``nn.Module`` on workers, PySyft style: ``model.send(worker)`` and ``model.get()``.

Each parameter object changes class in place to ``PointerParameter`` and its local data
becomes a zero-stride view (no memory), so an optimizer built before ``send`` keeps working:
``loss.backward()``, ``p.grad`` and ``optimizer.step()`` reach the worker through
``__torch_function__``. ``model.get()`` brings weights and gradients back into the very
same parameter objects.

>>> import torch, bastion as sy
>>> m1 = sy.VirtualWorker(id="doc-mod")
>>> model = torch.nn.Linear(3, 1)
>>> _ = sy.send_module(model, m1)
>>> type(model.weight).__name__
'PointerParameter'
>>> out = model(m1.send(torch.ones(2, 3)))
>>> _ = sy.get_module(model)
>>> type(model.weight).__name__
'Parameter'
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from bastion.client import BaseWorker
from bastion.errors import BastionError
from bastion.messages import Create, Get
from bastion.pointer import (
    PointerParameter,
    PointerTensor,
    _init_pointer,
    _placeholder,
)

_POINTER_STATE = ("location", "id_at_location", "owner", "id", "garbage_collect_data",
                  "_gone", "_requires_grad", "_leaf", "_shape", "_itemsize")


def _parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    seen: set[int] = set()
    for param in module.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            yield param


def _buffers(module: nn.Module) -> Iterator[tuple[nn.Module, str, torch.Tensor]]:
    for sub in module.modules():
        for name, buffer in sub._buffers.items():
            if buffer is not None:
                yield sub, name, buffer


def send_module(module: nn.Module, worker: BaseWorker) -> nn.Module:
    """Send ``module``'s parameters and buffers to ``worker``, in place; returns ``module``.

    Parameters already on another worker move there directly.
    """
    for param in _parameters(module):
        if isinstance(param, PointerParameter):
            param.move(worker)
            continue
        grad = param.grad
        spec = worker._request(Create(param))
        with torch.no_grad():
            param.data = _placeholder(spec.shape, spec.dtype)
        param.grad = None
        param.__class__ = PointerParameter
        _init_pointer(param, worker, spec.id)
        param.__dict__.update(_requires_grad=spec.requires_grad, _leaf=True,
                              _shape=spec.shape, _itemsize=spec.dtype.itemsize)
        if grad is not None:
            param.grad = worker.send(grad)
    for sub, name, buffer in _buffers(module):
        if isinstance(buffer, PointerTensor):
            buffer.move(worker)
        else:
            sub._buffers[name] = worker.send(buffer)
    return module


def get_module(module: nn.Module) -> nn.Module:
    """Bring ``module``'s parameters (with their gradients) and buffers back, in place."""
    for param in _parameters(module):
        if not isinstance(param, PointerParameter):
            continue
        param._check_live()
        value, grad = param.location._request(Get(param.id_at_location, with_grad=True))
        for key in _POINTER_STATE:
            param.__dict__.pop(key, None)
        param.__class__ = nn.Parameter
        with torch.no_grad():
            param.data = value.detach()
        param.grad = None if grad is None else grad.detach()
    for sub, name, buffer in _buffers(module):
        if isinstance(buffer, PointerTensor):
            sub._buffers[name] = buffer.get()
    return module


def module_location(module: nn.Module) -> BaseWorker | None:
    """The worker holding ``module``'s parameters, or None when they are local."""
    locations = {
        id(p.location): p.location for p in _parameters(module) if isinstance(p, PointerTensor)
    }
    if len(locations) > 1:
        names = ", ".join(sorted(w.id for w in locations.values()))
        raise BastionError(f"the module's parameters are spread over workers {names}")
    return next(iter(locations.values()), None)
