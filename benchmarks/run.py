"""bastion's benchmarks: every figure beside a baseline measured in the same run, as a ratio.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/run.py [--quick]``). Figures are
medians of several repeats; the audit log is on (its default: in-memory SQLite, batched).
Benchmarks are not tests: nothing here asserts on time.

Targets (issue: the foundation):
- pointer op ``x + y`` on small tensors: overhead under 25 µs over plain torch;
- send + get of 64 MiB: under 3x ``tensor.clone()``.
"""

from __future__ import annotations

import argparse

import torch
from harness import median_seconds, row

import bastion as sy


def bench_pointer_op(number: int, repeat: int) -> None:
    print("pointer op: x + y on two 2-element float tensors")
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    plain = median_seconds(lambda: a + b, number * 10, repeat)
    row("plain torch a + b", plain, "plain torch", plain)
    for serialize in (False, True):
        worker = sy.VirtualWorker(id=f"bench-op-{int(serialize)}", serialize=serialize)
        x, y = worker.send(a), worker.send(b)
        seconds = median_seconds(lambda x=x, y=y: x + y, number, repeat)
        label = "VirtualWorker serialize=True" if serialize else "VirtualWorker (direct)"
        row(label, seconds, "plain torch", plain)
        print(f"  {'':<44} overhead {(seconds - plain) * 1e6:8.2f} us per op (target < 25 us)")
        worker.close()


def bench_send_get(repeat: int, big_mib: int) -> None:
    print("send + get round trip")
    for label, numel in (("1 KiB", 256), (f"{big_mib} MiB", big_mib * 2**20 // 4)):
        tensor = torch.randn(numel)
        number = 2000 if numel < 10_000 else 3
        clone = median_seconds(tensor.clone, number, repeat)
        for serialize in (False, True):
            worker = sy.VirtualWorker(id=f"bench-sg-{int(serialize)}", serialize=serialize)
            seconds = median_seconds(
                lambda w=worker, t=tensor: w.send(t).get(), number, repeat
            )
            mode = "serialized" if serialize else "direct"
            unit = "us" if numel < 10_000 else "ms"
            row(f"{label} send+get ({mode})", seconds, "tensor.clone()", clone, unit)
            worker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 16 MiB")
    args = parser.parse_args()
    number, repeat, big = (2000, 3, 16) if args.quick else (20000, 7, 64)
    print(f"bastion {sy.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    bench_pointer_op(number, repeat)
    bench_send_get(repeat, big)


if __name__ == "__main__":
    main()
