"""Kong's error responses and the headers it adds, against Kong's own spec and source: the error handler and its
formats (spec/02-integration/05-proxy/12-error_default_type_spec.lua, 13-error_handlers_spec.lua;
kong/error_handlers.lua, kong/tools/http.lua, kong/pdk/response.lua), Server / Via and the latency headers
(14-server_tokens_spec.lua, 35-via_spec.lua), X-Kong-Upstream-Status (15-upstream-status-header_spec.lua) and
X-Kong-Request-Id (33-request-id-header_spec.lua), through the gateway on real sockets, once per codec.

The token names this gateway, not Kong (README: Headers Kong adds); a sane client X-Request-Id is the request's id
(README), so Kong's "^[0-9a-f]+$" holds for requests without one.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio
from backends import BadBackend, EchoBackend, free_port, parse_raw_response, raw_exchange, request, service
from conftest import build_config

from gateway.config import ConfigError
from gateway.http import kong_errors
from gateway.http.kong_errors import KONG_ERROR_PAGES, nginx_page
from gateway.http.kong_headers import SERVER_TOKEN

TIMEOUT = 10
TOKEN = SERVER_TOKEN.decode()
VIA = f"1.1 {TOKEN}"
TIMING_OUT = "The upstream server is timing out"

# 12-error_default_type_spec.lua's templates (kong/tools/http.lua ERROR_TEMPLATES: each ends with a newline, which
# the spec's assert.res_status strips)
HTML_TEMPLATE = """<!doctype html>
<html>
  <head>
    <meta charset="utf-8">
    <title>Error</title>
  </head>
  <body>
    <h1>Error</h1>
    <p>%s.</p>
    <p>request_id: %s</p>
  </body>
</html>
"""
XML_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<error>
  <message>%s</message>
  <requestid>%s</requestid>
</error>
"""
PLAIN_TEMPLATE = "%s\nrequest_id: %s\n"
JSON_TEMPLATE = '{\n  "message":"%s",\n  "request_id":"%s"\n}'
HTML = "text/html; charset=utf-8"
XML = "application/xml; charset=utf-8"
PLAIN = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"


async def _timing_out(nursery: trio.Nursery, gateway: Any, **settings: Any) -> int:
    """12-error_default_type's setup: a route for GET and HEAD to a service that times out (504)."""
    hang = BadBackend("hang")
    await nursery.start(hang.serve)
    return await gateway({"services": [service("api-1", f"http://127.0.0.1:{hang.port}",
                                               [{"methods": ["GET", "HEAD"]}], read_timeout=100, retries=0)]},
                         **settings)


def _page(reply: Any, template: str, message: str = TIMING_OUT) -> str:
    return template % (message, reply.header("x-kong-request-id"))


# --- 12-error_default_type_spec.lua -------------------------------------------------------------------------------


async def test_without_accept_the_page_is_error_default_type(nursery, gateway):
    """12-error_default_type_spec.lua "no Accept header uses error_default_type" (text/html)."""
    port = await _timing_out(nursery, gateway, error_default_type="text/html")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    assert (reply.status, reply.header("content-type")) == (504, HTML)
    assert reply.body.decode() == _page(reply, HTML_TEMPLATE)


async def test_a_head_request_gets_the_error_status_and_no_body(nursery, gateway):
    """12-error_default_type_spec.lua "HEAD request does not return a body"."""
    port = await _timing_out(nursery, gateway, error_default_type="text/html")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "HEAD", "/")
    assert (reply.status, reply.body) == (504, b"")
    # (kong.response.exit's Content-Length is the body's, which nginx leaves out for a HEAD)
    assert reply.header("content-length") == str(len(_page(reply, HTML_TEMPLATE)))


async def test_a_head_request_to_no_route_gets_404_and_no_body(nursery, gateway):
    """kong/pdk/response.lua kong.response.error: the body's Content-Length, no body (nginx's HEAD)."""
    port = await gateway({"services": []})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "HEAD", "/")
    assert (reply.status, reply.body, reply.header("content-type")) == (404, b"", JSON)
    assert reply.header("content-length") == str(len(_page(reply, JSON_TEMPLATE, "no Route matched with those values")))


