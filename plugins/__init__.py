"""bastion's plugin manager: transports, built-in or not, come in through the same hook.

>>> from bastion import plugins
>>> "memory" in plugins.transports()
True
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import pluggy

from bastion.errors import TransportError
from bastion.plugins import hookspecs

#: Built-in features are plugins too: they register exactly as a third-party one does.
DEFAULT_PLUGINS: tuple[str, ...] = ("bastion.transports.memory",)

pm = pluggy.PluginManager("bastion")
pm.add_hookspecs(hookspecs)

_lock = threading.Lock()
_loaded = False
_instances: dict[type, Any] = {}


def _load_defaults() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        for name in DEFAULT_PLUGINS:
            if pm.get_plugin(name) is None:
                pm.register(importlib.import_module(name), name=name)
        _loaded = True


def transports() -> dict[str, type]:
    """Every transport class the loaded plugins serve, by address scheme."""
    _load_defaults()
    found: dict[str, type] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.bastion_transports.get_hookimpls():
        for cls in impl.function() or ():
            scheme = getattr(cls, "scheme", None)
            if not isinstance(scheme, str) or not scheme:
                raise TransportError(
                    f"plugin {impl.plugin_name!r} returned {cls!r}, which names no scheme"
                )
            if scheme in found and found[scheme] is not cls:
                raise TransportError(
                    f"plugins {owners[scheme]!r} and {impl.plugin_name!r} both claim the "
                    f"{scheme!r} scheme; uninstall or disable one of them"
                )
            found[scheme] = cls
            owners[scheme] = impl.plugin_name
    return found


def get_transport(scheme: str) -> Any:
    """The (shared) instance of the transport class that serves ``scheme`` now."""
    found = transports()
    cls = found.get(scheme)
    if cls is None:
        raise TransportError(
            f"no transport serves {scheme!r} addresses; loaded schemes: "
            f"{', '.join(sorted(found))}"
        )
    with _lock:
        transport = _instances.get(cls)
        if transport is None:
            transport = _instances[cls] = cls()
    return transport


def split_address(address: str) -> tuple[str, str]:
    """``"tcp://host:1"`` -> ``("tcp", "host:1")``."""
    scheme, sep, rest = address.partition("://") if isinstance(address, str) else ("", "", "")
    if not sep or not scheme or not rest:
        raise TransportError(f"{address!r} is not a worker address like 'memory://M1'")
    return scheme, rest


def connect(address: str, **options: Any) -> Any:
    """Open a connection to the worker at ``address`` through the transport for its scheme."""
    scheme, _ = split_address(address)
    return get_transport(scheme).connect(address, **options)


def serve(worker: Any, address: str, **options: Any) -> Any:
    """Serve ``worker`` at ``address`` through the transport for its scheme."""
    scheme, _ = split_address(address)
    return get_transport(scheme).serve(worker, address, **options)
