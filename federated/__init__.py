"""Federated learning on bastion: the data stays on its workers, the model travels.

- Data: ``BaseDataset``, ``dataset.federate(workers)`` -> ``FederatedDataset``,
  ``FederatedDataLoader`` (pointer batches, worker by worker); split helpers.
- Training: ``FederatedTrainer`` runs rounds the fast way (one shipped function call per
  worker) or the PySyft way (pointers), with a ``Strategy``: ``FedAvg``, ``FedProx``,
  ``FedAdam``.
- Privacy: PATE analysis (``perform_analysis``, :mod:`bastion.federated.pate`).

>>> import torch, bastion as sy
>>> from bastion.federated import FedAvg, FederatedTrainer
>>> alice = sy.VirtualWorker(id="doc-fl-alice", allow_code=True)
>>> bob = sy.VirtualWorker(id="doc-fl-bob", allow_code=True)
>>> x = torch.randn(64, 2)
>>> fd = sy.BaseDataset(x, (x[:, 0] > 0).long()).federate((alice, bob), tags=["#toy"])
>>> trainer = FederatedTrainer(torch.nn.Linear(2, 2), fd, FedAvg(), rounds=5, lr=0.5,
...                            eval_data=(x, (x[:, 0] > 0).long()))
>>> trainer.fit()[-1].accuracy > 0.8
True
"""

from __future__ import annotations

from bastion.federated.datasets import (
    BaseDataset,
    FederatedDataset,
    even_shards,
    iid_shards,
    label_shards,
)
from bastion.federated.loader import FederatedDataLoader
from bastion.federated.pate import PateAnalysis, perform_analysis
from bastion.federated.strategies import ClientUpdate, FedAdam, FedAvg, FedProx, State, Strategy
from bastion.federated.trainer import (
    FederatedError,
    FederatedTrainer,
    History,
    RoundMetrics,
    WorkerDropped,
)
from bastion.federated.training import LocalTraining, train_with_pointers

__all__ = [
    "BaseDataset",
    "ClientUpdate",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FederatedDataLoader",
    "FederatedDataset",
    "FederatedError",
    "FederatedTrainer",
    "History",
    "LocalTraining",
    "PateAnalysis",
    "RoundMetrics",
    "State",
    "Strategy",
    "WorkerDropped",
    "even_shards",
    "iid_shards",
    "label_shards",
    "perform_analysis",
    "train_with_pointers",
]
