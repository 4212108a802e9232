"""``TorchHook``: PySyft's entry point, adding ``.send`` to tensors and modules.

>>> import torch, bastion as sy
>>> hook = sy.TorchHook(torch)
>>> hasattr(torch.Tensor, "send")
True
>>> hook.unhook()
>>> hasattr(torch.Tensor, "send")
False
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

from bastion.client import BaseWorker, LocalWorker, local_worker
from bastion.errors import ConfigurationError
from bastion.modules import get_module, module_location, send_module
from bastion.worker import check_description, normalize_tags


def _tensor_send(self: torch.Tensor, worker: BaseWorker) -> Any:
    """Send this tensor to ``worker``; returns a ``PointerTensor``."""
    if not isinstance(worker, BaseWorker):
        raise ConfigurationError(f"send() needs a worker, got {type(worker).__name__}")
    return worker.send(self)


def _module_send(self: nn.Module, worker: BaseWorker) -> nn.Module:
    """Send this module's parameters and buffers to ``worker`` (in place)."""
    if not isinstance(worker, BaseWorker):
        raise ConfigurationError(f"send() needs a worker, got {type(worker).__name__}")
    return send_module(self, worker)


def _tensor_tag(self: torch.Tensor, *tags: str) -> torch.Tensor:
    """Add tags (``"#digits"``) that travel with the tensor when sent; returns the tensor."""
    self.__dict__["_tags"] = normalize_tags((*self.__dict__.get("_tags", ()), *tags))
    return self


def _tensor_describe(self: torch.Tensor, description: str) -> torch.Tensor:
    """Describe the tensor's data for those who find it on a worker; returns the tensor."""
    self.__dict__["_description"] = check_description(description)
    return self


#: (class, attribute, value) the hook adds; unhook removes exactly these.
_ADDITIONS: tuple[tuple[type, str, Any], ...] = (
    (torch.Tensor, "send", _tensor_send),
    (torch.Tensor, "tag", _tensor_tag),
    (torch.Tensor, "describe", _tensor_describe),
    (torch.Tensor, "tags", property(lambda self: self.__dict__.get("_tags", ()))),
    (torch.Tensor, "description", property(lambda self: self.__dict__.get("_description"))),
    (nn.Module, "send", _module_send),
    (nn.Module, "get", get_module),
    (nn.Module, "location", property(module_location)),
)

_lock = threading.Lock()
_active = 0


class TorchHook:
    """Hook torch for bastion: ``hook = TorchHook(torch)``; ``hook.unhook()`` undoes it.

    Several hooks may be alive; the methods stay until the last one is unhooked.
    """

    def __init__(self, torch_module: ModuleType, local_worker: LocalWorker = local_worker):
        global _active
        if torch_module is not torch:
            raise ConfigurationError(
                f"TorchHook expects the torch module (TorchHook(torch)), got {torch_module!r}"
            )
        self.torch = torch_module
        self.local_worker = local_worker
        self.hooked = True
        with _lock:
            if _active == 0:
                for cls, name, _ in _ADDITIONS:
                    if name in cls.__dict__:
                        raise ConfigurationError(
                            f"{cls.__name__}.{name} already exists; another library hooked "
                            "torch and bastion will not overwrite it"
                        )
                for cls, name, value in _ADDITIONS:
                    setattr(cls, name, value)
            _active += 1

    def unhook(self) -> None:
        """Remove what this hook added (once the last live hook is unhooked)."""
        global _active
        with _lock:
            if not self.hooked:
                return
            self.hooked = False
            _active -= 1
            if _active == 0:
                for cls, name, _ in _ADDITIONS:
                    if name in cls.__dict__:
                        delattr(cls, name)

    def __repr__(self) -> str:
        return f"<TorchHook {'active' if self.hooked else 'unhooked'}>"
