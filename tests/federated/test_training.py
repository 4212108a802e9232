"""Training on remote data, both ways, over every transport: the PySyft loop through
pointers, and the fast way (one shipped function per worker and round)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import optim

import bastion as sy
from bastion.federated import FedAvg, FederatedError, FederatedTrainer, WorkerDropped
from bastion.stores import EventLog


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_the_pysyft_loop_trains_on_remote_data_as_it_does_locally(two_workers, toy_data):
    x, y = toy_data()
    fd = sy.BaseDataset(x, y).federate(two_workers)
    loader = sy.FederatedDataLoader(fd, batch_size=8)
    model, twin = _model(), _model()
    opt = optim.SGD(model.parameters(), lr=0.3)  # built once, before any send
    twin_opt = optim.SGD(twin.parameters(), lr=0.3)
    local_batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    remote_losses, local_losses = [], []
    for _ in range(3):
        for data, target in loader:
            model.send(data.location)
            opt.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            opt.step()
            model.get()
            remote_losses.append(loss.get().item())
        for data, target in local_batches:
            twin_opt.zero_grad()
            loss = F.cross_entropy(twin(data), target)
            loss.backward()
            twin_opt.step()
            local_losses.append(loss.item())
    assert remote_losses == pytest.approx(local_losses, rel=1e-4)
    assert sum(remote_losses[-4:]) < 0.7 * sum(remote_losses[:4])
    for remote, local in zip(model.parameters(), twin.parameters()):
        assert type(remote) is nn.Parameter and torch.allclose(remote, local, atol=1e-5)
    assert all(len(w._objects) == 2 for w in two_workers)  # only the data is left there


def test_the_fast_way_and_the_pysyft_way_train_the_same_model(two_workers, toy_data):
    x, y = toy_data()
    fd = sy.BaseDataset(x, y).federate(two_workers)
    results = {}
    for style in ("fast", "pointers"):
        model = _model()
        with FederatedTrainer(model, fd, FedAvg(), rounds=4, batch_size=8, lr=0.3,
                              style=style, seed=3) as trainer:  # fmt: skip
            history = trainer.fit()
        results[style] = (model, history)
        assert history[-1].loss < 0.8 * history[0].loss
        assert history[-1].workers == tuple(w.id for w in two_workers)
        assert history[-1].train_accuracy is not None and history[-1].dropped == ()
    (fast, h_fast), (slow, h_slow) = results["fast"], results["pointers"]
    for a, b in zip(fast.parameters(), slow.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert [r.loss for r in h_fast] == pytest.approx([r.loss for r in h_slow], rel=1e-4)
    assert [r.train_accuracy for r in h_fast] == [r.train_accuracy for r in h_slow]
    assert all(len(w._objects) == 2 for w in two_workers)  # nothing left behind but the data


def test_a_worker_without_allow_code_refuses_the_fast_way(tmp_path, toy_data):
    db = tmp_path / "no-code.db"
    worker = sy.spawn("tcp", id=f"no-code-{os.getpid()}", db=str(db))
    try:
        x, y = toy_data(8)
        fd = sy.BaseDataset(x, y).federate([worker])
        with pytest.raises(sy.PermissionDenied, match="allow_code"):
            worker.call(lambda t: t.sum(), fd[worker.id].data)
        trainer = FederatedTrainer(_model(), fd, rounds=1, batch_size=4)
        with pytest.warns(WorkerDropped, match="PermissionDenied"):
            with pytest.raises(FederatedError, match="0 of 1 workers answered"):
                trainer.round()
        assert len(trainer.history) == 0
        history = FederatedTrainer(_model(), fd, rounds=1, batch_size=4,
                                   style="pointers").fit()  # fmt: skip
        assert len(history) == 1  # the pointer way needs no shipped code
    finally:
        worker.close()
    with EventLog(str(db), worker.id) as log:
        denied = log.events(kind="denied")
    assert len(denied) == 2 and all(e.detail["request"] == "call" for e in denied)
