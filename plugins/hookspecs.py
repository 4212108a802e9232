"""The hooks a bastion plugin may implement.

A plugin is a module (or object) with functions marked ``@hookimpl``, installed with an
entry point in the group ``bastion``::

    [project.entry-points.bastion]
    carrier = "bastion_carrier"

>>> from bastion.plugins.hookspecs import hookimpl
>>> @hookimpl
... def bastion_transports():
...     return []
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("bastion")
hookimpl = pluggy.HookimplMarker("bastion")


@hookspec
def bastion_transports() -> list[type]:
    """Return the transport classes this plugin serves; each names its address ``scheme``."""


@hookspec
def bastion_event(event: Any) -> None:
    """Observe every event a worker of this process records, once it is written."""
