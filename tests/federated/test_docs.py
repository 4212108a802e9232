"""The federated page documents every public name of ``bastion.federated``, and its
walkthrough runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import bastion as sy
import bastion.federated

PAGE = Path(__file__).resolve().parents[2] / "docs" / "federated.md"


def test_every_federated_name_is_on_the_federated_page():
    text = PAGE.read_text()
    missing = [name for name in bastion.federated.__all__ if name not in text]
    assert not missing, f"docs/federated.md does not mention {missing}"


def test_the_walkthrough_runs_on_two_served_tcp_workers(monkeypatch, capsys):
    """The page's owner and scientist scripts, on two workers served by ``bastion serve``
    (``sy.spawn`` runs it), with their addresses in place of the page's."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    owners, train = blocks[0], blocks[1]
    assert "# owners.py" in owners and "# train.py" in train
    monkeypatch.setenv("BASTION_AUTHKEY", "walkthrough-key")
    names = ("alice", "bob")
    workers = [
        sy.spawn("tcp", id=name, authkey="walkthrough-key", allow_code=True) for name in names
    ]
    try:
        for worker, port in zip(workers, ("7001", "7002")):
            owners = owners.replace(f"tcp://127.0.0.1:{port}", worker.address)
            train = train.replace(f"tcp://127.0.0.1:{port}", worker.address)
        exec(compile(owners, "owners.py", "exec"), {})
        assert [len(w._objects) for w in workers] == [2, 2]  # kept after the owners left
        scope: dict = {}
        exec(compile(train, "train.py", "exec"), scope)
    finally:
        for worker in workers:
            worker.close()
    out = capsys.readouterr().out
    assert "scikit-learn digits" in out and "Distributed across: alice, bob" in out
    assert len(scope["history"]) == 20 and scope["history"][-1].accuracy > 0.95
