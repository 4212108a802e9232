"""Release policies, privacy budgets, the accountant and the Gaussian mechanism.

A data owner registers data on its worker as private (``worker.register(t, private=True)``);
whatever is computed from it is *private-derived*. What may leave the worker is the owner's
**release policy**: :class:`Deny` (the default), :class:`Allow` (every release audited) or
:class:`DP` (the value is clipped to an L2 norm and released with Gaussian noise; each release
spends the requesting peer's :class:`Budget`, tracked by an :class:`Accountant`). The worker
side of this (flags, taint, refusals) is :mod:`bastion.guard`.

>>> import torch, bastion as sy
>>> worker = sy.Worker("doc-privacy")
>>> worker.set_release_policy(sy.DP(noise_multiplier=1.0, clip=1.0),
...                           budget=sy.Budget(epsilon=8.0, delta=1e-5))
>>> x = worker.register(torch.tensor([3.0, 4.0]), private=True)
>>> from bastion.messages import Get
>>> worker.handle(Get(x), peer="bob").error.type_name          # private: only its owner
'PermissionDenied'
>>> acc = sy.Accountant()
>>> acc.step(noise_multiplier=1.0)
>>> round(acc.epsilon(delta=1e-5), 2)
4.73
"""

from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from bastion.errors import ConfigurationError

# ------------------------------------------------------------------------------ policies


class ReleasePolicy:
    """What may leave a worker of an object computed from private data."""

    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        """The policy as plain data (it goes into the event log)."""
        return {"kind": self.kind}


@dataclass(frozen=True)
class Deny(ReleasePolicy):
    """Nothing computed from private data leaves the worker (the default).

    >>> import bastion as sy
    >>> sy.Deny().to_json()
    {'kind': 'deny'}
    """

    kind = "deny"


@dataclass(frozen=True)
class Allow(ReleasePolicy):
    """Private-derived objects leave as they are; each release is a ``release`` event.

    >>> import bastion as sy
    >>> sy.Allow().to_json()
    {'kind': 'allow'}
    """

    kind = "allow"


@dataclass(frozen=True)
class DP(ReleasePolicy):
    """Private-derived tensors leave clipped to L2 norm ``clip`` with Gaussian noise of standard
    deviation ``noise_multiplier * clip``; each release spends the requester's budget.

    ``clip`` is the L2 sensitivity the guarantee is stated for: bastion enforces it by
    clipping the released value, so the guarantee covers any change of the data that moves the
    (clipped) value by at most ``clip`` (one record's contribution under per-example clipping,
    or one client's whole update in DP-FedAvg).

    >>> import bastion as sy
    >>> sy.DP(noise_multiplier=1.1, clip=1.0).sigma
    1.1
    """

    noise_multiplier: float
    clip: float

    kind = "dp"

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0
            ):
                raise ConfigurationError(
                    f"DP needs a positive, finite {name}, got {value!r}; e.g. "
                    "DP(noise_multiplier=1.0, clip=1.0)"
                )

    @property
    def sigma(self) -> float:
        """The standard deviation of the noise: ``noise_multiplier * clip``."""
        return self.noise_multiplier * self.clip

    def to_json(self) -> dict[str, Any]:
        """The policy as plain data (it goes into the event log)."""
        return {"kind": "dp", "noise_multiplier": self.noise_multiplier, "clip": self.clip}


_NAMED: dict[str, ReleasePolicy] = {"deny": Deny(), "allow": Allow()}


def as_policy(value: ReleasePolicy | str | None) -> ReleasePolicy | None:
    """``"deny"``/``"allow"``/a policy -> the policy (``None`` stays ``None``: the default).

    >>> as_policy("allow")
    Allow()
    """
    if value is None or isinstance(value, ReleasePolicy):
        return value
    if isinstance(value, str) and value in _NAMED:
        return _NAMED[value]
    raise ConfigurationError(
        f"a release policy is 'deny', 'allow' or DP(noise_multiplier=..., clip=...), "
        f"not {value!r}"
    )


def policy_from_json(data: dict[str, Any] | None) -> ReleasePolicy | None:
    """The inverse of ``ReleasePolicy.to_json`` (for rebuilding a worker from its log)."""
    if data is None:
        return None
    if data.get("kind") == "dp":
        return DP(noise_multiplier=data["noise_multiplier"], clip=data["clip"])
    return as_policy(data.get("kind"))


