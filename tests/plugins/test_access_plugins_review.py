"""ip-restriction, request-size-limiting, cors and bot-detection where a review found them unlike Kong: an IPv4-mapped
client address, a chunked body measured in access, empty preflight headers, the 100 header lines plugins read."""

from __future__ import annotations

import ipaddress

import pytest
from backends import EchoBackend, service
from plugin_helpers import (
    call,
    headers_of,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    seen,
    start,
)

from gateway.http.realip import parse_network
from gateway.pipeline import request_buffer
from gateway.policies.ip_restriction.handler import Matcher

KB = 1024
FILLER = [(f"x-filler-{i}", "1") for i in range(100)]  # with Host, the header lines 1..101

# --- ip-restriction: an IPv4-mapped address is IPv6, as nginx's $binary_remote_addr holds it ------------------------


@pytest.mark.parametrize(("entry", "ip", "found"), [
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "::ffff:10.1.2.3", False),  # match_bin: 16 bytes look among the IPv6 entries only
    ("::ffff:10.1.2.3", "::ffff:10.1.2.3", True),
    ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", True),
    ("::ffff:10.1.2.3", "10.1.2.3", False),
    ("fe80::/10", "fe80::1%eth0", False),  # (no address nginx's parser reads)
])
def test_an_entry_matches_an_address_of_its_own_family_only(entry, ip, found):
    assert (ip in Matcher([parse_network(entry, brackets=True)])) is found


async def _behind_balancer(nursery, gateway, **config):  # noqa: ANN001,ANN003,ANN202
    backend = EchoBackend()
    await nursery.start(backend.serve)
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [plugin("ip-restriction", **config)]},
                         trusted_ips=["127.0.0.1"], real_ip_header="X-Forwarded-For", real_ip_recursive=True)


@pytest.mark.parametrize(("config", "status"), [
    ({"deny": ["::ffff:10.1.2.3"]}, 403),
    ({"allow": ["10.0.0.0/8"]}, 403),
    ({"deny": ["10.0.0.0/8"]}, 200),
    ({"allow": ["::ffff:10.0.0.0/104"]}, 200),
])
async def test_a_forwarded_mapped_address_is_matched_as_ipv6(nursery, gateway, config, status):
    port = await _behind_balancer(nursery, gateway, **config)
    reply = await call(port, headers=[("x-forwarded-for", "::ffff:10.1.2.3")])
    assert reply.status == status
    if status == 403:
        assert reply.json()["message"] == "IP address not allowed: ::ffff:10.1.2.3"


def test_trusted_ips_still_take_a_mapped_peer_as_ipv4():
    """nginx's ngx_cidr_match folds an IPv4-mapped address for set_real_ip_from: trusted_ips are unchanged."""
    from gateway.http.realip import ClientAddress
    resolver = ClientAddress(["10.0.0.0/8"], "X-Real-IP", False)
    assert resolver.resolve("::ffff:10.0.0.2", [(b"x-real-ip", b"1.2.3.4")]) == ("1.2.3.4", True)
    assert ipaddress.ip_address("::ffff:10.0.0.2").ipv4_mapped is not None


# --- request-size-limiting: a body without Content-Length is read and measured in access ---------------------------

def size_limit(size: int = 1, unit: str = "kilobytes") -> dict:
    return plugin("request-size-limiting", allowed_payload_size=size, size_unit=unit)


async def test_a_chunked_body_over_the_limit_is_refused_before_later_plugins(nursery, gateway):
    backend, port = await start(nursery, gateway, plugins=[
        size_limit(), plugin("request-termination", status_code=200, message="terminated")])
    reply = await call(port, "/", method="POST", body=[b"a" * 600, b"a" * 600])
    assert (reply.status, reply.json()["message"]) == (413, "Request size limit exceeded")
    assert backend.requests == []


async def test_a_chunked_body_over_the_limit_with_expect_is_417_before_later_plugins(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[
        size_limit(), plugin("request-termination", status_code=200, message="terminated")])
    reply = await call(port, "/", [("expect", "100-continue")], method="POST", body=[b"a" * (2 * KB)])
    assert (reply.status, reply.json()["message"]) == (417, "Request size limit exceeded")


