"""How a round turns client updates into the next global model: ``Strategy`` and its kinds.

A round has two places where updates are made, one method each, so that a variant (such as
differential privacy: clip each update, add noise) overrides one method and nothing else:

- ``client_update(global_state, local_state)`` runs where the client trained (on the worker
  in the fast way) and makes the *update* that leaves it: by default the delta
  ``local - global``. Client-side clipping and noise go here.
- ``aggregate(global_state, updates)`` runs on the server: ``combine`` the updates into one
  delta (FedAvg: the average weighted by samples; server-side clipping and noise go here),
  then ``apply`` it to the global state (FedAvg: add it; FedAdam: an Adam step).

``local_penalty(model, global_state)`` is added to each local loss (FedProx's proximal term).
``begin_round`` and ``privacy_spent`` let a strategy with differential privacy refuse a round
past its budget and report what it spent (``DPFedAvg`` in :mod:`bastion.federated.privacy`).

>>> import torch
>>> from bastion.federated import ClientUpdate, FedAvg
>>> g = {"w": torch.zeros(2)}
>>> ups = [ClientUpdate("a", {"w": torch.tensor([1.0, 1.0])}, 1),
...        ClientUpdate("b", {"w": torch.tensor([4.0, 0.0])}, 3)]
>>> FedAvg().aggregate(g, ups)["w"]
tensor([3.2500, 0.2500])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from bastion.errors import ConfigurationError

__all__ = ["ClientUpdate", "FedAdam", "FedAvg", "FedProx", "State", "Strategy"]

#: A model's state: ``model.state_dict()``, detached tensors by name.
State = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """What one worker sent back in a round: its update (a delta by default), how many
    samples it trained on (its weight in the average), and its training metrics."""

    worker: str
    delta: State
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Strategy:
    """The base of every strategy: override the hooks a variant changes.

    The base class is FedAvg without its name; see the module's docstring for the hooks.
    Strategies travel to workers with the training function (cloudpickle), so keep their
    client-side state small.
    """

    name = "strategy"

    # ------------------------------------------------------------------ client side

    def local_penalty(self, model: nn.Module, global_state: State) -> torch.Tensor | None:
        """A term added to each local loss (None: nothing). Runs where the client trains."""
        return None

    def client_update(self, global_state: State, local_state: State) -> State:
        """The update that leaves the client: ``local - global`` for every entry."""
        return {name: local_state[name] - value for name, value in global_state.items()}

    # ------------------------------------------------------------------ server side

    def begin_round(self, number: int, workers: Sequence[str]) -> None:
        """Called before round ``number`` asks ``workers``; may refuse it by raising (DP:
        a round past the privacy budget)."""

    def privacy_spent(self) -> tuple[float, float] | None:
        """``(epsilon, delta)`` spent by the rounds so far; None for a strategy without DP."""
        return None

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        """The next global state from this round's updates."""
        if not updates:
            raise ConfigurationError("aggregate() needs at least one client update")
        return self.apply(global_state, self.combine(global_state, updates))

    def combine(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        """One delta from many: their average, each weighted by its number of samples."""
        total = sum(update.num_samples for update in updates)
        if total <= 0:
            raise ConfigurationError("the updates of this round carry no samples")
        combined = {}
        for name, value in global_state.items():
            dtype = value.dtype if value.is_floating_point() else torch.float64
            acc = torch.zeros(value.shape, dtype=dtype)
            for update in updates:
                acc.add_(update.delta[name].to(dtype), alpha=update.num_samples / total)
            combined[name] = acc
        return combined

    def apply(self, global_state: State, delta: State) -> State:
        """The global state moved by ``delta`` (integer entries rounded back)."""
        return {name: _add(value, delta[name]) for name, value in global_state.items()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _add(value: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    if value.is_floating_point():
        return value + delta.to(value.dtype)
    return value + delta.round().to(value.dtype)


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017): the global model moves by the
    sample-weighted average of the clients' deltas, i.e. becomes the weighted average of
    their models."""

    name = "fedavg"


class FedProx(Strategy):
    """FedAvg whose clients add ``mu / 2 * ||w - w_global||^2`` to their loss (Li et al.
    2020), which keeps local models near the global one when clients' data differ.

    >>> import torch
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(3.0)
    >>> FedProx(mu=0.5).local_penalty(model, {"weight": torch.ones(1, 1)})
    tensor(1., grad_fn=<MulBackward0>)
    """

    name = "fedprox"

    def __init__(self, mu: float = 0.01) -> None:
        if not mu >= 0:
            raise ConfigurationError(f"FedProx's mu is a number >= 0, got {mu!r}")
        self.mu = float(mu)

    def local_penalty(self, model: nn.Module, global_state: State) -> torch.Tensor | None:
        if self.mu == 0:
            return None
        square = sum(
            ((param - global_state[name]) ** 2).sum() for name, param in model.named_parameters()
        )
        return square * (self.mu / 2)


class FedAdam(Strategy):
    """An adaptive server optimizer (Reddi et al. 2021): the averaged delta is a
    pseudo-gradient that an Adam step applies to the global model.

    ``lr`` is the server's learning rate, ``tau`` the adaptivity (Adam's epsilon). Integer
    entries (counters) are moved by the plain average.
    """

    name = "fedadam"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3) -> None:  # fmt: skip
        for label, value, low, high in (("lr", lr, 0, None), ("beta1", beta1, 0, 1),
                                        ("beta2", beta2, 0, 1), ("tau", tau, 0, None)):  # fmt: skip
            if not value > low or (high is not None and not value < high):
                raise ConfigurationError(f"FedAdam's {label} is out of range: {value!r}")
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self._m: State = {}
        self._v: State = {}
        self._step = 0

    def apply(self, global_state: State, delta: State) -> State:
        self._step += 1
        out = {}
        for name, value in global_state.items():
            if not value.is_floating_point():
                out[name] = _add(value, delta[name])
                continue
            d = delta[name].to(value.dtype)
            m = self._m.get(name, torch.zeros_like(value)).mul(self.beta1)
            m.add_(d, alpha=1 - self.beta1)
            v = self._v.get(name, torch.zeros_like(value)).mul(self.beta2)
            v.addcmul_(d, d, value=1 - self.beta2)
            self._m[name], self._v[name] = m, v
            out[name] = value + self.lr * m / (v.sqrt() + self.tau)
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Clients need none of the server's moments: keep what travels small.
        return {**self.__dict__, "_m": {}, "_v": {}}
