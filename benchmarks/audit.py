"""``bastion audit`` on a 1M-event log: each command beside a raw sqlite3 baseline.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/audit.py [--events N]``). The log is
written once by two real ``EventLog``s sharing one SQLite file (M1 sends, computes, fetches,
deletes and moves objects to M2, which computes on them and fetches them back: ~13 events a
round, plus a long-lived "weights" object used by every 100th round) and kept under the
system's temporary folder (``bastion-bench-audit-<N>.db``) for the next run: building 1M events
takes ~30-60 s here. Commands are timed in this process through the click runner (what a user
waits for once Python and bastion are imported); the first line says how long importing takes.

Targets (issue: the audit-log inspection tool): ``events --limit 50``, ``lineage`` and
``stats`` under 1 s each; ``verify`` at least 200,000 events/s.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

from click.testing import CliRunner
from harness import median_seconds, row

from bastion.cli import cli
from bastion.stores import EventLog

MOVE = '{{"destination":"memory://bench-M2","new_id":{},"requested_by":"me"}}'


def build(path: str, events: int) -> None:
    """Write about ``events`` events as two workers would (fake digests, real hash chain)."""
    m1 = EventLog(path, "bench-M1", batch_size=20_000, flush_interval=3600)
    m2 = EventLog(path, "bench-M2", batch_size=20_000, flush_interval=3600)
    r1, r2 = m1.record, m2.record
    weights = 1
    r1("create", weights, "me", "send", None, (), "float32", (256, 256), f"{weights:064x}", None)
    oid = 10
    count = 1
    while count < events:
        a, b, c, d, e = oid, oid + 1, oid + 2, oid + 3, oid + 4
        oid += 5
        r1("create", a, "me", "send", None, (), "float32", (64,), f"{a:064x}", None)
        r1("create", b, "me", "send", None, (), "float32", (64,), f"{b:064x}", None)
        inputs = (a, b, weights) if a % 500 == 0 else (a, b)
        r1("create", c, "me", "op", "Tensor.add", inputs, "float32", (64,), f"{c:064x}", None)
        r1("create", d, "me", "op", "Tensor.mul", (c,), "float32", (64,), f"{d:064x}", None)
        r1("get", d, "me", None, None, (), None, None, f"{d:064x}", None)
        r1("delete", a, "me", None, None, (), None, None, None, None)
        r2("create", b, "bench-M1", "move", None, (), "float32", (64,), f"{b:064x}", None)
        r1("move", b, "bench-M2", None, None, (), None, None, f"{b:064x}", MOVE.format(b))
        r2("create", e, "me", "op", "Tensor.sum", (b,), "float32", (), f"{e:064x}", None)
        r2("get", e, "me", None, None, (), None, None, f"{e:064x}", None)
        r2("delete", b, "me", None, None, (), None, None, None, None)
        r1("delete", c, "me", None, None, (), None, None, None, None)
        r1("denied", None, "mallory", None, "Tensor.numpy", (), None, None, None,
           '{"request":"run","why":"not a torch operation"}')  # fmt: skip
        count += 13
    m1.close()
    m2.close()


def cached_log(events: int) -> str:
    path = os.path.join(tempfile.gettempdir(), f"bastion-bench-audit-{events}.db")
    if os.path.exists(path):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            have = conn.execute("select count(*) from bastion_events").fetchone()[0]
        if have >= events:
            print(f"log: {path} ({have} events, cached from an earlier run)")
            return path
        os.remove(path)
    start = time.perf_counter()
    build(path, events)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        have = conn.execute("select count(*) from bastion_events").fetchone()[0]
    print(
        f"log: {path} ({have} events, built in {time.perf_counter() - start:.1f} s; "
        "kept for the next run)"
    )
    return path


def command(*args: object) -> float:
    """Seconds one ``bastion audit ...`` takes in this process (it must succeed)."""
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["audit", *map(str, args)])
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"bastion audit {args} failed: {result.output}")
    return seconds


def raw(path: str, sql: str, *params: object) -> float:
    """Seconds for a raw sqlite3 query that reads every row it returns."""
    start = time.perf_counter()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        for _ in conn.execute(sql, params):
            pass
    return time.perf_counter() - start


def median(fn, repeat: int) -> float:
    return median_seconds(fn, number=1, repeat=repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    path = cached_log(args.events)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        total = conn.execute("select count(*) from bastion_events").fetchone()[0]
        middle = conn.execute("select object_id from bastion_events where worker_id = 'bench-M1' "
                              "and kind = 'move' and seq > ? order by seq limit 1",
                              (total // 4,)).fetchone()[0]  # fmt: skip
    subprocess.run([sys.executable, "-c", "import bastion.cli"], check=True)  # warm the cache
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import bastion.cli"], check=True)
    print(
        f"importing bastion.cli in a fresh interpreter: {time.perf_counter() - start:.2f} s "
        "(not counted below)"
    )
    repeat = args.repeat
    print(f"bastion audit on {total} events, medians of {repeat} (target: under 1 s each)")
    table = "select * from bastion_events where worker_id = ?"
    checks = [
        ("events --limit 50", lambda: command("events", path, "--limit", 50),
         "sqlite3: 50 rows in order", lambda: raw(path, table + " order by seq limit 50",
                                                  "bench-M1")),
        ("events --newest-first --limit 50",
         lambda: command("events", path, "--newest-first", "--limit", 50),
         "sqlite3: 50 rows, newest", lambda: raw(path, table + " order by seq desc limit 50",
                                                 "bench-M1")),
        ("events --kind move --limit 50", lambda: command("events", path, "-k", "move", "-n", 50),
         "sqlite3: 50 rows in order", lambda: raw(path, table + " order by seq limit 50",
                                                  "bench-M1")),
        (f"lineage {middle} (moved to M2)", lambda: command("lineage", path, middle),
         "sqlite3: its events", lambda: raw(path, table + " and object_id = ?", "bench-M1",
                                            middle)),
        ("lineage 1 (weights, used all along)",
         lambda: command("lineage", path, 1, "--max-nodes", 500),
         "sqlite3: its events", lambda: raw(path, table + " and object_id = 1", "bench-M1")),
        ("stats", lambda: command("stats", path),
         "sqlite3: group by kind", lambda: raw(path, "select kind, count(*) from bastion_events "
                                                     "group by kind")),
        ("replay --at <middle seq> (metadata)",
         lambda: command("replay", path, "-w", "bench-M1", "--at", total // 4),
         "sqlite3: those rows", lambda: raw(path, table + " and seq <= ?", "bench-M1",
                                            total // 4)),
    ]  # fmt: skip
    for name, fn, base_name, base in checks:
        seconds, baseline = median(fn, repeat), median(base, repeat)
        row(name, seconds, base_name, baseline, unit="ms", width=38)
        if not name.startswith(("replay", "events --kind", "events --newest")):
            print(f"  {'':<38} target < 1 s: {'met' if seconds < 1 else 'MISSED'}")
    print("verify: the hash chain of every event (bastion.stores.verify)")
    seconds = median(lambda: command("verify", path), min(repeat, 3))
    baseline = median(lambda: raw(path, "select * from bastion_events order by worker_id, seq"),
                      min(repeat, 3))  # fmt: skip
    row("verify", seconds, "sqlite3: read all rows", baseline, unit="ms", width=38)
    rate = total / seconds
    print(
        f"  {'':<38} {rate:,.0f} events/s (raw read {total / baseline:,.0f}/s); target "
        f">= 200,000: {'met' if rate >= 200_000 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
