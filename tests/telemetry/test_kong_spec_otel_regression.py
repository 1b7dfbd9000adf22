"""opentelemetry against Kong's spec test spec/03-plugins/37-opentelemetry/06-regression_spec.lua (#KAG-1061): the
gateway as real processes (`gateway start`), its config changed and reloaded while it runs.

Kong reconfigures the plugin through the Admin API (PATCH /plugins/test1 with a new endpoint); here the config file
is changed so and reloaded, which is how the gateway is reconfigured."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, request, wait_until
from e2e_helpers import node_factory

TIMEOUT = 10
REQUESTS_AFTER_RELOAD = 10  # Kong's: keeps sending until the traces reach the new endpoint, at most 10 times


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    with node_factory(tmp_path) as make:
        yield make


def _exports(collector: EchoBackend) -> list[Any]:
    return [seen for seen in collector.requests if seen.method == "POST"]


async def test_a_changed_endpoint_gets_the_traces_after_the_reconfiguration(nursery, node):
    """06-regression_spec "#KAG-1061 test": an opentelemetry instance (instance_name test1, on a route and its
    service, batch_flush_delay 0) sends a request's trace to its endpoint; once its config names another endpoint
    (Kong's deprecated `endpoint`, as the spec's PATCH sends), later requests' traces reach that one."""
    backend, first, second = EchoBackend(), EchoBackend("mock1"), EchoBackend("mock2")
    for server in (backend, first, second):
        await nursery.start(server.serve)
    otel = {"name": "opentelemetry", "instance_name": "test1", "route": "r", "service": "mock-service",
            "config": {"traces_endpoint": f"http://127.0.0.1:{first.port}", "batch_flush_delay": 0}}
    doc: dict[str, Any] = {"services": [{"name": "mock-service", "url": f"http://127.0.0.1:{backend.port}",
                                         "routes": [{"name": "r", "protocols": ["http"], "paths": ["/"]}]}],
                           "plugins": [otel]}
    gw = node(doc, tracing_instrumentations="all", tracing_sampling_rate=1)
    await gw.start(workers=1)
    with trio.fail_after(TIMEOUT):
        assert (await request(gw.port, "GET", "/")).status == 200
    await wait_until(lambda: _exports(first), "the trace at the first endpoint")

    otel["config"] = {"endpoint": f"http://127.0.0.1:{second.port}", "batch_flush_delay": 0}
    gw.config.write_text(json.dumps(gw.doc))
    reload = await gw.acli("reload")
    assert reload.returncode == 0, reload.stderr
    with trio.fail_after(TIMEOUT):
        for _ in range(REQUESTS_AFTER_RELOAD):
            assert (await request(gw.port, "GET", "/")).status == 200
            if _exports(second):
                break
            await trio.sleep(0.2)
    await wait_until(lambda: _exports(second), "a trace at the new endpoint")
