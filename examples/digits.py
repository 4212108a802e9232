"""The digits example: ``python -m examples.digits`` from the repository root.

FedAvg on scikit-learn's handwritten digits, split across workers that keep their shard;
each round prints the held-out accuracy. The same as ``bastion demo federated``.
"""

from __future__ import annotations

import argparse

from bastion.federated import FedAdam, FedAvg, FedProx
from bastion.federated.digits import digits_workers, run_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--transport", choices=["memory", "tcp", "shm"], default="memory")
    parser.add_argument("--style", choices=["fast", "pointers"], default="fast")
    parser.add_argument("--split", choices=["iid", "label"], default="iid")
    parser.add_argument("--strategy", choices=["fedavg", "fedprox", "fedadam"], default="fedavg")
    args = parser.parse_args()
    strategy = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}[args.strategy]()
    with digits_workers(args.workers, args.transport) as workers:
        history = run_digits(workers, rounds=args.rounds, style=args.style, split=args.split,
                             strategy=strategy, echo=print)  # fmt: skip
    print(f"final accuracy {history[-1].accuracy:.4f}")


if __name__ == "__main__":
    main()
