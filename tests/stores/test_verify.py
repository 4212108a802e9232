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
