"""The proxy against Kong's own spec tests of spec/02-integration/05-proxy/ (01-proxy, 07-upstream_timeouts,
08-uri_encoding, 11-handler, 24-buffered, 25-upstream_keepalive, 27-unbuffered, 30-max-args, 32-query-params) and
the Kong source they exercise (kong/init.lua's balancer phase, kong/runloop/handler.lua, kong/tools/uri.lua), once
per codec.

The tests marked xfail need changes outside this file: they state Kong's behaviour and turn into failures (strict)
once the change is made."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode

import h11
import pytest
import trio
from backends import (
    BadBackend,
    Client,
    EchoBackend,
    free_port,
    pattern_bytes,
    raw_exchange,
    request,
    service,
    upstream,
)
from tls_helpers import HttpsEcho, Pki

TIMEOUT = 10


async def start_echo(nursery: trio.Nursery, name: str = "echo") -> EchoBackend:
    backend = EchoBackend(name)
    await nursery.start(backend.serve)
    return backend


def path_of(reply: Any) -> str:  # noqa: ANN401 - a backends.Reply
    """The request target the echo backend received."""
    assert reply.status == 200, reply.body
    return reply.json()["path"]


class SynDrop:
    """A listener whose accept queue is full: further connects get no SYN-ACK, so they time out (a connect_timeout
    without a remote host). Close it with `close`."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=2)

    def close(self) -> None:
        self.filler.close()
        self.sock.close()


@pytest.fixture
def syn_drop():  # noqa: ANN201
    listener = SynDrop()
    yield listener
    listener.close()


# --- 01-proxy_spec: listeners -----------------------------------------------------------------------------------------


async def test_every_proxy_listener_answers_404_without_routes(nursery, gateway):
    """01-proxy_spec "multiple": proxy_listen = "127.0.0.1:9001, 127.0.0.1:9002"; GET / on each is 404."""
    a, b = free_port(), free_port()
    await gateway({"services": []}, listen=[f"127.0.0.1:{a}", f"127.0.0.1:{b}"])
    with trio.fail_after(TIMEOUT):
        replies = [await request(p, "GET", "/") for p in (a, b)]
    assert [r.status for r in replies] == [404, 404]
    assert [r.json()["message"] for r in replies] == ["no Route matched with those values"] * 2


# --- 07-upstream_timeouts_spec ----------------------------------------------------------------------------------------


async def test_a_connect_timeout_is_504_after_every_try(nursery, gateway, syn_drop):
    """07-upstream_timeouts_spec "sets upstream connect timeout value": HEAD to a service whose connect never
    completes (connect_timeout 1 ms, Kong's default retries 5) is 504."""
    svc = service("api-1", f"http://127.0.0.1:{syn_drop.port}", [{"methods": ["HEAD"]}], connect_timeout=50)
    port = await gateway({"services": [svc]})
    with trio.fail_after(TIMEOUT):
        started = trio.current_time()
        reply = await request(port, "HEAD", "/")
        elapsed = trio.current_time() - started
    assert reply.status == 504
    assert reply.body == b""
    assert elapsed >= 0.29  # six tries of 50 ms (retries 5)


async def test_a_put_with_a_body_whose_connect_times_out_is_504(nursery, gateway, syn_drop):
    """07-upstream_timeouts_spec "upstream_connect_timeout with enable_buffering": PUT with a 32 MiB JSON body (here
    2 MiB) to a service whose connect times out is 504."""
    svc = service("api-4", f"http://127.0.0.1:{syn_drop.port}", [{"methods": ["PUT"]}], connect_timeout=50)
    port = await gateway({"services": [svc]})
    body = json.dumps({"huge": "a" * (2 << 20)}).encode()
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "PUT", "/put", body=body, headers=[("content-type", "application/json")])
    assert reply.status == 504