async def test_the_default_error_default_type_is_text_plain(nursery, gateway):
    """12-error_default_type_spec.lua "default error_default_type = text/plain"."""
    port = await _timing_out(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    assert (reply.status, reply.header("content-type")) == (504, PLAIN)
    assert reply.body.decode() == _page(reply, PLAIN_TEMPLATE)


@pytest.mark.parametrize(("accept", "content_type", "template"), [
    ("text/html", HTML, HTML_TEMPLATE), ("application/json", JSON, JSON_TEMPLATE),
    ("application/xml", XML, XML_TEMPLATE), ("text/plain", PLAIN, PLAIN_TEMPLATE),
    # "with q-values": q defaults to 1; the highest q wins
    ("application/json;q=0.9,text/html,text/plain;q=0.9", HTML, HTML_TEMPLATE),
    ("text/plain;q=0.7,application/json;q=0.8,text/html;q=0.5", JSON, JSON_TEMPLATE)])
async def test_accept_sets_the_format_of_the_page(nursery, gateway, accept, content_type, template):
    """12-error_default_type_spec.lua "Accept header modified Content-Type" (the default templates)."""
    port = await _timing_out(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[("accept", accept)])
    assert (reply.status, reply.header("content-type")) == (504, content_type)
    assert reply.body.decode() == _page(reply, template)


# --- 13-error_handlers_spec.lua -----------------------------------------------------------------------------------


async def test_a_header_over_nginxs_8k_buffer_gets_400_from_kongs_error_handler(nursery, gateway):
    """13-error_handlers_spec.lua "HTTP 400": a 10 KB header is nginx's 494, answered 400 by Kong's handler."""
    port = await gateway({"services": []})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[("x-large", "a" * 10 * 1024)])
    assert reply.status == 400
    assert TOKEN in reply.header("server")
    assert "Request header or cookie too large" in reply.body.decode()


