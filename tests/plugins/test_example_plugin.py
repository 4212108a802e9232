"""The example plugin (examples/bastion-pipe-transport) installs with pip, loads from its entry
point, is listed by ``bastion plugins`` and passes the transport conformance suite.

It is installed once per module into a temporary folder put on ``sys.path``; the socket files
of its workers go to another temporary folder (``BASTION_PIPE_DIR``).
"""

from __future__ import annotations

import doctest
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from click.testing import CliRunner

import bastion as sy
from bastion import plugins
from bastion.cli import cli
from bastion.client import BaseWorker
from bastion.testing import TransportContract
from bastion.worker import Worker

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bastion-pipe-transport"
KEY = b"pipe-test-key"


@pytest.fixture(scope="module")
def pipe_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """Install the example with pip (offline), load it from its entry point; the module."""
    root = tmp_path_factory.mktemp("pipe-plugin")
    source, site = root / "src", root / "site"
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--quiet", "--target", str(site),
         str(source)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        patch.delenv("BASTION_LOAD_PLUGINS", raising=False)
        patch.setenv("BASTION_PIPE_DIR", str(root / "sockets"))
        plugins.load_entrypoints()
        plugin = plugins.pm.get_plugin("pipe")
        assert plugin is not None, plugins.problems()
        try:
            yield plugin
        finally:
            plugins.pm.unregister(plugin)
            sys.modules.pop("bastion_pipe", None)


def test_the_plugin_is_installed_and_listed(pipe_plugin: ModuleType) -> None:
    assert Path(pipe_plugin.__file__).parent.name == "site"  # the installed copy, not the example
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = {info["name"]: info for info in map(json.loads, result.stdout.splitlines())}
    assert listed["pipe"] == {"name": "pipe", "version": "0.1.0", "schemes": ["pipe"],
                              "builtin": False, "error": None}  # fmt: skip
    assert type(plugins.get_transport("pipe")) is pipe_plugin.PipeTransport


def test_the_docstring_examples_run(pipe_plugin: ModuleType) -> None:
    result = doctest.testmod(pipe_plugin, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed


def _serve(worker: Worker, name: str | None = None) -> tuple[object, BaseWorker]:
    transport = plugins.get_transport("pipe")
    server = transport.serve(worker, f"pipe://{name or worker.id}", authkey=KEY)
    worker.connect_options = {"authkey": KEY}  # for moves to other workers
    connection = transport.connect(server.address, authkey=KEY, timeout=5.0)
    return server, BaseWorker(worker.id, server.address, connection)


class TestPipeContract(TransportContract):
    @pytest.fixture
    def serve_worker(self, pipe_plugin: ModuleType):
        servers = []

        def serve(worker: Worker) -> BaseWorker:
            server, handle = _serve(worker)
            servers.append(server)
            return handle

        yield serve
        for server in servers:
            server.close()


@pytest.fixture
def served(pipe_plugin: ModuleType) -> Iterator[tuple[Worker, object, BaseWorker]]:
    worker = Worker("pipe-served")
    server, handle = _serve(worker)
    yield worker, server, handle
    handle._connection.close()
    server.close()
    worker.close()


def test_close_removes_the_socket_file(pipe_plugin: ModuleType, served) -> None:
    _, server, _ = served
    path = pipe_plugin.socket_path(server.address)
    assert path.is_socket()
    server.close()
    assert not path.exists()
    with pytest.raises(sy.TransportError, match="no worker is served at pipe://pipe-served"):
        plugins.connect(server.address, authkey=KEY)


def test_a_name_is_served_once_and_a_stale_file_is_replaced(pipe_plugin: ModuleType, served):
    rival, stale = Worker("pipe-rival"), Worker("pipe-stale")
    with pytest.raises(sy.TransportError, match="a worker is served there"):
        _serve(rival, "pipe-served")
    path = pipe_plugin.socket_path("pipe://pipe-stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:  # a server that died
        dead.bind(str(path))
    server, handle = _serve(stale)
    assert handle.send(torch.tensor([5])).get().item() == 5
    handle._connection.close()
    server.close()
    assert not path.exists()
    rival.close()
    stale.close()


def test_a_wrong_key_is_refused_and_recorded(served) -> None:
    worker, server, _ = served
    with pytest.raises(sy.PermissionDenied, match="wrong authkey"):
        plugins.connect(server.address, peer="mallory", authkey=b"not the key")
    (denied,) = worker.log.events(kind="denied")
    assert denied.peer == "mallory"
    with pytest.raises(sy.ConfigurationError, match="shared key"):
        plugins.connect(server.address)
