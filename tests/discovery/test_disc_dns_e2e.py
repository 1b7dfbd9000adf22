"""Upstream targets named by host names in the running gateway (`gateway start`: the discovery process resolves
them, the keeper hands the addresses to the worker): SRV records from a real DNS server (Debian's dnsmasq), each a
target with its own port and weight, the name the Host header (kong/runloop/balancer/targets.lua, balancers.lua
addAddress); a name from /etc/hosts on two ports, two targets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from dns_server import run_dnsmasq
from e2e_helpers import Backend, GatewayNode, counts, request, wait_for

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")


async def test_an_srv_named_target_spreads_by_the_records_weights_to_their_ports(nursery, tmp_path: Path):
    light, heavy = Backend("light"), Backend("heavy")
    for backend in (light, heavy):
        await nursery.start(backend.serve)
    records = ["--host-record=node.test,127.0.0.1",
               f"--srv-host=svc.test,node.test,{light.port},10,1",
               f"--srv-host=svc.test,node.test,{heavy.port},10,3",
               "--srv-host=svc.test,node.test,1,20,100"]  # a lower priority (a higher number): not used
    with run_dnsmasq(records, tmp_path) as dns:
        node = GatewayNode(tmp_path / "gw", {
            "upstreams": [{"name": "up", "targets": [{"target": "svc.test:80"}]}],
            "services": [{"name": "s", "url": "http://up", "routes": [{"paths": ["/"]}]}]}, **dns.settings)
        try:
            await node.start(workers=1)
            await wait_for(lambda: _two_addresses(node), 20, what="the SRV records' targets")
            with trio.fail_after(30):
                replies = [await request(node.port, "GET", "/x") for _ in range(8)]
            assert [r.status for r in replies] == [200] * 8
            assert counts([light, heavy]) == {"light": 2, "heavy": 6}
            assert light.hosts == {f"svc.test:{light.port}"} and heavy.hosts == {f"svc.test:{heavy.port}"}
        finally:
            node.cleanup()



async def test_two_servers_on_localhost_on_two_ports_are_two_targets(nursery, tmp_path: Path):
    """`localhost:A` and `localhost:B` (the name from /etc/hosts): each target entry keeps its own port, as Kong's
    (kong/runloop/balancer/targets.lua:83-101), so round-robin alternates between the two servers."""
    first, second = Backend("first"), Backend("second")
    for backend in (first, second):
        await nursery.start(backend.serve)
    node = GatewayNode(tmp_path / "gw", {
        "upstreams": [{"name": "up", "targets": [{"target": f"localhost:{first.port}"},
                                                  {"target": f"localhost:{second.port}"}]}],
        "services": [{"name": "s", "url": "http://up", "routes": [{"paths": ["/"]}]}]})
    try:
        await node.start(workers=1)
        with trio.fail_after(30):
            replies = [await request(node.port, "GET", "/x") for _ in range(8)]
        assert [r.status for r in replies] == [200] * 8
        assert counts([first, second]) == {"first": 4, "second": 4}
    finally:
        node.cleanup()

async def _two_addresses(node: GatewayNode) -> bool:
    return len([key for key in await node.targets() if key.startswith("up|svc.test/node.test:")]) == 2