async def test_trace_gets_405_from_kongs_error_handler(nursery, gateway):
    """13-error_handlers_spec.lua "Request For Routers With Trace Method Not Allowed"."""
    port = await gateway({"services": []})
    data, _ = await raw_exchange(port, b"TRACE / HTTP/1.1\r\nhost: gw\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert status == 405
    assert TOKEN in headers["server"]
    assert re.fullmatch(rb"Method not allowed\nrequest_id: [0-9a-f]+\n", body)


# --- 14-server_tokens_spec.lua ------------------------------------------------------------------------------------


async def _inspect(nursery: trio.Nursery, gateway: Any, **settings: Any) -> tuple[int, EchoBackend]:
    """14-server_tokens's setup: headers-inspect.test proxied (to an upstream that sends its own Server, as Kong's
    mock upstream does), short-circuit.test answered by request-termination (200 "Terminated") with
    response-transformer adding `Via: <token>` and `Server: Demo`, request-termination.test its default 503;
    any other host gets the router's 404."""
    echo = EchoBackend()
    echo.extra_headers = [(b"server", b"mock-upstream")]
    await nursery.start(echo.serve)
    url = f"http://127.0.0.1:{echo.port}"
    doc = {"services": [service("inspect", url, [{"hosts": ["headers-inspect.test"]}]),
                        service("short", url, [{"name": "short", "hosts": ["short-circuit.test"]}]),
                        service("terminated", url, [{"name": "terminated", "hosts": ["request-termination.test"]}])],
           "plugins": [{"name": "request-termination", "route": "short",
                        "config": {"status_code": 200, "message": "Terminated"}},
                       {"name": "response-transformer", "route": "short",
                        "config": {"add": {"headers": [f"Via:{TOKEN}", "Server:Demo"]}}},
                       {"name": "request-termination", "route": "terminated"}]}
    return await gateway(doc, **settings), echo


async def _get(port: int, host: str) -> Any:
    with trio.fail_after(TIMEOUT):
        return await request(port, "GET", "/get", host=host)


@pytest.mark.parametrize(("headers", "proxied_via", "own_server"), [
    (None, True, True), ("Via", True, False), ("Server", False, True), ("server_tokens", True, True),
    ("off", False, False), ("server_tokens, off, X-Kong-Proxy-Latency", True, True),
    ("serVer_TokEns, x-kOng-pRoXy-lAtency", True, True)])
async def test_server_and_via_by_the_headers_setting(nursery, gateway, headers, proxied_via, own_server):
    """14-server_tokens_spec.lua "Server/Via" and "case insensitiveness": a proxied answer gets Kong's Via (when on)
    and keeps the upstream's Server; the router's 404 gets Kong's Server (when on) and never Via. "off" is no
    setting unless it comes first."""
    port, _ = await _inspect(nursery, gateway, **({} if headers is None else {"headers": headers}))
    proxied, own = await _get(port, "headers-inspect.test"), await _get(port, "404.test")
    assert (proxied.status, own.status) == (200, 404)
    assert proxied.header("via") == (VIA if proxied_via else None)
    assert proxied.header("server") == "mock-upstream"
    assert own.header("via") is None
    assert own.header("server") == (TOKEN if own_server else None)


async def test_a_short_circuit_with_kongs_via_keeps_its_server(nursery, gateway):
    """14-server_tokens_spec.lua "should not return Kong 'Server' header when short-circuited with a matching Kong
    'Via'"."""
    port, _ = await _inspect(nursery, gateway)
    reply = await _get(port, "short-circuit.test")
    assert reply.status == 200
    assert (reply.header("via"), reply.header("server")) == (TOKEN, "Demo")


LATENCIES = ("x-kong-upstream-latency", "x-kong-proxy-latency", "x-kong-response-latency")


@pytest.mark.parametrize(("headers", "proxied", "own"), [
    (None, {"x-kong-upstream-latency", "x-kong-proxy-latency"}, {"x-kong-response-latency"}),
    ("latency_tokens", {"x-kong-upstream-latency", "x-kong-proxy-latency"}, {"x-kong-response-latency"}),
    ("X-Kong-Upstream-Latency", {"x-kong-upstream-latency"}, set()),
    ("X-Kong-Proxy-Latency", {"x-kong-proxy-latency"}, set()),
    ("X-Kong-Response-Latency", set(), {"x-kong-response-latency"}),
    ("off", set(), set()),
    ("server_tokens, X-Kong-Proxy-Latency", {"x-kong-proxy-latency"}, set())])
async def test_latency_headers_by_the_headers_setting(nursery, gateway, headers, proxied, own):
    """14-server_tokens_spec.lua "X-Kong-Proxy-Latency/X-Kong-Upstream-Latency": a proxied answer's, the router's
    404's and a request-termination's (503)."""
    port, _ = await _inspect(nursery, gateway, **({} if headers is None else {"headers": headers}))
    for host, expected, status in (("headers-inspect.test", proxied, 200), ("404.test", own, 404),
                                   ("request-termination.test", own, 503)):
        reply = await _get(port, host)
        assert reply.status == status
        assert {h for h in LATENCIES if reply.header(h) is not None} == expected, host


async def test_an_upstreams_error_status_is_proxied_with_the_proxied_headers(nursery, gateway):
    """14-server_tokens_spec.lua "should be returned when response status code is included in error_page directive
    (error_page not executing)": the upstream's own answer passes, with the proxied latencies."""
    port, _ = await _inspect(nursery, gateway)
    for code in (400, 404, 408, 411, 412, 413, 414, 417, 494, 500, 502, 503, 504):
        with trio.fail_after(TIMEOUT):
            reply = await request(port, "GET", f"/status?status={code}", host="headers-inspect.test")
        assert reply.status == code
        assert reply.header("x-backend") == "echo"  # the upstream's answer, not a page of Kong's
        assert {h for h in LATENCIES if reply.header(h) is not None} == set(LATENCIES[:2]), code


async def test_a_failed_upstream_has_the_proxied_headers(nursery, gateway):
    """14-server_tokens_spec.lua "should be returned with 502 errors (error_page executing)"."""
    port = await gateway({"services": [service("dead", f"http://127.0.0.1:{free_port()}", retries=0)]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/get")
    assert reply.status == 502
    assert {h for h in LATENCIES if reply.header(h) is not None} == set(LATENCIES[:2])


# --- 15-upstream-status-header_spec.lua ---------------------------------------------------------------------------


async def _status_setup(nursery: trio.Nursery, gateway: Any, **settings: Any) -> int:
    echo = EchoBackend()
    await nursery.start(echo.serve)
    doc = {"services": [service("mock", f"http://127.0.0.1:{echo.port}", [
        {"name": "cached", "paths": ["/status/200"]}, {"name": "keyed", "paths": ["/status/non-proxied-request"]}])],
           "plugins": [{"name": "key-auth", "route": "keyed"},
                       {"name": "proxy-cache", "route": "cached",
                        "config": {"response_code": [200], "request_method": ["GET"],
                                   "content_type": ["application/json"], "cache_ttl": 300, "storage_ttl": 300,
                                   "strategy": "memory"}}]}
    return await gateway(doc, **settings)


async def test_x_kong_upstream_status_is_the_upstreams_status_also_from_the_cache(nursery, gateway):
    """15-upstream-status-header_spec.lua "should be same as upstream status code": when no plugin changes it, and
    "should be set when proxy-cache is enabled" (a hit)."""
    port = await _status_setup(nursery, gateway, headers="server_tokens,latency_tokens,x-kong-upstream-status")
    with trio.fail_after(TIMEOUT):
        first = await request(port, "GET", "/status/200")
        hit = await request(port, "GET", "/status/200")
    assert (first.status, first.header("x-kong-upstream-status")) == (200, "200")
    assert (hit.status, hit.header("x-cache-status"), hit.header("x-kong-upstream-status")) == (200, "Hit", "200")


@pytest.mark.parametrize("headers", [None, "X-Kong-Upstream-Status"])
async def test_x_kong_upstream_status_is_off_by_default(nursery, gateway, headers):
    """15-upstream-status-header_spec.lua "is not injected with default configuration" / "is injected with
    configuration [headers=X-Kong-Upstream-Status]"."""
    port = await _status_setup(nursery, gateway, **({} if headers is None else {"headers": headers}))
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/status/200")
    assert reply.status == 200
    assert reply.header("x-kong-upstream-status") == (None if headers is None else "200")


async def test_x_kong_upstream_status_is_not_on_a_short_circuit(nursery, gateway):
    """15-upstream-status-header_spec.lua "empty when rejected by authentication plugin"."""
    port = await _status_setup(nursery, gateway, headers="X-Kong-Upstream-Status")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/status/non-proxied-request")
    assert reply.status == 401
    assert reply.header("x-kong-upstream-status") is None


@pytest.mark.parametrize("failure", ["refused", "timeout"])
async def test_x_kong_upstream_status_of_a_failed_upstream_is_nginxs_status(nursery, gateway, failure):
    """kong/runloop/handler.lua: the last three characters of $upstream_status ("502, 502" after two refused tries,
    "504" after a read timeout)."""
    if failure == "refused":
        port = await gateway({"services": [service("dead", f"http://127.0.0.1:{free_port()}", retries=1)]},
                             headers="X-Kong-Upstream-Status")
    else:
        port = await _timing_out(nursery, gateway, headers="X-Kong-Upstream-Status")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    expected = "502" if failure == "refused" else "504"
    assert (reply.status, reply.header("x-kong-upstream-status")) == (int(expected), expected)


# --- 33-request-id-header_spec.lua --------------------------------------------------------------------------------


async def _rid_setup(nursery: trio.Nursery, gateway: Any, **settings: Any) -> tuple[int, EchoBackend]:
    echo = EchoBackend()
    await nursery.start(echo.serve)
    return await gateway({"services": [service("mock", f"http://127.0.0.1:{echo.port}",
                                               [{"hosts": ["request_id"]}])]}, **settings), echo


@pytest.mark.parametrize("headers", [None, "X-Kong-Request-Id"])
async def test_x_kong_request_id_is_on_proxied_answers_and_404s(nursery, gateway, headers):
    """33-request-id-header_spec.lua "(downstream)": "contains the expected value", "should be populated when no
    API matched", with the default configuration and [headers=X-Kong-Request-Id]; the error's body names it."""
    port, _ = await _rid_setup(nursery, gateway, **({} if headers is None else {"headers": headers}))
    proxied, own = await _get(port, "request_id"), await _get(port, "404.test")
    assert proxied.status == 200 and re.fullmatch(r"[0-9a-f]+", proxied.header("x-kong-request-id"))
    assert own.status == 404 and re.fullmatch(r"[0-9a-f]+", own.header("x-kong-request-id"))
    assert own.json() == {"message": "no Route matched with those values",
                          "request_id": own.header("x-kong-request-id")}
    assert proxied.header("x-kong-request-id") != own.header("x-kong-request-id")


async def test_x_kong_request_id_is_not_sent_with_headers_off(nursery, gateway):
    """33-request-id-header_spec.lua "is not injected with configuration [headers=off]"."""
    port, _ = await _rid_setup(nursery, gateway, headers="off")
    reply = await _get(port, "request_id")
    assert reply.status == 200 and reply.header("x-kong-request-id") is None


@pytest.mark.parametrize("headers_upstream", [None, "X-Kong-Request-Id"])
async def test_the_upstream_gets_kongs_request_id_over_the_clients(nursery, gateway, headers_upstream):
    """33-request-id-header_spec.lua "(upstream)": "contains the expected value", "overwrites client value if any",
    with the default configuration and [headers_upstream=X-Kong-Request-Id]."""
    settings = {} if headers_upstream is None else {"headers_upstream": headers_upstream}
    port, echo = await _rid_setup(nursery, gateway, **settings)
    with trio.fail_after(TIMEOUT):
        plain = await request(port, "GET", "/anything", host="request_id")
        forged = await request(port, "GET", "/anything", host="request_id",
                               headers=[("X-Kong-Request-Id", "client_value")])
    assert plain.status == forged.status == 200
    sent = [r.header("x-kong-request-id") for r in echo.requests]
    assert all(re.fullmatch(r"[0-9a-f]+", v) for v in sent)
    assert [r.headers.count(("x-kong-request-id", v)) for r, v in zip(echo.requests, sent, strict=True)] == [1, 1]
    assert sent == [plain.header("x-kong-request-id"), forged.header("x-kong-request-id")]


async def test_the_upstream_gets_no_request_id_with_headers_upstream_off(nursery, gateway):
    """33-request-id-header_spec.lua "is not injected with configuration [headers=off]" (headers_upstream)."""
    port, echo = await _rid_setup(nursery, gateway, headers_upstream="off")
    reply = await _get(port, "request_id")
    assert reply.status == 200
    assert echo.requests[0].header("x-kong-request-id") is None


# --- 35-via_spec.lua ----------------------------------------------------------------------------------------------


async def test_via_is_appended_both_ways(nursery, gateway):
    """35-via_spec.lua "HTTP/1.1 in both the inbound and outbound directions"."""
    echo = EchoBackend()
    echo.extra_headers = [(b"server", b"http-mock"), (b"via", b"2 nginx, HTTP/1.1 http_mock")]
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("via_service", f"http://127.0.0.1:{echo.port}/via",
                                               [{"hosts": ["test.via"], "paths": ["/get"]}])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/get", host="test.via", headers=[("via", "1.1 dev")])
    assert reply.status == 200
    assert echo.requests[0].header("via") == f"1.1 dev, {VIA}"
    assert reply.header("via") == f"2 nginx, HTTP/1.1 http_mock, {VIA}"
    assert reply.header("server") == "http-mock"


# --- 12-error_default_type_spec.lua "Custom error templates" ------------------------------------------------------

# spec/fixtures/error_templates/error_template.*, as they are (the plain one holds a backslash and an n, not a line
# break, where it says \n)
CUSTOM_TEMPLATES = {
    "html": '<!doctype html>\n<html>\n  <head>\n    <meta charset="utf-8">\n    <title>Custom template</title>\n'
            '  </head>\n  <body>\n    <h1>Not the default</h1>\n    <p>%s.</p>\n    <p>request_id: %s</p>\n  </body>\n'
            '</html>',
    "json": '{\n  "custom_template_message":"%s",\n  "request_id":"%s"\n}',
    "plain": 'custom plain template: %s\\n\nrequest_id: %s\\n',
    "xml": '<?xml version="1.0" encoding="UTF-8"?>\n<error>\n  <message>custom template</message>\n'
           '  <message>%s</message>\n  <message>%s</message>\n</error>',
}


def _template_files(tmp_path: Any) -> dict[str, str]:
    settings = {}
    for name, text in CUSTOM_TEMPLATES.items():
        path = tmp_path / f"error_template.{name}"
        path.write_text(text)
        settings[f"error_template_{name}"] = str(path)
    return settings


@pytest.mark.parametrize(("accept", "name"), [
    ("text/html", "html"), ("text/plain", "plain"), ("application/json", "json"), ("application/xml", "xml"),
    ("application/json;q=0.9,text/html,text/plain;q=0.9", "html"),
    ("text/plain;q=0.7,application/json;q=0.8,text/html;q=0.5", "json")])
async def test_custom_error_templates_replace_kongs(nursery, gateway, tmp_path, accept, name):
    """12-error_default_type_spec.lua "Custom error templates" (error_template_html / _plain / _json / _xml), with
    q-values."""
    port = await _timing_out(nursery, gateway, **_template_files(tmp_path))
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[("accept", accept)])
    assert reply.status == 504
    assert reply.body.decode() == _page(reply, CUSTOM_TEMPLATES[name])


def test_a_custom_template_is_string_formats_with_two_placeholders_at_most(tmp_path):
    """kong.conf.default error_template_html: "up to two %s placeholders", both optional; more, or another
    directive, and string.format fails: refused when the config is read."""
    settings = _template_files(tmp_path)
    templates = kong_errors.templates_of(build_config({"services": []}, "h11", **settings).gateway)
    for name, content_type in kong_errors.TEMPLATE_SETTINGS.items():
        assert kong_errors.error_body(TIMING_OUT, b"ab12", content_type, templates).decode() \
            == CUSTOM_TEMPLATES[name] % (TIMING_OUT, "ab12")
    (tmp_path / "one.txt").write_text("100%% sure: %s")
    templates = kong_errors.templates_of(build_config({"services": []}, "h11",
                                                      error_template_plain=str(tmp_path / "one.txt")).gateway)
    assert kong_errors.error_body("Bad request", b"ab12", kong_errors.TEXT_TYPE, templates) == b"100% sure: Bad request"
    assert kong_errors.error_body(TIMING_OUT, b"ab12", kong_errors.TEXT_TYPE) == f"{TIMING_OUT}\nrequest_id: ab12\n" \
        .encode()
    for text, why in (("%s %s %s", "more than two %s"), ("%d", "'%d' is not a placeholder"),
                      ("50%", "'%' is not a placeholder")):
        (tmp_path / "bad.html").write_text(text)
        with pytest.raises(ConfigError, match=re.escape(f"gateway: error_template_html: {why}")):
            build_config({"services": []}, "h11", error_template_html=str(tmp_path / "bad.html"))
    with pytest.raises(ConfigError, match="error_template_xml: cannot read"):
        build_config({"services": []}, "h11", error_template_xml=str(tmp_path / "missing.xml"))


# --- kong/tools/http.lua get_response_type, kong/pdk/response.lua, kong/error_handlers.lua ------------------------


@pytest.mark.parametrize(("accept", "expected"), [
    # Kong's MIME_TYPES lookup is case-sensitive, though its pattern matches any case
    ("TEXT/HTML", JSON), ("Text/*", JSON), ("text/html;Q=0.5, application/xml;q=0.6", XML),
    # a type or subtype token has two characters at least: "a/b" is no entry
    ("text/html;q=0.5, a/b", HTML),
    # q=... only with nothing around "=", at most three decimals read (and the rest ignored), the last q= wins, and
    # a parameter of one character ends the parameters
    ("text/html; q = 0.5, application/xml;q=0.6", HTML), ("text/html;q=0.5555, application/xml;q=0.556", XML),
    ("text/html;q=0.5x, application/xml;q=0.6", XML), ("text/html;q=0.1;q=0.9, application/xml;q=0.6", HTML),
    ("text/html;a;q=0.1, application/xml;q=0.5", HTML), ("text/html;level=1;q=0.1, application/xml;q=0.5", XML),
    # q=0 is never chosen; the first of equal qualities wins; an unknown type with a higher q is JSON
    ("text/html;q=0", JSON), ("text/plain, text/html", PLAIN), ("text/html;q=0.5, image/png", JSON),
    ("*/*;q=0.8, text/html", HTML), ("text/*", PLAIN), ("application/*", JSON), ("text/html/x", HTML)])
async def test_the_format_of_kong_response_error_follows_kongs_get_response_type(nursery, gateway, accept, expected):
    """kong/tools/http.lua get_response_type and get_mime_type (spec/01-unit/05-utils_spec.lua get_mime_type()),
    for the router's 404 (kong.response.error)."""
    port = await gateway({"services": []})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[("accept", accept)])
    assert (reply.status, reply.header("content-type")) == (404, expected)


@pytest.mark.parametrize(("accept", "content_type", "template"), [
    (None, JSON, JSON_TEMPLATE), ("text/html", HTML, HTML_TEMPLATE), ("application/xml", XML, XML_TEMPLATE),
    ("text/plain", PLAIN, PLAIN_TEMPLATE)])
async def test_the_routers_404_is_kong_response_error_in_each_format(nursery, gateway, accept, content_type, template):
    """kong/pdk/response.lua kong.response.error: Accept only (JSON without), Kong's templates."""
    port = await gateway({"services": []})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[] if accept is None else [("accept", accept)],
                              body=b"{}")
    assert (reply.status, reply.header("content-type")) == (404, content_type)
    assert reply.body.decode() == _page(reply, template, "no Route matched with those values")