async def test_a_read_timeout_is_504_after_kongs_default_six_tries(nursery, gateway):
    """07-upstream_timeouts_spec "sets status for last try": GET /delay/2 with read_timeout 1 ms is 504, and
    balancer_data.tries holds 6 tries (retries 5), each `state = "failed"`, `code = 504`."""
    hang = BadBackend("hang")
    await nursery.start(hang.serve)
    svc = service("api-3", f"http://127.0.0.1:{hang.port}", [{"methods": ["GET"]}], read_timeout=50)
    port = await gateway({"services": [svc]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/delay/2")
    assert reply.status == 504
    assert len(hang.requests) == 6


async def test_a_post_the_upstream_does_not_read_within_write_timeout_is_504(nursery, gateway):
    """07-upstream_timeouts_spec "sets upstream send timeout value": POST of a 32 MiB body (here 16 MiB, more than
    loopback's buffers take) with write_timeout 1 ms is 504."""
    deaf = trio.socket.socket()
    await deaf.bind(("127.0.0.1", 0))
    deaf.listen(8)
    held = []

    async def hold() -> None:
        while True:
            held.append((await deaf.accept())[0])

    svc = service("api-2", f"http://127.0.0.1:{deaf.getsockname()[1]}", [{"methods": ["POST"]}], write_timeout=100)
    port = await gateway({"services": [svc]})
    body = json.dumps({"huge": "a" * (16 << 20)}).encode()
    async with trio.open_nursery() as holding:
        holding.start_soon(hold)
        with trio.fail_after(TIMEOUT):
            reply = await request(port, "POST", "/post", body=body, headers=[("content-type", "application/json")])
        holding.cancel_scope.cancel()
    for conn in held:
        conn.close()
    deaf.close()
    assert reply.status == 504
    assert len(held) == 1  # a POST that was sent is not sent again


@pytest.mark.parametrize("method", ["PROPFIND", "PURGE"])
async def test_a_request_of_any_method_but_post_lock_patch_is_tried_again(nursery, gateway, method):
    """Kong retries through nginx's proxy_next_upstream (`error timeout`): a request that was sent is passed to the
    next server unless its method is POST, LOCK or PATCH (ngx_http_upstream_next: NGX_HTTP_UPSTREAM_FT_NON_IDEMPOTENT
    is set only for those three), so a PROPFIND or PURGE the upstream closed on goes to the next target."""
    closer = BadBackend("close")
    await nursery.start(closer.serve)
    echo = await start_echo(nursery, "alive")
    port = await gateway({"services": [service("svc", "http://pair")],
                          "upstreams": [upstream("pair", [closer.port, echo.port])]})
    with trio.fail_after(TIMEOUT):
        replies = [await request(port, method, f"/r{i}") for i in range(4)]
    assert len(closer.requests) >= 1
    assert [r.status for r in replies] == [200] * 4


@pytest.mark.parametrize("method", ["POST", "PATCH", "LOCK"])
async def test_a_post_patch_or_lock_that_was_sent_is_not_tried_again(nursery, gateway, method):
    """The other side of nginx's rule: POST, LOCK and PATCH are never passed to the next server once sent."""
    closer = BadBackend("close")
    await nursery.start(closer.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{closer.port}")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, method, "/r", body=b"x")
    assert reply.status == 502
    assert len(closer.requests) == 1


async def test_an_upstreams_5xx_answer_is_passed_on_not_tried_elsewhere(nursery, gateway):
    """Kong's proxy_next_upstream is nginx's default `error timeout` (no http_502 / http_503 / http_504): an answer is
    the answer, whatever its status."""
    a, b = await start_echo(nursery, "a"), await start_echo(nursery, "b")
    port = await gateway({"services": [service("svc", "http://pair")],
                          "upstreams": [upstream("pair", [a.port, b.port])]})
    with trio.fail_after(TIMEOUT):
        replies = [await request(port, "GET", f"/r{i}?status={s}") for i, s in enumerate((502, 503, 504, 500))]
    assert [r.status for r in replies] == [502, 503, 504, 500]
    assert len(a.requests) + len(b.requests) == 4

async def pair_gateway(nursery: trio.Nursery, gateway, route: dict[str, Any]) -> tuple[int, BadBackend]:  # noqa: ANN001
    """Round-robin over a target that closes every request unanswered and an echo backend, through `route`."""
    closer = BadBackend("close")
    await nursery.start(closer.serve)
    echo = await start_echo(nursery, "alive")
    port = await gateway({"services": [service("svc", "http://pair", [route])],
                          "upstreams": [upstream("pair", [closer.port, echo.port])]})
    return port, closer


async def test_without_request_buffering_a_request_without_a_body_is_still_tried_again(nursery, gateway):
    """nginx's ngx_http_read_client_request_body resets request_body_no_buffering for a request with neither
    Content-Length nor chunked, so a GET on a `request_buffering: false` route is passed to the next server."""
    port, closer = await pair_gateway(nursery, gateway, {"paths": ["/"], "request_buffering": False})
    with trio.fail_after(TIMEOUT):
        replies = [await request(port, "GET", f"/r{i}") for i in range(4)]
    assert len(closer.requests) >= 1
    assert [r.status for r in replies] == [200] * 4


async def test_without_request_buffering_a_sent_request_with_a_body_still_coming_is_not_tried_again(nursery, gateway):
    """A route with `request_buffering: false` is Kong's @unbuffered location (proxy_request_buffering off): nginx
    keeps r->request_body_no_buffering for a body that did not come whole with its head, and ngx_http_upstream_next
    then finalizes with the error once the request was sent (`u->request_sent && r->request_body_no_buffering`),
    whatever the method: a PUT whose body came after its head gets 502 from a target that closed on it. (A body read
    whole with the head is buffered for nginx: test_proxy's test of a PUT tried again.)"""
    port, closer = await pair_gateway(nursery, gateway, {"paths": ["/"], "request_buffering": False})
    statuses = []
    with trio.fail_after(TIMEOUT):
        for i in range(4):
            async with await Client.connect(port) as client:
                conn, stream = client.conn, client.stream
                await stream.send_all(conn.send(h11.Request(method="PUT", target=f"/r{i}", headers=[
                    ("host", "gw"), ("content-length", "7")])))
                await trio.sleep(0.05)  # the body comes after the head: the gateway has sent the head upstream
                await stream.send_all(conn.send(h11.Data(data=b"payload")) + conn.send(h11.EndOfMessage()))
                statuses.append((await client.read_response()).status)
    assert len(closer.requests) == 2
    assert sorted(statuses) == [200, 200, 502, 502]


# --- 08-uri_encoding_spec ---------------------------------------------------------------------------------------------


async def uri_gateway(nursery: trio.Nursery, gateway) -> tuple[int, EchoBackend]:  # noqa: ANN001
    """08-uri_encoding_spec's routes: hosts mock_upstream, paths /request (strip_path false), /stripped-path."""
    echo = await start_echo(nursery)
    routes = [{"hosts": ["mock_upstream"]}, {"paths": ["/request"], "strip_path": False},
              {"paths": ["/stripped-path"], "strip_path": True}]
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", routes)]}), echo


async def test_proxied_args_are_not_double_percent_encoded(nursery, gateway):
    """08-uri_encoding_spec "issue #1975 does not double percent-encode proxied args"."""
    port, _ = await uri_gateway(nursery, gateway)
    query = "limit=25&where=%7B%22or%22:%5B%7B%22name%22:%7B%22like%22:%22%25bac%25%22%7D%7D%5D%7D"
    with trio.fail_after(TIMEOUT):
        got = path_of(await request(port, "GET", f"/get?{query}", host="mock_upstream"))
    assert got == f"/get?{query}"
    args = dict(parse_qsl(got.partition("?")[2]))
    assert args == {"limit": "25", "where": '{"or":[{"name":{"like":"%bac%"}}]}'}


@pytest.mark.parametrize("query", ["param=1.2.3", "param=abc%7Cdef", "a=%7c&b=c%2Fd&c=%41", "x=a|b&y=~*'()"])
async def test_the_query_string_goes_upstream_as_the_client_sent_it(nursery, gateway, query):
    """08-uri_encoding_spec "issue #1480 does not percent-encode args unnecessarily" and "issue #749 does not decode
    percent-encoded args": handler.lua appends nginx's $args, the raw query string, to the escaped upstream path."""
    port, _ = await uri_gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        got = path_of(await request(port, "GET", f"/request?{query}", host="mock_upstream"))
    assert got == f"/request?{query}"


async def test_an_encoded_slash_in_the_path_is_not_decoded(nursery, gateway):
    """08-uri_encoding_spec "issue #688 does not percent-decode proxied URLs" and "issue #2512 does not double
    percent-encode upstream URLs": with hosts matching, paths matching and paths matching with strip_path."""
    port, _ = await uri_gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        assert path_of(await request(port, "GET", "/request/foo%2Fbar", host="mock_upstream")) == "/request/foo%2Fbar"
        assert path_of(await request(port, "GET", "/request/auth%2F123", host="mock_upstream")) == \
            "/request/auth%2F123"
        assert path_of(await request(port, "GET", "/request/auth%2F123")) == "/request/auth%2F123"
        assert path_of(await request(port, "GET", "/stripped-path/request/auth%2F123")) == "/request/auth%2F123"


@pytest.mark.parametrize(("sent", "upstream_path"), [
    ("/request/foo%2fbar", "/request/foo%2Fbar"),  # reserved: kept encoded, its hex upper-cased
    ("/request/a%20b", "/request/a%20b"),  # other: decoded, then escaped again
    ("/request/%7euser", "/request/~user"),  # unreserved: decoded, not escaped
    ("/request/%41%62c", "/request/Abc"),
    ("/request/a%7cb", "/request/a%7Cb"),
    ("/request/caf%c3%a9", "/request/caf%C3%A9"),
    ("/request/a%3Bb%2C%40", "/request/a%3Bb%2C%40"),
    ("/request/it's(1)*!$", "/request/it's(1)*!$"),  # reserved characters sent raw stay raw
])
async def test_the_upstream_path_is_the_normalized_path_escaped_as_kong_escapes_it(nursery, gateway, sent,
                                                                                   upstream_path):
    """kong/tools/uri.lua: normalize decodes %XX of all but the reserved characters (`!*'();:@&=+$,/?%#[]`, whose
    %XX is upper-cased), and handler.lua sends escape(upstream_uri): every byte outside
    `!#$&'()*+,/:;=?@[]A-Za-z0-9-_.~%` as %XX, upper case."""
    port, _ = await uri_gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        assert path_of(await request(port, "GET", sent, host="mock_upstream")) == upstream_path
        assert path_of(await request(port, "GET", sent)) == upstream_path


@pytest.mark.parametrize(("sent", "upstream_path"), [
    (b'/request/a"b{c}^d`e|f\\g<h>', b"/request/a%22b%7Bc%7D%5Ed%60e%7Cf%5Cg%3Ch%3E"),
    (b"/request/[x]", b"/request/[x]"),
])
async def test_bytes_a_path_may_not_hold_raw_are_escaped_upstream(nursery, gateway, sent, upstream_path):
    """handler.lua's escape(upstream_uri) also escapes what the client sent raw, outside its allowed set. (nginx also
    takes raw bytes 0x80-0xFF in a request target, which Kong then escapes as %XX; the codecs refuse them with 400
    on purpose: tests/http/test_codec_conformance.py's test_malformed_request_line_is_400.)"""
    port, echo = await uri_gateway(nursery, gateway)
    head = b"GET " + sent + b" HTTP/1.1\r\nhost: mock_upstream\r\nconnection: close\r\n\r\n"
    data, _ = await raw_exchange(port, head)
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert echo.requests[0].target.encode("latin-1") == upstream_path


# --- 32-query-params_spec and handler.lua's empty query ---------------------------------------------------------------


async def test_a_query_argument_added_to_a_uri_with_an_empty_query_reaches_the_upstream(nursery, gateway):
    """32-query-params_spec "does proxy set query args if URI does not contain arguments": GET /set-query-arg? with
    request-transformer add.querystring dummy:1 gives the upstream dummy=1."""
    echo = await start_echo(nursery)
    route = {"paths": ["/set-query-arg"], "plugins": [
        {"name": "request-transformer", "config": {"add": {"querystring": ["dummy:1"]}}}]}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        got = path_of(await request(port, "GET", "/set-query-arg?", host="mock_upstream"))
    assert dict(parse_qsl(got.partition("?")[2])) == {"dummy": "1"}


async def test_an_empty_query_string_is_kept_upstream(nursery, gateway):
    """handler.lua's access `after`: "Nginx's behavior when proxying a request with an empty querystring `/foo?` is to
    keep `$is_args` an empty string, hence effectively stripping the empty querystring. We overcome this behavior
    with our own logic, to preserve user desired semantics": a request target ending in `?` goes upstream with it."""
    echo = await start_echo(nursery)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}")]})
    with trio.fail_after(TIMEOUT):
        assert path_of(await request(port, "GET", "/foo?")) == "/foo?"


# --- 30-max-args_spec: nothing is truncated on the way upstream -------------------------------------------------------


@pytest.mark.parametrize("n", [100, 201])
async def test_many_query_arguments_headers_and_form_arguments_all_reach_the_upstream(nursery, gateway, n):
    """30-max-args_spec "no truncation when using N parameters when proxying": lua_max_uri_args and friends only
    limit what the Lua API reads; the proxied request keeps every query argument, header and form argument."""
    echo = await start_echo(nursery)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [{"paths": ["/proxy"]}])]})
    query = {f"a{i}": f"v{i}" for i in range(1, n + 1)}
    body = urlencode(query).encode()
    headers = [(k, v) for k, v in query.items() if k not in ("a1", "a2", "a3", "a4")]
    headers += [("content-type", "application/x-www-form-urlencoded"), ("user-agent", "kong")]
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "POST", f"/proxy?{urlencode(query)}", body=body, headers=headers)
    seen = reply.json()
    assert dict(parse_qsl(seen["path"].partition("?")[2])) == query
    got = dict(seen["headers"])
    assert {k: got.get(k) for k, _ in headers} == dict(headers)
    assert seen["body"] == body.decode()


