"""Data on workers: ``BaseDataset``, its shards on several workers (``FederatedDataset``),
and the ways to split a dataset into shards.

>>> import torch, bastion as sy
>>> alice, bob = sy.VirtualWorker(id="doc-ds-alice"), sy.VirtualWorker(id="doc-ds-bob")
>>> dataset = sy.BaseDataset(torch.randn(10, 3), torch.arange(10))
>>> fd = dataset.federate((alice, bob), tags=["#toy"])
>>> fd.workers, fd.sizes
(['doc-ds-alice', 'doc-ds-bob'], {'doc-ds-alice': 5, 'doc-ds-bob': 5})
>>> [p.tags for p in bob.search("#toy")]
[('#toy', '#data'), ('#toy', '#target')]
>>> sy.FederatedDataset.search((alice, bob), "#toy").sizes == fd.sizes
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from bastion.client import BaseWorker
from bastion.errors import ConfigurationError, LocationError
from bastion.pointer import PointerTensor

__all__ = ["BaseDataset", "FederatedDataset", "even_shards", "iid_shards", "label_shards"]

#: the tags ``federate`` adds to a shard's data and targets, beside the caller's own
DATA_TAG, TARGET_TAG = "#data", "#target"


class BaseDataset:
    """Samples and their targets, here or on one worker (then both are pointers).

    ``dataset[i]`` is ``(data[i], targets[i])`` after ``transform`` (applied to the data).

    >>> import torch, bastion as sy
    >>> ds = sy.BaseDataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    >>> len(ds), ds[1][1].item(), ds.location is None
    (4, 1, True)
    """

    def __init__(
        self,
        data: torch.Tensor,
        targets: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        for name, value in (("data", data), ("targets", targets)):
            if not isinstance(value, torch.Tensor):
                raise ConfigurationError(
                    f"BaseDataset {name} must be a tensor (or a pointer to one), got "
                    f"{type(value).__name__}; convert it with torch.as_tensor(...)"
                )
        if data.dim() == 0 or targets.dim() == 0 or len(data) != len(targets):
            raise ConfigurationError(
                f"BaseDataset needs as many targets as samples along the first dimension; got "
                f"data of shape {tuple(data.shape)} and targets of shape {tuple(targets.shape)}"
            )
        where = {_location(data), _location(targets)}
        if len(where) > 1:
            names = sorted("here" if w is None else w.id for w in where)
            raise LocationError(
                f"the data and targets of a dataset must live on one worker, not on {names}; "
                "move them to one worker first"
            )
        self.data = data
        self.targets = targets
        self.transform = transform

    @property
    def location(self) -> BaseWorker | None:
        """The worker holding the data, or None when it is here."""
        return _location(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.data[index]
        if self.transform is not None:
            data = self.transform(data)
        return data, self.targets[index]

    def send(self, worker: BaseWorker, *, tags: Sequence[str] = (),
             description: str | None = None, keep: bool = False) -> BaseDataset:  # fmt: skip
        """This dataset on ``worker``: data tagged ``#data``, targets ``#target``, both
        with ``tags`` and ``description`` (so ``FederatedDataset.search`` finds them).

        As with any pointer, collecting the returned dataset's pointers deletes the data
        there, unless ``keep``: a data owner's upload, found later with ``search``.
        """
        if self.location is not None:
            raise LocationError(
                f"this dataset is already on {self.location.id}; move its pointers instead"
            )
        data = worker.send(self.data, tags=[*tags, DATA_TAG], description=description)
        targets = worker.send(self.targets, tags=[*tags, TARGET_TAG], description=description)
        if keep:
            data.garbage_collect_data = targets.garbage_collect_data = False
        return BaseDataset(data, targets, self.transform)

    def get(self) -> BaseDataset:
        """Bring data and targets here (the worker no longer holds them)."""
        if self.location is None:
            return self
        return BaseDataset(self.data.get(), self.targets.get(), self.transform)

    def federate(
        self,
        workers: Sequence[BaseWorker],
        *,
        shards: Sequence[torch.Tensor] | None = None,
        tags: Sequence[str] = (),
        description: str | None = None,
        keep: bool = False,
    ) -> FederatedDataset:
        """Split the dataset and send one shard to each worker; returns the ``FederatedDataset``.

        ``shards`` are index tensors, one per worker (``iid_shards``, ``label_shards``);
        by default the samples are cut in order into parts that differ by one at most.
        ``tags``, ``description`` and ``keep`` are those of ``send``.
        """
        workers = list(workers)
        if not workers:
            raise ConfigurationError("federate() needs at least one worker")
        if self.location is not None:
            raise LocationError(f"this dataset already lives on {self.location.id}")
        if shards is None:
            shards = even_shards(len(self), len(workers))
        shards = list(shards)
        if len(shards) != len(workers):
            raise ConfigurationError(
                f"{len(shards)} shards for {len(workers)} workers: give one shard per worker"
            )
        parts = []
        for worker, index in zip(workers, shards):
            index = torch.as_tensor(index, dtype=torch.long)
            part = BaseDataset(self.data[index], self.targets[index], self.transform)
            parts.append(part.send(worker, tags=tags, description=description, keep=keep))
        return FederatedDataset(parts)

    def __repr__(self) -> str:
        where = "here" if self.location is None else self.location.id
        return f"<BaseDataset {len(self)} samples on {where}>"


def _location(tensor: torch.Tensor) -> BaseWorker | None:
    return tensor.location if isinstance(tensor, PointerTensor) else None


class FederatedDataset:
    """Datasets on several workers, one per worker: which worker holds how many samples.

    ``fd[worker_id]`` is that worker's ``BaseDataset`` of pointers.
    """

    def __init__(self, datasets: Sequence[BaseDataset]) -> None:
        self.datasets: dict[str, BaseDataset] = {}
        self.locations: dict[str, BaseWorker] = {}
        for dataset in datasets:
            location = dataset.location
            if location is None:
                raise LocationError(
                    "a FederatedDataset is made of datasets on workers; send this one first "
                    "(dataset.send(worker)) or use dataset.federate(workers)"
                )
            if location.id in self.datasets:
                raise ConfigurationError(
                    f"two datasets on worker {location.id}; give each worker one dataset"
                )
            self.datasets[location.id] = dataset
            self.locations[location.id] = location

    @classmethod
    def search(cls, workers: Sequence[BaseWorker], *tags: str) -> FederatedDataset:
        """The dataset each worker holds under ``tags`` (its ``#data`` and ``#target``).

        A worker without such data is left out; one with several matches is an error.
        """
        datasets = []
        for worker in workers:
            found = [worker.search(*tags, kind) for kind in (DATA_TAG, TARGET_TAG)]
            if not found[0] and not found[1]:
                continue
            if len(found[0]) != 1 or len(found[1]) != 1:
                raise ConfigurationError(
                    f"worker {worker.id} holds {len(found[0])} data and {len(found[1])} target "
                    f"tensors tagged {list(tags)}; expected one of each: search with a tag "
                    "that tells them apart"
                )
            datasets.append(BaseDataset(found[0][0], found[1][0]))
        if not datasets:
            names = [w.id for w in workers]
            raise ConfigurationError(f"no worker among {names} holds data tagged {list(tags)}")
        return cls(datasets)

    @property
    def workers(self) -> list[str]:
        """The ids of the workers holding the data, in order."""
        return list(self.datasets)

    @property
    def sizes(self) -> dict[str, int]:
        """How many samples each worker holds."""
        return {worker: len(dataset) for worker, dataset in self.datasets.items()}

    def __getitem__(self, worker_id: str) -> BaseDataset:
        try:
            return self.datasets[worker_id]
        except KeyError:
            raise ConfigurationError(
                f"no data on worker {worker_id!r}; this dataset is on {self.workers}"
            ) from None

    def __len__(self) -> int:
        return sum(self.sizes.values())

    def __iter__(self) -> Iterator[BaseDataset]:
        return iter(self.datasets.values())

    def __repr__(self) -> str:
        return (
            f"FederatedDataset\n    Distributed across: {', '.join(self.workers)}\n"
            f"    Number of datapoints: {len(self)}"
        )


# ----------------------------------------------------------------------------- shards


def even_shards(n: int, k: int) -> list[torch.Tensor]:
    """``range(n)`` cut in order into ``k`` parts whose sizes differ by one at most.

    >>> [s.tolist() for s in even_shards(5, 2)]
    [[0, 1, 2], [3, 4]]
    """
    _check_split(n, k)
    return list(torch.arange(n).tensor_split(k))


def iid_shards(n: int, k: int, seed: int = 0) -> list[torch.Tensor]:
    """``range(n)`` shuffled (``seed``) then cut into ``k`` parts: an IID split.

    >>> sorted(torch.cat(iid_shards(6, 3)).tolist())
    [0, 1, 2, 3, 4, 5]
    """
    _check_split(n, k)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(order.tensor_split(k))


def label_shards(
    targets: torch.Tensor, k: int, shards_per_worker: int = 2, seed: int = 0
) -> list[torch.Tensor]:
    """A non-IID split: samples sorted by label, cut into ``k * shards_per_worker`` pieces,
    and each worker dealt ``shards_per_worker`` random pieces (so it sees few labels).

    >>> parts = label_shards(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), 2, shards_per_worker=2)
    >>> sorted(len(set(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])[p].tolist())) for p in parts)
    [2, 2]
    """
    targets = torch.as_tensor(targets)
    _check_split(len(targets), k * shards_per_worker)
    order = torch.sort(targets, stable=True).indices
    pieces = order.tensor_split(k * shards_per_worker)
    deal = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(seed))
    return [
        torch.cat([pieces[j] for j in deal[i * shards_per_worker : (i + 1) * shards_per_worker]])
        for i in range(k)
    ]


def _check_split(n: int, k: int) -> None:
    if k < 1 or n < k:
        raise ConfigurationError(
            f"cannot split {n} samples into {k} non-empty shards; use fewer workers or shards"
        )
