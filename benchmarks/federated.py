"""Federated learning benchmark: the digits FedAvg (10 workers, MLP 64-64-10, SGD lr 0.1,
batch 32, one local epoch per round, 20 rounds), bastion against the same FedAvg in plain
PyTorch in one process (``bastion.federated.digits.reference_fedavg``), as ratios.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/federated.py [--quick]``). Each
figure is the median time of whole 20-round trainings after one warm-up training, timed in
turn with the plain-PyTorch run it is compared with; the data is already on the workers
(sending it is setup, not training). Nothing here asserts on time.

Targets (issue 6): the fast way (one shipped function call per worker and round) within
1.5x of plain PyTorch on in-memory workers, within 3x on TCP workers; the PySyft way
(pointers, op by op) is reported too.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable

# Ten worker processes share this machine's cores: one thread each (inherited by the spawned
# workers), and the same for the plain-PyTorch baseline, whose tiny ops gain nothing from more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from harness import row  # noqa: E402

import bastion as sy  # noqa: E402
from bastion.federated import BaseDataset, FedAvg, FederatedTrainer  # noqa: E402
from bastion.federated import digits as d  # noqa: E402


def bastion_run(workers: list, style: str, rounds: int,
                data: tuple) -> tuple[Callable[[], None], list[float]]:  # fmt: skip
    """A function running one whole training on ``workers``, and the accuracies it saw."""
    x_train, y_train, x_test, y_test = data
    fd = BaseDataset(x_train, y_train).federate(workers, shards=d.shards(y_train, len(workers)))
    accuracies: list[float] = []

    def train() -> None:
        trainer = FederatedTrainer(
            d.digits_model(0), fd, FedAvg(), rounds=rounds, batch_size=d.BATCH_SIZE, lr=d.LR,
            style=style, eval_data=(x_test, y_test), progress=False,
        )  # fmt: skip
        with trainer:
            accuracies.append(trainer.fit()[-1].accuracy)

    return train, accuracies


def interleaved(baseline: Callable[[], object], fn: Callable[[], object],
                repeat: int) -> tuple[float, float]:  # fmt: skip
    """Medians of ``repeat`` timings of each, taken in turn: load on a shared machine then
    weighs on both alike. One untimed call of each first (warm-up)."""
    baseline()
    fn()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for out, f in zip(times, (baseline, fn)):
            gc.collect()
            start = time.perf_counter()
            f()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--rounds", type=int, default=d.ROUNDS)
    parser.add_argument("--workers", type=int, default=d.WORKERS)
    parser.add_argument("--transports", default="memory,memory-serialized,shm,tcp")
    parser.add_argument("--styles", default="fast,pointers")
    args = parser.parse_args()
    repeat = 3 if args.quick else 7
    rounds, n = args.rounds, args.workers
    print(
        f"bastion {sy.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch "
        f"threads, {os.cpu_count()} cores: digits FedAvg, {n} workers, {rounds} rounds"
    )
    print("each row: bastion and the plain-PyTorch FedAvg, timed in turn (medians)")
    data = d.load_digits_data()
    plain_accuracy: list[float] = []

    def plain() -> None:
        plain_accuracy.append(d.reference_fedavg(rounds, n, data=data)[-1])

    for transport in args.transports.split(","):
        kind, serialize = transport.removesuffix("-serialized"), transport.endswith("serialized")
        if kind == "memory":
            workers = [sy.VirtualWorker(id=f"bench-fl-{transport}-{i}", allow_code=True,
                                        serialize=serialize) for i in range(n)]  # fmt: skip
        else:
            workers = [sy.spawn(kind, id=f"bench-fl-{kind}-{i}-{os.getpid()}", allow_code=True)
                       for i in range(n)]  # fmt: skip
        try:
            for style in args.styles.split(","):
                train, accuracies = bastion_run(workers, style, rounds, data)
                times = repeat if style == "fast" else max(1, repeat // 3)
                baseline, seconds = interleaved(plain, train, times)
                row(f"{transport}, {style} way", seconds, "plain PyTorch", baseline, "ms")
                print(f"  {'':<44} final accuracy {accuracies[-1]:.4f} "
                      f"(plain PyTorch {plain_accuracy[-1]:.4f})")  # fmt: skip
        finally:
            for worker in workers:
                worker.close()


if __name__ == "__main__":
    main()
