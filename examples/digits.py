"""The digits example: ``python examples/digits.py`` from the repository root.

FedAvg on scikit-learn's handwritten digits, split across workers that keep their shard;
each round prints the held-out accuracy. With ``--dp`` the owners register their shards
private and the training is DP-FedAvg, printing the epsilon spent after each round. The same
as ``bastion demo federated``.
"""

from __future__ import annotations

import argparse

from bastion.federated.demo import run_federated_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--transport", choices=["memory", "tcp", "shm"], default="memory")
    parser.add_argument("--style", choices=["fast", "pointers"], default="fast")
    parser.add_argument("--split", choices=["iid", "label"], default="iid")
    parser.add_argument("--strategy", choices=["fedavg", "fedprox", "fedadam"], default="fedavg")
    parser.add_argument("--dp", action="store_true", help="DP-FedAvg on private data")
    parser.add_argument("--dp-side", choices=["server", "client"], default="server")
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=0.3)
    parser.add_argument("--target-epsilon", type=float, default=None)
    args = parser.parse_args()
    run_federated_demo(rounds=args.rounds, n_workers=args.workers, transport=args.transport,
                       style=args.style, split=args.split, strategy=args.strategy, dp=args.dp,
                       dp_side=args.dp_side, noise_multiplier=args.noise_multiplier,
                       clip=args.clip, target_epsilon=args.target_epsilon)  # fmt: skip


if __name__ == "__main__":
    main()
