"""The writer process behind batched SQLite-file logs: what it was handed survives a crash of
the worker, and a writer that dies or refuses hands its work back to the log, losing nothing."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bastion.errors import ConfigurationError
from bastion.stores import EventLog, expected_hash, verify, writer


def _rows(path: Path, worker: str) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "select seq, object_id from bastion_events where worker_id = ? order by seq", (worker,)
        ).fetchall()


def _serve(messages: list[list]) -> list[tuple]:
    """Run the writer's loop in this process on ``messages``; its replies."""
    stream = b"".join(struct.pack(">I", len(body)) + body for body in map(writer.pack, messages))
    out = io.BytesIO()
    writer.serve(io.BytesIO(stream), out)
    replies, reader = [], writer._Frames(io.BytesIO(out.getvalue()))
    while (reply := reader.next()) is not None:
        replies.append(reply)
    return replies


def _wait_for_rows(path: Path, worker: str, count: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and len(_rows(path, worker)) >= count:
            return
        time.sleep(0.02)


def test_what_was_handed_over_survives_a_sigkill_of_the_worker(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    script = textwrap.dedent(f"""
        import time
        from bastion.stores import EventLog
        log = EventLog({str(path)!r}, "crash", flush_interval=0.05)
        for i in range(1500):
            log.append("create", object_id=i)
        time.sleep(0.5)  # three batches: two full ones, then the flusher hands over the rest
        print(log.writer_pid, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        writer_pid = int(child.stdout.readline())  # type: ignore[union-attr]
        assert writer_pid != child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    _wait_for_rows(path, "crash", 1500)
    assert _rows(path, "crash") == [(i + 1, i) for i in range(1500)]
    assert verify(path).ok


def test_a_killed_writer_hands_its_batches_back_and_the_log_writes_inline(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLog(path, "w", flush_interval=60) as log:
        for i in range(10):
            log.append("create", object_id=i)
        log.flush()
        assert len(_rows(path, "w")) == 10
        os.kill(log.writer_pid, signal.SIGKILL)  # type: ignore[arg-type]
        for i in range(10, 20):
            log.append("create", object_id=i)
        log.flush()
        assert log.writer_pid is None
        for i in range(20, 25):
            log.append("create", object_id=i)
        assert [e.object_id for e in log.events()] == list(range(25))
    assert verify(path).ok
    with EventLog(path, "fresh") as other:  # a new log starts a new writer process
        other.append("create", object_id=1)
        other.flush()
        assert other.writer_pid is not None
    assert _rows(path, "fresh") == [(1, 1)]


def test_taking_over_skips_what_the_writer_committed_without_answering(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLog(path, "w", flush_interval=60) as log:
        for i in range(5):
            log.append("create", object_id=i)
        queued = list(log._pending)
        log.flush()
        # As if the writer had died after committing, before its reply arrived:
        log._pending[:0] = queued[2:]
        log._last_hash = "stale"
        log._resync()
        assert log._pending == [] and log._last_hash == log.events()[-1].hash
        log.append("create", object_id=5)
    assert verify(path).ok and len(_rows(path, "w")) == 6


def test_a_foreign_row_at_a_queued_seq_is_not_mistaken_for_ours(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLog(path, "w", flush_interval=60, writer=False) as log:
        log.append("create", object_id=1)
        queued = list(log._pending)
    with EventLog(path, "w", flush_interval=60) as log:  # seq 1 is taken by another event
        log._pending[:0] = [(1, *queued[0][1:3], 99, *queued[0][4:])]
        log._resync()
        assert [event[0] for event in log._pending] == [1]
        log._pending.clear()


def test_observers_get_the_written_events_with_their_hashes(tmp_path: Path) -> None:
    seen = []
    with EventLog(tmp_path / "e.db", "w", observer=lambda build: seen.extend(build())) as log:
        for i in range(3):
            log.append("create", object_id=i, detail={"n": i})
        log.flush()
        assert seen == log.events()
    assert [e.detail for e in seen] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(e.hash == expected_hash(e) for e in seen)


@pytest.mark.parametrize(
    ("url", "durability"),
    [("sqlite:///:memory:", "batched"), ("sqlite:///{tmp}/e.db?timeout=1", "batched"),
     (None, "strict"), ("{tmp}/e.db", "strict")],  # fmt: skip
)
def test_a_writer_only_for_a_batched_log_in_a_plain_sqlite_file(tmp_path, url, durability):
    url = url and url.format(tmp=tmp_path)
    with EventLog(url, "w", durability=durability) as log:
        assert log.writer_pid is None
    with pytest.raises(ConfigurationError, match="writer=True needs"):
        EventLog(url, "w2", durability=durability, writer=True)


def test_the_writer_loop_commits_every_batch_and_acknowledges_each_once(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    EventLog(path, "w", writer=False).close()  # the schema
    batches = [[(seq, 1.5 + seq, "create", seq, "me", "send", None, (), "float32", (2,), None,
                 None) for seq in range(start, start + 3)] for start in (1, 4, 7)]  # fmt: skip
    messages = [["open", 1, str(path), "w", "", 5.0, False]]
    messages += [["batch", 1, batch, (), (), 0] for batch in batches] + [["sync", 1]]
    messages += [["batch", 2, batches[0], (), (), 0], ["close", 1]]  # key 2 was never opened
    replies = _serve(messages)
    oks = [r for r in replies if r[0] == "ok"]
    _, last = writer.encode_rows("w", "", [event for batch in batches for event in batch])
    assert sum(r[4] for r in oks) == 3 and oks[-1][2] == last
    assert replies[-2][:2] == ("error", 2) and replies[-1] == ("closed", 1)
    assert [seq for seq, _ in _rows(path, "w")] == list(range(1, 10))
    assert verify(path).ok


def test_a_child_that_is_not_a_writer_is_stopped_and_the_log_writes_inline(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(writer, "START_TIMEOUT", 0.5)
    monkeypatch.setattr(writer, "__file__", str(tmp_path / "sleeps.py"))
    (tmp_path / "sleeps.py").write_text("import time\ntime.sleep(30)\n")
    monkeypatch.setattr(writer, "_channel", None)
    monkeypatch.setattr(writer, "_unavailable", None)
    with EventLog(tmp_path / "e.db", "w") as log:
        assert log.writer_pid is None
        log.append("create", object_id=1)
    assert _rows(tmp_path / "e.db", "w") == [(1, 1)]
    start = time.monotonic()
    with EventLog(tmp_path / "e2.db", "w") as log:  # not tried again in this process
        assert log.writer_pid is None and time.monotonic() - start < 0.4


def test_the_environment_can_turn_the_writer_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BASTION_EVENTLOG_WRITER", "0")
    with EventLog(tmp_path / "e.db", "w") as log:
        assert log.writer_pid is None


def test_a_private_log_lives_in_a_temporary_file_deleted_at_close() -> None:
    with EventLog(None, "w") as log:
        folder = Path(log._temp_path).parent  # type: ignore[arg-type]
        assert log.url == "sqlite://" and log.writer_pid is not None and not log.payloads
        assert folder.stat().st_mode & 0o777 == 0o700
        log.append("create", object_id=1)
        assert [e.object_id for e in log.events()] == [1]
    assert not folder.exists()
    with EventLog(None, "w", writer=False) as log:  # a real in-memory database
        assert log._temp_path is None and log.writer_pid is None


def test_a_private_log_is_deleted_when_its_process_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os, time
        from bastion.stores import EventLog
        log = EventLog(None, "gone")
        log.append("create", object_id=1)
        log.flush()
        print(os.path.dirname(log._temp_path), flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        folder = Path(child.stdout.readline().strip())  # type: ignore[union-attr]
        assert (folder / "events.db").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 20
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not folder.exists()


def test_the_writer_keeps_a_bounded_number_of_files_open(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(writer, "MAX_OPEN", 2)
    paths = [tmp_path / f"{i}.db" for i in range(3)]
    for path in paths:
        EventLog(path, "w", writer=False).close()
    messages = [["open", i, str(path), "w", "", 5.0, False] for i, path in enumerate(paths)]
    for seq in (1, 2):  # every file twice: the third open closes the first, which reopens
        messages += [["batch", i, [(seq, float(seq), "create", seq, None, "send", None, (), None,
                                    None, None, None)], (), (), writer.SYNC]
                     for i in range(3)]  # fmt: skip
    replies = _serve(messages)
    assert [r[0] for r in replies] == ["ready"] + ["ok"] * 6
    for path in paths:
        assert _rows(path, "w") == [(1, 1), (2, 2)] and verify(path).ok


def test_private_logs_hold_no_file_open_in_the_workers_process() -> None:
    import torch

    import bastion as sy

    before = len(os.listdir("/proc/self/fd"))
    workers = [sy.VirtualWorker(id=f"fds-{i}") for i in range(20)]
    for worker in workers:
        assert torch.equal((worker.send(torch.ones(2)) * 2).get(), torch.full((2,), 2.0))
        assert [e.kind for e in worker._worker.log.events()][:2] == ["create", "create"]
    assert len(os.listdir("/proc/self/fd")) - before < 5
    for worker in workers:
        worker.close()


def test_a_forked_child_leaves_its_parents_logs_alone(tmp_path: Path) -> None:
    from bastion.errors import EventLogError
    from bastion.stores import flusher

    private = EventLog(None, "parent-private", flush_interval=60)
    shared = EventLog(tmp_path / "e.db", "parent-file", flush_interval=60)
    for log in (private, shared):
        log.append("create", object_id=1)  # queued, not written yet
    pid = os.fork()
    if pid == 0:  # the child: what its exit would do, then out without pytest's machinery
        code = 3
        try:
            shared.append("create", object_id=2)
        except EventLogError:
            code = 7
        flusher._flush_all()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    assert Path(private._temp_path).exists()  # type: ignore[arg-type]
    for log in (private, shared):
        assert [e.object_id for e in log.events()] == [1]
        log.close()
    assert verify(tmp_path / "e.db").ok
