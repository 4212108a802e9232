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


# PostgreSQL: .ci/run starts a server and sets BASTION_TEST_POSTGRES_URL and
# BASTION_REQUIRE_POSTGRES=1 (there a server that cannot be reached fails the tests);
# elsewhere the tests that need one are skipped, saying why, when none answers.
POSTGRES_URL = os.environ.get(
    "BASTION_TEST_POSTGRES_URL", "postgresql+psycopg://bastion:bastion@127.0.0.1:5432/bastion_test"
)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The URL of a reachable PostgreSQL test database."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # no driver, no server, wrong credentials
        if os.environ.get("BASTION_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required here but {POSTGRES_URL} cannot be reached: {exc}")
        pytest.skip(
            f"no PostgreSQL server at {POSTGRES_URL} ({type(exc).__name__}); .ci/run starts one"
        )
    return POSTGRES_URL
