"""The seed tutorial, run end to end: ``bastion demo`` or ``python -m bastion demo``.

Every step checks itself; a step that does not behave raises ``DemoFailed`` naming it.

>>> from bastion.demo import seed_tutorial
>>> lines = []
>>> seed_tutorial(echo=lines.append)
>>> lines[-1]
'seed tutorial: all steps hold'
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bastion.client import VirtualWorker
from bastion.errors import BastionError, LocationError
from bastion.hook import TorchHook


class DemoFailed(BastionError):
    """A step of the demo did not behave as the tutorial says."""


def _check(condition: bool, step: str) -> None:
    if not condition:
        raise DemoFailed(f"demo step failed: {step}")


def seed_tutorial(echo: Callable[[str], object] = print, serialize: bool = False) -> None:
    """Walk PySyft's first tutorial on two in-process workers, printing as it goes."""
    hook = TorchHook(torch)
    workers: list[VirtualWorker] = []
    try:
        echo("# Simulation of remote workers")
        m1 = VirtualWorker(hook, id="M1", serialize=serialize)
        workers.append(m1)
        data = torch.tensor([0, 1])
        pointer = data.send(m1)
        echo(f"{type(data)} {type(pointer)}")
        echo(f"pointer: {pointer!r}  shape={tuple(pointer.shape)} dtype={pointer.dtype}")
        _check(pointer.id_at_location in m1._objects, "the object lives on M1")
        echo(f"Objects in M1 machine before .get():  {m1._objects}")
        back = pointer.get()
        echo(f"Objects in M1 machine after .get():  {m1._objects}")
        _check(torch.equal(back, data) and len(m1._objects) == 0, ".get() empties M1")

        echo("# Working with two machines")
        m2 = VirtualWorker(hook, id="M2", serialize=serialize)
        workers.append(m2)
        x = torch.tensor([0, 1, 2]).send(m1)
        y = torch.tensor([1, 1, 1]).send(m1)
        xx = torch.tensor([0, 2, 4]).send(m2)
        try:
            x + xx
        except LocationError as error:
            echo(f"x + xx -> LocationError: {error}")
        else:
            _check(False, "an op across two workers raises LocationError")
        echo(f"Statement: The location of both variable is the same:  {x.location == xx.location}")
        z = x + y
        echo(f"z = x + y -> {z!r}; objects on M1: {len(m1._objects)}")
        result = z.get()
        echo(f"z.get() -> {result}")
        _check(torch.equal(result, torch.tensor([1, 2, 3])), "x + y computed on M1")

        echo("# Move data between two remote machines directly")
        m1.clear_objects()
        m2.clear_objects()
        data = torch.tensor([1, 2, 3, 4]).send(m1)
        echo(f"M1: {m1._objects}")
        echo(f"M2: {m2._objects}")
        data = data.move(m2)
        echo(f"after data.move(M2): M1: {m1._objects}")
        echo(f"after data.move(M2): M2: {m2._objects}")
        _check(len(m1._objects) == 0 and len(m2._objects) == 1, "move leaves M1 empty")
        echo(f"data.get() -> {data.get()}")

        echo("# The audit log of each worker")
        for worker in (m1, m2):
            kinds = [event.kind for event in worker.audit.events()]
            echo(f"{worker.id}: {' '.join(kinds)}")
        echo("seed tutorial: all steps hold")
    finally:
        for worker in workers:
            worker.close()
        hook.unhook()
