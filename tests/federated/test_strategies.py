"""Strategies: FedAvg's weighted average, FedAdam's server step, FedProx's proximal term,
and the hooks a variant (such as differential privacy) overrides."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import bastion as sy
from bastion.federated import (
    ClientUpdate,
    FedAdam,
    FedAvg,
    FederatedTrainer,
    FedProx,
    Strategy,
)


def _updates() -> list[ClientUpdate]:
    return [
        ClientUpdate("a", {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(3)}, 1),
        ClientUpdate("b", {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(1)}, 3),
    ]


def test_fedavg_moves_by_the_sample_weighted_average():
    state = {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(10)}
    new = FedAvg().aggregate(state, _updates())
    assert torch.allclose(new["w"], torch.tensor([1.5, 4.0]))
    assert new["n"].dtype == torch.int64 and new["n"].item() == 12  # 10 + 1.5, rounded
    with pytest.raises(sy.ConfigurationError):
        FedAvg().aggregate(state, [])


def test_fedadam_applies_an_adam_step_to_the_averaged_delta():
    state = {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(10)}
    strategy = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    new = strategy.aggregate(state, _updates())
    delta = torch.tensor([0.5, 3.0])
    m, v = 0.1 * delta, 0.01 * delta**2
    assert torch.allclose(new["w"], state["w"] + 0.1 * m / (v.sqrt() + 1e-3))
    again = strategy.aggregate(new, _updates())
    m2, v2 = 0.9 * m + 0.1 * delta, 0.99 * v + 0.01 * delta**2
    assert torch.allclose(again["w"], new["w"] + 0.1 * m2 / (v2.sqrt() + 1e-3))
    with pytest.raises(sy.ConfigurationError, match="beta1"):
        FedAdam(beta1=1.5)


def test_fedprox_penalty_pulls_local_models_towards_the_global_one(make_worker, toy_data):
    workers = [make_worker("prox", allow_code=True) for _ in range(2)]
    x, y = toy_data()
    fd = sy.BaseDataset(x, y).federate(workers)
    drift = {}
    for mu in (0.0, 10.0):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        start = [p.detach().clone() for p in model.parameters()]
        FederatedTrainer(model, fd, FedProx(mu=mu), rounds=1, local_epochs=5, batch_size=4,
                         lr=0.1).fit()  # fmt: skip
        drift[mu] = sum(float((p.detach() - s).norm()) for p, s in zip(model.parameters(), start))
    assert drift[10.0] < 0.5 * drift[0.0]
    with pytest.raises(sy.ConfigurationError, match="mu"):
        FedProx(mu=-1)


class ClippedUpdates(Strategy):
    """A client-side variant: each update leaves the worker clipped to a norm (the place
    where differential privacy clips and adds noise)."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.seen: list[float] = []

    def client_update(self, global_state, local_state):
        delta = super().client_update(global_state, local_state)
        norm = torch.sqrt(sum((d.float() ** 2).sum() for d in delta.values()))
        scale = min(1.0, self.bound / (float(norm) + 1e-12))
        return {name: d * scale for name, d in delta.items()}

    def combine(self, global_state, updates):
        self.seen = [
            float(torch.sqrt(sum((d**2).sum() for d in u.delta.values()))) for u in updates
        ]
        return super().combine(global_state, updates)


@pytest.mark.parametrize("style", ["fast", "pointers"])
def test_a_variant_changes_the_update_where_it_is_made(make_worker, toy_data, style):
    workers = [make_worker("clip", allow_code=True) for _ in range(2)]
    x, y = toy_data()
    fd = sy.BaseDataset(x, y).federate(workers)
    strategy = ClippedUpdates(bound=0.01)
    model = nn.Linear(4, 2)
    FederatedTrainer(model, fd, strategy, rounds=1, batch_size=4, lr=0.5, style=style).fit()
    assert len(strategy.seen) == 2 and all(n <= 0.01 + 1e-6 for n in strategy.seen)