async def test_a_configured_message_is_written_as_kong_writes_it(nursery, gateway):
    """kong/tools/http.lua ERROR_TEMPLATES are filled by string.format: the message as it is, UTF-8 in JSON too, and
    quotes in HTML and XML (here rate-limiting's error_message)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    message = "Trop de requêtes, 'réessayez' plus tard"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}")], "plugins": [
        {"name": "rate-limiting", "config": {"minute": 1, "policy": "local", "error_message": message}}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/")).status == 200
        replies = [await request(port, "GET", "/", headers=[] if accept is None else [("accept", accept)])
                   for accept in (None, "text/html", "application/xml")]
    for reply, template in zip(replies, (JSON_TEMPLATE, HTML_TEMPLATE, XML_TEMPLATE), strict=True):
        assert reply.status == 429
        assert reply.body == _page(reply, template, message).encode()


async def test_the_error_handler_reads_the_first_accept_only(nursery, gateway):
    """kong/error_handlers.lua: kong.request.get_header("Accept") is the first of several."""
    port = await _timing_out(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[("accept", "text/plain;q=0.5"), ("accept", "text/html")])
    assert (reply.status, reply.header("content-type")) == (504, PLAIN)


async def test_kong_response_error_reads_every_accept_header(nursery, gateway):
    """kong/pdk/response.lua kong.response.error: ngx.req.get_headers()["Accept"], a table of all of them, which
    get_response_type joins with ","."""
    port = await gateway({"services": []})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[("accept", "text/plain;q=0.5"), ("accept", "text/html")])
    assert (reply.status, reply.header("content-type")) == (404, HTML)


async def test_kong_response_error_to_a_grpc_accept_has_no_body(nursery, gateway):
    """kong/tools/http.lua MIME_TYPES["application/grpc"] is "": kong.response.error sets that Content-Type (none)
    and fills the empty template (over HTTP/1.1, is_grpc_request() being false)."""
    port = await gateway({"services": []})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[("accept", "application/grpc")])
    assert (reply.status, reply.header("content-length"), reply.body) == (404, "0", b"")
    assert reply.header("content-type") is None


async def test_the_error_handlers_page_to_a_grpc_accept_is_the_message_alone(nursery, gateway):
    """kong/error_handlers.lua: find(accept, "application/grpc") == 1, so the body is the table {message = ...},
    which kong.response.exit encodes as JSON (over HTTP/1.1)."""
    port = await _timing_out(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", headers=[("accept", "application/grpc+proto")])
    assert (reply.status, reply.header("content-type")) == (504, JSON)
    assert reply.body == b'{"message":"The upstream server is timing out"}'


async def test_a_501_is_nginxs_own_page_not_kongs(nursery, gateway):
    """kong/templates/nginx_kong.lua's error_page hands 400 404 405 408 411 412 413 414 417 494 500 502 503 504 to
    Kong's handler; nginx answers the 501 for a Transfer-Encoding it does not know with its own page (still with
    Kong's headers: the header filter is the server's), and Kong's charset (nginx 1.22 with `charset UTF-8;`)."""
    port = await gateway({"services": []})
    data, _ = await raw_exchange(port, b"POST / HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert (status, headers["content-type"]) == (501, "text/html; charset=UTF-8")
    assert body == (b"<html>\r\n<head><title>501 Not Implemented</title></head>\r\n<body>\r\n"
                    b"<center><h1>501 Not Implemented</h1></center>\r\n<hr><center>mcp-gateway</center>\r\n"
                    b"</body>\r\n</html>\r\n")
    assert headers["server"] == TOKEN and "x-kong-request-id" in headers


def test_nginxs_own_page():
    """ngx_http_special_response.c's page for 501, with server_tokens off's tail."""
    assert 501 not in KONG_ERROR_PAGES and {400, 494, 502, 504} <= KONG_ERROR_PAGES
    assert nginx_page(501, "openresty") == (
        b"<html>\r\n<head><title>501 Not Implemented</title></head>\r\n<body>\r\n"
        b"<center><h1>501 Not Implemented</h1></center>\r\n<hr><center>openresty</center>\r\n</body>\r\n</html>\r\n")


async def test_with_headers_off_a_short_circuits_server_is_removed(nursery, gateway):
    """kong/runloop/handler.lua header_filter: not proxied, and Via not on with Kong's token, so Server is set when
    on and removed (header[SERVER] = nil) when off."""
    port, _ = await _inspect(nursery, gateway, headers="off")
    reply = await _get(port, "short-circuit.test")
    assert reply.status == 200
    assert (reply.header("via"), reply.header("server")) == (TOKEN, None)


async def test_the_via_sent_upstream_names_the_clients_http_version(nursery, gateway):
    """kong/runloop/handler.lua: upstream_via is `http_version() .. " " .. SERVER_HEADER`, a Lua number: "1" for an
    HTTP/1.0 client (35-via_spec.lua: "2" for HTTP/2)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}")]})
    data, _ = await raw_exchange(port, b"GET / HTTP/1.0\r\nhost: gw\r\nvia: 1.1 dev\r\n\r\n")
    assert parse_raw_response(data)[0] == 200
    assert echo.requests[0].header("via") == f"1.1 dev, 1 {TOKEN}"


@pytest.mark.parametrize("setting", ["OFF", "Off", ["Off", "Via"], "Via, OFF"])
def test_off_in_headers_is_lower_case_or_refused(setting):
    """kong/conf_loader/parse.lua: an entry other than "off" (compared as it is) must name a header (in any case);
    "OFF" names none: "headers: invalid entry 'OFF'"."""
    with pytest.raises(ConfigError, match=r"headers: invalid entry 'O[Ff][Ff]'"):
        build_config({"services": []}, "h11", headers=setting)
    with pytest.raises(ConfigError, match=r"headers_upstream: invalid entry 'OFF'"):
        build_config({"services": []}, "h11", headers_upstream="OFF")
