"""An https-only route's scheme and redirect host from a trusted balancer, read as Kong reads them: kong/runloop/
handler.lua:1236-1237 (Kong 3.9.3) takes `get_header("x_forwarded_proto", ctx)` and `get_header("x_forwarded_host",
ctx)`, which index ngx.req.get_headers() (kong/tools/http.lua:545-565): the line spelled with underscores first (the
table's own key), else the first dashed one, and no line after the 100th (kong/globalpatches.lua:144-152,
lua_max_req_headers). handler.lua:1260-1279 answers 426 or redirects to "https://" .. forwarded_host .. request_uri
when forwarded_proto ~= "https". In-process, once per codec."""

from __future__ import annotations

import trio
from backends import EchoBackend, request, service

TIMEOUT = 10


async def _https_only(nursery, gateway, code: int) -> tuple[int, EchoBackend]:  # noqa: ANN001
    """A gateway with one https-only route answering plain HTTP with `code`, the test client (127.0.0.1) trusted."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    route = {"paths": ["/"], "protocols": ["https"], "https_redirect_status_code": code}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [route])]},
                         trusted_ips=["127.0.0.1"])
    return port, echo


async def test_a_trusted_peers_underscored_forwarded_proto_https_is_proxied(nursery, gateway):
    """handler.lua:1236: get_header("x_forwarded_proto", ctx) finds the X_Forwarded_Proto line (`https`), so the
    https-only route proxies the request instead of answering 426."""
    port, echo = await _https_only(nursery, gateway, 426)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x", host="gw.test", headers=[("X_Forwarded_Proto", "https")])
    assert reply.status == 200, (reply.status, reply.body)
    assert len(echo.requests) == 1


async def test_a_trusted_peers_underscored_forwarded_proto_wins_over_the_dashed_one(nursery, gateway):
    """handler.lua:1236: the underscore spelling is the table's own key, read before the metatable's dashed lookup:
    X_Forwarded_Proto: http beside X-Forwarded-Proto: https is http, so 426."""
    port, echo = await _https_only(nursery, gateway, 426)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x", host="gw.test",
                              headers=[("X-Forwarded-Proto", "https"), ("X_Forwarded_Proto", "http")])
    assert reply.status == 426, (reply.status, reply.body)
    assert echo.requests == []


async def test_a_forwarded_proto_after_the_100th_line_is_not_read_for_the_https_check(nursery, gateway):
    """globalpatches.lua:144-152: get_headers() holds the first 100 lines, so an X-Forwarded-Proto: https as line 102
    is nil to handler.lua:1236, the scheme is the connection's (http), and the route answers 426."""
    port, echo = await _https_only(nursery, gateway, 426)
    filler = [(f"x-f{i}", "1") for i in range(100)]
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x", host="gw.test", headers=filler + [("X-Forwarded-Proto", "https")])
    assert reply.status == 426, (reply.status, reply.body)
    assert echo.requests == []


async def test_a_redirects_location_uses_the_underscored_forwarded_host(nursery, gateway):
    """handler.lua:1237 and 1278: the Location is "https://" .. get_header("x_forwarded_host", ctx) .. request_uri,
    the X_Forwarded_Host line's value rather than the Host."""
    port, echo = await _https_only(nursery, gateway, 301)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x", host="gw.test", headers=[("X_Forwarded_Host", "edge.test")])
    assert (reply.status, reply.header("location")) == (301, "https://edge.test/x")
