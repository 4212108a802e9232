"""The in-memory transport: direct and serialized paths, isolation, failures."""

from __future__ import annotations

import pytest
import torch

import bastion as sy
from bastion import plugins
from bastion.messages import Create, Get, Reply, RunOp
from bastion.transports.memory import isolate


class Recorder:
    """A stand-in worker that answers with what it was given."""

    id = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[object, str]] = []

    def handle(self, message: object, peer: str) -> Reply:
        self.seen.append((message, peer))
        return Reply(value=getattr(message, "value", None))


@pytest.fixture
def recorder_at(serialize):
    recorder = Recorder()
    server = plugins.serve(recorder, "memory://recorder-test", serialize=serialize)
    yield recorder, plugins.connect("memory://recorder-test", peer="alice")
    server.close()


def test_requests_reach_the_worker_with_the_peer_id(recorder_at):
    recorder, connection = recorder_at
    reply = connection.request(Get(5))
    assert reply.ok and recorder.seen == [(Get(5), "alice")]
    assert connection.worker_id == "recorder"


def test_tensors_never_share_memory_across_the_boundary(recorder_at):
    recorder, connection = recorder_at
    tensor = torch.tensor([1.0, 2.0], requires_grad=True)
    reply = connection.request(Create(tensor))
    received = recorder.seen[0][0].value
    assert torch.equal(received.detach(), tensor.detach()) and received.requires_grad
    assert received.data_ptr() != tensor.data_ptr()
    assert reply.value.data_ptr() not in (tensor.data_ptr(), received.data_ptr())


def test_serialized_mode_takes_the_wire_path(recorder_at, serialize):
    recorder, connection = recorder_at
    connection.request(RunOp("torch.add", (torch.ones(2), 3), {"alpha": 2}, False))
    message = recorder.seen[0][0]
    assert message.args[1] == 3 and message.kwargs == {"alpha": 2}
    assert message is not None
    if serialize:
        with pytest.raises(sy.SerializationError, match="function"):
            connection.request(RunOp("torch.add", (print,), {}, True))


def test_a_closed_worker_gives_connection_lost():
    worker = sy.VirtualWorker(id="closing")
    pointer = worker.send(torch.ones(1))
    worker.close()
    assert repr(worker) == "<VirtualWorker id:closing closed>"
    with pytest.raises(sy.ConnectionLost, match="closed"):
        pointer + 1
    with pytest.raises(sy.TransportError, match="no in-memory worker"):
        plugins.connect("memory://closing")


def test_unknown_scheme_and_bad_address():
    with pytest.raises(sy.TransportError, match="no transport serves 'carrier-pigeon'"):
        plugins.connect("carrier-pigeon://coop")
    with pytest.raises(sy.TransportError, match="not a worker address"):
        plugins.connect("M1")


def test_isolate_copies_tensors_in_nested_structures():
    inner = torch.ones(2)
    value = (1, [inner, {"k": inner}], "s")
    copy = isolate(value)
    assert copy[0] == 1 and copy[2] == "s" and type(copy[1]) is list
    assert copy[1][0].data_ptr() != inner.data_ptr()
    assert copy[1][1]["k"].data_ptr() != inner.data_ptr()
    flat = (1, 2.0, None)
    assert isolate(flat) is flat, "nothing to copy: the same object"


def test_a_move_into_a_taken_id_is_refused_and_the_object_stays(make_worker):
    source, destination = make_worker("src"), make_worker("dst")
    pointer = torch.tensor([1]).send(source)
    destination._request(Create(torch.tensor([9]), obj_id=pointer.id_at_location))
    with pytest.raises(sy.ObjectExistsError, match="already in use"):
        pointer.move(destination)
    assert pointer.location is source and pointer.get().item() == 1
