"""``FederatedDataLoader``: batches of pointers, worker by worker.

Each batch is cut on the worker holding the data (one remote indexing per tensor); only
pointers come back.

>>> import torch, bastion as sy
>>> alice, bob = sy.VirtualWorker(id="doc-ld-alice"), sy.VirtualWorker(id="doc-ld-bob")
>>> fd = sy.BaseDataset(torch.randn(10, 3), torch.arange(10)).federate((alice, bob))
>>> loader = sy.FederatedDataLoader(fd, batch_size=2)
>>> len(loader), [data.location.id for data, target in loader][::3]
(6, ['doc-ld-alice', 'doc-ld-bob'])
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from bastion.errors import ConfigurationError
from bastion.federated.datasets import BaseDataset, FederatedDataset

__all__ = ["FederatedDataLoader"]


class FederatedDataLoader:
    """Iterate ``(data, target)`` pointer batches over a ``FederatedDataset``.

    All batches of the first worker come first, then those of the next. With ``shuffle``,
    each pass draws a new order per worker (from ``seed`` and the pass number, so runs
    repeat); ``drop_last`` skips each worker's last, smaller batch.
    """

    def __init__(
        self,
        federated_dataset: FederatedDataset,
        batch_size: int = 8,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(federated_dataset, FederatedDataset):
            raise ConfigurationError(
                "FederatedDataLoader takes a FederatedDataset (dataset.federate(workers)), got "
                f"{type(federated_dataset).__name__}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        self.federated_dataset = federated_dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self._passes = 0

    def _count(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return sum(self._count(len(ds)) for ds in self.federated_dataset)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self._passes = self._passes, self._passes + 1
        for index, dataset in enumerate(self.federated_dataset):
            yield from self.batches(dataset, seed=self.seed * 1_000_003 + epoch * 1009 + index)

    def batches(
        self, dataset: BaseDataset, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one worker's ``dataset`` (shuffled with ``seed`` if ``shuffle``)."""
        n = len(dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        for batch in range(self._count(n)):
            start = batch * self.batch_size
            stop = min(start + self.batch_size, n)
            yield dataset[order[start:stop] if self.shuffle else slice(start, stop)]
