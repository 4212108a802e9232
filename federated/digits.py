"""The digits example: scikit-learn's 8x8 handwritten digits, trained by FedAvg on workers.

The data ships inside scikit-learn (no download): 1,797 images, standardized, 20% held out
(``random_state=0``), the rest split across the workers (IID, or by label). The model is an
MLP 64-64-10 trained with SGD (lr 0.1, batch 32, one local epoch per round).

``reference_fedavg`` is the same FedAvg written in plain PyTorch in one process, without
bastion: the baseline of the benchmark and of the test that both reach the same accuracy.

``private_digits`` plays the data owners instead: each worker's shard is registered
*private* under a release policy, and the data scientist, connected under a peer id of her
own, finds it by its tags; ``run_digits(..., data=...)`` trains on that (with ``DPFedAvg``
for differential privacy: ``bastion demo federated --dp``).

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

from bastion.client import BaseWorker, VirtualWorker
from bastion.errors import ConfigurationError
from bastion.federated.datasets import (
    DATA_TAG,
    TARGET_TAG,
    BaseDataset,
    FederatedDataset,
    iid_shards,
    label_shards,
)
from bastion.federated.privacy import DPSGD, PrivacyBudgetSpent
from bastion.federated.strategies import FedAvg, Strategy
from bastion.federated.trainer import FederatedTrainer, History, RoundMetrics
from bastion.privacy import Budget, ReleasePolicy
from bastion.worker import Worker

__all__ = [
    "digits_model",
    "digits_workers",
    "load_digits_data",
    "private_digits",
    "reference_fedavg",
    "round_line",
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


@contextlib.contextmanager
def private_digits(
    n: int,
    transport: str = "memory",
    *,
    policy: ReleasePolicy | str = "allow",
    budget: Budget | None = None,
    split: str = "iid",
    seed: int = 0,
    peer: str = "scientist",
) -> Iterator[tuple[list[Worker], FederatedDataset]]:
    """``n`` data owners' workers, each holding its shard of the training digits registered
    private (tags ``#digits`` and ``#data`` / ``#target``) under the release ``policy`` and
    ``budget``; yields ``(the owners' workers, the FederatedDataset that a data scientist
    connected as peer ``peer`` finds by searching #digits)``.

    ``transport``: workers in this process (``"memory"``), or served here over ``"tcp"``
    (the owner registers in the serving process; the scientist connects over the socket).
    """
    from bastion.remote import connect, serve

    x_train, y_train, _, _ = load_digits_data()
    owners: list[Worker] = []
    closers: list[Callable[[], object]] = []
    key = os.urandom(16).hex()
    try:
        peers = []
        for i, index in enumerate(shards(y_train, n, split, seed)):
            name = f"owner-{i}-{os.getpid()}"
            if transport == "memory":
                handle = VirtualWorker(id=name, allow_code=True)
                closers.append(handle.close)
                worker, address, options = handle._worker, handle.address, {}
            elif transport == "tcp":
                served = serve("tcp://127.0.0.1:0", id=name, authkey=key, allow_code=True)
                closers.append(served.close)
                worker, address, options = served.worker, served.address, {"authkey": key}
            else:
                raise ConfigurationError(f"transport is 'memory' or 'tcp', not {transport!r}")
            about = "scikit-learn digits, 8x8 images, standardized"
            worker.register(x_train[index], tags=["#digits", DATA_TAG], description=about)
            worker.register(y_train[index], tags=["#digits", TARGET_TAG], description=about)
            worker.set_release_policy(policy, budget=budget)
            owners.append(worker)
            peers.append(connect(address, peer=peer, **options))
            closers.insert(0, peers[-1].close)
        yield owners, FederatedDataset.search(peers, "#digits")
    finally:
        for close in closers:
            close()


def round_line(metrics: RoundMetrics) -> str:
    """One line for one round: loss (when it left the workers), accuracy, epsilon, time."""
    line = f"round {metrics.round:3d}"
    if metrics.loss == metrics.loss:  # not NaN: under DP no loss leaves the workers
        line += f"  loss {metrics.loss:.4f}"
    line += f"  accuracy {metrics.accuracy:.4f}"
    if metrics.epsilon is not None:
        line += f"  epsilon {metrics.epsilon:7.3f} (delta {metrics.delta:g})"
    if metrics.record_epsilon is not None:
        line += f"  DP-SGD epsilon {metrics.record_epsilon:7.3f}"
    return line + f"  {metrics.seconds * 1e3:7.1f} ms"


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
    data: FederatedDataset | None = None,
    dp_sgd: DPSGD | None = None,
) -> History:
    """Federate the digits over ``workers`` and train; ``echo`` gets one line per round.

    With ``data`` (the owners' private shards, from ``private_digits``) ``workers`` is not
    used. The training stops early when a privacy budget is spent (see the trainer).
    """
    x_train, y_train, x_test, y_test = load_digits_data()
    if data is None:
        data = BaseDataset(x_train, y_train).federate(
            workers, shards=shards(y_train, len(workers), split, seed), tags=["#digits"],
            description="scikit-learn digits, 8x8 images, standardized",
        )  # fmt: skip
    trainer = FederatedTrainer(
        digits_model(seed), data, strategy or FedAvg(), rounds=rounds, local_epochs=1,
        batch_size=BATCH_SIZE, lr=LR, style=style, eval_data=(x_test, y_test),
        progress=progress, seed=seed, dp_sgd=dp_sgd,
    )  # fmt: skip
    with trainer:
        for _ in range(rounds):
            try:
                metrics = trainer.round()
            except PrivacyBudgetSpent as exc:
                if echo is not None:
                    echo(f"stopped: {exc}")
                break
            if echo is not None:
                echo(round_line(metrics))
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
