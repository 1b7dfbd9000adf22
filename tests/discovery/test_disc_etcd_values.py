"""etcd values the discovery process must survive and read alike: a key whose target cannot be reported is left out,
not fatal to the process; the same keys give the same targets whatever order they were learnt in. A real etcd."""

from __future__ import annotations

import trio
import zmq
from backends import free_port
from etcd_server import EtcdProcess
from test_disc_etcd import etcd, etcd_binary  # noqa: F401 - the fixtures: an etcd of the test's own

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.config.discovery import DiscoverySettings
from gateway.discovery import run_etcd
from gateway.discovery.etcd import EtcdClient
from gateway.discovery.process import serve
from gateway.discovery.types import TargetInfo


async def test_a_target_host_no_report_can_carry_is_left_out_not_fatal(etcd: EtcdProcess) -> None:  # noqa: F811
    """`{"target": "\\ud800:80"}` is valid JSON; its lone surrogate passed the host check and the report to the
    keeper (msgpack, UTF-8) raised UnicodeEncodeError out of the process: restarted, it read the key again, until
    the root's restart intensity stopped the gateway."""
    client = EtcdClient([etcd.endpoint])
    prefix = "/gateway/upstreams/u/"
    await client.put(prefix + "good", b"10.0.0.1:1")
    await client.put(prefix + "bad", b'{"target": "\\ud800:80"}')
    config = parse_config(f"""
upstreams:
  - name: u
    discovery: {{type: etcd, endpoints: ["{etcd.endpoint}"], retry_initial_s: 0.05, retry_max_s: 0.1}}
""")
    bus = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    keeper = ctx.socket(zmq.ROUTER)
    keeper.setsockopt(zmq.LINGER, 0)
    keeper.bind(bus)
    received: list[p.Discovered] = []
    try:
        async with trio.open_nursery() as nursery:
            await serve(config, bus, ctx, nursery)  # raises UnicodeEncodeError now
            with trio.fail_after(5):
                while not received:
                    try:
                        frames = keeper.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        await trio.sleep(0.02)
                        continue
                    msg = p.decode(frames[-1])
                    if isinstance(msg, p.Discovered):
                        received.append(msg)
            nursery.cancel_scope.cancel()
    finally:
        keeper.close()
        ctx.destroy(linger=0)
    assert received[0].upstream == "u"
    assert received[0].targets == [TargetInfo("10.0.0.1", 1, 100)], "the bad key is left out, the good one applies"


async def test_the_same_etcd_keys_give_the_same_targets_whatever_the_history(etcd: EtcdProcess,  # noqa: F811
                                                                              nursery: trio.Nursery) -> None:
    """Two keys naming one address with different weights: the one last in etcd's key order wins, for a gateway that
    watched the puts as for one that read the prefix later (it was the first put, or the range's last)."""
    client = EtcdClient([etcd.endpoint])
    prefix = "/dup/"
    s = DiscoverySettings(type="etcd", endpoints=[etcd.endpoint], prefix=prefix, retry_initial_s=0.05,
                          retry_max_s=0.2, timeout_s=1.0)
    watched: dict[str, list[TargetInfo]] = {}
    await nursery.start(run_etcd, "dup", s, lambda u, t: watched.__setitem__(u, t))
    await client.put(prefix + "b", b"10.0.0.1:1")  # weight 100
    await client.put(prefix + "a", b'{"target": "10.0.0.1:1", "weight": 50}')
    await client.put(prefix + "z", b"10.0.0.2:2")  # once it is reported, the two before it were applied
    with trio.fail_after(5):
        while TargetInfo("10.0.0.2", 2) not in watched.get("dup", []):
            await trio.sleep(0.02)

    ranged: dict[str, list[TargetInfo]] = {}  # a second gateway (or the first after a reconnect) reads the prefix
    await nursery.start(run_etcd, "dup", s, lambda u, t: ranged.__setitem__(u, t))
    assert ranged["dup"] == watched["dup"], "the same keys and values in etcd give the same targets"
