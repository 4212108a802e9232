"""Where a worker keeps its record: the event log, and the hash that chains its events.

>>> from bastion.stores import EventLog, expected_hash
>>> with EventLog(None, "alice") as log:
...     seq = log.append("create", object_id=1)
...     [event] = log.events()
>>> event.hash == expected_hash(event)
True
"""

from bastion.stores.eventlog import HASHED_FIELDS, EventLog, event_hash, expected_hash
from bastion.stores.replay import ReplayedStore, open_read_only, replay
from bastion.stores.verify import VerifyResult, verify

__all__ = ["HASHED_FIELDS", "EventLog", "ReplayedStore", "VerifyResult", "event_hash",
           "expected_hash", "open_read_only", "replay", "verify"]  # fmt: skip
