"""The plugin manager: built-in transports come in through the same hook as external ones."""

from __future__ import annotations

import pytest

import bastion as sy
from bastion import plugins
from bastion.plugins.hookspecs import hookimpl
from bastion.transports.base import Transport
from bastion.transports.memory import MemoryTransport


def test_the_memory_transport_is_a_default_plugin():
    assert plugins.transports()["memory"] is MemoryTransport
    assert "bastion.transports.memory" in plugins.DEFAULT_PLUGINS
    assert plugins.pm.get_plugin("bastion.transports.memory") is not None


class Elsewhere(Transport):
    scheme = "elsewhere"


class ElsewhereToo(Transport):
    scheme = "elsewhere"


class ElsewherePlugin:
    @hookimpl
    def bastion_transports(self):
        return [Elsewhere]


class RivalPlugin:
    @hookimpl
    def bastion_transports(self):
        return [ElsewhereToo]


class NamelessPlugin:
    @hookimpl
    def bastion_transports(self):
        return [object]


@pytest.fixture
def register():
    registered = []

    def add(plugin, name):
        plugins.pm.register(plugin, name=name)
        registered.append(plugin)

    yield add
    for plugin in registered:
        plugins.pm.unregister(plugin)


def test_a_plugin_adds_a_scheme(register):
    register(ElsewherePlugin(), "elsewhere")
    assert plugins.transports()["elsewhere"] is Elsewhere
    with pytest.raises(NotImplementedError, match="must be implemented by a transport plugin"):
        plugins.connect("elsewhere://x")


def test_two_plugins_claiming_one_scheme_are_named(register):
    register(ElsewherePlugin(), "first")
    register(RivalPlugin(), "second")
    with pytest.raises(sy.TransportError, match="'first' and 'second' both claim"):
        plugins.transports()


def test_a_transport_without_scheme_names_the_plugin(register):
    register(NamelessPlugin(), "nameless")
    with pytest.raises(sy.TransportError, match="plugin 'nameless' returned"):
        plugins.transports()
