"""The event store's costs, each beside a baseline measured in the same run, as a ratio.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/eventstore.py [--quick]``).

Targets (issue: the event-sourced object store):
- pointer ops with batched auditing cost under 15% more than with the audit log off;
- appends reach at least half the rate of raw ``sqlite3`` ``executemany`` of 1,000 rows
  per commit into the same table;
- replay reads at least 200,000 events per second.
Also measured: the payload digest (BLAKE3) against SHA-256 and ``tensor.clone()``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import statistics
import tempfile
import time
from typing import Any

import torch
from harness import median_seconds, row

import bastion as sy
from bastion.events import payload_digest, tensor_bytes
from bastion.messages import Create, Delete
from bastion.stores import EventLog, replay


def _silence(worker: sy.VirtualWorker) -> None:
    """The audit log off: nothing recorded, nothing stored (a baseline, not a setting)."""
    log = worker._worker.log
    log.record = lambda *args, **kwargs: 0
    log.store_payload = lambda digest, value: None


def _cpu_seconds(pid: int | None) -> float:
    """CPU time used so far by process ``pid`` (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def _timed_rounds(pairs: list[tuple[Any, Any]], rounds: int, per_round: int) -> list[float]:
    """Medians of ``rounds`` rounds of ``x + y`` on each pair in turn (after one warm-up)."""
    runs: list[list[float]] = [[] for _ in pairs]
    for x, y in pairs:
        for _ in range(per_round):
            x + y
    for _ in range(rounds):
        for times, (x, y) in zip(runs, pairs):
            start = time.perf_counter()
            for _ in range(per_round):
                x + y
            times.append((time.perf_counter() - start) / per_round)
    return [statistics.median(times) for times in runs]


def bench_ops(folder: str, number: int, repeat: int) -> None:
    print("pointer op x + y on 2-element tensors (per op)")
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    plain = median_seconds(lambda: a + b, number * 10, repeat)
    off_worker = sy.VirtualWorker(id="bench-ops-off")
    _silence(off_worker)
    off_pair = (off_worker.send(a), off_worker.send(b))
    setups = [
        ("batched, private log (the default)", {}),
        ("batched, SQLite file + payloads", {"db": os.path.join(folder, "ops-b.db")}),
        ("batched, in-memory database, inline", {"inline": True}),
    ]
    rounds, per_round = max(repeat * 6, 10), max(number // 10, 500)
    # Each setup in rounds alternating with the log off, so both see the machine alike.
    for i, (label, options) in enumerate(setups):
        if options.pop("inline", False):  # the log as it is without a writer process
            os.environ["BASTION_EVENTLOG_WRITER"] = "0"
        worker = sy.VirtualWorker(id=f"bench-ops-{i}", **options)
        os.environ.pop("BASTION_EVENTLOG_WRITER", None)
        pid = worker._worker.log.writer_pid
        cpu = _cpu_seconds(pid)
        off, seconds = _timed_rounds([off_pair, (worker.send(a), worker.send(b))], rounds,
                                     per_round)  # fmt: skip
        worker._worker.log.flush()
        row(label, seconds, "plain torch", plain)
        row(f"  {label}", seconds, "audit log off", off)
        if pid is not None:
            spent = (_cpu_seconds(pid) - cpu) / ((rounds + 1) * per_round)
            print(
                f"  {'  its writer process, CPU per op':<44} {spent * 1e6:10.2f} us "
                "(on another CPU; 2 events per op)"
            )
        worker.close()
    label = "strict, SQLite file + payloads"
    worker = sy.VirtualWorker(id="bench-ops-strict", db=os.path.join(folder, "ops-s.db"),
                              durability="strict")  # fmt: skip
    x, y = worker.send(a), worker.send(b)
    seconds = median_seconds(lambda: x + y, max(number // 20, 20), repeat)
    row(label, seconds, "plain torch", plain)
    row(f"  {label}", seconds, "audit log off", off)
    worker.close()
    off_worker.close()
    print("  target: batched <= 1.15x audit log off")


def _raw_sqlite(path: str, sql: str, rows: list[tuple]) -> float:
    """Raw ``sqlite3``: the same rows into the same table, 1,000 per commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    start = time.perf_counter()
    for i in range(0, len(rows), 1000):
        conn.execute("BEGIN")
        conn.executemany(sql, rows[i : i + 1000])
        conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


def bench_appends(folder: str, n: int) -> None:
    print(f"appending {n:,} create events (per event)")
    digest, detail = "ab" * 32, '{"payload":"db"}'
    times = {}
    for writer in (False, True):
        name = "appends-writer.db" if writer else "appends.db"
        log = EventLog(os.path.join(folder, name), "M1", batch_size=1000, writer=writer)
        record = log.record
        start = time.perf_counter()
        for seq in range(1, n + 1):
            record("create", 10**9 + seq, "me", "op", "add", (1, 2), "float32", (2,), digest,
                   detail)  # fmt: skip
        log.flush()
        times[writer] = (time.perf_counter() - start) / n
        log.close()
    # The baseline writes the very rows the log wrote (hashes included) into an empty copy
    # of the same table, with its primary key and index.
    empty = os.path.join(folder, "raw.db")
    EventLog(empty, "M1").close()
    with sqlite3.connect(os.path.join(folder, "appends.db")) as conn:
        rows = conn.execute("select * from bastion_events order by seq").fetchall()
    raw = _raw_sqlite(empty, log._insert_sql, rows) / n
    for writer, label in ((False, "inline"), (True, "writer process")):
        seconds = times[writer]
        row(f"EventLog.record + flush, {label}", seconds, "raw sqlite3 1000/commit", raw)
        print(
            f"  {'':<44} {1 / seconds:10,.0f} events/s vs {1 / raw:,.0f} raw "
            f"(rate ratio {raw / seconds:.2f}, target >= 0.5)"
        )


def bench_replay(folder: str, n: int) -> None:
    print(f"replay of a {n:,}-event log (per event)")
    path = os.path.join(folder, "replay.db")
    worker = sy.Worker("R1", db=path, snapshot_every=None)
    for i in range(n // 2):
        spec = worker.handle(Create(torch.tensor([float(i)])), "me").value
        if i % 100:  # most are deleted again, one in a hundred stays
            worker.handle(Delete([spec.id]), "me")
    worker.close()
    events = n // 2 + (n // 2 - n // 200)
    start = time.perf_counter()
    state = replay(path)
    seconds = time.perf_counter() - start
    print(
        f"  replay: {events:,} events, {len(state):,} objects in {seconds:.2f} s = "
        f"{events / seconds:,.0f} events/s (target >= 200,000)"
    )


def bench_digest(repeat: int) -> None:
    print("payload digest (per tensor)")
    for label, numel in (("1 KiB", 256), ("64 MiB", 16 * 2**20)):
        t = torch.randn(numel)
        number = 2000 if numel < 10_000 else 3
        unit = "us" if numel < 10_000 else "ms"
        clone = median_seconds(t.clone, number, repeat)
        blake = median_seconds(lambda t=t: payload_digest(t), number, repeat)
        sha = median_seconds(lambda t=t: hashlib.sha256(tensor_bytes(t)).hexdigest(), number,
                             repeat)  # fmt: skip
        row(f"{label} BLAKE3 (bastion's digest)", blake, "tensor.clone()", clone, unit)
        row(f"{label} SHA-256", sha, "tensor.clone()", clone, unit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations and events")
    args = parser.parse_args()
    number, repeat, events = (2000, 3, 100_000) if args.quick else (20_000, 5, 400_000)
    print(f"bastion {sy.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        bench_ops(folder, number, repeat)
        bench_appends(folder, events)
        bench_replay(folder, events)
        bench_digest(repeat)


if __name__ == "__main__":
    main()
