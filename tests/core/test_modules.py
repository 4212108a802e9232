"""nn.Module on workers, and PySyft's Part 2 training loop unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import optim

import bastion as sy


def _toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.0], [0.0], [1.0], [1.0]], requires_grad=True)
    return data, target


def _train_locally(model: nn.Module, batches, iterations: int) -> list[float]:
    opt = optim.SGD(params=model.parameters(), lr=0.1)
    losses = []
    for _ in range(iterations):
        for data, target in batches:
            opt.zero_grad()
            loss = ((model(data) - target) ** 2).sum()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def test_send_and_get_a_module_in_place(m1):
    model = nn.Linear(2, 1)
    weight, bias = model.weight, model.bias
    before = weight.detach().clone()
    assert model.send(m1) is model
    assert model.weight is weight and type(weight) is sy.PointerParameter
    assert isinstance(weight, nn.Parameter) and isinstance(weight, sy.PointerTensor)
    assert weight.shape == (1, 2) and weight.location is m1 and model.location is m1
    assert len(m1._objects) == 2
    assert model.get() is model
    assert type(weight) is nn.Parameter and type(bias) is nn.Parameter
    assert torch.equal(weight.detach(), before) and weight.requires_grad
    assert model.location is None and len(m1._objects) == 0


def test_forward_runs_remotely(m1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    expected = model(x)
    model.send(m1)
    out = model(x.send(m1))
    assert isinstance(out, sy.PointerTensor) and out.shape == (5, 2)
    assert torch.allclose(out.get(), expected.detach())


def test_buffers_travel_too(m1):
    model = nn.BatchNorm1d(3)
    model.send(m1)
    assert isinstance(model.running_mean, sy.PointerTensor)
    model(torch.randn(8, 3).send(m1))  # training mode updates running stats remotely
    model.get()
    assert type(model.running_mean) is torch.Tensor
    assert not torch.equal(model.running_mean, torch.zeros(3))


def test_pysyft_training_loop_unchanged_matches_local_training(make_worker):
    bob, alice = make_worker("bob"), make_worker("alice")
    data, target = _toy_data()
    torch.manual_seed(1)
    local_model = nn.Linear(2, 1)
    model = nn.Linear(2, 1)
    model.load_state_dict(local_model.state_dict())
    local_losses = _train_locally(
        local_model, [(data[0:2], target[0:2]), (data[2:], target[2:])], iterations=10
    )

    datasets = [(data[0:2].send(bob), target[0:2].send(bob)),
                (data[2:].send(alice), target[2:].send(alice))]
    opt = optim.SGD(params=model.parameters(), lr=0.1)  # built once, before any send
    losses = []
    for _ in range(10):
        for remote_data, remote_target in datasets:
            model.send(remote_data.location)
            opt.zero_grad()
            pred = model(remote_data)
            loss = ((pred - remote_target) ** 2).sum()
            loss.backward()
            opt.step()
            model.get()
            losses.append(loss.get().item())
    assert losses == pytest.approx(local_losses, rel=1e-6)
    assert losses[-1] < losses[0] / 4, "the model learned"
    for remote_param, local_param in zip(model.parameters(), local_model.parameters()):
        assert type(remote_param) is nn.Parameter
        assert torch.allclose(remote_param, local_param)
    del pred
    assert len(bob._objects) == 2 and len(alice._objects) == 2, "only the data is left"


def test_gradients_come_back_with_get(m1):
    model = nn.Linear(2, 1)
    model.send(m1)
    loss = model(torch.ones(1, 2).send(m1)).sum()
    loss.backward()
    model.get()
    assert torch.equal(model.weight.grad, torch.ones(1, 2))
    assert torch.equal(model.bias.grad, torch.ones(1))


def test_send_to_another_worker_moves_the_parameters(m1, m2):
    model = nn.Linear(2, 2)
    expected = [p.detach().clone() for p in model.parameters()]
    model.send(m1)
    model.send(m2)
    assert model.location is m2 and len(m1._objects) == 0 and len(m2._objects) == 2
    model.get()
    for param, value in zip(model.parameters(), expected):
        assert torch.equal(param.detach(), value)


def test_classifier_with_nll_loss(m1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt = optim.SGD(model.parameters(), lr=0.5)
    rx, ry = x.send(m1), y.send(m1)
    first = last = None
    for _ in range(20):
        model.send(m1)
        opt.zero_grad()
        loss = F.nll_loss(F.log_softmax(model(rx), dim=1), ry)
        loss.backward()
        opt.step()
        model.get()
        value = loss.get().item()
        first = value if first is None else first
        last = value
    assert last < first
