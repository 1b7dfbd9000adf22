"""Active probes' request, as lua-resty-healthcheck 3.1.0 (the version kong-latest.rockspec pins:
`"lua-resty-healthcheck == 3.1.0"`), lib/resty/healthcheck.lua `checker:run_single_check`.

The probe request is built by plain string concatenation (3.1.0 lines 1036-1070; healthcheck.lua:1053 and :1070):

    headers[idx] = key .. ": " .. tostring(value)          -- each configured value, as configured
    local request = ("GET %s HTTP/1.0\\r\\n%sHost: %s\\r\\n\\r\\n"):format(path, headers, hostheader or hostname or ip)

so a header value Kong's schema accepts (typedefs.headers: a map of header names to arrays of strings,
kong/db/schema/typedefs.lua:619-629; any string, UTF-8 included) is sent byte for byte, and the request holds no
header but Host and the configured ones (no User-Agent, no Accept of its own).
"""

from __future__ import annotations

import trio
import yaml

from gateway.config import parse_config
from gateway.health import Event, probe
from gateway.health.checker import upstreams_from_config


def _policy(headers: dict[str, list[str]]):  # noqa: ANN202
    """The ActivePolicy check-config builds for an upstream with these probe headers (the config must load)."""
    doc = {"upstreams": [{"name": "u", "targets": [{"target": "127.0.0.1:9"}],
                          "healthchecks": {"active": {"headers": headers, "timeout": 1,
                                                      "healthy": {"interval": 5, "successes": 1}}}}]}
    config = parse_config(yaml.safe_dump(doc, allow_unicode=True), "<repro>")
    (up,) = upstreams_from_config(config)
    return up.policy


async def _probe_and_capture(nursery: trio.Nursery, headers: dict[str, list[str]],
                             host: str = "127.0.0.1") -> tuple[Event | None, bytes]:
    """Probe a server on `host` that records the request head and answers 200; (event, the request head it got)."""
    got = bytearray()
    listeners = await trio.open_tcp_listeners(0, host=host)
    port = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(1):
                while b"\r\n\r\n" not in got:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    got.extend(chunk)
            try:
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            except trio.BrokenResourceError:
                pass

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    policy = _policy(headers)
    with trio.fail_after(2):
        event = await probe(host, port, policy, None)
    return event, bytes(got)


async def test_a_utf8_header_value_is_sent_as_its_bytes(nursery: trio.Nursery) -> None:
    """healthchecks.active.headers {X-Name: ["café"]} is accepted by check-config (as by Kong's typedefs.headers,
    typedefs.lua:619), and lua-resty-healthcheck 3.1.0 (healthcheck.lua:1053 `key .. ": " .. tostring(value)`)
    sends it as its UTF-8 bytes, the probe then counting the 200. (h11 refused it, and the error took the health
    process down at every probe.)"""
    event, head = await _probe_and_capture(nursery, {"X-Name": ["café"]})
    assert event is Event.SUCCESS
    assert "X-Name: café\r\n".encode() in head


async def test_a_header_value_with_a_trailing_space_is_sent_as_written(nursery: trio.Nursery) -> None:
    """A value with a trailing space (`"v1 "`) is a string Kong's typedefs.headers accepts; lua-resty-healthcheck
    3.1.0 (healthcheck.lua:1053) writes it as is and the server's 200 is a success."""
    event, head = await _probe_and_capture(nursery, {"X-Token": ["v1 "]})
    assert event is Event.SUCCESS
    assert b"X-Token: v1" in head


async def test_a_configured_user_agent_is_the_probes_only_one(nursery: trio.Nursery) -> None:
    """Kong's probe holds Host and the configured headers only (healthcheck.lua 3.1.0:1070
    `GET %s HTTP/1.0\\r\\n%sHost: %s\\r\\n\\r\\n`). With headers {User-Agent: ["my-monitor/1.0"]} the target sees
    exactly that User-Agent, and nothing of the gateway's own."""
    event, head = await _probe_and_capture(nursery, {"User-Agent": ["my-monitor/1.0"]})
    assert event is Event.SUCCESS
    agents = [line for line in head.split(b"\r\n") if line.lower().startswith(b"user-agent:")]
    assert agents == [b"User-Agent: my-monitor/1.0"], agents


async def test_the_host_of_an_ipv6_targets_probe_is_kongs_target_name(nursery: trio.Nursery) -> None:
    """healthcheck.lua 3.1.0:1070 sends `Host: hostheader or hostname or ip`, hostname being the target's name
    (kong/runloop/balancer/healthcheckers.lua:52 `local hostname = target.name`), split from the target as the
    targets DAO formats it (kong/runloop/balancer/targets.lua:96; kong/db/dao/targets.lua:31-36): for `[::1]:PORT`,
    `[0000:0000:0000:0000:0000:0000:0000:0001]`, the name the proxied requests' Host carries too. The gateway's
    probes said `Host: [::1]`."""
    event, head = await _probe_and_capture(nursery, {}, host="::1")
    assert event is Event.SUCCESS
    assert b"\r\nHost: [0000:0000:0000:0000:0000:0000:0000:0001]\r\n" in head
