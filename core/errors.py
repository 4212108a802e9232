"""bastion's errors: one root, ``BastionError``, and a subclass for every public failure.

Each message says what happened and what to do next.

>>> import bastion as sy
>>> issubclass(sy.LocationError, sy.BastionError)
True
"""

from __future__ import annotations

import builtins


class BastionError(Exception):
    """The root of every error bastion raises on purpose."""


class LocationError(BastionError):
    """Pointers to objects on different workers were used in one operation."""


class ObjectNotFoundError(BastionError):
    """A pointer names an object its worker no longer holds (fetched, moved, deleted...)."""


class ObjectExistsError(BastionError):
    """An object id is already taken on the worker it was sent or moved to."""


class PermissionDenied(BastionError):
    """The worker refused the request; the refusal is recorded as a ``denied`` event."""


class SerializationError(BastionError):
    """A value cannot be carried to or from a worker (type, size or frame format)."""


class FrameError(SerializationError):
    """A frame arrived whole but its content does not decode; the stream is still in step,
    so a server answers with an error reply and keeps the connection."""


class RemoteValueError(BastionError, TypeError):
    """Python asked for a local value (``bool``, ``int``...) of data that lives on a worker."""


class UnsupportedOperation(BastionError):
    """The function is not one bastion can run on a worker."""


class ConfigurationError(BastionError, ValueError):
    """An argument given to bastion itself (worker id, database URL, hook target...) is invalid."""


class TransportError(BastionError):
    """A transport could not be found, opened or used."""


class ConnectionLost(TransportError):
    """The connection to a worker broke or timed out."""


class EventLogError(BastionError):
    """The event log could not be opened, read or written."""


class AuditError(BastionError):
    """An audit names what the log does not hold (a worker, a seq, an object id), or asks
    something it cannot answer; nothing was read past the question."""


class RemoteError(BastionError):
    """An operation failed on the worker; ``remote_type`` names the exception raised there.

    When the remote exception is a Python builtin (``RuntimeError``, ``IndexError``...), the
    error raised locally is also an instance of that builtin, so ``except RuntimeError`` works
    the same on pointers as on tensors.
    """

    remote_type: str = "Exception"


_REMOTE_CLASSES: dict[str, type[RemoteError]] = {}


def remote_error_class(type_name: str) -> type[RemoteError]:
    """The local class for an exception named ``type_name`` raised on a worker."""
    cls = _REMOTE_CLASSES.get(type_name)
    if cls is not None:
        return cls
    builtin = getattr(builtins, type_name, None)
    if (
        isinstance(builtin, type)
        and issubclass(builtin, Exception)
        and not issubclass(builtin, (BastionError, OSError, KeyboardInterrupt, SystemExit))
        and builtin is not Exception
    ):
        cls = type(f"Remote{type_name}", (RemoteError, builtin), {"remote_type": type_name})
    else:
        cls = RemoteError
    _REMOTE_CLASSES[type_name] = cls
    return cls


#: Errors a worker may raise that keep their own class on the client side.
WIRE_ERRORS: dict[str, type[BastionError]] = {
    cls.__name__: cls
    for cls in (
        BastionError,
        LocationError,
        ObjectNotFoundError,
        ObjectExistsError,
        PermissionDenied,
        SerializationError,
        FrameError,
        RemoteValueError,
        UnsupportedOperation,
        ConfigurationError,
        TransportError,
        ConnectionLost,
        EventLogError,
    )
}


def error_from_wire(type_name: str, message: str) -> BastionError:
    """Rebuild, on the client, an error a worker reported by name."""
    cls = WIRE_ERRORS.get(type_name)
    if cls is not None:
        return cls(message)
    error = remote_error_class(type_name)(f"{type_name} on the worker: {message}")
    return error
