"""bastion: private deep learning on PyTorch. Data stays on its worker; you hold pointers.

>>> import torch, bastion as sy
>>> hook = sy.TorchHook(torch)
>>> m1 = sy.VirtualWorker(hook, id="doc-init")
>>> p = torch.tensor([0, 1]).send(m1)
>>> (p + p).get()
tensor([0, 2])
>>> hook.unhook()
"""

from __future__ import annotations

from bastion.client import BaseWorker, LocalWorker, VirtualWorker, local_worker
from bastion.errors import (
    AuditError,
    BastionError,
    ConfigurationError,
    ConnectionLost,
    EventLogError,
    FrameError,
    LocationError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDenied,
    RemoteError,
    RemoteValueError,
    SerializationError,
    TransportError,
    UnsupportedOperation,
)
from bastion.events import Event
from bastion.federated import BaseDataset, FederatedDataLoader, FederatedDataset
from bastion.hook import TorchHook
from bastion.modules import get_module, send_module
from bastion.pointer import ObjectPointer, PointerParameter, PointerTensor
from bastion.privacy import DP, Accountant, Allow, Budget, BudgetReport, Deny, ReleasePolicy
from bastion.remote import RemoteWorker, SpawnedWorker, WorkerServer, connect, serve, spawn
from bastion.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Accountant",
    "Allow",
    "AuditError",
    "BaseDataset",
    "BaseWorker",
    "BastionError",
    "Budget",
    "BudgetReport",
    "ConfigurationError",
    "ConnectionLost",
    "DP",
    "Deny",
    "Event",
    "EventLogError",
    "FederatedDataLoader",
    "FederatedDataset",
    "FrameError",
    "LocalWorker",
    "LocationError",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ObjectPointer",
    "PermissionDenied",
    "PointerParameter",
    "PointerTensor",
    "ReleasePolicy",
    "RemoteError",
    "RemoteValueError",
    "SerializationError",
    "TorchHook",
    "TransportError",
    "UnsupportedOperation",
    "VirtualWorker",
    "Worker",
    "RemoteWorker",
    "SpawnedWorker",
    "WorkerServer",
    "connect",
    "federated",
    "get_module",
    "local_worker",
    "send_module",
    "serve",
    "spawn",
    "__version__",
]
