"""Batched logs are flushed by one daemon thread per process, and at interpreter exit.

Each live :class:`~bastion.stores.EventLog` registers here; the thread wakes when the
shortest ``flush_interval`` is due and writes (or hands to the writer process) what each log
queued. At exit every log is flushed, private logs are closed (their files deleted), and the
writer process is stopped once it has committed everything. A forked child inherits its
parent's database-backed logs closed (see ``EventLog._inherited_by_fork``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from typing import Any

from bastion.errors import EventLogError
from bastion.logs import get_logger
from bastion.stores import writer as _writer

_log = get_logger("bastion.stores.eventlog")

# One daemon thread flushes every live log on its interval; an atexit hook flushes the rest.
_registry: weakref.WeakSet[Any] = weakref.WeakSet()
_registry_lock = threading.Lock()
_wake = threading.Event()
_flusher: threading.Thread | None = None


def register(log: Any) -> None:
    """Flush ``log`` on its interval and at exit (it is forgotten once collected)."""
    global _flusher
    with _registry_lock:
        _registry.add(log)
        if _flusher is None or not _flusher.is_alive():
            _flusher = threading.Thread(
                target=_flush_forever, name="bastion-eventlog-flusher", daemon=True
            )
            _flusher.start()
    _wake.set()  # a shorter interval takes effect now


def _flush_due() -> float:
    """Flush the logs whose interval has passed; return how long to sleep."""
    with _registry_lock:
        logs = list(_registry)
    now, sleep = time.monotonic(), 1.0
    for log in logs:
        due = log._last_flush + log.flush_interval
        if due <= now:
            log._background_flush()
            due = time.monotonic() + log.flush_interval
        sleep = min(sleep, due - now)
    return max(sleep, 0.005)


def _flush_forever() -> None:
    while True:
        timeout = _flush_due()
        _wake.wait(timeout)
        _wake.clear()


def _after_fork_in_child() -> None:
    """A forked child must not write, flush or delete its parent's files: the logs it
    inherited that live in a database (the private log's file included) are closed to it."""
    global _registry_lock, _wake
    _registry_lock, _wake = threading.Lock(), threading.Event()
    for log in list(_registry):
        if log._inherited_by_fork():
            _registry.discard(log)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _flush_all() -> None:
    with _registry_lock:
        logs = list(_registry)
    for log in logs:
        try:
            if log._temp_path is not None:
                log.close()  # nobody can read it after exit: release and delete its file
            else:
                log.flush()
        except EventLogError as exc:
            _log.error("eventlog.lost_at_exit", worker=log.worker_id, error=str(exc))
    _writer.shutdown()