@pytest.mark.xfail(strict=True, reason="pipeline/headers.py generates an X-Request-Id upstream (README: deliberate)")
async def test_with_headers_upstream_off_the_upstream_gets_only_the_clients_headers_and_kongs_own(nursery, gateway):
    """30-max-args_spec validate_proxy (headers_upstream = "off", headers = "off"): the upstream's request headers,
    less connection, x-forwarded-*, x-real-ip and via, are exactly those the client sent (host as the service's)."""
    echo = await start_echo(nursery)
    url = f"http://127.0.0.1:{echo.port}"
    port = await gateway({"services": [service("svc", url, [{"paths": ["/proxy"]}])]}, headers_upstream="off",
                         headers="off")
    sent = [("a5", "v5"), ("content-type", "application/x-www-form-urlencoded"), ("user-agent", "kong")]
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "POST", "/proxy?a1=v1", body=b"a1=v1", headers=sent)
    kongs = {"connection", "x-forwarded-for", "x-forwarded-host", "x-forwarded-path", "x-forwarded-port",
             "x-forwarded-prefix", "x-forwarded-proto", "x-real-ip", "via"}
    got = {k: v for k, v in reply.json()["headers"] if k not in kongs}
    assert got == {**dict(sent), "host": f"127.0.0.1:{echo.port}", "content-length": "5"}


