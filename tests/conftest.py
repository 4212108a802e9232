"""Shared fixtures. Every test that uses ``make_worker`` runs twice: on workers that take
requests as Python objects ("direct") and on workers that encode and decode every message
with the wire format ("serialized")."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest
import torch

import bastion as sy

# Installed third-party plugins stay out of the suite unless a test loads them itself.
os.environ.setdefault("BASTION_LOAD_PLUGINS", "")

_counter = itertools.count()


@pytest.fixture(params=[False, True], ids=["direct", "serialized"])
def serialize(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
def hook() -> Iterator[sy.TorchHook]:
    hook = sy.TorchHook(torch)
    yield hook
    hook.unhook()


@pytest.fixture
def make_worker(serialize: bool, hook: sy.TorchHook) -> Iterator[Callable[..., sy.VirtualWorker]]:
    """``make_worker("M1")`` -> a fresh VirtualWorker (unique id under the hood), closed after."""
    made: list[sy.VirtualWorker] = []

    def make(name: str = "W", **options: object) -> sy.VirtualWorker:
        options.setdefault("serialize", serialize)
        worker = sy.VirtualWorker(hook, id=f"{name}-{next(_counter)}", **options)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


@pytest.fixture
def m1(make_worker: Callable[..., sy.VirtualWorker]) -> sy.VirtualWorker:
    return make_worker("M1")


@pytest.fixture
def m2(make_worker: Callable[..., sy.VirtualWorker]) -> sy.VirtualWorker:
    return make_worker("M2")
