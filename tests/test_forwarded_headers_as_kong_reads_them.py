"""The X-Forwarded-* values Kong reads off a request (unit): kong/runloop/handler.lua:1234-1346 (Kong 3.9.3) reads
each with `get_header("x_forwarded_for", ctx)`, which is `ngx.req.get_headers()["x_forwarded_for"]`
(kong/tools/http.lua:545-565): a table keyed by the lower-cased names as sent (underscores_in_headers on), its
`_`-to-`-` lookup only lua-resty-core's metatable for a missing key (lib/resty/core/request.lua req_headers_mt), the
first line's value at [1] of a repeated name, and no line after the 100th (kong/globalpatches.lua:131-156 caps it
at lua_max_req_headers, kong_defaults.lua:198)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.pipeline.headers import kong_forwarded_reads, upstream_request_headers

CLIENT_IP = "203.0.113.7"
PEER_IP = "10.0.0.2"  # a balancer, when the tests say the peer is trusted
FILLERS = [(f"x-filler-{i}", "v") for i in range(98)]  # with Host first, the next line is the 100th


def rewrite(headers: list[tuple[str, str]], trust: bool = False) -> list[tuple[str, str]]:
    """The headers upstream_request_headers sends upstream for `headers` (names lower-cased, as the codecs give
    them), from a trusted balancer or straight from the client."""
    ex = SimpleNamespace(request=SimpleNamespace(headers=[(k.lower().encode(), v.encode()) for k, v in headers],
                                                 target=b"/p?q=1", http_version=b"1.1"),
                         client_ip=CLIENT_IP, peer_trusted=trust, peer_ip=PEER_IP if trust else CLIENT_IP,
                         consumer=None, conn=SimpleNamespace(scheme=b"http", listen_port=b"8000"),
                         settings=SimpleNamespace(request_id_upstream=False))
    out = upstream_request_headers(ex, False, b"")[0]  # type: ignore[arg-type]
    return [(k.decode(), v.decode()) for k, v in out]


def values(out: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in out if k == name]


# --- spelled with underscores ----------------------------------------------------------------------------------------


def test_an_underscore_spelled_x_forwarded_for_is_what_kong_appends_the_peer_to():
    """handler.lua:1340-1346: `get_header("x_forwarded_for", ctx)` is the `x_forwarded_for` key, an `X_Forwarded_For`
    line, from any peer; the line itself passes on (proxy_set_header replaces only the dashed name)."""
    out = rewrite([("host", "gw"), ("X_Forwarded_For", "1.2.3.4")])
    assert values(out, "x-forwarded-for") == ["1.2.3.4, 203.0.113.7"]
    assert values(out, "x_forwarded_for") == ["1.2.3.4"]


@pytest.mark.parametrize("order", ["underscore first", "dashed first"])
def test_an_underscore_spelled_x_forwarded_for_wins_over_the_dashed_one_whatever_the_order(order: str):
    """The exact key `x_forwarded_for` is found; the metatable, which would look up `x-forwarded-for`, is not asked."""
    lines = [("X_Forwarded_For", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8")]
    out = rewrite([("host", "gw"), *(lines if order == "underscore first" else lines[::-1])])
    assert values(out, "x-forwarded-for") == ["1.2.3.4, 203.0.113.7"]


def test_the_first_of_repeated_underscore_spelled_lines_is_read():
    """get_header returns value[1] of a repeated name: the first line's (request.lua adds later ones after it)."""
    out = rewrite([("host", "gw"), ("x_forwarded_for", "1.2.3.4"), ("x_forwarded_for", "5.6.7.8")], trust=True)
    assert values(out, "x-forwarded-for") == ["1.2.3.4, 10.0.0.2"]


@pytest.mark.parametrize(("sent", "header", "value"), [
    ("x_forwarded_proto", "x-forwarded-proto", "https"),
    ("x_forwarded_host", "x-forwarded-host", "u.test"),
    ("x_forwarded_port", "x-forwarded-port", "444"),
    ("x_forwarded_path", "x-forwarded-path", "/u"),
    ("x_forwarded_prefix", "x-forwarded-prefix", "/u"),
])
def test_a_trusted_peers_underscore_spelled_forwarded_header_is_kongs_value(sent: str, header: str, value: str):
    """handler.lua:1236-1240: a trusted peer's `get_header("x_forwarded_proto", ctx) or ctx.scheme` (and host, port,
    path, prefix) reads the `x_forwarded_proto` key, before a dashed line of the name, whatever the order."""
    assert values(rewrite([("host", "gw"), (sent, value)], trust=True), header) == [value]
    out = rewrite([("host", "gw"), (header, "dashed"), (sent, value), (header, "dashed2")], trust=True)
    assert values(out, header) == [value]


