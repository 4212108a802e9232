"""Autograd on workers: requires_grad, backward on a pointer, .grad as a pointer."""

from __future__ import annotations

import torch

import bastion as sy


def test_backward_runs_on_the_worker_and_grad_is_a_pointer(m1):
    w_local = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    x_local = torch.tensor([0.5, 1.5, -1.0])
    loss_local = ((w_local * x_local).sum() - 1.0) ** 2
    loss_local.backward()

    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True).send(m1)
    x = x_local.send(m1)
    assert w.requires_grad and w.is_leaf and not x.requires_grad
    loss = ((w * x).sum() - 1.0) ** 2
    assert loss.requires_grad and not loss.is_leaf
    assert loss.backward() is None
    grad = w.grad
    assert isinstance(grad, sy.PointerTensor) and grad.location is m1
    assert torch.equal(grad.get(), w_local.grad)


def test_grad_is_none_before_backward(m1):
    w = torch.ones(2, requires_grad=True).send(m1)
    assert w.grad is None


def test_requires_grad_can_be_switched_on_remotely(m1):
    w = torch.ones(2).send(m1)
    assert not w.requires_grad
    w.requires_grad = True
    assert w.requires_grad
    (w * 3).sum().backward()
    assert torch.equal(w.grad.get(), torch.full((2,), 3.0))
    v = torch.ones(2).send(m1).requires_grad_()
    assert v.requires_grad


def test_no_grad_on_the_client_reaches_the_worker(m1):
    w = torch.ones(2, requires_grad=True).send(m1)
    with torch.no_grad():
        y = w * 2
        w.add_(1)  # an in-place update of a leaf is allowed only without grad
    assert not y.requires_grad
    assert torch.equal(w.get(), torch.full((2,), 2.0))


def test_the_grad_setter_reaches_the_worker(m1):
    w = torch.ones(2, requires_grad=True).send(m1)
    (w * 5).sum().backward()
    assert w.grad is not None
    w.grad = None
    assert w.grad is None
