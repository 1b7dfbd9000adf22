"""The Host forms a route's hosts meet, as Kong 3.x's default router (traditional_compatible) matches them.

Kong's router reads the Host header as the client sent it, not nginx's $host (lower-cased, final dot dropped, taken
from an absolute-form target): kong/router/atc.lua `exec` (`get_header("host", ctx)`, kong/tools/http.lua: the
request's header table), then `matching` splits it with transform.lua's split_host_port (at the first ':', the rest a
port when it is a number). The route's hosts become `http.host == r#"..."#` (or `=^` / `^=` for a wildcard),
compared as strings, after the same split (transform.lua get_expression). kong/db/schema/typedefs.lua keeps a route's
hosts as given (no lower-casing; kong/tools/ip.lua check_hostname: "FQDN can end in dots"). Kong documents hosts as
case-sensitive (Kong/kong#7478).
"""

from __future__ import annotations

import pytest
import trio
from backends import Client, EchoBackend, parse_raw_response, raw_exchange, service

from gateway.routing import Router, RouteSpec
from gateway.routing.router import split_host_port


def pick(hosts: list[str], host: str, port: int | None = None) -> bool:
    """Whether a route with `hosts` matches a request with this Host header arriving on `port`."""
    router = Router([RouteSpec("r", hosts=hosts)])
    return router.match(b"GET", b"/", host.encode(), [], None, port) is not None


# --- 1. case -----------------------------------------------------------------------------------------------------


def test_a_host_header_in_another_case_matches_no_route():
    """`http.host == r#"example.test"#` is a string comparison: `Host: EXAMPLE.test` is not example.test."""
    assert not pick(["example.test"], "EXAMPLE.test")


def test_a_host_header_in_the_routes_own_case_matches():
    assert pick(["example.test"], "example.test")
    assert pick(["Example.Test"], "Example.Test")


def test_a_route_host_in_upper_case_is_not_lower_cased():
    """The schema keeps a route's hosts as given: `Example.Test` does not match `Host: example.test`."""
    assert not pick(["Example.Test"], "example.test")


def test_a_wildcard_host_compares_its_suffix_and_prefix_in_their_case():
    """transform.lua: `*.example.test` is `http.host =^ ".example.test"`, `api.*` is `http.host ^= "api."`."""
    assert pick(["*.example.test"], "a.example.test")
    assert not pick(["*.example.test"], "a.EXAMPLE.test")
    assert pick(["api.*"], "api.internal")
    assert not pick(["api.*"], "API.internal")


def test_a_host_with_a_port_compares_its_name_in_its_case():
    assert pick(["example.test:8000"], "example.test:8000")
    assert not pick(["example.test:8000"], "EXAMPLE.test:8000")


# --- 2. IPv6 literals and a final dot ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("example.test:8000", ("example.test", 8000)),
    ("example.test", ("example.test", None)),
    ("[::1]", ("[::1]", None)),
    ("[::1]:8000", ("[::1]:8000", None)),  # after the first ':' comes ":1]:8000", no number: no port
    ("example.test:", ("example.test:", None)),  # tonumber("") is nil
    ("*.example.test:81", ("*.example.test", 81)),
])
def test_split_host_port_is_kongs_split_at_the_first_colon(text, expected):
    assert split_host_port(text) == expected


def test_an_ipv6_host_header_with_a_port_does_not_match_the_bare_ipv6_host():
    """`Host: [::1]:8000` is http.host "[::1]:8000" (no port split off), not "[::1]"."""
    assert not pick(["[::1]"], "[::1]:8000", 8000)


def test_an_ipv6_host_header_without_a_port_matches_the_bare_ipv6_host():
    assert pick(["[::1]"], "[::1]", 8000)


def test_an_ipv6_route_host_with_a_port_is_a_whole_host_matched_on_any_listener():
    """The route host "[::1]:8000" splits to no port either: `http.host == "[::1]:8000"`, no net.dst.port test."""
    assert pick(["[::1]:8000"], "[::1]:8000", 8000)
    assert pick(["[::1]:8000"], "[::1]:8000", 9000)
    assert not pick(["[::1]:8000"], "[::1]", 8000)


def test_an_ipv6_route_host_with_a_port_asks_for_no_listener_port():
    assert not Router([RouteSpec("r", hosts=["[::1]:8000"])]).needs_port


def test_a_host_header_with_an_empty_port_is_compared_whole():
    """`Host: example.test:` has no number after its ':': http.host is "example.test:", which no route names."""
    assert not pick(["example.test"], "example.test:")


def test_a_final_dot_of_the_host_header_is_kept():
    """nginx's $host drops it (ngx_http_validate_host), the Host header Kong routes on does not."""
    assert not pick(["example.test"], "example.test.")
    assert not pick(["example.test"], "example.test.:8000")


