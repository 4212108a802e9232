"""Workers beyond this process: ``connect`` to one, ``serve`` one, ``spawn`` one in a child.

>>> import torch, bastion as sy
>>> server = sy.serve("memory://doc-remote", id="doc-remote")
>>> worker = sy.connect("memory://doc-remote")
>>> worker
<RemoteWorker id:doc-remote address:memory://doc-remote>
>>> (worker.send(torch.ones(2)) * 3).get()
tensor([3., 3.])
>>> worker.close(); server.close()
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
from typing import Any

from bastion import plugins
from bastion.client import BaseWorker, local_worker
from bastion.errors import ConfigurationError, TransportError
from bastion.worker import Worker


class RemoteWorker(BaseWorker):
    """A worker reached through a transport, with the same pointer API as a VirtualWorker.

    ``_objects`` is a remote listing: ``{id: TensorSpec | ObjectSpec}`` (the data stays there).
    """

    def __init__(
        self,
        connection: Any,
        *,
        garbage_collect: bool = True,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            connection.worker_id, connection.address, connection, garbage_collect=garbage_collect
        )
        self.closed = False
        self._options = dict(options or {})

    def reconnect(self, address: str | None = None, **options: Any) -> RemoteWorker:
        """Connect again (to ``address``, default the same one), e.g. after the worker
        restarted on its log: the pointers held through this worker work again.

        The worker answering must have the same id, or ``ConfigurationError`` is raised and
        the old connection stays closed.
        """
        with contextlib.suppress(Exception):
            self._connection.close()
        address = address or self.address
        options = {"peer": local_worker.id, **self._options, **options}
        connection = plugins.connect(address, **options)
        if connection.worker_id != self.id:
            connection.close()
            raise ConfigurationError(
                f"{address} serves worker {connection.worker_id!r}, not {self.id!r}: the "
                "pointers held through this worker would point at the wrong objects"
            )
        self._connection, self.address, self._options = connection, address, options
        self.closed = False
        return self

    def close(self) -> None:
        """Send pending deletes and close the connection; the worker keeps running."""
        if self.closed:
            return
        try:
            self._flush_deletes()
        except Exception:  # the worker may already be gone; closing must still succeed
            pass
        self.closed = True
        self._connection.close()

    def __enter__(self) -> RemoteWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    address: str, *, authkey: bytes | str | None = None, peer: str | None = None, **options: Any
) -> RemoteWorker:
    """Connect to the worker served at ``address`` (``tcp://host:port``, ``shm://name``...).

    ``peer`` is the id the worker knows us by (default: the local worker's, ``"me"``): its
    audit log names it, and private data and privacy budgets are per peer. Options go to the
    transport: ``authkey`` (default: ``$BASTION_AUTHKEY``), ``timeout``, ``ssl_context``...
    """
    authkey = authkey if authkey is not None else os.environ.get("BASTION_AUTHKEY") or None
    if authkey is not None:
        options["authkey"] = authkey
    if peer is not None and (not isinstance(peer, str) or not peer):
        raise ConfigurationError(f"peer is a non-empty string, got {peer!r}")
    options["peer"] = peer or local_worker.id
    connection = plugins.connect(address, **options)
    return RemoteWorker(connection, options=options)


class WorkerServer:
    """A worker being served: ``worker`` (its data side), ``address`` (the real one)."""

    def __init__(self, worker: Worker, server: Any) -> None:
        self.worker = worker
        self.server = server
        self.address: str = server.address
        self._stopped = threading.Event()

    def close(self) -> None:
        """Stop serving, then flush and close the worker's event log."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self.server.close()
        finally:
            self.worker.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``close()`` (from another thread or a signal handler)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> WorkerServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WorkerServer id:{self.worker.id} address:{self.address}>"


def serve(
    address: str,
    *,
    id: str,
    db: str | None = None,
    authkey: bytes | str | None = None,
    durability: str = "batched",
    allow_code: bool = False,
    snapshot_every: int | None = 10_000,
    **options: Any,
) -> WorkerServer:
    """Serve a worker ``id`` at ``address``; it logs to ``db`` (default: in memory).

    On a ``db`` that already holds this worker's log, the worker comes back with the objects
    it held (see :class:`bastion.Worker`).

    The ``authkey`` (default: ``$BASTION_AUTHKEY``) also authenticates this worker when it
    moves objects to other workers.
    """
    authkey = authkey if authkey is not None else os.environ.get("BASTION_AUTHKEY") or None
    if not isinstance(id, str) or not id:
        raise ConfigurationError(f"serve() needs a worker id, got {id!r}")
    connect_options = {key: options[key] for key in ("ssl_context",) if key in options}
    if authkey is not None:
        options["authkey"] = authkey
        connect_options["authkey"] = authkey
    worker = Worker(id, db=db, durability=durability, allow_code=allow_code,
                    connect_options=connect_options, snapshot_every=snapshot_every)  # fmt: skip
    try:
        server = plugins.serve(worker, address, **options)
    except BaseException:
        worker.close()
        raise
    return WorkerServer(worker, server)


# ------------------------------------------------------------------------------ spawn

_SPAWN_ADDRESSES = {"tcp": "tcp://127.0.0.1:0", "shm": "shm://{id}"}


class SpawnedWorker(RemoteWorker):
    """A worker in a child process (``spawn``); ``close()`` stops the child too."""

    def __init__(self, connection: Any, process: subprocess.Popen) -> None:
        super().__init__(connection)
        self.process = process

    def close(self, timeout: float = 10.0) -> None:
        """Close the connection and stop the child, which flushes its log."""
        super().close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        """SIGKILL the child (for crash tests); the connection is then lost."""
        self.process.kill()
        self.process.wait()


def spawn(
    scheme: str = "tcp",
    *,
    id: str,
    authkey: bytes | str | None = None,
    db: str | None = None,
    durability: str = "batched",
    allow_code: bool = False,
    timeout: float = 60.0,
) -> SpawnedWorker:
    """Start a worker ``id`` in a child process (``bastion serve``), served over ``scheme``.

    The child stops with ``close()``, and by itself when this process exits.
    """
    if scheme not in _SPAWN_ADDRESSES:
        raise ConfigurationError(
            f"spawn() serves over {sorted(_SPAWN_ADDRESSES)}, not {scheme!r}"
        )
    if authkey is None:
        authkey = secrets.token_hex(16)
    key = authkey.decode() if isinstance(authkey, bytes) else authkey
    command = [sys.executable, "-m", "bastion", "serve", _SPAWN_ADDRESSES[scheme].format(id=id),
               "--id", id, "--durability", durability, "--quiet", "--stop-on-stdin-eof"]
    command += ["--db", db] if db else []
    command += ["--allow-code"] if allow_code else []
    # Huge pages for the child's large tensors: first-touch page faults are what bulk
    # transfers into fresh memory pay most for (unless the caller chose otherwise).
    environment = {"THP_MEM_ALLOC_ENABLE": "1", **os.environ, "BASTION_AUTHKEY": key}
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env=environment, text=True)  # fmt: skip
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("serving "):
        process.kill()
        process.wait()
        raise TransportError(
            f"the worker {id!r} did not start within {timeout} s"
            + (f": {line.strip()}" if line else "")
        )
    address = line.split(" at ", 1)[1].strip()
    try:
        connection = plugins.connect(address, peer=local_worker.id, authkey=authkey)
    except BaseException:
        process.kill()
        process.wait()
        raise
    worker = SpawnedWorker(connection, process)
    worker._options = {"authkey": authkey}
    return worker
