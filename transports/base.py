"""The transport contract: carry a ``Message`` to a worker and its ``Reply`` back.

A transport is registered by a plugin (``bastion_transports`` hook) and chosen by the
scheme of an address. It implements two methods::

    class MyTransport(Transport):
        scheme = "my"
        def connect(self, address, **options) -> Connection: ...
        def serve(self, worker, address, **options) -> Server: ...

>>> from bastion.transports.base import Transport
>>> Transport().connect("my://x")
Traceback (most recent call last):
...
NotImplementedError: Transport.connect() must be implemented by a transport plugin
"""

from __future__ import annotations

from typing import Any, ClassVar

from bastion.messages import Reply


class Connection:
    """A client's line to one worker. ``worker_id`` names the worker at the other end."""

    address: str = ""
    worker_id: str = ""

    def request(self, message: Any) -> Reply:
        """Send ``message`` and wait for the worker's ``Reply``."""
        raise NotImplementedError(
            f"{type(self).__name__}.request() must be implemented by a transport plugin"
        )

    def close(self) -> None:
        """Release the connection; later requests fail."""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Server:
    """A worker being served at ``address``."""

    address: str = ""

    def close(self) -> None:
        """Stop serving."""

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Transport:
    """Base class of every transport; ``scheme`` is the address prefix it serves."""

    scheme: ClassVar[str] = ""

    def connect(self, address: str, **options: Any) -> Connection:
        """Open a connection to the worker served at ``address``."""
        raise NotImplementedError(
            f"{type(self).__name__}.connect() must be implemented by a transport plugin"
        )

    def serve(self, worker: Any, address: str, **options: Any) -> Server:
        """Serve ``worker`` (anything with ``handle(message, peer) -> Reply``) at ``address``."""
        raise NotImplementedError(
            f"{type(self).__name__}.serve() must be implemented by a transport plugin"
        )
