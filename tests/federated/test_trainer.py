"""FederatedTrainer: history and metrics, workers that fail or time out, and arguments."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bastion as sy
from bastion.federated import FedAvg, FederatedError, FederatedTrainer, WorkerDropped


@pytest.fixture
def federated(make_worker, toy_data):
    workers = [make_worker("tr", allow_code=True) for _ in range(3)]
    x, y = toy_data(30)
    return workers, sy.BaseDataset(x, y).federate(workers, tags=["#toy"]), (x, y)


def test_the_history_holds_every_rounds_metrics(federated):
    workers, fd, (x, y) = federated
    model = nn.Linear(4, 2)
    trainer = FederatedTrainer(model, fd, FedAvg(), rounds=3, batch_size=4, lr=0.3,
                               eval_data=(x, y))  # fmt: skip
    history = trainer.fit()
    assert len(history) == 3 and [r.round for r in history] == [1, 2, 3]
    columns = history.as_dict()
    assert set(columns) >= {"round", "loss", "accuracy", "bytes_sent", "bytes_received",
                            "seconds", "workers", "dropped"}  # fmt: skip
    last = history[-1]
    loss, accuracy = trainer.evaluate(x, y)
    assert last.accuracy == accuracy and last.eval_loss == pytest.approx(loss)
    assert last.train_accuracy is None  # measured only without eval_data
    state_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert last.bytes_received == 3 * state_bytes and last.bytes_sent > 3 * state_bytes
    assert last.seconds > 0 and last.workers == tuple(w.id for w in workers)
    assert trainer.fit(rounds=2) is history and len(history) == 5
    assert "5 rounds" in repr(history) and "FedAvg" in repr(trainer)


def test_a_failing_worker_is_left_out_of_the_round_with_a_warning(federated):
    workers, fd, _ = federated
    trainer = FederatedTrainer(nn.Linear(4, 2), fd, rounds=2, batch_size=4)
    workers[1].close()
    with pytest.warns(WorkerDropped, match=f"worker {workers[1].id} left out"):
        history = trainer.fit()
    assert all(r.dropped == (workers[1].id,) for r in history)
    assert all(r.workers == (workers[0].id, workers[2].id) for r in history)
    trainer.min_workers = 3
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.warns(WorkerDropped), pytest.raises(FederatedError, match="min_workers=3"):
        trainer.round()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_a_worker_that_does_not_answer_in_time_is_left_out(federated):
    workers, _, _ = federated
    first = {"call": True}  # travels with the function; each worker keeps its own copy

    def slow_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape[0] == 9 and first["call"]:  # the third worker's batch, once
            first["call"] = False
            time.sleep(1.5)
        return F.cross_entropy(output, target)

    fd = sy.BaseDataset(torch.randn(29, 4), torch.zeros(29, dtype=torch.long)).federate(workers)
    assert list(fd.sizes.values()) == [10, 10, 9]
    trainer = FederatedTrainer(nn.Linear(4, 2), fd, rounds=1, batch_size=10, loss_fn=slow_loss,
                               parallel=True, timeout=0.5)  # fmt: skip
    with pytest.warns(WorkerDropped, match="timeout=0.5"):
        metrics = trainer.round()
    assert metrics.dropped == (workers[2].id,) and len(metrics.workers) == 2
    with pytest.warns(WorkerDropped, match="still busy"):  # its last round is still running
        assert trainer.round().dropped == (workers[2].id,)
    time.sleep(1.5)
    assert trainer.round().dropped == ()  # back once it answers again
    trainer.close()


def test_workers_and_tags_instead_of_a_dataset(federated):
    workers, fd, _ = federated
    trainer = FederatedTrainer(nn.Linear(4, 2), workers, tags=["#toy"], rounds=1, batch_size=4)
    assert trainer.data.sizes == fd.sizes
    assert trainer.fit()[-1].workers == tuple(w.id for w in workers)


def test_the_progress_bar_shows_when_asked(federated, capsys):
    _, fd, _ = federated
    FederatedTrainer(nn.Linear(4, 2), fd, rounds=2, batch_size=4, progress=True).fit()
    assert "2/2" in capsys.readouterr().err
    FederatedTrainer(nn.Linear(4, 2), fd, rounds=2, batch_size=4).fit()  # not a terminal
    assert capsys.readouterr().err == ""


def test_bad_arguments_are_refused(federated):
    workers, fd, _ = federated
    model = nn.Linear(4, 2)
    for kwargs, match in (
        ({"style": "quick"}, "style"),
        ({"rounds": -1}, "rounds"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_workers": 0}, "min_workers"),
    ):
        with pytest.raises(sy.ConfigurationError, match=match):
            FederatedTrainer(model, fd, **kwargs)
    with pytest.raises(sy.ConfigurationError, match="tags"):
        FederatedTrainer(model, workers)
    with pytest.raises(sy.ConfigurationError, match="nn.Module"):
        FederatedTrainer(lambda x: x, fd)
    sy.send_module(model, workers[0])
    with pytest.raises(sy.ConfigurationError, match="model.get"):
        FederatedTrainer(model, fd)
