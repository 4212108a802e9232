"""Every ``bastion audit`` command, through the CLI runner, on logs written by real workers."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sqlite3
import threading
import time

import pytest
import sqlalchemy.exc
import torch

import bastion as sy
import bastion.stores
from bastion.audit import AuditLog


def _json_lines(result):
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


def _rows(db):
    with sqlite3.connect(db) as conn:
        return conn.execute("select worker_id, seq, kind from bastion_events").fetchall()


# ---------------------------------------------------------------------------------- events


def test_events_lists_every_event_of_both_workers_in_time_order(incident, audit):
    records = _json_lines(audit("events", incident.db, "--json"))
    assert sorted((r["worker"], r["seq"], r["kind"]) for r in records) == sorted(_rows(incident.db))
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    kinds = {r["kind"] for r in records}
    assert kinds == {"create", "get", "move", "clear", "denied"}
    table = audit("events", incident.db)
    assert table.exit_code == 0
    assert str(incident.z) in table.output and "moved in from " + incident.m1 in table.output
    assert "Tensor.add_" in table.output and "dropped" in table.output


def test_events_filters(incident, audit):
    (move,) = _json_lines(audit("events", incident.db, "--kind", "move", "--json"))
    assert (move["worker"], move["object_id"], move["peer"]) == (
        incident.m1,
        incident.z,
        incident.m2,
    )
    about_z = _json_lines(audit("events", incident.db, "--object", incident.z, "--json"))
    assert [(r["worker"], r["kind"]) for r in about_z] == [
        (incident.m1, "create"), (incident.m1, "create"), (incident.m2, "create"),
        (incident.m1, "move"), (incident.m2, "get")]  # fmt: skip
    from_m1 = _json_lines(audit("events", incident.db, "--peer", incident.m1, "--json"))
    assert [(r["worker"], r["origin"]) for r in from_m1] == [(incident.m2, "move")]
    m2 = _json_lines(audit("events", incident.db, "-w", incident.m2, "--json"))
    assert {r["worker"] for r in m2} == {incident.m2} and [r["seq"] for r in m2] == [1, 2, 3, 4]
    ranged = _json_lines(audit("events", incident.db, "-w", incident.m1, "--since", 2,
                               "--until", 4, "--json"))  # fmt: skip
    assert [r["seq"] for r in ranged] == [2, 3, 4]
    several = _json_lines(audit("events", incident.db, "-k", "get", "-k", "clear", "--json"))
    assert sorted(r["kind"] for r in several) == ["clear", "get", "get"]


def test_events_by_time_newest_first_and_limit(incident, audit):
    everything = _json_lines(audit("events", incident.db, "--json"))
    newest = _json_lines(audit("events", incident.db, "--newest-first", "--limit", 3, "--json"))
    assert newest == everything[::-1][:3]
    middle = everything[len(everything) // 2]
    since = _json_lines(audit("events", incident.db, "--since", f"@{middle['ts']}", "--json"))
    assert since == [r for r in everything if r["ts"] >= middle["ts"]]
    until = _json_lines(audit("events", incident.db, "--until", middle["time"], "--json"))
    # the ISO time has millisecond precision: everything stamped up to that millisecond
    assert until and all(r["ts"] < middle["ts"] + 0.001 for r in until)
    assert until == [r for r in everything if r["ts"] <= middle["ts"]][: len(until)]


# ------------------------------------------------------------------------------------ show


def test_show_gives_one_event_with_its_payload(incident, audit):
    gets = _json_lines(audit("events", incident.db, "-w", incident.m2, "-k", "get", "--json"))
    fetched_z = next(r for r in gets if r["object_id"] == incident.z)
    (record,) = _json_lines(audit("show", incident.db, fetched_z["seq"], "-w", incident.m2,
                                  "--json"))  # fmt: skip
    assert record["kind"] == "get" and record["digest"] == fetched_z["digest"]
    assert (record["dtype"], record["shape"], record["size"]) == ("float32", [3], 12)
    assert record["payload_from"] == "create #1" and "matches" in record["chain"]
    text = audit("show", incident.db, 1, "--worker", incident.m1)
    assert text.exit_code == 0 and "float32" in text.output and "send" in text.output


def test_show_refuses_unknown_seq_and_ambiguous_worker(incident, audit, one_line_error):
    one_line_error(audit("show", incident.db, 999, "-w", incident.m1), "no event 999", "1..")
    one_line_error(audit("show", incident.db, 1), "say which with --worker", incident.m2)
    one_line_error(audit("show", incident.db, 1, "-w", "nobody"), "'nobody'")


# --------------------------------------------------------------------------------- lineage


def test_lineage_follows_the_move_into_the_other_worker(incident, audit):
    result = audit("lineage", incident.db, incident.z)
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"Tensor.add of {incident.x}, {incident.y}" in text
    assert "changed in place by Tensor.add_" in text
    assert f"used by Tensor.mul -> {incident.w}" in text
    assert f"moved to {incident.m2} (requested by me)" in text
    assert f"{incident.m2} #1 create {incident.z}: moved in from {incident.m1}" in text
    assert f"used by Tensor.sum -> {incident.s}" in text
    assert text.count("fetched by me") == 2
    (tree,) = _json_lines(audit("lineage", incident.db, incident.x, "--json"))
    nodes = list(_walk(tree["tree"]))
    assert {n["relation"] for n in nodes} >= {"created", "used", "moved", "arrived", "fetched",
                                              "cleared"}  # fmt: skip
    assert any(n["worker"] == incident.m2 and n["relation"] == "arrived" for n in nodes)


def _walk(node):
    yield node
    for child in node["children"]:
        yield from _walk(child)


def test_lineage_reaches_a_log_in_another_database_with_with(split_incident, audit):
    alone = audit("lineage", split_incident.db, split_incident.z)
    assert alone.exit_code == 0 and "log is not here: add it with --with" in alone.output
    joined = audit("lineage", split_incident.db, split_incident.z, "--with",
                   split_incident.m2_db)  # fmt: skip
    assert "not here" not in joined.output and "Tensor.sum" in joined.output
    # and backwards: from M2's log, where the object came from in M1's
    back = audit("lineage", split_incident.m2_db, split_incident.z, "--with", split_incident.db)
    assert f"Tensor.add of {split_incident.x}, {split_incident.y}" in back.output


def test_lineage_of_an_unknown_object_is_an_error(incident, audit, one_line_error):
    one_line_error(audit("lineage", incident.db, 12345), "object 12345 was never created")


# ---------------------------------------------------------------------------------- replay


def test_replay_at_a_seq_gives_the_store_as_it_stood(incident, audit):
    rows = _json_lines(audit("replay", incident.db, "--at", incident.before_move, "-w",
                             incident.m1, "--json"))  # fmt: skip
    assert {r["object_id"] for r in rows} == incident.held_before_move
    z = next(r for r in rows if r["object_id"] == incident.z)
    assert (z["dtype"], z["shape"], z["origin"]) == ("float32", [3], "op")
    now = _json_lines(audit("replay", incident.db, "-w", incident.m1, "--json"))
    assert now == []  # cleared
    table = audit("replay", incident.db, "--at", 2, "-w", incident.m1)
    assert table.exit_code == 0 and f"{incident.m1}: 2" in table.output


def test_replay_at_a_time_covers_every_worker(incident, audit):
    everything = _json_lines(audit("events", incident.db, "--json"))
    arrival = next(r for r in everything if r["origin"] == "move")
    rows = _json_lines(audit("replay", incident.db, "--at", f"@{arrival['ts']}", "--json"))
    held = {(r["worker"], r["object_id"]) for r in rows}
    assert (incident.m2, incident.z) in held  # arrived...
    assert (incident.m1, incident.z) in held  # ...and M1 recorded the move just after


def test_replay_export(incident, audit, one_line_error, tmp_path):
    out = tmp_path / "export"
    result = audit("replay", incident.db, "--at", incident.before_move, "-w", incident.m1,
                   "--export", out)  # fmt: skip
    if not hasattr(bastion.stores, "replay"):  # before payloads are stored: said, not hidden
        one_line_error(result, "cannot be rebuilt")
        return
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    tensors = load_file(out / f"{incident.m1}.safetensors")
    assert set(tensors) == {str(i) for i in incident.held_before_move}
    assert torch.equal(tensors[str(incident.x)], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(tensors[str(incident.z)], torch.tensor([6.0, 8.0, 10.0]))


def test_replay_refuses_a_bad_point(incident, audit):
    result = audit("replay", incident.db, "--at", "yesterday-ish")
    assert result.exit_code == 2 and "neither a seq" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------- verify


def test_verify_an_intact_log(incident, audit):
    result = audit("verify", incident.db)
    assert result.exit_code == 0 and result.output.startswith("intact:")
    assert int(result.output.split()[1]) == len(_rows(incident.db))


def test_verify_names_the_first_tampered_event(incident, audit, tmp_path):
    with sqlite3.connect(incident.db) as conn:  # someone hides who fetched z
        conn.execute("update bastion_events set peer = 'nobody' where worker_id = ? and seq = 4",
                     (incident.m2,))  # fmt: skip
    result = audit("verify", incident.db)
    assert result.exit_code == 1
    assert result.output.strip() == (f"event 4 of worker '{incident.m2}' fails: its fields do not "
                                     "give its hash: the row was changed")  # fmt: skip
    (record,) = _json_lines(audit("show", incident.db, 4, "-w", incident.m2, "--json"))
    assert record["peer"] == "nobody" and "does NOT match" in record["chain"]
    report = tmp_path / "r.html"
    assert audit("report", incident.db, "-o", report).exit_code == 0
    assert "NOT intact" in report.read_text()


def test_verify_names_a_deleted_event(incident, audit):
    with sqlite3.connect(incident.db) as conn:
        conn.execute("delete from bastion_events where worker_id = ? and seq = 3", (incident.m1,))
    result = audit("verify", incident.db, "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["seq"] == 4 and "missing" in result.output


def test_verify_names_a_changed_payload(incident, audit):
    with sqlite3.connect(incident.db) as conn:
        (digest,) = conn.execute("select digest from bastion_events where worker_id = ? and "
                                 "seq = 1", (incident.m1,)).fetchone()  # fmt: skip
        changed = conn.execute(
            "update bastion_payloads set data = ? where digest = ?",
            (torch.tensor([9.0, 9.0, 9.0]).numpy().tobytes(), digest),
        )
        assert changed.rowcount == 1
    result = audit("verify", incident.db)
    assert result.exit_code == 1 and f"event 1 of worker '{incident.m1}'" in result.output


# ----------------------------------------------------------------------------------- stats


def test_stats_counts_by_kind_peer_and_worker(incident, audit):
    (s,) = _json_lines(audit("stats", incident.db, "--json"))
    rows = _rows(incident.db)
    assert s["events"] == len(rows)
    assert s["by_kind"] == {k: sum(1 for r in rows if r[2] == k) for k in {r[2] for r in rows}}
    assert s["by_worker"] == {incident.m1: 8, incident.m2: 4}
    assert s["by_peer"][incident.m1] == 1 and s["by_peer"][incident.m2] == 1
    # x, y, z, z', w on M1 (float32[3]); z, s on M2 (float32[3], float32[])
    assert s["objects_created"] == 7 and s["bytes_created"] == 6 * 12 + 4
    assert s["bytes_stored"] == 5 * 12 + 4  # z arrived on M2 with the content stored on M1
    assert s["first_ts"] <= s["last_ts"] and s["events_per_minute"] > 0
    text = audit("stats", incident.db)
    assert "by kind" in text.output and "events per minute" in text.output


# ---------------------------------------------------------------------------------- export


def test_export_jsonl_and_csv_hold_everything(incident, audit, tmp_path):
    lines = _json_lines(audit("export", incident.db))
    assert len(lines) == len(_rows(incident.db)) and all(r["hash"] for r in lines)
    target = tmp_path / "events.csv"
    result = audit("export", incident.db, "--format", "csv", "-o", target)
    assert result.exit_code == 0 and f"wrote {len(lines)} events" in result.output
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [(r["worker"], int(r["seq"]), r["hash"]) for r in rows] == [
        (r["worker"], r["seq"], r["hash"]) for r in lines]  # fmt: skip
    move = next(r for r in rows if r["kind"] == "move")
    assert json.loads(move["detail"])["new_id"] == incident.z


# ------------------------------------------------------------------------------------ tail


def test_tail_prints_the_latest_events(incident, audit):
    result = audit("tail", incident.db, "-n", 2)
    lines = result.output.splitlines()
    assert len(lines) == 2 and "clear" in lines[-1]


def test_tail_follows_a_worker_while_it_writes(tmp_path, audit):
    db = tmp_path / "live.db"
    worker = sy.VirtualWorker(id="audit-live", db=str(db), durability="strict")
    worker.send(torch.tensor([0.0]))  # the log exists before tail opens it
    sent: list[int] = []

    def write() -> None:
        time.sleep(0.3)
        for i in range(5):
            pointer = worker.send(torch.tensor([float(i)]))
            pointer.garbage_collect_data = False
            sent.append(pointer.id_at_location)
            time.sleep(0.05)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        result = audit("tail", db, "-n", 0, "--follow", "--interval", 0.05, "--duration", 1.5,
                       "--json")  # fmt: skip
    finally:
        writer.join()
        worker.close()
    records = _json_lines(result)
    assert [r["object_id"] for r in records] == sent and [r["seq"] for r in records] == [
        2,
        3,
        4,
        5,
        6,
    ]


def test_unknown_event_kinds_are_shown_and_otherwise_left_alone(incident, audit):
    """A kind this bastion does not know (a newer one) is listed, counted and drawn, and
    changes nothing in a replay."""
    with sqlite3.connect(incident.db) as conn:
        conn.execute("insert into bastion_events select worker_id, seq + 1, ts + 0.001, "
                     "'attest', object_id, 'analyst', null, null, null, null, null, null, "
                     "'{\"epsilon\":0.5}', hash, 'x' from bastion_events where worker_id = ? "
                     "and seq = (select max(seq) from bastion_events where worker_id = ?)",
                     (incident.m2, incident.m2))  # fmt: skip
        conn.execute("update bastion_events set object_id = ? where kind = 'attest'",
                     (incident.s,))  # fmt: skip
    (attest,) = _json_lines(audit("events", incident.db, "-k", "attest", "--json"))
    assert attest["detail"] == {"epsilon": 0.5} and attest["object_id"] == incident.s
    assert "attest" in audit("events", incident.db).output
    (s,) = _json_lines(audit("stats", incident.db, "--json"))
    assert s["by_kind"]["attest"] == 1
    assert (
        f"{incident.m2} #5 attest by analyst" in audit("lineage", incident.db, incident.s).output
    )
    assert _json_lines(audit("replay", incident.db, "-w", incident.m2, "--json")) == []


def test_privacy_events_are_told_in_words(tmp_path, audit):
    """A registration, a policy, a refused get and a DP release, as the audit tool tells them."""
    db = tmp_path / "private.db"
    owner = sy.VirtualWorker(id="audit-owner", db=str(db))
    x = owner.register(torch.tensor([3.0, 4.0]), tags=["#secret"])
    owner.set_release_policy(sy.DP(noise_multiplier=2.0, clip=1.0),
                             budget=sy.Budget(epsilon=5.0, delta=1e-5))  # fmt: skip
    eve = sy.connect(owner.address, peer="eve")
    x = eve.search("#secret")[0]
    with pytest.raises(sy.PermissionDenied):
        x.get()
    total = x.sum()
    total_id = total.id_at_location
    total.get()
    owner.close()
    table = audit("events", db).output
    assert "default dp, budget epsilon 5 delta 1e-05" in table
    assert "get: the object is private" in table
    assert "get: gaussian sigma=2, epsilon +" in table
    tree = audit("lineage", db, total_id).output
    assert "released to eve (gaussian sigma=2, epsilon +" in tree
    tree = audit("lineage", db, x.id_at_location).output
    assert "get refused to eve: the object is private" in tree


# ------------------------------------------------------------------------------- bad input


def test_bad_databases_are_one_line_errors(tmp_path, incident, audit, one_line_error):
    missing = tmp_path / "missing.db"
    for command in (
        ["events"],
        ["stats"],
        ["verify"],
        ["lineage", "1"],
        ["replay"],
        ["show", "1"],
        ["export"],
        ["tail"],
        ["report", "-o", tmp_path / "r.html"],
    ):
        one_line_error(audit(command[0], missing, *command[1:]), "no event log", "missing.db")
    assert not missing.exists() and not (tmp_path / "r.html").exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    one_line_error(audit("events", garbage), "not a readable bastion event log")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table t (x)")
    one_line_error(audit("stats", other), "not a bastion event log")
    newer = tmp_path / "newer.db"
    shutil.copy(incident.db, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("update bastion_schema set version = 99")
    one_line_error(audit("events", newer), "newer bastion", "schema version 99")
    result = audit("events", "postgresql+nosuchdriver://u:secret@h/db")
    one_line_error(result, "cannot open postgresql+nosuchdriver://u:***@h/db")
    assert "secret" not in result.output


def test_reading_never_writes(incident, audit, tmp_path):
    def state():
        wal = incident.db.with_name(incident.db.name + "-wal")
        # a WAL reader may create the side files SQLite's readers share (an empty -wal)
        digest = hashlib.sha256(incident.db.read_bytes()).hexdigest()
        return digest, wal.exists() and wal.stat().st_size

    before = state()
    assert before[1] in (False, 0)
    for command in (["events"], ["stats"], ["verify"], ["lineage", incident.z],
                    ["replay", "--at", "3", "-w", incident.m1], ["show", "1", "-w", incident.m1],
                    ["export"], ["tail"], ["report", "-o", tmp_path / "r.html"]):  # fmt: skip
        assert audit(command[0], incident.db, *command[1:]).exit_code == 0, command
    after = state()
    assert after[0] == before[0] and after[1] in (False, 0)
    with AuditLog(incident.db) as log:  # the connection itself cannot write
        with pytest.raises(sqlalchemy.exc.OperationalError, match="readonly database"):
            with log.engine.begin() as conn:
                conn.exec_driver_sql("delete from bastion_events")


def test_audit_reads_while_a_worker_appends(tmp_path, audit):
    db = tmp_path / "busy.db"
    worker = sy.VirtualWorker(id="audit-busy", db=str(db))
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            (worker.send(torch.tensor([1.0])) * 2).get()
            time.sleep(0.002)

    thread = threading.Thread(target=work)
    thread.start()
    try:
        time.sleep(0.3)
        seen = []
        for _ in range(3):
            (s,) = _json_lines(audit("stats", db, "--json"))
            assert audit("verify", db).exit_code == 0
            seen.append(s["events"])
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
        worker.close()
    assert seen == sorted(seen) and seen[-1] > seen[0] > 0
    assert audit("verify", db).exit_code == 0


def test_every_command_is_documented():
    from pathlib import Path

    from bastion.audit.cli import audit as group

    text = (Path(__file__).resolve().parents[3] / "docs" / "audit.md").read_text()
    for name, command in group.commands.items():
        assert f"bastion audit {name}" in text, f"docs/audit.md does not show 'audit {name}'"
        for option in command.params:
            for flag in option.opts:
                if flag.startswith("--") and flag not in ("--json",):
                    assert flag in text, f"docs/audit.md does not mention {name} {flag}"