def test_a_route_host_with_a_final_dot_matches_only_that_form():
    assert pick(["example.test."], "example.test.")
    assert not pick(["example.test."], "example.test")


def test_a_wildcard_host_takes_a_final_dot_as_part_of_the_name():
    """`api.*` is a prefix: "api.internal." starts with "api."; `*.example.test` a suffix "example.test." lacks."""
    assert pick(["api.*"], "api.internal.")
    assert not pick(["*.example.test"], "a.example.test.")


# --- 1 and 2 through the gateway ---------------------------------------------------------------------------------


async def _status(port: int, host: str) -> int:
    async with await Client.connect(port, host=host) as client:
        return (await client.request("GET", "/")).status


async def test_the_gateway_routes_on_the_host_header_as_sent(gateway, nursery):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [{"hosts": ["example.test"]}])]})
    with trio.fail_after(10):
        assert await _status(port, "example.test") == 200
        assert await _status(port, "example.test:1234") == 200
        assert await _status(port, "EXAMPLE.test") == 404
        assert await _status(port, "example.test.") == 404
    assert len(echo.requests) == 2


# --- 3. absolute-form request targets ----------------------------------------------------------------------------
# nginx takes the absolute target's authority for $host (ngx_http_process_request_line; the Host header does not
# replace it, ngx_http_process_host) and its path for $request_uri (r->unparsed_uri starts at the path). Kong's
# router still reads the Host header (atc.lua `exec`) and the path of $request_uri (runloop/handler.lua access
# `before`: ctx.request_uri = var.request_uri); preserve_host sends that Host header (atc.lua: upstream_host =
# req_host); X-Forwarded-Host is ctx.host = var.host, the absolute target's host (handler.lua access `before`).

ABSOLUTE = b"GET http://other.test/path HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"


async def _absolute_form(gateway, nursery, preserve_host: bool) -> tuple[int, EchoBackend, EchoBackend]:  # noqa: ANN001
    by_header, by_target = EchoBackend("by-header"), EchoBackend("by-target")
    await nursery.start(by_header.serve)
    await nursery.start(by_target.serve)
    port = await gateway({"services": [
        service("header", f"http://127.0.0.1:{by_header.port}",
                [{"hosts": ["example.test"], "preserve_host": preserve_host}]),
        service("target", f"http://127.0.0.1:{by_target.port}",
                [{"hosts": ["other.test"], "preserve_host": preserve_host}])]})
    with trio.fail_after(10):
        data, _ = await raw_exchange(port, ABSOLUTE)
    return parse_raw_response(data)[0], by_header, by_target


async def test_an_absolute_target_is_matched_by_its_path(gateway, nursery):
    """The matched path is $request_uri's, the target's path: "/path" goes upstream, whichever route matched."""
    status, by_header, by_target = await _absolute_form(gateway, nursery, False)
    assert status == 200
    assert [seen.target for seen in by_header.requests + by_target.requests] == ["/path"]


async def test_an_absolute_target_sends_its_host_as_x_forwarded_host(gateway, nursery):
    """X-Forwarded-Host is nginx's $host: the absolute target's host, not the Host header."""
    _, by_header, by_target = await _absolute_form(gateway, nursery, False)
    assert [seen.header("x-forwarded-host") for seen in by_header.requests + by_target.requests] == ["other.test"]


async def test_an_absolute_target_without_preserve_host_sends_the_services_host(gateway, nursery):
    _, by_header, by_target = await _absolute_form(gateway, nursery, False)
    seen = (by_header.requests + by_target.requests)[0]
    assert seen.header("host") == f"127.0.0.1:{(by_header if by_header.requests else by_target).port}"


@pytest.mark.xfail(strict=True, reason="deliberate: the gateway routes an absolute-form request on the target's "
                                       "authority, as RFC 9112 3.2.2 and nginx's $host say (issue 13's finding); "
                                       "Kong's router reads the Host header")
async def test_an_absolute_target_is_routed_on_the_host_header(gateway, nursery):
    """atc.lua `exec`: http.host is the Host header's "example.test", not the target's "other.test"."""
    _, by_header, by_target = await _absolute_form(gateway, nursery, False)
    assert (len(by_header.requests), len(by_target.requests)) == (1, 0)


@pytest.mark.xfail(strict=True, reason="deliberate: the target's authority replaces the Host header (RFC 9112 "
                                       "3.2.2, issue 13), so preserve_host sends what was routed on; Kong's sends "
                                       "the Host header")
async def test_an_absolute_target_with_preserve_host_sends_the_host_header(gateway, nursery):
    """atc.lua `matching`: upstream_host = req_host, the Host header."""
    _, by_header, by_target = await _absolute_form(gateway, nursery, True)
    assert [seen.header("host") for seen in by_header.requests + by_target.requests] == ["example.test"]
