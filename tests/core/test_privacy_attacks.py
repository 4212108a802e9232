"""A curious data scientist ("eve") tries to get a data owner's private data out of its
worker. Every attempt is refused with ``PermissionDenied`` and leaves a ``denied`` event;
the data stays. Each runs on in-memory workers (direct and serialized) and over TCP."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
import pytest
import torch

import bastion as sy
from bastion.client import BaseWorker
from bastion.events import payload_digest
from bastion.messages import CallFunction, Get, Ref
from bastion.pointer import PointerTensor
from bastion.worker import Worker

KEY = b"privacy-attack-key"
DATA = torch.tensor([[0.5, -1.25, 3.0], [4.0, 0.0, 2.5]])
_names = itertools.count()


@dataclass
class Scene:
    """The owner's worker (server side), eve's handle to it, a worker eve controls, and
    eve's pointer to the private data."""

    worker: Worker
    eve: BaseWorker
    evil: BaseWorker
    x: PointerTensor
    obj_id: int

    def denied(self) -> list[sy.Event]:
        return [e for e in self.worker.log.events(kind="denied") if e.peer == "eve"]


def pointer_to(handle: BaseWorker, obj_id: int) -> PointerTensor:
    """A pointer to an object the worker holds (what a search would return)."""
    return PointerTensor._make(handle, handle.list_objects()[obj_id])


def _memory(serialize: bool, allow_code: bool, closers: list) -> tuple[Worker, BaseWorker, Any]:
    owner = sy.VirtualWorker(id=f"owner-{next(_names)}", serialize=serialize,
                             allow_code=allow_code)  # fmt: skip
    evil = sy.VirtualWorker(id=f"evil-{next(_names)}", serialize=serialize)
    closers += [owner.close, evil.close]
    obj_id = owner.register(DATA.clone(), tags=["#secret"]).id_at_location
    eve = sy.connect(owner.address, peer="eve")
    return owner._worker, eve, evil, obj_id


def _tcp(allow_code: bool, closers: list) -> tuple[Worker, BaseWorker, Any]:
    served = sy.serve("tcp://127.0.0.1:0", id=f"owner-{next(_names)}", authkey=KEY,
                      allow_code=allow_code)  # fmt: skip
    evil_server = sy.serve("tcp://127.0.0.1:0", id=f"evil-{next(_names)}", authkey=KEY)
    obj_id = served.worker.register(DATA.clone(), tags=["#secret"])
    eve = sy.connect(served.address, authkey=KEY, peer="eve")
    evil = sy.connect(evil_server.address, authkey=KEY, peer="eve")
    closers += [eve.close, evil.close, served.close, evil_server.close]
    return served.worker, eve, evil, obj_id


@pytest.fixture(params=["memory", "memory-serialized", "tcp"])
def make_scene(request: pytest.FixtureRequest) -> Iterator[Callable[..., Scene]]:
    closers: list = []

    def make(allow_code: bool = False) -> Scene:
        if request.param == "tcp":
            worker, eve, evil, obj_id = _tcp(allow_code, closers)
        else:
            worker, eve, evil, obj_id = _memory(request.param.endswith("serialized"),
                                                allow_code, closers)  # fmt: skip
        return Scene(worker, eve, evil, pointer_to(eve, obj_id), obj_id)

    yield make
    for close in closers:
        close()


def refused(scene: Scene, attempt: Callable[[], Any], request: str = "get") -> sy.Event:
    """``attempt`` raises PermissionDenied and adds one denied event; the data stays."""
    before = len(scene.denied())
    with pytest.raises(sy.PermissionDenied, match="refused"):
        attempt()
    events = scene.denied()
    assert len(events) == before + 1, "a refusal leaves exactly one denied event"
    assert events[-1].detail["request"] == request
    assert torch.equal(scene.worker.store.objects[scene.obj_id], DATA), "the data stays"
    return events[-1]


