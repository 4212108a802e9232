"""Logs written by real workers for the audit tests: an incident on two workers sharing one
database (send, ops, an in-place op, a move, gets, a refused call, a clear), the same with
each worker in its own database, and helpers to run ``bastion audit`` through click."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

import bastion as sy
from bastion.cli import cli

_counter = itertools.count()


@dataclass
class Incident:
    """What the workers did, as the test saw it from the outside."""

    db: Path
    m1: str
    m2: str
    x: int = 0  # sent to M1
    y: int = 0  # sent to M1
    z: int = 0  # x + y on M1, then z.add_(1), then moved to M2 and fetched there
    w: int = 0  # z * 2 on M1, dropped by clear
    s: int = 0  # z.sum() on M2, fetched
    before_move: int = 0  # M1's last seq before the move
    held_before_move: set[int] = field(default_factory=set)
    m2_db: Path | None = None


def _incident(tmp_path: Path, separate: bool) -> Incident:
    n = next(_counter)
    db = tmp_path / "incident.db"
    m2_db = tmp_path / "m2.db" if separate else db
    m1 = sy.VirtualWorker(id=f"audit-M1-{n}", db=str(db))
    m2 = sy.VirtualWorker(id=f"audit-M2-{n}", db=str(m2_db))
    incident = Incident(db, m1.id, m2.id, m2_db=m2_db if separate else None)
    x = m1.send(torch.tensor([1.0, 2.0, 3.0]))
    y = m1.send(torch.tensor([4.0, 5.0, 6.0]))
    z = x + y
    z.add_(1)
    w = z * 2
    incident.x, incident.y = x.id_at_location, y.id_at_location
    incident.z, incident.w = z.id_at_location, w.id_at_location
    incident.before_move = m1.audit.events()[-1].seq
    incident.held_before_move = set(m1._objects)
    z.move(m2)
    s = z.sum()
    incident.s = s.id_at_location
    s.get()
    z.get()
    with pytest.raises(sy.PermissionDenied):
        m1._request(sy.messages.CallFunction(b"not code", (), {}))
    m1.clear_objects()
    m1.close()
    m2.close()
    return incident


@pytest.fixture
def incident(tmp_path: Path) -> Incident:
    """Two workers, one database."""
    return _incident(tmp_path, separate=False)


@pytest.fixture
def split_incident(tmp_path: Path) -> Incident:
    """The same incident with M2's log in a database of its own."""
    return _incident(tmp_path, separate=True)


def _audit(*args: object) -> Result:
    return CliRunner().invoke(cli, ["audit", *map(str, args)])


def _one_line_error(result: Result, *fragments: str) -> None:
    """A refused command: exit status 1, one line 'Error: ...', no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def audit() -> Callable[..., Result]:
    """``audit(*args)`` runs ``bastion audit ARGS...`` through click's runner."""
    return _audit


@pytest.fixture
def one_line_error() -> Callable[..., None]:
    """``one_line_error(result, *fragments)``: exit status 1, one line 'Error: ...' holding
    each fragment, no traceback."""
    return _one_line_error
