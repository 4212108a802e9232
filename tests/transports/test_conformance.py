"""The built-in transports pass bastion's own transport conformance suite."""

from __future__ import annotations

import itertools

import pytest

from bastion import plugins
from bastion.client import BaseWorker
from bastion.testing import TransportContract

_names = itertools.count()


class TestMemoryTransport(TransportContract):
    @pytest.fixture(params=[False, True], ids=["direct", "serialized"])
    def serve_worker(self, request):
        servers = []

        def serve(worker):
            address = f"memory://{worker.id}"
            servers.append(plugins.serve(worker, address, serialize=request.param))
            return BaseWorker(worker.id, address, plugins.connect(address))

        yield serve
        for server in servers:
            server.close()
