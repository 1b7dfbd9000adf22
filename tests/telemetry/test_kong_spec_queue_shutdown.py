"""Kong's spec/02-integration/16-queues/01-shutdown_spec.lua with real processes: the gateway started and stopped
with its CLI (`gateway start`, `gateway stop`), the upstream, the http-log collector and the DNS server in the test.
A log plugin's queue is sent at a worker's graceful stop (kong/tools/queue.lua stops coalescing at worker exit),
whatever its max_coalescing_delay, and names are still resolved then."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, free_port, request, wait_until
from dns_server import Names, serve_names
from test_node import Gateway

from gateway.telemetry.service import DRAIN_S

FLUSH_HOST = "shutdown.flush.test"
DNS_HOST = "shutdown.dns.test"
UNRESOLVABLE = "this-does-not-exist.example.test"
# a graceful stop: the queues' drain (at most DRAIN_S, retrying a collector that cannot be reached) and the processes'
# exit (about a second, several on a busy host); nowhere near the 1000 s the flush test's queue would coalesce for, the
# 10 s the DNS test's would, or the gateway's drain_timeout (DRAIN_TIMEOUT_S) that forces a stop that hangs
STOP_S = DRAIN_S + 6
DRAIN_TIMEOUT_S = 60
TIMEOUT = 10


def shutdown_config(port: int, upstream: int, collector: int, names: Names) -> str:
    """Kong's spec fixtures: a route per test, each with its http-log (the flush one coalescing for 1000 s)."""
    def route(name: str, host: str, endpoint: str, queue: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "service": "mock", "hosts": [host],
                "plugins": [{"name": "http-log", "config": {"http_endpoint": endpoint, "queue": queue}}]}

    return json.dumps({
        "_format_version": "3.0",
        "gateway": {"listen": f"127.0.0.1:{port}", "status_listen": None, "drain_timeout": DRAIN_TIMEOUT_S,
                    **names.settings},
        "services": [{"name": "mock", "url": f"http://127.0.0.1:{upstream}"}],
        "routes": [
            route("flush", FLUSH_HOST, f"http://127.0.0.1:{collector}",
                  {"max_batch_size": 1000, "max_coalescing_delay": 1000}),
            route("dns", DNS_HOST, f"http://{UNRESOLVABLE}:80/this-does-not-exist",
                  {"max_batch_size": 10, "max_coalescing_delay": 10}),
        ],
    })


@pytest.fixture
async def started(nursery: trio.Nursery, tmp_path: Path):  # noqa: ANN201 - yields (Gateway, collector, names)
    """The gateway (one worker) serving Kong's fixtures; stopped by its root's pid if the test did not stop it."""
    upstream, collector = EchoBackend("mock"), EchoBackend("collector")
    await nursery.start(upstream.serve)
    await nursery.start(collector.serve)
    names = await serve_names(nursery)
    gw = Gateway(tmp_path, free_port(), upstream.port)
    gw.config.write_text(shutdown_config(gw.port, upstream.port, collector.port, names))
    try:
        out = await trio.to_thread.run_sync(lambda: gw.start(workers=1))
        assert out.returncode == 0, out.stderr
        yield gw, collector, names
    finally:
        await trio.to_thread.run_sync(gw.kill_all)


async def stop(gw: Gateway) -> float:
    """`gateway stop` (a graceful stop; the CLI returns once the root has exited): the seconds it took."""
    began = time.monotonic()
    out = await trio.to_thread.run_sync(lambda: gw.cli("stop", timeout=30))
    took = time.monotonic() - began
    assert out.returncode == 0, out.stderr
    assert "gateway stopped" in out.stdout
    return took


async def test_queue_is_flushed_before_the_gateway_exits(started):
    """01-shutdown_spec.lua "queue is flushed before kong exits": an entry waiting in a queue that would coalesce
    for 1000 s reaches the collector at a graceful stop, and the stop does not wait for the coalescing delay."""
    gw, collector, _ = started
    with trio.fail_after(TIMEOUT):
        assert (await request(gw.port, "GET", "/status/200", host=FLUSH_HOST)).status == 200
    await trio.sleep(0.3)
    assert collector.requests == []  # still coalescing
    took = await stop(gw)
    print(f"\ngateway stop with an entry queued for 1000 s: {took:.2f}s")
    await wait_until(lambda: collector.requests, "the queued entry", timeout=1)
    (seen,) = collector.requests
    assert seen.method == "POST"
    entries = json.loads(seen.body)
    assert [e["request"]["uri"] for e in entries] == ["/status/200"]  # max_batch_size 1000: a JSON array
    assert entries[0]["request"]["headers"]["host"] == FLUSH_HOST
    assert took < STOP_S, f"gateway stop took {took:.1f}s"


async def test_dns_queries_can_be_performed_when_shutting_down(started):
    """01-shutdown_spec.lua "DNS queries can be performed when shutting down": the queue sent at a graceful stop
    resolves its collector's name (here NXDOMAIN from the test's DNS server), the log says it did not resolve, and
    the stop completes promptly."""
    gw, _, names = started
    with trio.fail_after(TIMEOUT):
        assert (await request(gw.port, "GET", "/status/200", host=DNS_HOST)).status == 200
    await trio.sleep(0.3)
    assert names.asked(UNRESOLVABLE) == 0  # still coalescing: the name is first asked for at the stop
    took = await stop(gw)
    print(f"\ngateway stop with an unresolvable collector: {took:.2f}s")
    assert names.asked(UNRESOLVABLE) > 0
    # Kong: "DNS resolution failed: dns server error: 3 name error."; ours after the endpoint, which names the host
    failed = [line for line in gw.log().splitlines()
              if f"{UNRESOLVABLE}:80/" in line and "DNS resolution failed: dns server error: 3 name error" in line]
    assert failed, gw.log()[-3000:]
    assert took < STOP_S, f"gateway stop took {took:.1f}s"