# --- 25-upstream_keepalive_spec ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


class SniEcho(HttpsEcho):
    """HttpsEcho that records the server name each TLS connection asked for (None: no SNI)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.snis: list[str | None] = []
        self.ctx.sni_callback = self._sni

    def _sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.snis.append(name)


async def test_an_https_upstream_gets_the_preserved_host_as_sni_and_is_pooled_per_sni(nursery, gateway, pki):
    """25-upstream_keepalive_spec "pools by host|port|sni when upstream is https": routes one.test and two.test with
    preserve_host to the same https target get `SNI=one.test` and `SNI=two.test` (nginx's `proxy_ssl_name
    $upstream_host`, which preserve_host makes the client's Host), on connections of their own (kong/init.lua's
    pool name `ip|port|upstream_host|tls_verify|depth|ca_certificates|client_certificate`); a second request to
    one.test reuses its pool ("reuse upstream keepalive pool")."""
    await assert_pooled_per_preserved_host(nursery, gateway, pki, "one.test", "two.test")


async def assert_pooled_per_preserved_host(nursery: trio.Nursery, gateway: Any, pki: Any, one: str, two: str) -> None:
    """Routes `one` and `two` (preserve_host) to one https target: two requests to each, one connection each, each
    with its host as SNI."""
    backend = SniEcho(pki.issue(one, two, "127.0.0.1"))
    await nursery.start(backend.serve)
    routes = [{"hosts": [one], "preserve_host": True}, {"hosts": [two], "preserve_host": True}]
    port = await gateway({"services": [service("s", f"https://127.0.0.1:{backend.port}", routes)]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            for host in (one, two, one, two):
                assert (await client.request("GET", "/echo_sni", host=host)).status == 200
    assert backend.snis == [one, two]
    assert backend.connections == 2


async def test_services_with_different_client_certificates_do_not_share_connections(nursery, gateway, pki):
    """25-upstream_keepalive_spec "pools by host|port|sni|client_cert_id when upstream requires mTLS": two services
    to one mTLS target with different client certificates each present their own (different fingerprints)."""
    backend = HttpsEcho(pki.issue("127.0.0.1"), client_ca=pki.ca_pem)
    await nursery.start(backend.serve)
    ids = ["0b0c6f3e-0d55-4b4c-9d6f-3a8a4a1c0011", "0b0c6f3e-0d55-4b4c-9d6f-3a8a4a1c0012"]
    certs = [pki.issue(name) for name in ("client1.test", "client2.test")]
    url = f"https://127.0.0.1:{backend.port}/"
    doc = {"services": [service("one", url, [{"hosts": ["example.test"]}], client_certificate={"id": ids[0]}),
                        service("two", url, [{"hosts": ["example2.test"]}], client_certificate={"id": ids[1]})],
           "certificates": [{"id": i, "cert": c, "key": k} for i, (c, k) in zip(ids, certs, strict=True)]}
    port = await gateway(doc)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            got = [(await client.request("GET", "/", host=h)).json()["client_cert"]
                   for h in ("example.test", "example2.test", "example.test")]
    assert got == ["client1.test", "client2.test", "client1.test"]
    assert backend.connections == 2


async def test_a_keepalive_pool_size_of_0_disables_connection_pooling(nursery, gateway):
    """25-upstream_keepalive_spec "upstream_keepalive_pool_size = 0 disables connection pooling" (here
    `gateway.upstream_keepalive: 0`): every request opens a connection of its own."""
    echo = await start_echo(nursery)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}")]}, upstream_keepalive=0)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            statuses = [(await client.request("GET", f"/r{i}")).status for i in range(3)]
    assert statuses == [200] * 3
    assert echo.connections == 3


async def test_upstream_keepalive_max_requests_frees_the_connection(nursery, gateway):
    """25-upstream_keepalive_spec "free upstream keepalive pool": with upstream_keepalive_max_requests = 1 the
    connection is not saved after its request ("keepalive not saving connection"); kong.conf's default is 10000."""
    echo = await start_echo(nursery)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}")]},
                         upstream_keepalive_max_requests=2)
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            statuses = [(await client.request("GET", f"/r{i}")).status for i in range(4)]
    assert statuses == [200] * 4
    assert echo.connections == 2


# --- 27-unbuffered_spec and 24-buffered_spec: request_buffering / response_buffering ----------------------------------


@pytest.mark.parametrize(("request_buffering", "response_buffering"),
                         [(True, True), (False, False), (False, True), (True, False)])
async def test_a_chunked_upload_and_a_streamed_answer_pass_whatever_the_buffering(nursery, gateway, request_buffering,
                                                                                  response_buffering):
    """27-unbuffered_spec: a 5 MB chunked POST to /post through each of the four routes is 200 with an
    X-Kong-Proxy-Latency, and a streamed answer arrives whole; request_buffering true sends the body with its
    length (proxy_request_buffering on), false as it came (chunked)."""
    echo = await start_echo(nursery)
    route = {"paths": ["/"], "request_buffering": request_buffering, "response_buffering": response_buffering}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{echo.port}", [route])]})
    payload = pattern_bytes(5 << 20)
    pieces = [payload[i:i + 8192] for i in range(0, len(payload), 8192)]
    with trio.fail_after(30):
        async with await Client.connect(port) as client:
            reply = await client.request("POST", "/post", headers=[("content-type", "application/octet-stream")],
                                         body=pieces)
            stream = await client.request("GET", "/stream?bytes=1000000&framing=chunked")
    assert reply.status == 200
    assert int(reply.header("x-kong-proxy-latency")) >= 0
    seen = reply.json()
    assert seen["body_len"] == len(payload)
    assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()
    got = dict(seen["headers"])
    if request_buffering:
        assert (got.get("content-length"), got.get("transfer-encoding")) == (str(len(payload)), None)
    else:
        assert (got.get("content-length"), got.get("transfer-encoding")) == (None, "chunked")
    assert stream.status == 200 and stream.body == pattern_bytes(1000000)


async def test_a_refused_connection_is_502(nursery, gateway):
    """24-buffered_spec "returns 502 on connectivity errors": a service on a port nothing listens on."""
    port = await gateway({"services": [service("502", f"http://127.0.0.1:{free_port()}", [{"paths": ["/502"]}])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/502")
    assert reply.status == 502


# --- 11-handler_spec: a consumer's plugins ----------------------------------------------------------------------------


async def test_key_auth_sends_the_consumers_username_upstream(nursery, gateway):
    """11-handler_spec "enabled on a specific Consumer": key-auth on the route, apikey: kong -> 200 and the upstream
    sees x-consumer-username test-consumer-3."""
    echo = await start_echo(nursery)
    route = {"hosts": ["mock_upstream"], "plugins": [{"name": "key-auth"}]}
    doc = {"services": [service("mock_upstream", f"http://127.0.0.1:{echo.port}", [route])],
           "consumers": [{"username": "test-consumer-3", "keyauth_credentials": [{"key": "kong"}]}]}
    port = await gateway(doc)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/request", host="mock_upstream", headers=[("apikey", "kong")])
    assert reply.status == 200
    assert dict(reply.json()["headers"])["x-consumer-username"] == "test-consumer-3"

