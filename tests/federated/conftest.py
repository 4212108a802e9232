"""Workers for the federated tests: in memory (direct and serialized), and spawned over tcp
and shm once per session (they are cleared after each test)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest
import torch

import bastion as sy

TRANSPORTS = ["memory", "memory-serialized", "tcp", "shm"]
_counter = itertools.count()


@pytest.fixture(scope="session")
def spawned() -> Iterator[Callable[[str, str], sy.SpawnedWorker]]:
    """``spawned("tcp", "a")``: a worker with ``allow_code`` in a child process, made once."""
    made: dict[tuple[str, str], sy.SpawnedWorker] = {}

    def get(scheme: str, name: str) -> sy.SpawnedWorker:
        if (scheme, name) not in made:
            made[scheme, name] = sy.spawn(scheme, id=f"fl-{name}-{scheme}-{os.getpid()}",
                                          allow_code=True)  # fmt: skip
        return made[scheme, name]

    yield get
    for worker in made.values():
        worker.close()


@pytest.fixture(params=TRANSPORTS)
def two_workers(request, spawned, hook) -> Iterator[list]:
    """Two workers that run shipped code, over each transport in turn."""
    transport = request.param
    if transport.startswith("memory"):
        workers = [sy.VirtualWorker(hook, id=f"fl-{name}-{next(_counter)}", allow_code=True,
                                    serialize=transport.endswith("serialized"))
                   for name in ("a", "b")]  # fmt: skip
    else:
        workers = [spawned(transport, name) for name in ("a", "b")]
    yield workers
    for worker in workers:
        if transport.startswith("memory"):
            worker.close()
        else:
            worker.clear_objects()


def _toy_data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return x, (x[:, 0] + x[:, 1] > 0).long()


@pytest.fixture
def toy_data() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``toy_data(n=32, seed=0)``: a separable two-class problem with four features."""
    return _toy_data
