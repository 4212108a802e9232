"""The event log: numbering, the hash chain, durability modes, sharing one database, errors.

``EventLogContract`` holds the tests any backend must pass; a backend subclasses it and says how
to make a fresh URL. The functions after it check SQLite specifics with a second ``sqlite3``
connection, the way another process would see the file.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sqlite3
import threading
import time
from pathlib import Path

import blake3
import msgpack
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.errors import ConfigurationError, EventLogError
from bastion.events import Event
from bastion.stores import HASHED_FIELDS, EventLog, event_hash, expected_hash


def assert_chain(events: list[Event]) -> None:
    """Every event links to the one before it and carries the hash of its own fields."""
    prev = ""
    for event in events:
        assert event.prev_hash == prev, f"seq {event.seq} does not link to the event before it"
        assert event.hash == expected_hash(event), f"seq {event.seq} was altered"
        prev = event.hash


def rows_seen_by_sqlite3(path: Path, worker: str = "w") -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT seq, kind, object_id FROM bastion_events WHERE worker_id = ? ORDER BY seq",
            (worker,),
        ).fetchall()


class EventLogContract:
    """What every database behind ``EventLog`` must do; subclasses define ``make_url``."""

    durability = "batched"

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return self.make_url(tmp_path)

    def make_url(self, tmp_path: Path) -> str:
        raise NotImplementedError

    def open(self, url: str, worker: str, **options: object) -> EventLog:
        return EventLog(url, worker, durability=self.durability, **options)

    def test_fields_round_trip(self, url: str) -> None:
        with self.open(url, "w") as log:
            before = time.time()
            seq = log.append(
                "create", object_id=7, peer="bob", origin="op", op="add", inputs=[3, 4],
                dtype="float32", shape=torch.Size([2, 3]), digest="d" * 64,
                detail={"b": [1], "a": 1.5},
            )  # fmt: skip
            assert log.append("delete", object_id=7) == seq + 1
            assert log.append("create", object_id=8, shape=()) == seq + 2
            first, second, third = log.events()
        assert first == Event(
            seq=1, ts=first.ts, worker="w", kind="create", object_id=7, peer="bob", origin="op",
            op="add", inputs=(3, 4), dtype="float32", shape=(2, 3), digest="d" * 64,
            detail={"a": 1.5, "b": [1]}, prev_hash="", hash=first.hash,
        )  # fmt: skip
        assert before <= first.ts <= second.ts <= time.time()
        assert (second.inputs, second.shape, second.detail, second.peer) == ((), None, {}, None)
        assert third.shape == ()
        assert type(first.inputs) is tuple and type(first.shape) is tuple
        assert_chain([first, second, third])

    def test_two_workers_share_a_database_without_mixing(self, url: str) -> None:
        with self.open(url, "alice") as alice, self.open(url, "bob") as bob:
            for i in range(3):
                alice.append("create", object_id=i)
                bob.append("get", object_id=100 + i)
            bob.append("clear")
            got_alice, got_bob = alice.events(), bob.events()
        assert [(e.seq, e.worker, e.kind) for e in got_alice] == [
            (i, "alice", "create") for i in (1, 2, 3)
        ]
        assert [e.seq for e in got_bob] == [1, 2, 3, 4]
        assert {e.worker for e in got_bob} == {"bob"}
        assert [e.object_id for e in got_bob] == [100, 101, 102, None]
        assert_chain(got_alice)
        assert_chain(got_bob)

    def test_reopening_continues_seq_and_chain(self, url: str) -> None:
        with self.open(url, "w") as log:
            log.append("create", object_id=1)
            log.append("create", object_id=2)
        with self.open(url, "w") as log:
            assert log.append("delete", object_id=1) == 3
            events = log.events()
        assert [e.seq for e in events] == [1, 2, 3]
        assert events[2].prev_hash == events[1].hash
        assert_chain(events)

    def test_seq_has_no_gaps_and_follows_append_order_across_threads(self, url: str) -> None:
        threads, per_thread = 8, 500
        start = threading.Barrier(threads)
        returned: dict[int, list[int]] = {}
        # A small batch makes appending threads flush inline while the flusher thread runs too.
        with self.open(url, "w", batch_size=64, flush_interval=0.01) as log:

            def work(t: int) -> None:
                start.wait()
                returned[t] = [
                    log.append("create", object_id=t * 10_000 + i) for i in range(per_thread)
                ]

            pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            events = log.events()
        assert [e.seq for e in events] == list(range(1, threads * per_thread + 1))
        for t in range(threads):
            mine = [e for e in events if e.object_id // 10_000 == t]
            assert [e.object_id % 10_000 for e in mine] == list(range(per_thread))
            assert [e.seq for e in mine] == returned[t]
        assert_chain(events)

    def test_filters(self, url: str) -> None:
        with self.open(url, "w") as log, self.open(url, "other") as other:
            other.append("get", object_id=1, peer="bob")
            log.append("create", object_id=1, peer="alice")  # 1
            log.append("get", object_id=1, peer="bob")  # 2
            log.append("create", object_id=2, peer="bob")  # 3
            log.append("get", object_id=2, peer="bob")  # 4
            log.append("delete", object_id=1)  # 5

            def seqs(**filters: object) -> list[int]:
                return [e.seq for e in log.events(**filters)]

            assert seqs() == [1, 2, 3, 4, 5]
            assert seqs(kind="get") == [2, 4]
            assert seqs(object_id=1) == [1, 2, 5]
            assert seqs(peer="bob") == [2, 3, 4]
            assert seqs(since=2, until=4) == [2, 3, 4]
            assert seqs(since=4) == [4, 5]
            assert seqs(until=1) == [1]
            assert seqs(limit=2) == [1, 2]
            assert seqs(kind="get", peer="bob", object_id=2, since=1, limit=5) == [4]
            assert seqs(limit=0) == []
            with pytest.raises(ConfigurationError, match="unknown event kind"):
                log.events(kind="made-up")

    def test_same_worker_twice_at_once_fails_loudly(self, url: str) -> None:
        first, second = self.open(url, "w"), self.open(url, "w")
        first.append("create", object_id=1)
        first.flush()
        with pytest.raises(EventLogError, match="one per worker"):
            second.append("create", object_id=2)  # also seq 1: history would fork
            second.flush()
        with pytest.raises(EventLogError, match="one per worker"):
            second.close()  # what could not be written is reported, not dropped
        second.close()
        first.close()
        with self.open(url, "w") as log:
            assert [e.object_id for e in log.events()] == [1]


class TestSQLiteFileBatched(EventLogContract):
    """The default for a file: batches go to the writer process."""

    def make_url(self, tmp_path: Path) -> str:
        return str(tmp_path / "events.db")

    def test_batches_go_to_the_writer_process(self, url: str) -> None:
        with self.open(url, "w") as log:
            assert log.writer_pid is not None


class TestSQLiteFileBatchedInline(EventLogContract):
    """A file log that writes its batches itself (``writer=False``)."""

    def make_url(self, tmp_path: Path) -> str:
        return str(tmp_path / "events.db")

    def open(self, url: str, worker: str, **options: object) -> EventLog:
        return EventLog(url, worker, writer=False, **options)


class TestSQLiteFileStrict(EventLogContract):
    durability = "strict"

    def make_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'events.db'}"


def test_in_memory_by_default() -> None:
    with EventLog(None, "w") as log:
        assert (log.url, log.worker_id, log.durability) == ("sqlite://", "w", "batched")
        assert [log.append("create", object_id=i) for i in range(3)] == [1, 2, 3]
        assert [e.object_id for e in log.events()] == [0, 1, 2]
    with EventLog(None, "w") as fresh:  # private: nothing shared with the first one
        assert fresh.events() == []


def test_file_path_becomes_an_absolute_sqlite_url_in_wal_mode(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with EventLog("relative.db", "w") as log:
        assert log.url == f"sqlite:///{tmp_path / 'relative.db'}"
        log.append("create", object_id=1)
    with sqlite3.connect(tmp_path / "relative.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT version FROM bastion_schema").fetchall() == [(1,)]
    with EventLog(tmp_path / "relative.db", "w") as log:  # a Path works too
        assert [e.object_id for e in log.events()] == [1]


@pytest.mark.parametrize(("durability", "level"), [("strict", 2), ("batched", 1)])
def test_synchronous_follows_durability(tmp_path: Path, durability: str, level: int) -> None:
    with EventLog(tmp_path / "e.db", "w", durability=durability) as log:
        with log._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level  # FULL / NORMAL


def test_strict_append_is_committed_before_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLog(path, "w", durability="strict", flush_interval=60) as log:
        for i in range(1, 4):
            log.append("create", object_id=i)
            assert rows_seen_by_sqlite3(path)[-1] == (i, "create", i)


def test_batched_appends_wait_for_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLog(path, "w", flush_interval=60) as log:
        log.append("create", object_id=1)
        assert rows_seen_by_sqlite3(path) == []
        log.flush()
        assert rows_seen_by_sqlite3(path) == [(1, "create", 1)]


def test_batched_appends_reach_the_file_without_an_explicit_flush(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLog(path, "w", flush_interval=0.05) as log:
        for i in range(3):
            log.append("create", object_id=i)
        deadline = time.monotonic() + 5
        while len(rows_seen_by_sqlite3(path)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rows_seen_by_sqlite3(path) == [(1, "create", 0), (2, "create", 1), (3, "create", 2)]


def test_a_full_batch_is_written_by_the_appending_call(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLog(path, "w", batch_size=4, flush_interval=60, writer=False) as log:
        for i in range(3):
            log.append("create", object_id=i)
        assert rows_seen_by_sqlite3(path) == []
        log.append("create", object_id=3)
        assert len(rows_seen_by_sqlite3(path)) == 4


def test_a_full_batch_goes_to_the_writer_process_without_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLog(path, "w", batch_size=4, flush_interval=60) as log:
        for i in range(3):
            log.append("create", object_id=i)
        time.sleep(0.2)
        assert rows_seen_by_sqlite3(path) == []  # queued here, not handed over yet
        log.append("create", object_id=3)
        deadline = time.monotonic() + 10
        while len(rows_seen_by_sqlite3(path)) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rows_seen_by_sqlite3(path)) == 4


def test_one_flusher_thread_serves_every_log() -> None:
    logs = [EventLog(None, f"w{i}") for i in range(3)]
    names = [t.name for t in threading.enumerate()]
    assert names.count("bastion-eventlog-flusher") == 1
    for log in logs:
        log.close()


def test_a_dropped_log_still_writes_its_events(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    log = EventLog(path, "w", flush_interval=60)
    log.append("create", object_id=1)
    del log
    gc.collect()
    assert rows_seen_by_sqlite3(path) == [(1, "create", 1)]


def test_editing_or_deleting_a_row_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventLog(path, "w") as log:
        for i in range(5):
            log.append("create", object_id=i, op="add", inputs=(i,))
        assert_chain(log.events())
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE bastion_events SET op = 'mul' WHERE seq = 3")
        edited = log.events()
        assert edited[2].hash != expected_hash(edited[2])
        with pytest.raises(AssertionError, match="seq 3 was altered"):
            assert_chain(edited)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE bastion_events SET op = 'add' WHERE seq = 3")
        assert_chain(log.events())  # the original content hashes right again
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM bastion_events WHERE seq = 2")
        with pytest.raises(AssertionError, match="seq 3 does not link"):
            assert_chain(log.events())


def test_event_hash_is_blake3_over_msgpack_with_detail_as_sorted_json() -> None:
    fields = [
        "w",
        1,
        12.5,
        "create",
        7,
        None,
        "send",
        None,
        [1, 2],
        "float32",
        [3],
        "ab",
        {"z": 1, "a": [2]},
    ]
    detail = json.dumps(fields[-1], sort_keys=True, separators=(",", ":"))
    packed = msgpack.packb([*fields[:-1], detail])
    assert event_hash("prev", *fields) == blake3.blake3(b"prev" + packed).hexdigest()
    assert event_hash("prev", *fields[:-1], detail) == event_hash("prev", *fields)
    assert event_hash("prev", *fields[:-1], None) == event_hash("prev", *fields[:-1], {})
    every_field = {field.name for field in dataclasses.fields(Event)}
    assert set(HASHED_FIELDS) == every_field - {"prev_hash", "hash"}


def test_integers_from_torch_are_accepted_and_bad_values_refused() -> None:
    with EventLog(None, "w") as log:
        log.append(
            "create", object_id=torch.tensor(5), inputs=[torch.tensor(1)], shape=torch.Size([2])
        )
        [event] = log.events()
        assert (event.object_id, event.inputs, event.shape) == (5, (1,), (2,))
        assert type(event.object_id) is int
        bad = [
            {"kind": "made-up"},
            {"object_id": "7"},
            {"inputs": (1.5,)},
            {"shape": ("2",)},
            {"peer": 3},
            {"dtype": torch.float32},
            {"detail": {"x": object()}},
        ]
        for arguments in bad:
            arguments = {"kind": "create", **arguments}
            with pytest.raises(ConfigurationError):
                log.append(**arguments)
        assert log.append("get") == 2  # refusals take no seq


@pytest.mark.parametrize(
    "arguments",
    [{"durability": "sometimes"}, {"batch_size": 0}, {"flush_interval": 0}, {"worker_id": ""}],
)
def test_bad_arguments_raise_configuration_error(arguments: dict) -> None:
    arguments = {"worker_id": "w", **arguments}
    with pytest.raises(ConfigurationError):
        EventLog(None, **arguments)


def test_close_is_idempotent_and_a_closed_log_refuses_work() -> None:
    log = EventLog(None, "w")
    log.append("create")
    log.close()
    log.close()
    with pytest.raises(EventLogError, match="closed"):
        log.append("create")
    with pytest.raises(EventLogError, match="closed"):
        log.events()


def test_a_log_written_by_a_newer_bastion_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    EventLog(path, "w").close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE bastion_schema SET version = 2")
    with pytest.raises(EventLogError, match="newer bastion"):
        EventLog(path, "w")


@pytest.mark.parametrize(
    "url", ["nosuchdialect://somewhere", "not a url://", "{missing}/sub/events.db"]
)
def test_unusable_urls_raise_event_log_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(EventLogError, match="event log"):
        EventLog(url.format(missing=tmp_path / "missing"), "w")


def test_the_class_docstring_example_runs() -> None:
    import doctest

    from bastion.stores import eventlog

    assert doctest.testmod(eventlog).failed == 0


fields = st.fixed_dictionaries(
    {},
    optional={
        "object_id": st.integers(0, 2**53),
        "peer": st.text(max_size=5),
        "origin": st.sampled_from(["send", "op", "call", "move"]),
        "op": st.text(max_size=5),
        "inputs": st.lists(st.integers(0, 2**53), max_size=3),
        "dtype": st.sampled_from(["float32", "int64"]),
        "shape": st.none() | st.lists(st.integers(0, 9), max_size=3),
        "digest": st.text("0123456789abcdef", max_size=8),
        "detail": st.none()
        | st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=3),
    },
)
appends = st.lists(
    st.tuples(st.sampled_from(["create", "get", "move", "delete"]), fields, st.booleans())
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(appends)
def test_any_history_reads_back_exactly_with_a_valid_chain(history: list) -> None:
    with EventLog(None, "w", batch_size=3) as log:
        for kind, arguments, flush_now in history:
            log.append(kind, **arguments)
            if flush_now:
                log.flush()
        events = log.events()
    assert [e.seq for e in events] == list(range(1, len(history) + 1))
    for event, (kind, arguments, _) in zip(events, history):
        shape = arguments.get("shape")
        assert event.kind == kind
        assert event.object_id == arguments.get("object_id")
        assert event.inputs == tuple(arguments.get("inputs", ()))
        assert event.shape == (None if shape is None else tuple(shape))
        assert event.detail == (arguments.get("detail") or {})
        for name in ("peer", "origin", "op", "dtype", "digest"):
            assert getattr(event, name) == arguments.get(name)
    assert_chain(events)
