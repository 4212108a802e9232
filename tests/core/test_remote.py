"""connect / serve over the memory transport, and the CLI's plugins and serve commands."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import bastion as sy
from bastion.cli import cli
from bastion.stores import EventLog


def test_serve_and_connect_give_the_pointer_api():
    with sy.serve("memory://served-1", id="served-1") as served:
        assert served.address == "memory://served-1"
        with sy.connect("memory://served-1") as worker:
            assert worker.id == "served-1"
            p = worker.send(torch.tensor([1.0, 2.0]))
            assert isinstance(p, sy.PointerTensor) and p.location is worker
            listing = worker._objects
            assert listing[p.id_at_location].shape == (2,)
            assert torch.equal((p * 2).get(), torch.tensor([2.0, 4.0]))
            assert worker.clear_objects() is worker and worker._objects == {}
        kinds = [e.kind for e in served.worker.log.events()]
        assert kinds[:3] == ["create", "create", "get"] and kinds[-1] == "clear"


def test_serve_needs_an_id_and_spawn_a_known_scheme():
    with pytest.raises(sy.ConfigurationError):
        sy.serve("memory://no-id", id="")
    with pytest.raises(sy.ConfigurationError, match="spawn"):
        sy.spawn("memory", id="x")


def test_closing_a_served_worker_flushes_its_log(tmp_path):
    path = tmp_path / "served.db"
    served = sy.serve("memory://served-2", id="served-2", db=str(path))
    worker = sy.connect("memory://served-2")
    worker.send(torch.ones(1))
    served.close()
    served.close()  # idempotent
    with EventLog(str(path), "served-2") as log:
        assert [e.kind for e in log.events()] == ["create"]
    with pytest.raises(sy.ConnectionLost):
        worker.send(torch.ones(1))
    worker.close()


def test_plugins_command_lists_the_built_in_transports():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "bastion.transports.memory" in result.output and "memory" in result.output
    rows = [json.loads(line) for line in CliRunner().invoke(cli, ["plugins", "--json"]).output
            .splitlines()]  # fmt: skip
    memory = next(row for row in rows if row["name"] == "bastion.transports.memory")
    assert memory["builtin"] and memory["schemes"] == ["memory"] and memory["error"] is None


def test_serve_command_refuses_to_run_without_a_key(monkeypatch):
    monkeypatch.delenv("BASTION_AUTHKEY", raising=False)
    result = CliRunner().invoke(cli, ["serve", "tcp://127.0.0.1:0", "--id", "M1"])
    assert result.exit_code != 0 and "BASTION_AUTHKEY" in result.output
