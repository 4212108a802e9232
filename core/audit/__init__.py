"""Audit a worker's event log: events, lineage, stats, replay, verify, export, report.

Everything here reads a database read-only (a SQLite file path or any SQLAlchemy URL) and
works while workers append to it; ``bastion audit`` is the same on the command line.
"""

from bastion.audit.lineage import Lineage, LineageNode, lineage
from bastion.audit.reader import AuditLog, parse_point

__all__ = ["AuditLog", "Lineage", "LineageNode", "lineage", "parse_point"]
