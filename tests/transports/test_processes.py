"""Workers in other processes: the seed tutorial over every transport, a worker killed in
the middle of a transfer, and a client killed while it holds shared memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import bastion as sy
from bastion.client import BaseWorker
from bastion.stores import EventLog
from bastion.transports.shm import ShmTransport
from bastion.worker import Worker


@pytest.fixture(params=["memory", "tcp", "shm"])
def two_workers(request, tmp_path, hook):
    if request.param == "memory":
        workers = [sy.VirtualWorker(hook, id=f"{name}-seed", db=str(tmp_path / f"{name}.db"))
                   for name in ("M1", "M2")]  # fmt: skip
    else:
        workers = [sy.spawn(request.param, id=f"{name}-seed-{os.getpid()}",
                            db=str(tmp_path / f"{name}.db"), authkey="seed-key")
                   for name in ("M1", "M2")]  # fmt: skip
    yield workers
    for worker in workers:
        worker.close()


def test_the_seed_tutorial_over_every_transport(two_workers, tmp_path):
    m1, m2 = two_workers
    data = torch.tensor([0, 1])
    pointer = data.send(m1)
    assert isinstance(pointer, torch.Tensor) and pointer.location is m1
    assert isinstance(pointer.id_at_location, int) and pointer.id_at_location in m1._objects
    assert pointer.owner is sy.local_worker
    back = pointer.get()
    assert torch.equal(back, data) and type(back) is torch.Tensor and len(m1._objects) == 0

    x, y = torch.tensor([0, 1, 2]).send(m1), torch.tensor([1, 1, 1]).send(m1)
    xx = torch.tensor([0, 2, 4]).send(m2)
    with pytest.raises(sy.LocationError) as info:
        x + xx
    assert m1.id in str(info.value) and m2.id in str(info.value)
    z = x + y
    assert z.location is m1 and len(m1._objects) == 3
    assert torch.equal(z.get(), torch.tensor([1, 2, 3]))

    m1.clear_objects()
    m2.clear_objects()
    assert len(m1._objects) == 0 and len(m2._objects) == 0
    moved = torch.tensor([1, 2, 3, 4]).send(m1).move(m2)
    assert len(m1._objects) == 0 and len(m2._objects) == 1 and moved.location is m2
    assert torch.equal(moved.get(), torch.tensor([1, 2, 3, 4]))

    for worker in (m1, m2):
        worker.close()  # flushes the logs (and stops the children)
    kinds = {}
    for worker, name in ((m1, "M1"), (m2, "M2")):
        with EventLog(str(tmp_path / f"{name}.db"), worker.id) as log:
            kinds[name] = [event.kind for event in log.events()]
    assert {"create", "get", "clear", "move"} <= set(kinds["M1"])
    assert {"create", "get", "clear"} <= set(kinds["M2"])


@pytest.mark.parametrize("scheme", ["tcp", "shm"])
def test_a_worker_killed_mid_transfer_leaves_a_clear_error_and_others_untouched(scheme):
    doomed = sy.spawn(scheme, id=f"doomed-{scheme}-{os.getpid()}")
    other = sy.spawn(scheme, id=f"other-{scheme}-{os.getpid()}")
    try:
        kept = other.send(torch.arange(5))
        big = torch.randn(64 * 2**20)  # 256 MiB: the kill lands while it is on the wire
        errors: list[BaseException] = []

        def transfer() -> None:
            try:
                for _ in range(200):  # until the kill lands (a send takes 0.05-0.3 s)
                    doomed.send(big)
            except BaseException as exc:  # inspected below
                errors.append(exc)

        thread = threading.Thread(target=transfer)
        thread.start()
        time.sleep(0.2)
        doomed.kill()
        thread.join(60)
        assert not thread.is_alive(), "the client hung"
        assert len(errors) == 1 and isinstance(errors[0], sy.ConnectionLost), errors
        with pytest.raises(sy.ConnectionLost):
            doomed.send(torch.ones(1))
        assert torch.equal(kept.get(), torch.arange(5)), "the other worker is untouched"
    finally:
        doomed.close()
        other.close()


CLIENT = """
import sys, time, torch
from bastion.transports.shm import ShmTransport
from bastion.client import BaseWorker
connection = ShmTransport().connect(sys.argv[1], authkey=b"k", peer="doomed-client")
handle = BaseWorker("w", sys.argv[1], connection)
pointer = handle.send(torch.randn(1024, 1024))
print("sent", flush=True)
time.sleep(60)
"""


def test_a_client_killed_with_sigkill_leaks_no_segment_and_the_worker_serves_on():
    before = set(os.listdir("/dev/shm"))
    worker = Worker("shm-survivor")
    address = f"shm://shm-survivor-{os.getpid()}"
    transport = ShmTransport()
    server = transport.serve(worker, address, authkey=b"k")
    try:
        child = subprocess.Popen([sys.executable, "-c", CLIENT, address], stdout=subprocess.PIPE,
                                 text=True)  # fmt: skip
        assert child.stdout.readline().strip() == "sent"
        child.kill()
        child.wait()
        child.stdout.close()
        handle = BaseWorker(worker.id, address, transport.connect(address, authkey=b"k"))
        assert handle.send(torch.tensor([9])).get().item() == 9
        assert [e.peer for e in worker.log.events(kind="create")][0] == "doomed-client"
    finally:
        server.close()
        worker.close()
    assert set(os.listdir("/dev/shm")) - before == set()
