"""The plugin manager: built-in transports come in through the same hook as external ones."""

from __future__ import annotations

import pytest
import torch

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


def test_two_plugins_claiming_one_scheme_are_named_and_others_keep_working(register):
    register(ElsewherePlugin(), "first")
    register(RivalPlugin(), "second")
    assert "elsewhere" not in plugins.transports() and "memory" in plugins.transports()
    with pytest.raises(sy.TransportError, match="'first' and 'second' both claim"):
        plugins.connect("elsewhere://x")
    assert any("'first' and 'second'" in problem for problem in plugins.problems())
    worker = sy.VirtualWorker(id="still-serving")
    assert worker.send(torch.ones(1)).get().item() == 1.0
    worker.close()


def test_a_transport_without_scheme_names_the_plugin(register):
    register(NamelessPlugin(), "nameless")
    assert "memory" in plugins.transports()
    assert any("plugin 'nameless' returned" in problem for problem in plugins.problems())


def _install_fake_dist(root, name: str, module: str, body: str) -> None:
    (root / f"{module}.py").write_text(body)
    info = root / f"{name}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[bastion]\n{name} = {module}\n")


GOOD = """
from bastion.plugins.hookspecs import hookimpl
from bastion.transports.base import Transport

class Pigeon(Transport):
    scheme = "pigeon"

@hookimpl
def bastion_transports():
    return [Pigeon]
"""


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("pigeon", "broken"):
        plugin = plugins.pm.get_plugin(name)
        if plugin is not None:
            plugins.pm.unregister(plugin)
    plugins._failed.clear()


def test_installed_plugins_load_from_entry_points(fake_site, monkeypatch):
    _install_fake_dist(fake_site, "pigeon", "bastion_pigeon", GOOD)
    _install_fake_dist(fake_site, "broken", "bastion_broken", "raise ImportError('no wings')\n")
    monkeypatch.delenv("BASTION_LOAD_PLUGINS", raising=False)
    plugins.load_entrypoints()
    assert plugins.transports()["pigeon"].__name__ == "Pigeon"
    assert "memory" in plugins.transports()
    infos = {info.name: info for info in plugins.plugin_info()}
    assert infos["pigeon"].version == "1.2.3" and infos["pigeon"].schemes == ["pigeon"]
    assert "no wings" in infos["broken"].error
    assert any("'broken' failed to load" in problem for problem in plugins.problems())


def test_the_allowlist_decides_what_loads(fake_site, monkeypatch):
    _install_fake_dist(fake_site, "pigeon", "bastion_pigeon", GOOD)
    monkeypatch.setenv("BASTION_LOAD_PLUGINS", "")
    plugins.load_entrypoints()
    assert "pigeon" not in plugins.transports()
    monkeypatch.setenv("BASTION_LOAD_PLUGINS", "pigeon")
    plugins.load_entrypoints()
    assert "pigeon" in plugins.transports()


def test_bastion_event_observes_every_recorded_event(register, make_worker):
    seen = []

    class Observer:
        @hookimpl
        def bastion_event(self, event):
            seen.append(event)

    register(Observer(), "observer")
    worker = make_worker("observed")
    pointer = torch.tensor([1.0]).send(worker)
    pointer.get()
    worker.audit.events()  # reading flushes; observers see events once written
    mine = [e for e in seen if e.worker == worker.id]
    assert [e.kind for e in mine] == ["create", "get"]
    assert mine[0].hash and mine[1].prev_hash == mine[0].hash
