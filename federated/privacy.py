"""Differential privacy for federated training: DP-FedAvg (client-level) and DP-SGD on the
workers (record-level), each with an accountant.

``DPFedAvg(noise_multiplier, clip)`` wraps a strategy (FedAvg by default). Every client's
update is clipped to L2 norm ``clip`` where the client trained, and Gaussian noise of standard
deviation ``noise_multiplier * clip`` is added:

- ``side="server"`` (central DP): to the *sum* of the clipped updates, on the server, which
  then divides by the number of clients asked. The clipped updates leave the workers exact:
  their owners must allow it (release policy ``allow``; each release audited), and trust the
  server to add the noise.
- ``side="client"`` (local DP): to each update before it leaves its worker. A worker whose
  owner requires DP (release policy ``DP``) adds it itself and spends the peer's budget;
  otherwise the shipped training code adds it.

Either way one round is one Gaussian mechanism of sensitivity ``clip`` on each client's
contribution; the accountant (RDP, from ``bastion.Accountant``) turns the rounds into the
epsilon reported in the trainer's history, and with ``target_epsilon`` the trainer stops
before a round would pass it.

``DPSGD(noise_multiplier, max_grad_norm)`` makes each worker's local training DP-SGD, through
the ``PrivacyEngine`` of the ``opacus`` package: per-example gradients clipped, noise on each
step, Poisson-sampled batches; the guarantee is per record of each worker's data.

>>> import torch
>>> from bastion.federated import ClientUpdate, DPFedAvg
>>> dp = DPFedAvg(noise_multiplier=1.0, clip=1.0)
>>> dp.client_update({"w": torch.zeros(2)}, {"w": torch.tensor([3.0, 4.0])})["w"]
tensor([0.6000, 0.8000])
>>> dp.begin_round(1, ["a", "b"])
>>> _ = dp.aggregate({"w": torch.zeros(2)}, [ClientUpdate("a", {"w": torch.ones(2)}, 10)])
>>> round(dp.privacy_spent()[0], 2)
4.73
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from bastion.errors import ConfigurationError
from bastion.federated.strategies import ClientUpdate, FedAvg, State, Strategy
from bastion.privacy import Accountant

__all__ = ["DPFedAvg", "DPSGD", "PrivacyBudgetSpent", "clip_update"]

SIDES = ("server", "client")


def _positive(owner: str, **values: Any) -> None:
    for name, value in values.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value > 0)
        ):
            raise ConfigurationError(f"{owner}'s {name} is a positive number, got {value!r}")


def _delta_ok(owner: str, delta: Any) -> None:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ConfigurationError(f"{owner}'s delta is a number between 0 and 1, got {delta!r}")


class PrivacyBudgetSpent(ConfigurationError):
    """The next round would spend more privacy than the target epsilon allows.

    ``FederatedTrainer.fit`` stops on it (the model keeps the last round's weights);
    ``round()`` raises it.
    """


def _generator() -> torch.Generator:
    """A generator seeded from the operating system: noise nobody can predict or replay."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def clip_update(update: State, clip: float) -> State:
    """``update``'s floating entries, taken together as one vector, scaled down to L2 norm
    ``clip`` if longer; integer entries (counters) become zero: they do not move under DP.

    >>> clip_update({"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(7)}, 1.0)
    {'w': tensor([0.6000, 0.8000]), 'n': tensor(0)}
    """
    floats = [v for v in update.values() if v.is_floating_point()]
    norm = float(torch.linalg.vector_norm(torch.cat([v.reshape(-1).double() for v in floats])))\
        if floats else 0.0  # fmt: skip
    scale = clip / norm if norm > clip else 1.0
    return {name: (value * scale if value.is_floating_point() else torch.zeros_like(value))
            for name, value in update.items()}  # fmt: skip


def _add_noise(update: State, sigma: float) -> State:
    """Gaussian noise of standard deviation ``sigma`` on every floating entry."""
    generator = _generator()
    return {name: (value + torch.normal(0.0, sigma, value.shape, generator=generator)
                   .to(value.dtype) if value.is_floating_point() else value)
            for name, value in update.items()}  # fmt: skip


class DPFedAvg(Strategy):
    """Differentially private federated averaging: clip each client's update to ``clip``,
    add Gaussian noise of standard deviation ``noise_multiplier * clip`` on the ``side``
    chosen (see the module), average over the clients asked (uniformly: a weight by sample
    count would let one client count for more than ``clip``), and let ``strategy`` (default
    ``FedAvg()``) apply the result (``FedAdam`` makes DP-FedAdam) and add its local penalty.

    ``privacy_spent()`` is ``(epsilon, delta)`` after the rounds so far; with
    ``target_epsilon`` the round that would pass it is not run (``PrivacyBudgetSpent``).
    Every client takes part in every round (sample rate 1): the epsilon has no amplification
    by subsampling.

    >>> DPFedAvg(noise_multiplier=1.1, clip=0.5, side="client", target_epsilon=8.0)
    DPFedAvg(noise_multiplier=1.1, clip=0.5, side='client', delta=1e-05, target_epsilon=8.0, strategy=FedAvg())
    """  # noqa: E501

    def __init__(
        self,
        noise_multiplier: float = 1.0,
        clip: float = 1.0,
        *,
        side: str = "server",
        delta: float = 1e-5,
        target_epsilon: float | None = None,
        strategy: Strategy | None = None,
    ) -> None:
        _positive("DPFedAvg", noise_multiplier=noise_multiplier, clip=clip)
        _delta_ok("DPFedAvg", delta)
        if target_epsilon is not None:
            _positive("DPFedAvg", target_epsilon=target_epsilon)
        if side not in SIDES:
            raise ConfigurationError(f"DPFedAvg's side is 'server' or 'client', not {side!r}")
        if isinstance(strategy, DPFedAvg):
            raise ConfigurationError("DPFedAvg wraps a strategy without DP, not another DPFedAvg")
        self.noise_multiplier = float(noise_multiplier)
        self.clip = float(clip)
        self.side = side
        self.delta = float(delta)
        self.target_epsilon = target_epsilon
        self.strategy = strategy if strategy is not None else FedAvg()
        self.name = f"dp-{self.strategy.name}"
        self.accountant = Accountant()
        self._sampled = 0

    @property
    def sigma(self) -> float:
        """The standard deviation of the noise: ``noise_multiplier * clip``."""
        return self.noise_multiplier * self.clip

    # ------------------------------------------------------------------ client side

    def local_penalty(self, model: nn.Module, global_state: State) -> torch.Tensor | None:
        return self.strategy.local_penalty(model, global_state)

    def client_update(self, global_state: State, local_state: State,
                      noise: bool | None = None) -> State:  # fmt: skip
        """The wrapped strategy's update, clipped to ``clip``; with noise on the client side
        (``noise=False``: the worker's release policy adds it)."""
        update = clip_update(self.strategy.client_update(global_state, local_state), self.clip)
        if self.side == "client" if noise is None else noise:
            update = _add_noise(update, self.sigma)
        return update

    # ------------------------------------------------------------------ server side

    def begin_round(self, number: int, workers: Sequence[str]) -> None:
        """Refuse a round that would pass ``target_epsilon``; remember how many clients are
        asked (the denominator of the average, whoever answers)."""
        if self.target_epsilon is not None:
            after = self.accountant.epsilon_after(noise_multiplier=self.noise_multiplier,
                                                  delta=self.delta)  # fmt: skip
            if after > self.target_epsilon:
                spent = self.accountant.epsilon(self.delta)
                raise PrivacyBudgetSpent(
                    f"round {number} would bring epsilon to {after:.4g}, past the target "
                    f"{self.target_epsilon:g} (spent {spent:.4g} at delta {self.delta:g}); the "
                    "model keeps the last round's weights"
                )
        self._sampled = len(workers)

    def combine(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        """The uniform average of the clipped updates over the clients asked; on the server
        side, Gaussian noise is added to their sum first."""
        if not updates:
            raise ConfigurationError("combine() needs at least one client update")
        count = max(self._sampled, len(updates))
        summed = {}
        for name, value in global_state.items():
            dtype = value.dtype if value.is_floating_point() else torch.float64
            acc = torch.zeros(value.shape, dtype=dtype)
            for update in updates:
                acc.add_(update.delta[name].to(dtype))
            summed[name] = acc
        if self.side == "server":
            summed = _add_noise(summed, self.sigma)
        return {name: value / count for name, value in summed.items()}

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        new_state = self.strategy.apply(global_state, self.combine(global_state, updates))
        self.accountant.step(noise_multiplier=self.noise_multiplier)
        self._sampled = 0
        return new_state

    def apply(self, global_state: State, delta: State) -> State:
        return self.strategy.apply(global_state, delta)

    def privacy_spent(self) -> tuple[float, float]:
        """``(epsilon, delta)`` of the rounds so far, each client's whole data the unit."""
        return self.accountant.epsilon(self.delta), self.delta

    def __getstate__(self) -> dict[str, Any]:
        # What travels to the workers: no accountant history.
        return {**self.__dict__, "accountant": Accountant()}

    def __repr__(self) -> str:
        return (f"DPFedAvg(noise_multiplier={self.noise_multiplier:g}, clip={self.clip:g}, "
                f"side={self.side!r}, delta={self.delta:g}, target_epsilon="
                f"{self.target_epsilon!r}, strategy={self.strategy!r})")  # fmt: skip


@dataclass(frozen=True)
class DPSGD:
    """Local training as DP-SGD on every worker (the ``opacus`` package's ``PrivacyEngine``):
    each example's gradient clipped to ``max_grad_norm``, Gaussian noise of standard
    deviation ``noise_multiplier * max_grad_norm`` on each step's sum, batches drawn by
    Poisson sampling at rate ``batch_size / n``.

    The guarantee is per record of a worker's data, accounted on the trainer's side for each
    worker (``RoundMetrics.record_epsilon``: the largest); with ``target_epsilon`` the
    trainer stops before a round would pass it.

    >>> DPSGD(noise_multiplier=1.0, max_grad_norm=1.0).delta
    1e-05
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        _positive("DPSGD", noise_multiplier=self.noise_multiplier,
                  max_grad_norm=self.max_grad_norm)  # fmt: skip
        _delta_ok("DPSGD", self.delta)
        if self.target_epsilon is not None:
            _positive("DPSGD", target_epsilon=self.target_epsilon)

    def steps(self, samples: int, batch_size: int, epochs: int) -> tuple[float, int]:
        """``(sample_rate, steps)`` of ``epochs`` over ``samples`` in batches of
        ``batch_size``, as the ``PrivacyEngine`` draws them.

        >>> DPSGD(1.0, 1.0).steps(100, 32, 2)
        (0.25, 8)
        """
        per_epoch = max(math.ceil(samples / batch_size), 1)
        return 1 / per_epoch, per_epoch * epochs
