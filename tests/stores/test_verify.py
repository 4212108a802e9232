"""verify() names the first event that breaks the chain: edited, deleted, inserted rows."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
import torch

import bastion as sy
from bastion.stores import EventLog, expected_hash, verify


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "audit.db"
    for worker_id in ("M1", "M2"):
        worker = sy.VirtualWorker(id=f"verify-{worker_id}", db=str(path))
        pointers = [worker.send(torch.tensor([float(i)])) for i in range(5)]
        (pointers[0] + pointers[1]).get()
        worker.close()
    return path


def test_an_untouched_log_is_intact(log_file):
    result = verify(log_file)
    assert result.ok and result.checked == 2 * 7 and str(result).startswith("intact")
    assert verify(log_file, worker="verify-M1").checked == 7


def _sql(path, statement, *args):
    with sqlite3.connect(path) as db:
        db.execute(statement, args)


def test_an_edited_row_is_named(log_file):
    _sql(log_file, "update bastion_events set peer = 'mallory' where worker_id = ? and seq = 3",
         "verify-M2")  # fmt: skip
    result = verify(log_file)
    assert not result.ok and (result.worker, result.seq) == ("verify-M2", 3)
    assert "changed" in result.reason and result.checked == 7 + 2


def test_a_deleted_row_is_named(log_file):
    _sql(log_file, "delete from bastion_events where worker_id = ? and seq = 4", "verify-M1")
    result = verify(log_file)
    assert not result.ok and (result.worker, result.seq) == ("verify-M1", 5)
    assert "missing" in result.reason


def test_a_forged_row_with_a_recomputed_hash_still_breaks_the_link(log_file):
    with EventLog(str(log_file), "verify-M1") as log:
        events = log.events()
    forged = dataclasses.replace(events[2], peer="mallory")
    _sql(log_file, "update bastion_events set peer = ?, hash = ? where worker_id = ? and seq = ?",
         "mallory", expected_hash(forged), "verify-M1", forged.seq)  # fmt: skip
    result = verify(log_file)
    assert not result.ok and (result.worker, result.seq) == ("verify-M1", forged.seq + 1)
    assert "link" in result.reason


def test_verify_reads_only(log_file, tmp_path):
    with pytest.raises(sy.EventLogError, match="no event log"):
        verify(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()


# ------------------------------------------------------------------ payloads


@pytest.fixture
def payload_log(tmp_path):
    """A log whose first tensor is a blob file and whose others live in the database."""
    path = tmp_path / "payloads.db"
    worker = sy.VirtualWorker(id="verify-payloads", db=str(path))
    worker._worker.log.blob_threshold = 4096
    big = worker.send(torch.arange(2048.0))  # 8 KiB: a file
    small = worker.send(torch.tensor([1.0, 2.0]))
    (small * 2).get()
    worker.close()
    del big
    return path


def test_an_intact_log_checks_its_payloads(payload_log):
    assert verify(payload_log).ok
    with sqlite3.connect(payload_log) as db:
        kinds = db.execute("select path is null, count(*) from bastion_payloads group by 1")
        assert dict(kinds.fetchall()) == {0: 1, 1: 2}  # one file, two rows


def test_a_changed_payload_row_is_named(payload_log):
    with sqlite3.connect(payload_log) as db:
        digest = db.execute(
            "select digest from bastion_events where worker_id = 'verify-payloads' and seq = 2"
        ).fetchone()[0]
        data = torch.tensor([1.0, 3.0]).numpy().tobytes()
        db.execute("update bastion_payloads set data = ? where digest = ?", (data, digest))
    result = verify(payload_log)
    assert not result.ok and result.seq == 2 and "digest" in result.reason


def test_a_corrupted_payload_file_is_named(payload_log):
    [blob] = [p for p in (payload_log.parent / "payloads.db.blobs").rglob("*") if p.is_file()]
    raw = bytearray(blob.read_bytes())
    raw[100] ^= 0xFF
    blob.write_bytes(raw)
    result = verify(payload_log)
    assert not result.ok and result.seq == 1 and "changed" in result.reason


def test_a_deleted_payload_file_or_row_is_named(payload_log):
    [blob] = [p for p in (payload_log.parent / "payloads.db.blobs").rglob("*") if p.is_file()]
    blob.unlink()
    result = verify(payload_log)
    assert not result.ok and result.seq == 1 and "cannot read the payload file" in result.reason
    _sql(payload_log, "delete from bastion_payloads where path is null")
    result = verify(payload_log)  # the file still fails first
    assert (result.seq, result.ok) == (1, False)


def test_a_deleted_payload_row_is_named(payload_log):
    _sql(payload_log, "delete from bastion_payloads where path is null")
    result = verify(payload_log)
    assert not result.ok and result.seq == 2 and "missing" in result.reason
