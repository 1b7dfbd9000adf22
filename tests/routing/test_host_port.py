"""Route hosts with a port, as Kong 3.x (traditional_compatible) matches them: the host against the Host header's
host, the port against net.dst.port, which is the Host header's port when it has one, else the port the request
arrived on (kong/router/transform.lua, atc.lua `matching`, fields.lua)."""

from __future__ import annotations

import pytest
import trio
from backends import Client, EchoBackend, service
from conftest import _run_gateway, build_config

from gateway.http.net import bind_listener
from gateway.routing import Router, RouteSpec
from gateway.routing.router import split_host_port

CASES = [
    # route hosts, Host header, arrival port, matches
    (["example.test:8000"], "example.test", 8000, True),
    (["example.test:8000"], "example.test:8000", 8000, True),
    (["example.test:8000"], "example.test:9000", 8000, False),  # the Host header's port, when it has one
    (["example.test:8000"], "example.test:8000", 9000, True),
    (["example.test:8000"], "example.test", 9000, False),
    (["example.test:8000"], "other.test", 8000, False),
    (["example.test"], "example.test:1234", 9000, True),  # no port: any port
    (["*.example.test:8000"], "a.b.example.test", 8000, True),
    (["*.example.test:8000"], "a.example.test", 8001, False),
    (["api.*:8000"], "api.internal:8000", 8000, True),
    (["[::1]:8000"], "[::1]:8000", 8000, True),  # (Kong's split finds no port after an IPv6 literal's first ':',
    (["[::1]:8000"], "[::1]:8000", 8001, True),  # so the host is compared whole, on any listener)
    (["[::1]:8000"], "[::1]", 8001, False),
    (["a.test:8001", "a.test"], "a.test", 9999, True),
]


@pytest.mark.parametrize(("hosts", "header", "port", "matches"), CASES)
def test_a_host_with_a_port_matches_on_the_host_headers_port_else_the_arrival_port(hosts, header, port, matches):
    router = Router([RouteSpec("r", hosts=hosts)])
    assert router.needs_port == any(split_host_port(h)[1] is not None for h in hosts)
    assert (router.match(b"GET", b"/", header.encode(), [], None, port) is not None) == matches


@pytest.mark.parametrize(("text", "expected"), [
    ("example.test:8000", ("example.test", 8000)), ("example.test", ("example.test", None)),
    ("[::1]:80", ("[::1]:80", None)), ("[::1]", ("[::1]", None)), ("*.a.test:81", ("*.a.test", 81))])
def test_split_host_port(text, expected):
    assert split_host_port(text) == expected


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


async def test_the_gateway_routes_on_the_host_headers_port_else_its_listening_port(nursery, http_codec):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    listener = bind_listener("127.0.0.1", 0, reuse_port=False)
    port = listener.getsockname()[1]
    routes = [{"name": "here", "hosts": [f"gw.test:{port}"], "paths": ["/"]},
              {"name": "elsewhere", "hosts": [f"gw.test:{port + 1}"], "paths": ["/other"]}]
    config = build_config({"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]}, http_codec)
    await nursery.start(_run_gateway, config, [listener])
    with trio.fail_after(10):
        async with await Client.connect(port, host="gw.test") as client:
            assert (await client.request("GET", "/x")).status == 200
            assert (await client.request("GET", "/other")).status == 200  # "here" matches /other as a prefix too
        async with await Client.connect(port, host=f"gw.test:{port + 1}") as client:
            assert (await client.request("GET", "/other")).status == 200  # the Host header's port: "elsewhere"
            assert (await client.request("GET", "/x")).status == 404
        async with await Client.connect(port, host="other.test") as client:
            assert (await client.request("GET", "/x")).status == 404
    assert len(echo.requests) == 3
