"""``worker.call``: a shipped function's value in one round trip, only where code is allowed."""

from __future__ import annotations

from collections import OrderedDict

import cloudpickle
import pytest
import torch

import bastion as sy


class Counter:
    """A stateful function: the worker keeps it (and its count) between calls of its bytes."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        self.calls += 1
        return t * 2, self.calls


def test_call_returns_the_value_and_leaves_nothing_behind(make_worker):
    worker = make_worker("code", allow_code=True)
    x = worker.send(torch.tensor([1.0, 2.0]))
    state = OrderedDict(w=torch.ones(2), b=torch.zeros(1))  # a state_dict travels as a dict
    value = worker.call(lambda t, s, k=1: {"sum": (t * s["w"]).sum() * k, "n": len(s)}, x, state,
                        k=3)  # fmt: skip
    assert torch.equal(value["sum"], torch.tensor(9.0)) and value["n"] == 2
    assert len(worker._objects) == 1
    event = worker.audit.events()[-1]
    assert (event.kind, event.origin, event.object_id, event.inputs) == (
        "get",
        "call",
        None,
        (x.id_at_location,),
    )


def test_the_worker_keeps_a_function_shipped_again_as_the_same_bytes(make_worker):
    worker = make_worker("code", allow_code=True)
    code = cloudpickle.dumps(Counter())
    counts = [worker.call(code, torch.ones(1))[1] for _ in range(3)]
    assert counts == [1, 2, 3]
    assert worker.call(Counter(), torch.ones(1))[1] == 4  # the same bytes again
    other = Counter()
    other.calls = 10  # other bytes: another function
    assert worker.call(other, torch.ones(1))[1] == 11


def test_call_without_allow_code_is_denied_and_recorded(make_worker):
    worker = make_worker("nocode")
    x = worker.send(torch.ones(1))
    with pytest.raises(sy.PermissionDenied, match="allow_code"):
        worker.call(lambda t: t + 1, x)
    denied = worker.audit.events(kind="denied")
    assert len(denied) == 1 and denied[0].detail["request"] == "call"
    assert torch.equal(x.get(), torch.ones(1))  # still serving


def test_call_refuses_pointers_to_another_worker(make_worker):
    a, b = make_worker("a", allow_code=True), make_worker("b", allow_code=True)
    elsewhere = b.send(torch.ones(1))
    with pytest.raises(sy.LocationError, match="move it"):
        a.call(lambda t: t, elsewhere)


def test_a_failing_function_raises_here_and_the_worker_serves_on(make_worker):
    worker = make_worker("code", allow_code=True)
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    assert worker.call(lambda: 41) + 1 == 42


def test_a_value_the_wire_cannot_carry_is_a_serialization_error(hook):
    worker = sy.VirtualWorker(hook, id="code-wire", allow_code=True, serialize=True)
    try:
        with pytest.raises(sy.SerializationError):
            worker.call(lambda: object())
        assert worker.call(lambda: [1, 2]) == [1, 2]
    finally:
        worker.close()
