"""bastion's plugin manager: transports, built-in or not, come in through the same hook.

Built-in plugins (``DEFAULT_PLUGINS``) register first; installed ones load from the
entry-point group ``bastion``. ``BASTION_LOAD_PLUGINS`` limits which installed plugins load:
unset loads all, ``""`` none, ``"a,b"`` only those entry-point names. A plugin that fails to
import, returns something that is not a transport, or claims a scheme another plugin claims
is reported by name (``problems()``, ``bastion plugins``); the others keep working.

>>> from bastion import plugins
>>> "memory" in plugins.transports()
True
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pluggy

from bastion.errors import TransportError
from bastion.logs import get_logger
from bastion.plugins import hookspecs

#: Built-in features are plugins too: they register exactly as a third-party one does.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "bastion.transports.memory",
    "bastion.transports.tcp",
    "bastion.transports.shm",
)
ENTRY_POINT_GROUP = "bastion"

log = get_logger("bastion.plugins")
pm = pluggy.PluginManager("bastion")
pm.add_hookspecs(hookspecs)

_lock = threading.RLock()
_loaded = False
_instances: dict[type, Any] = {}
_failed: dict[str, str] = {}
_versions: dict[str, str] = {}


@dataclass
class PluginInfo:
    """One plugin as ``bastion plugins`` lists it."""

    name: str
    version: str
    schemes: list[str] = field(default_factory=list)
    builtin: bool = False
    error: str | None = None


def _allowed() -> set[str] | None:
    value = os.environ.get("BASTION_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def load_entrypoints() -> None:
    """Load the installed plugins the allowlist admits; failures are kept, never raised."""
    allowed = _allowed()
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (allowed is not None and entry.name not in allowed) or pm.has_plugin(entry.name):
            continue
        version = getattr(entry.dist, "version", None) or "?"
        try:
            plugin = entry.load()
            pm.register(plugin, name=entry.name)
        except Exception as exc:  # a broken plugin must not take the others down
            _failed[entry.name] = f"{type(exc).__name__}: {exc}"
            log.warning("plugin failed to load", plugin=entry.name, error=str(exc))
            continue
        _versions[entry.name] = version


def _load() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        for name in DEFAULT_PLUGINS:
            if pm.get_plugin(name) is None:
                pm.register(importlib.import_module(name), name=name)
        _loaded = True
        load_entrypoints()


def _claims() -> tuple[dict[str, list[tuple[str, type]]], list[str]]:
    """Every scheme with the plugins claiming it, and what was wrong along the way."""
    _load()
    claims: dict[str, list[tuple[str, type]]] = {}
    problems: list[str] = []
    for impl in pm.hook.bastion_transports.get_hookimpls():
        try:
            returned = list(impl.function() or ())
        except Exception as exc:
            problems.append(f"plugin {impl.plugin_name!r} failed in bastion_transports: {exc}")
            continue
        for cls in returned:
            scheme = getattr(cls, "scheme", None)
            if not (isinstance(cls, type) and callable(getattr(cls, "connect", None))
                    and isinstance(scheme, str) and scheme):  # fmt: skip
                problems.append(
                    f"plugin {impl.plugin_name!r} returned {cls!r}, which is not a transport "
                    "class with a scheme, connect() and serve()"
                )
                continue
            owners = claims.setdefault(scheme, [])
            if all(known is not cls for _, known in owners):
                owners.append((impl.plugin_name, cls))
    for scheme, owners in claims.items():
        if len(owners) > 1:
            names = " and ".join(repr(name) for name, _ in owners)
            problems.append(
                f"plugins {names} both claim the {scheme!r} scheme; uninstall or disable one "
                "of them (BASTION_LOAD_PLUGINS)"
            )
    problems.extend(f"plugin {name!r} failed to load: {why}" for name, why in _failed.items())
    return claims, problems


def transports() -> dict[str, type]:
    """The transport class of every scheme exactly one loaded plugin serves."""
    claims, _ = _claims()
    return {scheme: owners[0][1] for scheme, owners in claims.items() if len(owners) == 1}


def problems() -> list[str]:
    """What is wrong with the loaded plugins, each naming the plugin."""
    return _claims()[1]


def get_transport(scheme: str) -> Any:
    """The (shared) instance of the transport class that serves ``scheme`` now."""
    claims, problems_found = _claims()
    owners = claims.get(scheme, [])
    if len(owners) != 1:
        if owners:
            raise TransportError(next(p for p in problems_found if f"{scheme!r} scheme" in p))
        raise TransportError(
            f"no transport serves {scheme!r} addresses; loaded schemes: "
            f"{', '.join(sorted(transports()))}"
        )
    cls = owners[0][1]
    with _lock:
        transport = _instances.get(cls)
        if transport is None:
            transport = _instances[cls] = cls()
    return transport


def plugin_info() -> list[PluginInfo]:
    """Every plugin: built-in or installed, its version, the schemes it serves, its error."""
    from bastion import __version__

    claims, _ = _claims()
    schemes: dict[str, list[str]] = {}
    for scheme, owners in claims.items():
        for name, _cls in owners:
            schemes.setdefault(name, []).append(scheme)
    infos = [
        PluginInfo(
            name=name,
            version=__version__ if name in DEFAULT_PLUGINS else _versions.get(name, "?"),
            schemes=sorted(schemes.get(name, [])),
            builtin=name in DEFAULT_PLUGINS,
        )
        for name, _plugin in pm.list_name_plugin()
    ]
    infos.extend(PluginInfo(name=name, version="?", error=why) for name, why in _failed.items())
    return sorted(infos, key=lambda info: (not info.builtin, info.name))


def split_address(address: str) -> tuple[str, str]:
    """``"tcp://host:1"`` -> ``("tcp", "host:1")``."""
    scheme, sep, rest = address.partition("://") if isinstance(address, str) else ("", "", "")
    if not sep or not scheme or not rest:
        raise TransportError(f"{address!r} is not a worker address like 'tcp://127.0.0.1:7001'")
    return scheme, rest


def connect(address: str, **options: Any) -> Any:
    """Open a connection to the worker at ``address`` through the transport for its scheme."""
    scheme, _ = split_address(address)
    return get_transport(scheme).connect(address, **options)


def serve(worker: Any, address: str, **options: Any) -> Any:
    """Serve ``worker`` at ``address`` through the transport for its scheme."""
    scheme, _ = split_address(address)
    return get_transport(scheme).serve(worker, address, **options)


def observe(event: Any) -> None:
    """Hand a recorded event to every ``bastion_event`` implementation."""
    pm.hook.bastion_event(event=event)


def has_observers() -> bool:
    """True when some plugin implements ``bastion_event``."""
    return bool(pm.hook.bastion_event.get_hookimpls())