def test_get(make_scene):
    scene = make_scene()
    event = refused(scene, scene.x.get)
    assert event.object_id == scene.obj_id and "private" in event.detail["why"]


def test_x_plus_zero_then_get(make_scene):
    scene = make_scene()
    y = scene.x + 0
    assert y.shape == DATA.shape, "computing on private data is allowed"
    event = refused(scene, y.get)
    assert event.object_id == y.id_at_location and "deny" in event.detail["why"]


def test_copy_then_get(make_scene):
    scene = make_scene()
    refused(scene, scene.x.copy().get)


def test_move_to_a_worker_eve_controls(make_scene):
    scene = make_scene()
    refused(scene, lambda: scene.x.move(scene.evil), request="move")
    refused(scene, lambda: (scene.x * 1).move(scene.evil), request="move")
    assert scene.evil.list_objects() == {}


def test_indexing_a_slice_or_an_element(make_scene):
    scene = make_scene()
    refused(scene, scene.x[0, 0:2].get)
    refused(scene, scene.x[1, 0].item().get)
    refused(scene, scene.x.tolist().get)


def _steal(data: torch.Tensor) -> list:
    return data.tolist()


def _ship(scene: Scene, func: Callable, *args: Any) -> Any:
    return scene.eve._request(CallFunction(cloudpickle.dumps(func), args, {}))


def test_shipped_function_without_allow_code(make_scene):
    scene = make_scene(allow_code=False)
    refused(scene, lambda: _ship(scene, _steal, Ref(scene.obj_id)), request="call")


def test_shipped_function_with_allow_code(make_scene):
    scene = make_scene(allow_code=True)
    spec = _ship(scene, _steal, Ref(scene.obj_id))
    refused(scene, lambda: scene.eve._request(Get(spec.id)))
    # Without naming the data at all: shipped code could reach it, so its results are derived.
    spec = _ship(scene, lambda: 42)
    refused(scene, lambda: scene.eve._request(Get(spec.id)))


def test_call_returning_the_value_directly(make_scene):
    """``worker.call`` brings a shipped function's value back in the same reply: it leaves
    only through the release policy, whatever shape it has."""
    scene = make_scene(allow_code=True)
    refused(scene, lambda: scene.eve.call(_steal, scene.x), request="call")
    refused(scene, lambda: scene.eve.call(lambda t: {"w": t * 1, "n": 3}, scene.x),
            request="call")  # fmt: skip
    refused(scene, lambda: scene.eve.call(lambda: 42), request="call")  # naming nothing
    mine = scene.eve.send(torch.zeros(2, 3))
    refused(scene, lambda: scene.eve.call(lambda t, m: m.copy_(t).sum(), scene.x, mine),
            request="call")  # fmt: skip
    refused(scene, mine.get)  # what the code wrote into stays derived
    assert not [e for e in scene.worker.log.events(kind="get") if e.origin == "call"]


def test_call_value_under_allow_and_dp(make_scene):
    scene = make_scene(allow_code=True)
    scene.worker.set_release_policy("allow")
    value = scene.eve.call(lambda t: {"w": t * 2}, scene.x)
    assert torch.equal(value["w"], DATA * 2)
    (release,) = scene.worker.log.events(kind="release")
    assert (release.peer, release.detail["request"]) == ("eve", "call")
    assert release.detail["mechanism"] == "allow" and release.detail["sources"] == [scene.obj_id]
    (got,) = [e for e in scene.worker.log.events(kind="get") if e.origin == "call"]
    assert got.digest == release.digest == payload_digest(DATA * 2), "what left is on record"
    scene.worker.set_release_policy(sy.DP(noise_multiplier=1.0, clip=1.0),
                                    budget=sy.Budget(epsilon=20.0, delta=1e-5))  # fmt: skip
    value = scene.eve.call(lambda t: {"w": t * 2, "n": t.numel()}, scene.x)
    assert value["w"].shape == DATA.shape and isinstance(value["n"], float)
    assert not torch.allclose(value["w"], DATA * 2, atol=0.1), "clipped to norm 1, noised"
    release = scene.worker.log.events(kind="release")[-1]
    assert release.detail["mechanism"] == "gaussian" and release.detail["request"] == "call"
    got = [e for e in scene.worker.log.events(kind="get") if e.origin == "call"]
    assert got[-1].digest == release.digest and got[-1].detail == {"released": "dp"}
    assert scene.eve.privacy_budget().releases == 1


