"""A Host header's port that Lua's tonumber reads as inf or nan splits the Host as Kong's split_host_port splits it."""

from __future__ import annotations

import json

import pytest
import trio
from backends import EchoBackend, request, service

from gateway.config.loader import parse_config
from gateway.runtime import compile_config


# LuaJIT's tonumber (src/lj_strscan.c:381-399, lj_strscan_scan) reads "inf", "infinity" and "nan" (any case, after a
# sign) as numbers, so Kong's split_host_port (kong/router/transform.lua:72-98) cuts `api.test:inf` at its ':' and
# routes by the host api.test; nginx takes such a Host (ngx_http_validate_host: letters after the ':').
@pytest.mark.parametrize("host", ["api.test:inf", "api.test:INF", "api.test:-inf", "api.test:infinity",
                                  "api.test:nan", "api.test:NaN"])
def test_host_port_inf_nan_is_a_lua_number(host):
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"name": "plain",
                                                                              "hosts": ["api.test"]}]}]}
    r = compile_config(parse_config(json.dumps(doc))).router
    m = r.match(b"GET", b"/", host.encode(), [], None, 8000)
    assert m is not None and m.payload.name == "plain", host


async def test_host_port_inf_reaches_its_route_end_to_end(gateway, nursery):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}",
                                               [{"hosts": ["api.test"], "preserve_host": True}])]})
    with trio.fail_after(5):
        reply = await request(port, "GET", "/x", host="api.test:inf")
    assert reply.status == 200, reply.status

