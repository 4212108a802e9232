"""``bastion demo federated``: the digits example from the command line, with or without
differential privacy.

Without ``dp`` the data scientist sends the shards herself and trains with FedAvg (or
FedProx, FedAdam). With ``dp`` the data owners register their shards private first, and the
scientist, connected as a peer of her own, trains with ``DPFedAvg``:

- ``dp_side="server"``: the owners' release policy is ``allow`` (each clipped update that
  leaves is a ``release`` event); the noise is added to the aggregate here;
- ``dp_side="client"``: the owners require ``DP(noise_multiplier, clip)``; each worker adds
  the noise to the update it releases and spends the scientist's budget.

Each round prints the accuracy on the held-out digits and the epsilon spent (at delta 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable

from bastion.errors import ConfigurationError
from bastion.federated.digits import digits_workers, private_digits, run_digits
from bastion.federated.privacy import DPFedAvg
from bastion.federated.strategies import FedAdam, FedAvg, FedProx, Strategy
from bastion.privacy import DP, Budget

__all__ = ["run_federated_demo"]

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx,
                                         "fedadam": FedAdam}  # fmt: skip


def run_federated_demo(
    *,
    rounds: int = 20,
    n_workers: int = 10,
    transport: str = "memory",
    style: str = "fast",
    split: str = "iid",
    strategy: str = "fedavg",
    dp: bool = False,
    dp_side: str = "server",
    noise_multiplier: float = 1.0,
    clip: float = 0.3,
    target_epsilon: float | None = None,
    echo: Callable[[str], object] = print,
) -> float:
    """Run the demo, one line per round through ``echo``; returns the final accuracy.

    >>> lines = []
    >>> accuracy = run_federated_demo(rounds=2, n_workers=2, dp=True, echo=lines.append)
    >>> lines[0]
    'digits: 2 memory workers, fast way, iid split, private data (release policy allow)'
    >>> [line.split("epsilon")[1].split()[0] for line in lines if "epsilon " in line]
    ['4.729', '7.077']
    """
    if strategy not in STRATEGIES:
        raise ConfigurationError(f"strategy is one of {sorted(STRATEGIES)}, not {strategy!r}")
    if dp and transport not in ("memory", "tcp"):
        raise ConfigurationError(
            f"--dp runs on workers whose owners register data in this process: transport is "
            f"'memory' or 'tcp', not {transport!r}"
        )
    chosen = STRATEGIES[strategy]()
    if not dp:
        echo(f"digits: {n_workers} {transport} workers, {style} way, {split} split, {chosen!r}")
        with digits_workers(n_workers, transport) as workers:
            history = run_digits(workers, rounds=rounds, style=style, split=split,
                                 strategy=chosen, progress=False, echo=echo)  # fmt: skip
    else:
        dp_strategy = DPFedAvg(noise_multiplier, clip, side=dp_side,
                               target_epsilon=target_epsilon, strategy=chosen)  # fmt: skip
        policy = "allow" if dp_side == "server" else DP(noise_multiplier=noise_multiplier,
                                                        clip=clip)  # fmt: skip
        budget = Budget(epsilon=target_epsilon or 1e6, delta=dp_strategy.delta)
        shown = "allow" if policy == "allow" else f"dp, z={noise_multiplier:g}, clip={clip:g}"
        echo(f"digits: {n_workers} {transport} workers, {style} way, {split} split, private "
             f"data (release policy {shown})")  # fmt: skip
        echo(f"training with {dp_strategy!r}")
        with private_digits(n_workers, transport, policy=policy, budget=budget,
                            split=split) as (owners, data):  # fmt: skip
            history = run_digits([], rounds=rounds, style=style, strategy=dp_strategy,
                                 progress=False, echo=echo, data=data)  # fmt: skip
            releases = sum(len(owner.log.events(kind="release")) for owner in owners)
            echo(f"the owners' logs: {releases} release events")
    if not len(history):
        raise ConfigurationError("no round ran: the target epsilon is below one round's")
    final = history[-1].accuracy
    echo(f"final accuracy {final:.4f} after {len(history)} rounds")
    return final
