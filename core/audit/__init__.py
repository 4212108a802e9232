"""Audit a worker's event log: events, lineage, stats, replay, verify, export, report.

Everything here reads a database read-only (a SQLite file path or any SQLAlchemy URL) and
works while workers append to it; ``bastion audit ...`` is the same on the command line
(docs/audit.md walks through an incident).

>>> import os, tempfile, torch, bastion as sy
>>> from bastion import audit
>>> path = os.path.join(tempfile.mkdtemp(), "m1.db")
>>> with sy.VirtualWorker(id="doc-audit", db=path) as m1:
...     x = m1.send(torch.tensor([1.0, 2.0]))
...     total = x.sum().get()
>>> with audit.AuditLog(path) as log:
...     [e.kind for e in log.events()]
['create', 'create', 'get']
>>> audit.stats(path).by_kind
{'create': 2, 'get': 1}
>>> len(audit.store_at(path, 2)["doc-audit"]), len(audit.store_at(path)["doc-audit"])
(2, 1)
"""

from bastion.audit.details import describe, verify_log
from bastion.audit.export import event_line, event_record, event_summary, export
from bastion.audit.lineage import Lineage, LineageNode, lineage
from bastion.audit.reader import AuditLog, format_ts, parse_point
from bastion.audit.replay import ObjectState, export_store, store_at
from bastion.audit.report import ReportResult, write_report
from bastion.audit.summary import Stats, stats, timeline

__all__ = ["AuditLog", "Lineage", "LineageNode", "ObjectState", "ReportResult", "Stats",
           "describe", "event_line", "event_record", "event_summary", "export", "export_store",
           "format_ts", "lineage", "parse_point", "stats", "store_at", "timeline", "verify_log",
           "write_report"]  # fmt: skip
