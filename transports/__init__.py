"""Transports carry bastion's messages to workers; each serves one address scheme.

Built-in: ``memory://`` (workers in this process). Transports are found through the plugin
manager (:mod:`bastion.plugins`), built-in ones exactly like third-party ones.

>>> from bastion.transports import Transport
>>> Transport.scheme
''
"""

from bastion.transports.base import Connection, Server, Transport

__all__ = ["Connection", "Server", "Transport"]