def test_an_empty_underscore_spelled_forwarded_header_of_a_trusted_peer_sends_none():
    """get_header gives "", which Lua takes as a value (no `or ctx.scheme`), and proxy_set_header sends no empty
    header: no X-Forwarded-Proto goes, as for an empty dashed one."""
    out = rewrite([("host", "gw"), ("x_forwarded_proto", ""), ("x-forwarded-proto", "https")], trust=True)
    assert values(out, "x-forwarded-proto") == []


def test_an_untrusted_peers_underscore_spelled_forwarded_header_changes_nothing_and_passes_on():
    """handler.lua:1242-1245: an untrusted peer's are not read; the line goes upstream as any header."""
    out = rewrite([("host", "gw"), ("x_forwarded_proto", "https"), ("x_forwarded_host", "evil.test")])
    assert (values(out, "x-forwarded-proto"), values(out, "x-forwarded-host")) == (["http"], ["gw"])
    assert values(out, "x-forwarded-for") == ["203.0.113.7"]
    assert (values(out, "x_forwarded_proto"), values(out, "x_forwarded_host")) == (["https"], ["evil.test"])


def test_a_name_partly_spelled_with_underscores_is_not_read():
    """`x_forwarded-for` is neither the key get_header asks for nor what the metatable turns it into."""
    out = rewrite([("host", "gw"), ("x_forwarded-for", "1.2.3.4")])
    assert values(out, "x-forwarded-for") == ["203.0.113.7"]


# --- after the 100th line ----------------------------------------------------------------------------------------


def test_an_x_forwarded_for_on_the_100th_line_is_read_and_one_after_it_is_not():
    """get_headers() holds the first 100 lines: Kong sends `X-Forwarded-For: $remote_addr` (handler.lua:1346) for a
    line after them, and the client's line is replaced by proxy_set_header."""
    out = rewrite([("host", "gw"), *FILLERS, ("x-forwarded-for", "1.2.3.4")])
    assert values(out, "x-forwarded-for") == ["1.2.3.4, 203.0.113.7"]
    out = rewrite([("host", "gw"), *FILLERS, ("x-filler", "v"), ("x-forwarded-for", "1.2.3.4")])
    assert values(out, "x-forwarded-for") == ["203.0.113.7"]


def test_a_trusted_peers_x_forwarded_proto_after_the_100th_line_gives_way_to_the_scheme():
    """handler.lua:1236 `get_header("x_forwarded_proto", ctx) or ctx.scheme`: a line the capped table does not hold
    is nil; the first line within the 100 is read, a later one not."""
    out = rewrite([("host", "gw"), *FILLERS, ("x-filler", "v"), ("x-forwarded-proto", "https")], trust=True)
    assert values(out, "x-forwarded-proto") == ["http"]
    out = rewrite([("host", "gw"), *FILLERS, ("x-forwarded-host", "a.test"), ("x-forwarded-host", "b.test")],
                  trust=True)
    assert values(out, "x-forwarded-host") == ["a.test"]


def test_an_underscore_spelled_line_after_the_100th_gives_way_to_a_dashed_one_before_it():
    """The capped table has no `x_forwarded_for` key: the metatable finds the dashed line."""
    out = rewrite([("host", "gw"), ("x-forwarded-for", "5.6.7.8"), *FILLERS, ("x_forwarded_for", "1.2.3.4")])
    assert values(out, "x-forwarded-for") == ["5.6.7.8, 203.0.113.7"]


def test_kong_forwarded_reads_are_by_dashed_name():
    """What each get_header("x_forwarded_*", ctx) returns, under the name the gateway sends it by; none for a name
    without a line."""
    headers = [(b"x-forwarded-proto", b"ws"), (b"x_forwarded_proto", b"https"), (b"x-forwarded-for", b"1.2.3.4")]
    assert kong_forwarded_reads(headers) == {b"x-forwarded-proto": b"https", b"x-forwarded-for": b"1.2.3.4"}
