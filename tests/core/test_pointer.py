"""Pointers: send, get, move, copy, and remote execution through __torch_function__."""

from __future__ import annotations

import pytest
import torch

import bastion as sy


def test_send_returns_a_pointer_that_knows_shape_and_dtype(m1):
    data = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    p = data.send(m1)
    assert isinstance(p, sy.PointerTensor) and isinstance(p, torch.Tensor)
    assert p.shape == (2, 3) and p.dtype == torch.float64 and p.size(1) == 3 and p.dim() == 2
    assert len(p) == 2 and p.numel() == 6
    assert p.location is m1 and p.owner is sy.local_worker and p.owner.id == "me"
    assert isinstance(p.id_at_location, int)
    assert torch.equal(m1._objects[p.id_at_location], data)
    assert m1._objects[p.id_at_location] is not data, "the worker holds its own copy"


def test_the_pointer_costs_no_memory(m1):
    p = torch.zeros(1000, 1000).send(m1)
    with torch._C.DisableTorchFunctionSubclass():
        assert p.stride() == (0, 0)
        assert p.untyped_storage().nbytes() == 4


def test_repr_of_pointer_and_worker(m1):
    p = torch.tensor([1]).send(m1)
    assert repr(p) == f"(PointerTensor me:{p.id} -> {m1.id}:{p.id_at_location})"
    assert str(p) == repr(p) and f"{p}" == repr(p)
    assert repr(m1) == f"<VirtualWorker id:{m1.id} #objects:1>"


def test_get_brings_the_plain_tensor_back_and_empties_the_worker(m1):
    data = torch.tensor([0, 1])
    p = data.send(m1)
    back = p.get()
    assert type(back) is torch.Tensor and torch.equal(back, data)
    assert len(m1._objects) == 0


def test_get_twice_is_a_clear_error(m1):
    p = torch.tensor([1]).send(m1)
    p.get()
    with pytest.raises(sy.ObjectNotFoundError, match="fetched with .get"):
        p.get()
    with pytest.raises(sy.ObjectNotFoundError):
        p + 1


def test_pointer_after_clear_objects_is_a_clear_error(m1):
    p = torch.tensor([1]).send(m1)
    assert m1.clear_objects() is m1
    with pytest.raises(sy.ObjectNotFoundError, match=m1.id):
        p.get()
    with pytest.raises(sy.ObjectNotFoundError):
        p * 2
    q = torch.tensor([5]).send(m1)  # the worker is still fine
    assert q.get().item() == 5


def test_sending_a_non_tensor_is_refused(m1):
    for bad in ([1, 2], 3, "text", object()):
        with pytest.raises(sy.SerializationError, match="cannot send"):
            m1.send(bad)
    assert len(m1._objects) == 0


def test_sending_a_pointer_again_is_refused(m1, m2):
    p = torch.tensor([1]).send(m1)
    with pytest.raises(sy.SerializationError, match="already a pointer"):
        p.send(m2)


def test_arithmetic_runs_remotely_and_returns_pointers(m1):
    x = torch.tensor([1.0, 2.0, 3.0]).send(m1)
    y = torch.tensor([4.0, 5.0, 6.0]).send(m1)
    z = x * y + 1
    assert isinstance(z, sy.PointerTensor) and z.location is m1
    assert len(m1._objects) == 3, "x, y and z: the intermediate x * y was collected"
    assert torch.equal(z.get(), torch.tensor([5.0, 11.0, 19.0]))


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a @ b.T,
        lambda a, b: torch.cat([a, b]),
        lambda a, b: torch.stack((a, b), dim=1).sum(dim=0),
        lambda a, b: torch.nn.functional.relu(a - b),
        lambda a, b: (a > b).float(),
        lambda a, b: a.pow(2).mean(dim=1, keepdim=True),
        lambda a, b: torch.where(a > 0, a, b),
        lambda a, b: a.view(-1)[1:4],
        lambda a, b: a.T.contiguous().reshape(3, 2),
        lambda a, b: a[:, 0],
        lambda a, b: a[a > 0],
        lambda a, b: a.clamp(min=0.0) * 2.5 - b / 3,
        lambda a, b: torch.softmax(a, dim=-1),
        lambda a, b: a.to(torch.float64).abs().sqrt(),
    ],
)
def test_remote_results_equal_local_results(m1, fn):
    a = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    b = torch.tensor([[0.0, 1.0, 2.0], [3.0, -4.0, 5.0]])
    expected = fn(a, b)
    result = fn(a.send(m1), b.send(m1))
    assert isinstance(result, sy.PointerTensor)
    assert result.shape == expected.shape and result.dtype == expected.dtype
    assert torch.equal(result.get(), expected)


def test_scalars_and_plain_tensors_are_sent_along(m1):
    x = torch.tensor([1.0, 2.0]).send(m1)
    assert torch.equal((x + torch.tensor([10.0, 20.0])).get(), torch.tensor([11.0, 22.0]))
    assert torch.equal((3 * x).get(), torch.tensor([3.0, 6.0]))
    assert torch.equal(torch.add(x, 1, alpha=2).get(), torch.tensor([3.0, 4.0]))


