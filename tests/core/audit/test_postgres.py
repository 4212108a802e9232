"""``bastion audit`` on logs in a real PostgreSQL server (``.ci/run`` starts one and requires
it; elsewhere the tests are skipped, saying why, when no server answers)."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
import torch

import bastion as sy
from bastion.audit import AuditLog


def test_audit_commands_on_postgres(pg_url, audit, tmp_path):
    run = uuid.uuid4().hex[:8]  # the database outlives a test run: ids never collide
    a = sy.VirtualWorker(id=f"audit-pgA-{run}", db=pg_url)
    b = sy.VirtualWorker(id=f"audit-pgB-{run}", db=pg_url)
    x = a.send(torch.arange(4.0))
    y = x * 2
    y.move(b)
    y.get()
    a.close(), b.close()
    lines = audit("events", pg_url, "-w", a.id, "--json").output.splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["create", "create", "move"]
    tree = audit("lineage", pg_url, x.id_at_location, "-w", a.id)
    assert tree.exit_code == 0 and f"moved to {b.id}" in tree.output
    assert f"{b.id} #2 fetched by me" in tree.output
    stats = json.loads(audit("stats", pg_url, "-w", b.id, "--json").output)
    assert stats["by_kind"] == {"create": 1, "get": 1} and stats["bytes_created"] == 16
    assert audit("verify", pg_url, "-w", a.id).exit_code == 0
    held = audit("replay", pg_url, "-w", a.id, "--at", 2, "--json").output.splitlines()
    assert {json.loads(line)["object_id"] for line in held} == {x.id_at_location, y.id_at_location}
    exported = audit("replay", pg_url, "-w", a.id, "--at", 2, "--export", tmp_path / "out")
    assert exported.exit_code == 0, exported.output
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "out" / f"{a.id}.safetensors")
    assert torch.equal(tensors[str(y.id_at_location)], torch.arange(4.0) * 2)
    shown = json.loads(audit("show", pg_url, 3, "-w", a.id, "--json").output)
    assert shown["kind"] == "move" and shown["size"] == 16
    with AuditLog(pg_url) as log:  # the session itself is read-only on the server
        with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
            with log.engine.begin() as conn:
                conn.execute(sa.text("delete from bastion_events where worker_id = :w"),
                             {"w": a.id})  # fmt: skip
