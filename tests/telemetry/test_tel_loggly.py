"""The loggly plugin through the gateway (in-process, real sockets) to a Loggly stand-in on UDP: Kong's RFC 5424
message per request (kong/plugins/loggly/handler.lua's merge), sent or not by the severities (its spec:
spec/03-plugins/11-loggly/01-log_spec.lua)."""

from __future__ import annotations

import json
import re
import socket
import time

import msgspec
import pytest
import trio
from backends import EchoBackend, request, service, wait_until
from backends import UdpCollector as Collector

from gateway.policies.loggly.schema import LogglyConfig

TIMEOUT = 10
MESSAGE = re.compile(r'^<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (\S+) kong - - \[(\S+)@41058 ?(.*?)\] (\{.*\})$',
                     re.DOTALL)


async def _gateway(nursery: trio.Nursery, gateway, routes: list[dict], **services) -> tuple[int, Collector]:  # noqa: ANN001,ANN003
    backend = EchoBackend()
    await nursery.start(backend.serve)
    collector = Collector()
    await nursery.start(collector.serve)
    for route in routes:
        for p in route.get("plugins", []):
            p["config"] = {"host": "127.0.0.1", "port": collector.port, "key": "123456789", **p["config"]}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)]})
    return port, collector


def _route(name: str, **config: object) -> dict:
    return {"name": name, "paths": [f"/{name}"], "plugins": [{"name": "loggly", "config": config}]}


def parse(datagram: bytes) -> tuple[int, str, str, str, str, dict]:
    """(PRI, timestamp, hostname, key, structured data's tags, the JSON entry) of one message."""
    found = MESSAGE.match(datagram.decode())
    assert found, datagram[:200]
    return int(found[1]), found[2], found[3], found[4], found[5], json.loads(found[6])


async def test_logs_to_udp_when_severity_is_as_the_log_level(nursery, gateway):
    """Kong: "logs to UDP when severity is warning and log level info" / "...when severity and log level are the
    same": the message is Kong's merge() of the serialized entry."""
    before = time.time()
    port, collector = await _gateway(nursery, gateway, [
        _route("a", log_level="info", successful_severity="warning"),
        _route("b", log_level="warning", successful_severity="warning")])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/a/x")).status == 200
        assert (await request(port, "GET", "/b/y")).status == 200
    await wait_until(lambda: len(collector.datagrams) >= 2, "two messages")
    messages = [parse(d) for d in collector.datagrams]
    assert [(pri, entry["request"]["uri"]) for pri, *_, entry in messages] == [(12, "/a/x"), (12, "/b/y")]
    pri, stamp, hostname, key, tags, entry = messages[0]
    assert (hostname, key, tags) == (socket.gethostname(), "123456789", 'tag="kong"')
    assert abs(time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone - before) < 5  # UTC
    assert entry["response"]["status"] == 200 and entry["service"]["name"] == "svc"


async def test_does_not_log_when_the_severity_is_less_severe_than_the_log_level(nursery, gateway):
    """Kong: "logs to UDP when severity is info and log level is debug" sends; a debug severity under info does not."""
    port, collector = await _gateway(nursery, gateway, [
        _route("quiet", log_level="info", successful_severity="debug"),
        _route("loud", log_level="debug", successful_severity="info")])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/quiet")).status == 200
        assert (await request(port, "GET", "/loud")).status == 200
    await wait_until(lambda: collector.datagrams, "the message of /loud")
    await trio.sleep(0.1)
    assert [parse(d)[5]["request"]["uri"] for d in collector.datagrams] == ["/loud"]
    assert parse(collector.datagrams[0])[0] == 8 + 6


async def test_the_severity_is_the_one_configured_for_the_responses_class(nursery, gateway):
    """Kong: "logs to UDP when severity is critical/error..." for 4xx and 5xx answers."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    collector = Collector()
    await nursery.start(collector.serve)
    config = {"host": "127.0.0.1", "port": collector.port, "key": "k", "log_level": "debug",
              "successful_severity": "notice", "client_errors_severity": "err", "server_errors_severity": "crit"}
    port = await gateway({"services": [
        service("up", f"http://127.0.0.1:{backend.port}", [{"name": "up", "paths": ["/up"]}]),
        service("down", "http://127.0.0.1:9", [{"name": "down", "paths": ["/down"]}], retries=0)],
        "plugins": [{"name": "loggly", "config": config}]})
    with trio.fail_after(TIMEOUT):
        statuses = [(await request(port, "GET", path)).status for path in ("/up", "/nowhere", "/down")]
    assert statuses == [200, 404, 502]
    await wait_until(lambda: len(collector.datagrams) >= 3, "three messages")
    by_status = {parse(d)[5]["response"]["status"]: parse(d)[0] for d in collector.datagrams}
    assert by_status == {200: 8 + 5, 404: 8 + 3, 502: 8 + 2}


async def test_the_tags_are_the_structured_datas_params_each_once(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, [_route("a", tags=["kong", "web", "kong"])])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/a")).status == 200
    await wait_until(lambda: collector.datagrams, "the message")
    assert parse(collector.datagrams[0])[4] == 'tag="kong" tag="web"'


async def test_no_tags_leave_the_structured_data_as_kong_writes_it(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, [_route("a", tags=[])])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/a")).status == 200
    await wait_until(lambda: collector.datagrams, "the message")
    assert b" kong - - [123456789@41058 ] {" in collector.datagrams[0]


@pytest.mark.parametrize(("config", "message"), [
    ({}, "Object missing required field `key`"),
    ({"key": ""}, "Expected `str` of length >= 1"),
    ({"key": "k", "log_level": "warn"}, "Invalid enum value 'warn'"),
    ({"key": "k", "tags": ['a"b']}, "tags: expected text without quotes"),
    ({"key": "k", "host": "a b"}, 'host: invalid value: a b'),
    ({"key": "k", "custom_fields_by_lua": {"a": "return 1"}}, "custom_fields_by_lua: the gateway runs no Lua"),
])
def test_config_errors_name_the_field(config: dict, message: str):
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(config, LogglyConfig)


def test_kongs_defaults():
    config = LogglyConfig(key="k")
    assert (config.host, config.port, config.tags, config.log_level, config.successful_severity,
            config.client_errors_severity, config.server_errors_severity, config.timeout) == (
        "logs-01.loggly.com", 514, ["kong"], "info", "info", "info", "info", 10000)
