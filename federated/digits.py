"""The digits example: scikit-learn's 8x8 handwritten digits, trained by FedAvg on workers.

The data ships inside scikit-learn (no download): 1,797 images, standardized, 20% held out
(``random_state=0``), the rest split across the workers (IID, or by label). The model is an
MLP 64-64-10 trained with SGD (lr 0.1, batch 32, one local epoch per round).

``reference_fedavg`` is the same FedAvg written in plain PyTorch in one process, without
bastion: the baseline of the benchmark and of the test that both reach the same accuracy.

>>> x_train, y_train, x_test, y_test = load_digits_data()
>>> tuple(x_train.shape), tuple(x_test.shape), x_train.dtype
((1437, 64), (360, 64), torch.float32)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bastion.errors import ConfigurationError
from bastion.federated.datasets import BaseDataset, iid_shards, label_shards
from bastion.federated.strategies import FedAvg, Strategy
from bastion.federated.trainer import FederatedTrainer, History
from bastion.worker import BaseWorker, VirtualWorker

__all__ = [
    "digits_model",
    "digits_workers",
    "load_digits_data",
    "reference_fedavg",
    "run_digits",
    "shards",
]

LR, BATCH_SIZE, ROUNDS, WORKERS = 0.1, 32, 20, 10


def load_digits_data(
    test_size: float = 0.2, random_state: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: standardized on the training part, float32."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:  # a dependency of bastion; say what to do if it went missing
        raise ConfigurationError(
            "the digits example needs scikit-learn: pip install scikit-learn"
        ) from exc
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=random_state
    )
    scaler = StandardScaler().fit(x_train)

    def tensor(a: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype).contiguous()

    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    return (tensor(x_train, torch.float32), tensor(y_train, torch.long),
            tensor(x_test, torch.float32), tensor(y_test, torch.long))  # fmt: skip


def digits_model(seed: int = 0) -> nn.Sequential:
    """The MLP 64-64-10, its weights drawn from ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def shards(targets: torch.Tensor, n_workers: int, split: str = "iid",
           seed: int = 0) -> list[torch.Tensor]:  # fmt: skip
    """The index shards of the training set: ``"iid"`` (shuffled) or ``"label"`` (non-IID)."""
    if split == "iid":
        return iid_shards(len(targets), n_workers, seed)
    if split == "label":
        return label_shards(targets, n_workers, seed=seed)
    raise ConfigurationError(f"split is 'iid' or 'label', not {split!r}")


@contextlib.contextmanager
def digits_workers(n: int, transport: str = "memory", *, allow_code: bool = True,
                   prefix: str = "digits") -> Iterator[list[BaseWorker]]:  # fmt: skip
    """``n`` workers for the example: in memory, or spawned over ``"tcp"`` or ``"shm"``."""
    from bastion.remote import spawn

    workers: list[Any] = []
    try:
        for i in range(n):
            name = f"{prefix}-{i}-{os.getpid()}"
            if transport == "memory":
                workers.append(VirtualWorker(id=name, allow_code=allow_code))
            elif transport in ("tcp", "shm"):
                workers.append(spawn(transport, id=name, allow_code=allow_code))
            else:
                raise ConfigurationError(
                    f"transport is 'memory', 'tcp' or 'shm', not {transport!r}"
                )
        yield workers
    finally:
        for worker in workers:
            worker.close()


def run_digits(
    workers: Sequence[BaseWorker],
    *,
    rounds: int = ROUNDS,
    style: str = "fast",
    split: str = "iid",
    strategy: Strategy | None = None,
    seed: int = 0,
    progress: bool | None = None,
    echo: Callable[[str], object] | None = None,
) -> History:
    """Federate the digits over ``workers`` and train; ``echo`` gets one line per round."""
    x_train, y_train, x_test, y_test = load_digits_data()
    fd = BaseDataset(x_train, y_train).federate(
        workers, shards=shards(y_train, len(workers), split, seed), tags=["#digits"],
        description="scikit-learn digits, 8x8 images, standardized",
    )  # fmt: skip
    trainer = FederatedTrainer(
        digits_model(seed), fd, strategy or FedAvg(), rounds=rounds, local_epochs=1,
        batch_size=BATCH_SIZE, lr=LR, style=style, eval_data=(x_test, y_test),
        progress=progress, seed=seed,
    )  # fmt: skip
    with trainer:
        for _ in range(rounds):
            metrics = trainer.round()
            if echo is not None:
                echo(f"round {metrics.round:3d}  loss {metrics.loss:.4f}  accuracy "
                     f"{metrics.accuracy:.4f}  {metrics.seconds * 1e3:7.1f} ms")  # fmt: skip
    return trainer.history


def reference_fedavg(
    rounds: int = ROUNDS, n_workers: int = WORKERS, split: str = "iid", seed: int = 0,
    data: tuple[torch.Tensor, ...] | None = None,
) -> list[float]:  # fmt: skip
    """FedAvg on the digits in plain PyTorch, one process: the accuracy after each round.

    The same data, shards, initial weights and batch orders as ``run_digits`` with the same
    ``seed``; nothing of bastion is used from here on.
    """
    x_train, y_train, x_test, y_test = data if data is not None else load_digits_data()
    parts = [(x_train[i], y_train[i]) for i in shards(y_train, n_workers, split, seed)]
    model, local = digits_model(seed), digits_model(seed)
    accuracies = []
    for number in range(1, rounds + 1):
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        states, sizes = [], []
        for index, (x, y) in enumerate(parts):
            local.load_state_dict(global_state)
            optimizer = torch.optim.SGD(local.parameters(), lr=LR)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + number * 1009 + index)
            for batch in torch.randperm(len(x), generator=generator).split(BATCH_SIZE):
                optimizer.zero_grad()
                F.cross_entropy(local(x[batch]), y[batch]).backward()
                optimizer.step()
            states.append({k: v.detach().clone() for k, v in local.state_dict().items()})
            sizes.append(len(x))
        total = sum(sizes)
        model.load_state_dict(
            {k: sum(s[k] * (n / total) for s, n in zip(states, sizes)) for k in global_state}
        )
        with torch.no_grad():
            accuracies.append((model(x_test).argmax(1) == y_test).float().mean().item())
    return accuracies
