"""The hooks a bastion plugin may implement.

>>> from bastion.plugins.hookspecs import hookimpl
>>> @hookimpl
... def bastion_transports():
...     return []
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("bastion")
hookimpl = pluggy.HookimplMarker("bastion")


@hookspec
def bastion_transports() -> list[type]:
    """Return the transport classes this plugin serves; each names its address ``scheme``."""