# ------------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """The (epsilon, delta) each peer may spend on DP releases from one worker.

    ``total_epsilon`` optionally caps all peers together: peer ids are only as strong as the
    transport's authentication, and peers who share a key may present several ids.

    >>> import bastion as sy
    >>> sy.Budget(epsilon=3.0, delta=1e-5).epsilon
    3.0
    """

    epsilon: float
    delta: float
    total_epsilon: float | None = None

    def __post_init__(self) -> None:
        bad = not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0) or not (
            isinstance(self.delta, (int, float)) and 0 < self.delta < 1
        )
        if self.total_epsilon is not None and not (
            isinstance(self.total_epsilon, (int, float)) and self.total_epsilon > 0
        ):
            bad = True
        if bad or not math.isfinite(self.epsilon):
            raise ConfigurationError(
                "a Budget needs epsilon > 0, 0 < delta < 1 and total_epsilon > 0 (or None); "
                f"got {self!r}"
            )

    def to_json(self) -> dict[str, Any]:
        """The budget as plain data (it goes into the event log)."""
        return {"epsilon": self.epsilon, "delta": self.delta, "total_epsilon": self.total_epsilon}


@dataclass(frozen=True)
class BudgetReport:
    """What a peer has spent on a worker: ``worker.privacy_budget()``.

    ``epsilon`` and ``delta`` are the budget (``None`` when the worker sets none), ``spent``
    the epsilon spent so far at that delta, ``left`` what remains, ``releases`` how many DP
    releases were made to this peer.
    """

    peer: str
    epsilon: float | None
    delta: float | None
    spent: float
    left: float | None
    releases: int
    accountant: str = "rdp"


# ---------------------------------------------------------------------------- accountant


class Accountant:
    """The privacy spent by a sequence of (subsampled) Gaussian mechanisms.

    A thin layer over the RDP accountant (``mechanism="rdp"``) or the PRV accountant
    (``"prv"``) of the ``opacus`` package: bastion never computes epsilon by hand.
    ``history`` is ``[(noise_multiplier, sample_rate, steps), ...]``.

    >>> acc = Accountant()
    >>> acc.epsilon(delta=1e-5)
    0.0
    >>> acc.step(noise_multiplier=2.0, steps=3)
    >>> acc.history
    [(2.0, 1.0, 3)]
    """

    MECHANISMS = ("rdp", "prv")

    def __init__(self, mechanism: str = "rdp") -> None:
        if mechanism not in self.MECHANISMS:
            raise ConfigurationError(
                f"the accountant is 'rdp' or 'prv', not {mechanism!r}"
            )
        self.mechanism = mechanism
        self.history: list[tuple[float, float, int]] = []

    def step(self, *, noise_multiplier: float, sample_rate: float = 1.0, steps: int = 1) -> None:
        """Account for ``steps`` Gaussian releases at ``noise_multiplier`` and ``sample_rate``."""
        if not (noise_multiplier > 0 and 0 < sample_rate <= 1 and steps >= 1):
            raise ConfigurationError(
                "step() needs noise_multiplier > 0, 0 < sample_rate <= 1 and steps >= 1"
            )
        entry = (float(noise_multiplier), float(sample_rate))
        if self.history and self.history[-1][:2] == entry:
            self.history[-1] = (*entry, self.history[-1][2] + steps)
        else:
            self.history.append((*entry, int(steps)))

    def epsilon(self, delta: float) -> float:
        """The epsilon spent so far at ``delta``."""
        return _epsilon(self.mechanism, self.history, delta)

    def epsilon_after(
        self, *, noise_multiplier: float, delta: float, sample_rate: float = 1.0, steps: int = 1
    ) -> float:
        """The epsilon that would be spent after ``steps`` more releases (nothing is spent)."""
        preview = Accountant(self.mechanism)
        preview.history = list(self.history)
        preview.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        return preview.epsilon(delta)

    def __repr__(self) -> str:
        return f"Accountant({self.mechanism!r}, history={self.history})"


def _epsilon(mechanism: str, history: list[tuple[float, float, int]], delta: float) -> float:
    if not history:
        return 0.0
    # Imported here: the accountant package takes about two seconds to import.
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism)
    accountant.history = list(history)
    with warnings.catch_warnings():
        # "Optimal order is the smallest alpha": a fact about tiny noise, not a failure.
        warnings.filterwarnings("ignore", "Optimal order", UserWarning)
        if mechanism == "prv":
            import numpy as np

            with np.errstate(divide="ignore"):  # log(0) at sample rate 1, masked out inside
                return float(accountant.get_epsilon(delta=delta, eps_error=0.01))
        return float(accountant.get_epsilon(delta=delta))


# ---------------------------------------------------------------------- the mechanism


def _generator() -> torch.Generator:
    """A fresh generator seeded from the operating system: noise nobody can predict."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def gaussian_release(
    values: list[torch.Tensor], clip: float, noise_multiplier: float
) -> list[torch.Tensor]:
    """Clip ``values``, taken together as one vector, to L2 norm ``clip``, and add Gaussian
    noise of standard deviation ``noise_multiplier * clip`` to every element.

    Floating tensors keep their dtype; other tensors come back as float32.

    >>> out = gaussian_release([torch.tensor([30.0, 40.0])], clip=5.0, noise_multiplier=1e-9)
    >>> [round(v, 3) for v in out[0].tolist()]
    [3.0, 4.0]
    """
    work = [v.detach().to(torch.float64).reshape(-1) for v in values]
    flat = torch.cat(work) if work else torch.zeros(0, dtype=torch.float64)
    norm = float(torch.linalg.vector_norm(flat)) if flat.numel() else 0.0
    if norm > clip:
        flat = flat * (clip / norm)
    noise = torch.normal(0.0, noise_multiplier * clip, flat.shape, dtype=torch.float64,
                         generator=_generator())  # fmt: skip
    flat = flat + noise
    out, offset = [], 0
    for value in values:
        size = value.numel()
        dtype = value.dtype if value.is_floating_point() else torch.float32
        out.append(flat[offset : offset + size].reshape(value.shape).to(dtype))
        offset += size
    return out


__all__ = [
    "Accountant",
    "Allow",
    "Budget",
    "BudgetReport",
    "DP",
    "Deny",
    "ReleasePolicy",
    "as_policy",
    "gaussian_release",
    "policy_from_json",
]