async def test_a_refused_chunked_body_is_not_counted_by_rate_limiting(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[size_limit(), plugin("rate-limiting", minute=1, policy="local")])
    over = await call(port, "/", method="POST", body=[b"a" * (2 * KB)])
    assert over.status == 413 and headers_of(over, "x-ratelimit-remaining-minute") == []
    assert (await call(port, "/", method="POST", body=b"small")).status == 200


@pytest.mark.parametrize("buffering", [True, False])
async def test_a_chunked_body_within_the_limit_reaches_the_upstream_whole(nursery, gateway, buffering):
    _, port = await start(nursery, gateway, [{"paths": ["/"], "request_buffering": buffering}], plugins=[size_limit()])
    got = seen(await call(port, "/", method="POST", body=[b"a" * 300, b"b" * 300]))
    assert got["body"] == "a" * 300 + "b" * 300
    assert got["headers"]["content-length"] == ["600"]  # read whole in access: sent with its length, as nginx does


@pytest.mark.parametrize("buffering", [True, False])
async def test_a_body_too_large_for_memory_is_kept_in_a_file_and_proxied(nursery, gateway, monkeypatch, buffering):
    monkeypatch.setattr(request_buffer, "MEMORY_LIMIT", 1000)
    _, port = await start(nursery, gateway, [{"paths": ["/"], "request_buffering": buffering}],
                          plugins=[size_limit(8)])
    body = [bytes([65 + i]) * 700 for i in range(4)]
    got = seen(await call(port, "/", method="POST", body=body))
    assert got["body"] == b"".join(body).decode()
    over = await call(port, "/", method="POST", body=[b"x" * 3000] * 3)
    assert over.status == 413


async def test_a_later_plugin_reads_a_body_kept_in_a_file(nursery, gateway, monkeypatch):
    monkeypatch.setattr(request_buffer, "MEMORY_LIMIT", 1000)
    _, port = await start(nursery, gateway, plugins=[size_limit(8), plugin("request-termination", echo=True)])
    reply = await call(port, "/", method="POST", body=[b"a" * 700, b"b" * 700, b"c" * 700])
    assert reply.json()["request"]["raw_body"] == "a" * 700 + "b" * 700 + "c" * 700


async def test_a_request_without_a_body_passes_a_zero_limit(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[size_limit(0, "bytes")])
    assert (await call(port, "/")).status == 200


# --- cors: a preflight header Kong sets to "" is not sent ----------------------------------------------------------

PREFLIGHT = [("origin", "http://a.test"), ("access-control-request-method", "GET")]


async def test_an_empty_methods_list_sends_no_allow_methods(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("cors", methods=[])])
    reply = await call(port, "/", PREFLIGHT, method="OPTIONS")
    assert reply.status == 200
    assert headers_of(reply, "access-control-allow-origin") == ["*"]
    assert headers_of(reply, "access-control-allow-methods") == []


async def test_empty_request_headers_send_no_allow_headers(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("cors")])
    empty = await call(port, "/", [*PREFLIGHT, ("access-control-request-headers", "")], method="OPTIONS")
    assert empty.status == 200 and headers_of(empty, "access-control-allow-headers") == []
    asked = await call(port, "/", [*PREFLIGHT, ("access-control-request-headers", "x-a")], method="OPTIONS")
    assert headers_of(asked, "access-control-allow-headers") == ["x-a"]


# --- the first 100 header lines, as kong.request.get_headers() returns them ----------------------------------------

async def test_a_user_agent_after_line_100_is_not_seen_by_bot_detection(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("bot-detection")])
    assert (await call(port, "/", [("user-agent", "Googlebot/2.1")])).status == 403
    assert (await call(port, "/", [*FILLER, ("user-agent", "Googlebot/2.1")])).status == 200


async def test_a_content_length_after_line_100_is_not_seen_by_request_size_limiting(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("request-size-limiting", require_content_length=True)])
    assert (await call(port, "/", method="POST", body=b"hello")).status == 200
    reply = await call(port, "/", FILLER, method="POST", body=b"hello")  # Content-Length is written after them
    assert (reply.status, reply.json()["message"]) == (411, "A valid Content-Length header is required")