def test_errors_on_private_data_withhold_their_message(make_scene):
    scene = make_scene(allow_code=True)

    def leak(data: torch.Tensor) -> None:
        raise ValueError(f"the data is {data.tolist()}")

    with pytest.raises(ValueError) as info:
        _ship(scene, leak, Ref(scene.obj_id))
    assert "withheld" in str(info.value) and "4.0" not in str(info.value)
    table = scene.eve.send(torch.zeros(2))
    with pytest.raises(IndexError) as info:
        table[(scene.x * 10).long()]
    assert "withheld" in str(info.value) and "40" not in str(info.value)


def test_writing_private_data_into_eve_s_own_tensors(make_scene):
    scene = make_scene()
    mine = scene.eve.send(torch.zeros(2, 3))
    mine.add_(scene.x)  # in place
    refused(scene, mine.get)
    out = scene.eve.send(torch.zeros(2, 3))
    torch.add(scene.x, 1, out=out)
    refused(scene, out.get)
    base = scene.eve.send(torch.zeros(2, 3))
    view = base[0]
    view.copy_(scene.x[0])  # through a view: the base shares its memory
    refused(scene, base.get)
    target = scene.eve.send(torch.zeros(2, 3))
    target[0] = scene.x[1]  # __setitem__
    refused(scene, target.get)
    running_mean, running_var = (scene.eve.send(torch.zeros(3)), scene.eve.send(torch.ones(3)))
    torch.nn.functional.batch_norm(scene.x, running_mean, running_var, training=True)
    refused(scene, running_mean.get)
    untouched = scene.eve.send(torch.ones(3))
    assert torch.equal(untouched.get(), torch.ones(3)), "eve's other data is hers"


def test_gradients_of_private_data(make_scene):
    scene = make_scene()
    w = scene.eve.send(torch.zeros(3, requires_grad=True))
    (scene.x * w).sum().backward()
    refused(scene, w.grad.get)
    refused(scene, lambda: scene.eve._request(Get(w.id_at_location, with_grad=True)))


def test_a_model_trained_on_private_data(make_scene, hook):
    scene = make_scene()
    model = torch.nn.Linear(3, 1)
    model.send(scene.eve)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    model(scene.x).pow(2).mean().backward()
    opt.step()
    refused(scene, model.get)


def test_repeated_dp_releases_past_the_budget(make_scene):
    scene = make_scene()
    scene.worker.set_release_policy(sy.DP(noise_multiplier=2.0, clip=1.0),
                                    budget=sy.Budget(epsilon=4.0, delta=1e-5))  # fmt: skip
    released = 0
    with pytest.raises(sy.PermissionDenied, match="privacy budget spent"):
        for _ in range(50):
            scene.x.mean().get()
            released += 1
    assert 1 <= released < 50
    report = scene.eve.privacy_budget()
    assert report.releases == released and report.spent <= 4.0 < report.spent + 1.5
    assert len(scene.worker.log.events(kind="release")) == released
    refused(scene, scene.x.mean().get)  # still refused: the budget does not come back
    refused(scene, scene.x.get)  # and the raw data never leaves under dp


def test_deleting_or_clearing_private_data(make_scene):
    scene = make_scene()
    scene.eve._request(sy.messages.Delete([scene.obj_id]))
    scene.eve.clear_objects()
    assert scene.obj_id in scene.worker.store.objects
    kinds = [e.detail["request"] for e in scene.denied()]
    assert kinds == ["delete", "clear"]