def test_in_place_ops_keep_the_pointer_and_follow_shape(m1):
    x = torch.tensor([1.0, 2.0]).send(m1)
    same = x.add_(1)
    assert same is x
    x *= 2
    x.unsqueeze_(0)
    assert x.shape == (1, 2)
    x[0, 1] = 7.0
    assert torch.equal(x.get(), torch.tensor([[4.0, 7.0]]))


def test_setitem_with_a_pointer_value(m1):
    x = torch.zeros(3).send(m1)
    x[1:] = torch.tensor([5.0, 6.0]).send(m1)
    assert torch.equal(x.get(), torch.tensor([0.0, 5.0, 6.0]))


def test_ops_across_workers_raise_location_error_naming_both(m1, m2):
    x = torch.tensor([1]).send(m1)
    xx = torch.tensor([2]).send(m2)
    with pytest.raises(sy.LocationError) as info:
        x + xx
    assert m1.id in str(info.value) and m2.id in str(info.value)
    with pytest.raises(sy.LocationError):
        torch.cat([x, xx])
    assert len(m1._objects) == 1 and len(m2._objects) == 1, "nothing ran"


def test_non_tensor_results_come_back_only_through_get(m1):
    x = torch.tensor([1.5, 2.5]).send(m1)
    item = x.sum().item()
    assert isinstance(item, sy.ObjectPointer) and item.type_name == "float"
    assert item.get() == 4.0
    values = x.tolist()
    assert isinstance(values, sy.ObjectPointer) and values.get() == [1.5, 2.5]
    equal = torch.equal(x, x)
    assert equal.get() is True


def test_python_values_of_pointers_need_get(m1):
    x = torch.tensor([1.0]).send(m1)
    for attempt in (bool, int, float, lambda p: [0, 1][p], lambda p: p.numpy()):
        with pytest.raises(sy.RemoteValueError, match=r"\.get\(\)"):
            attempt(x)
    with pytest.raises(TypeError):  # RemoteValueError is a TypeError, as Python expects
        if x:
            pass
    with pytest.raises(sy.RemoteValueError):
        bool(x.sum().item())


def test_multiple_results_and_iteration(m1):
    t = torch.tensor([[1.0, 5.0], [7.0, 2.0]])
    p = t.send(m1)
    values, indices = torch.max(p, dim=1)
    assert isinstance(values, sy.PointerTensor) and isinstance(indices, sy.PointerTensor)
    result = torch.max(p, dim=1)
    assert type(result).__name__ == "max"
    assert torch.equal(result.indices.get(), torch.tensor([1, 0]))
    first, second = torch.split(p, 1)
    assert torch.equal(second.get(), t[1:])
    rows = list(p)
    assert len(rows) == 2 and torch.equal(rows[0].get(), t[0])


def test_move_sends_straight_to_the_destination_keeping_the_id(m1, m2):
    p = torch.tensor([1, 2, 3, 4]).send(m1)
    obj_id = p.id_at_location
    moved = p.move(m2)
    assert moved is p and p.location is m2 and p.id_at_location == obj_id
    assert obj_id not in m1._objects and obj_id in m2._objects
    assert torch.equal(p.get(), torch.tensor([1, 2, 3, 4]))


def test_move_to_the_same_worker_is_a_no_op(m1):
    p = torch.tensor([1]).send(m1)
    assert p.move(m1) is p and len(m1._objects) == 1


def test_move_to_a_non_worker_is_refused(m1):
    p = torch.tensor([1]).send(m1)
    with pytest.raises(sy.LocationError, match="move to a worker"):
        p.move("M2")
    assert p.get().item() == 1


def test_copy_is_a_new_object_on_the_same_worker(m1):
    p = torch.tensor([1.0, 2.0], requires_grad=True).send(m1)
    c = p.copy()
    assert c.location is m1 and c.id_at_location != p.id_at_location
    assert c.requires_grad
    assert torch.equal(c.get(), torch.tensor([1.0, 2.0]))
    assert p.id_at_location in m1._objects


def test_remote_failures_raise_locally_and_the_worker_keeps_serving(m1):
    x = torch.ones(2).send(m1)
    y = torch.ones(3).send(m1)
    with pytest.raises(RuntimeError, match="size of tensor") as info:
        x + y
    assert isinstance(info.value, sy.RemoteError) and isinstance(info.value, sy.BastionError)
    assert len(m1._objects) == 2
    assert torch.equal((x + x).get(), torch.full((2,), 2.0))


def test_unsupported_functions_are_refused_on_the_client(m1):
    x = torch.ones(2).send(m1)
    with pytest.raises(sy.SerializationError, match="cannot pass a function"):
        torch.Tensor.apply_(x, lambda v: v)  # a callable argument cannot travel


def test_pickling_a_pointer_is_refused(m1):
    import pickle

    with pytest.raises(sy.SerializationError, match="cannot be pickled"):
        pickle.dumps(torch.ones(1).send(m1))


def test_list_objects_and_read_only_objects(m1):
    p = torch.zeros(2, 2).send(m1)
    listing = m1.list_objects()
    assert listing[p.id_at_location].shape == (2, 2)
    with pytest.raises(TypeError):
        m1.objects[1] = torch.zeros(1)
