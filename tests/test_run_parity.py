"""`gateway run` (the keeper's logic in the worker's process) and `gateway start` (a keeper process, over the bus)
behave alike: the same config and traffic, the same answers and the same state kept (run-parity review)."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import trio
from backends import Client, EchoBackend
from e2e_helpers import GatewayNode

from gateway import worker
from gateway.keeper.state import Keeper


@pytest.mark.parametrize("http_codec", ["h11"])  # (the keeper's state, not the codec)
async def test_gateway_run_drops_a_rate_limit_key_once_its_windows_ended(nursery, gateway, monkeypatch) -> None:
    """Kong's counters expire with their period (kong/plugins/rate-limiting/policies/init.lua:308, `shm:incr(
    cache_key, value, 0, EXPIRATION[period])`), and the keeper process drops a key within a second of its last
    window's end (ledger.py rule 10, README: Shared state, "Memory is bounded"). `gateway run`'s keeper never did:
    every identifier a client made up stayed until 65,536 keys were held."""
    made: list[Keeper] = []

    class Recorded(Keeper):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(worker, "Keeper", Recorded)  # (the one serve_worker makes)
    backend = EchoBackend("b")
    bport = await nursery.start(backend.serve)
    plugin = {"name": "rate-limiting", "config": {"second": 5, "policy": "local", "limit_by": "header",
                                                   "header_name": "x-id"}}
    port = await gateway({"services": [{"name": "s", "url": f"http://127.0.0.1:{bport}", "plugins": [plugin],
                                        "routes": [{"name": "r", "paths": ["/"]}]}]})
    async with await Client.connect(port) as client:
        for i in range(20):
            assert (await client.request("GET", "/", headers=[("x-id", f"client-{i}")])).status == 200
    [keeper] = made
    assert len(keeper.ledger.keys()) == 20
    with trio.fail_after(2.5):  # its second ends within 1 s, and the keys go at the next expiry (every 1 s)
        while keeper.ledger.keys():
            await trio.sleep(0.05)


async def test_gateway_start_lets_a_sequential_clients_half_open_probes_through(nursery, tmp_path) -> None:
    """circuit-breaker with half_open_max_calls 1 (at most one probe in flight: README, Shared state, and
    gateway/breaker/config.py BreakerConfig) and success_threshold 8: a client sending one request after another
    has one in flight at a time, so each is the half-open circuit's probe until eight succeeded, as `gateway run`
    admits them. Under `gateway start` a request that came before the keeper's new permit crossed the bus back was
    refused (503 "failure to get a peer from the ring-balancer"), now and then on an idle host, every time here:
    the keeper stopped for those requests (less than the 0.75 s after which a worker holds it lost)."""
    backend = EchoBackend("b")
    bport = await nursery.start(backend.serve)
    plugin = {"name": "circuit-breaker", "config": {"failure_threshold": 1, "half_open_timeout": 100,
                                                    "success_threshold": 8}}
    node = GatewayNode(tmp_path, {"upstreams": [{"name": "u", "targets": [{"target": f"127.0.0.1:{bport}"}]}],
                                  "services": [{"name": "s", "host": "u", "retries": 0, "plugins": [plugin],
                                                "routes": [{"name": "r", "paths": ["/"]}]}]},
                       status_listen=None)
    try:
        await node.start(workers=1)
        keeper = await node.child_pid("keeper")
        assert keeper is not None
        async with await Client.connect(node.port) as client:
            assert (await client.request("GET", "/?status=500")).status == 500  # opens it (one failure)
            with trio.fail_after(2):
                while (await client.request("GET", "/")).status != 503:  # until the keeper's "open" is in
                    await trio.sleep(0.01)
            await trio.sleep(0.25)  # half-open, its one permit with this worker
            os.kill(keeper, signal.SIGSTOP)
            try:
                statuses = [(await client.request("GET", "/")).status for _ in range(8)]
            finally:
                os.kill(keeper, signal.SIGCONT)
        assert statuses == [200] * 8
        with trio.fail_after(2):  # the keeper counted the eight probes
            while (await node.admin("breakers"))[f"u|127.0.0.1:{bport}"]["state"] != "closed":
                await trio.sleep(0.02)
    finally:
        await trio.to_thread.run_sync(node.cleanup)
