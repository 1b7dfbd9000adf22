"""Header rewriting on the way upstream (unit): hop-by-hop removal, X-Forwarded-*, X-Real-IP, request ids, consumer
headers."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.http.codec import CHUNKED, LENGTH, NO_BODY
from gateway.pipeline.headers import connection_options, connection_tokens, set_consumer, upstream_request_headers
from gateway.policies.consumers import Consumer

CLIENT_IP = "203.0.113.7"
PEER_IP = "10.0.0.2"  # a balancer, when the tests say the peer is trusted
PORT = b"8000"


TARGET = b"/api/v1/items?page=2"


def exchange(headers: list[tuple[bytes, bytes]], trust: bool = False, consumer: Any = None,
             kong_request_id: bool = False) -> Any:
    """What upstream_request_headers reads of an Exchange (`kong_request_id`: headers_upstream's X-Kong-Request-Id,
    off here unless asked for)."""
    return SimpleNamespace(request=SimpleNamespace(headers=headers, target=TARGET, http_version=b"1.1"),
                           client_ip=CLIENT_IP,
                           peer_trusted=trust,
                           peer_ip=PEER_IP if trust else CLIENT_IP, consumer=consumer,
                           conn=SimpleNamespace(scheme=b"http", listen_port=PORT),
                           settings=SimpleNamespace(request_id_upstream=kong_request_id))


def rewrite(headers: list[tuple[str, str]], trust: bool = False, consumer: Any = None,  # noqa: ANN201
            prefix: bytes = b""):
    """(upstream headers as a list of str pairs, client Host, request id)."""
    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers]
    ex = exchange(hdrs, trust)
    if consumer is not None:
        set_consumer(ex, consumer)  # what the authentication policy did in access
    out, host, rid, _, _ = upstream_request_headers(ex, False, prefix)
    return [(k.decode(), v.decode()) for k, v in out], host, rid


def values(out: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in out if k == name]


@pytest.mark.parametrize(("sent", "upstream"), [("003", "3"), ("0" * 22 + "3", "3"), ("0", "0"), ("00", "0"),
                                                ("1024", "1024")])
def test_a_content_length_goes_upstream_as_the_number_it_is(sent: str, upstream: str):
    """nginx sends the parsed length (ngx_http_proxy_module.c:825/853 `Content-Length: $proxy_internal_body_length`,
    printed with %O): a client's `003` goes as `3`, while plugins and logs read it as sent."""
    out, _, _ = rewrite([("host", "gw"), ("content-length", sent)])
    assert values(out, "content-length") == [upstream]


def test_hop_by_hop_headers_are_removed():
    """The client's Connection, Keep-Alive, TE, Upgrade and Proxy-Connection go (Connection is Kong's keep-alive); its
    Trailer passes, as nginx's proxy passes it (Kong's spec leaves it: "a response header")."""
    out, _, _ = rewrite([("host", "gw"), ("connection", "close"), ("keep-alive", "timeout=5"), ("te", "gzip"),
                         ("trailer", "x-sum"), ("upgrade", "websocket"), ("proxy-connection", "keep-alive"),
                         ("transfer-encoding", "chunked"), ("accept", "application/json")])
    names = {k for k, _ in out}
    assert names.isdisjoint({"keep-alive", "te", "upgrade", "proxy-connection"})
    assert values(out, "connection") == ["keep-alive"]
    assert values(out, "trailer") == ["x-sum"]
    assert values(out, "transfer-encoding") == ["chunked"]  # the gateway's own framing, once, last
    assert out[-1] == ("transfer-encoding", "chunked")
    assert values(out, "accept") == ["application/json"]


def test_proxy_authorization_passes_as_nginx_and_kong_pass_it():
    out, _, _ = rewrite([("host", "gw"), ("proxy-authorization", "Basic eA==")])
    assert values(out, "proxy-authorization") == ["Basic eA=="]


def test_headers_named_in_connection_are_removed():
    out, _, _ = rewrite([("host", "gw"), ("connection", "close, X-Internal-Token, x-debug"),
                         ("x-internal-token", "s3cret"), ("x-debug", "1"), ("x-keep", "yes")])
    assert values(out, "x-internal-token") == []
    assert values(out, "x-debug") == []
    assert values(out, "x-keep") == ["yes"]


def test_only_the_first_connection_lines_options_are_removed_as_kong_reads_it():
    """kong/runloop/handler.lua:1435-1452 reads `get_header("connection")`, the first line of a repeated header
    (kong/tools/http.lua:563-564), and clears the options it names: one a later line names goes upstream."""
    out, _, _ = rewrite([("host", "gw"), ("connection", "close, X-Internal-Token"), ("connection", "x-debug"),
                         ("x-internal-token", "s3cret"), ("x-debug", "1")])
    assert values(out, "x-internal-token") == []
    assert values(out, "x-debug") == ["1"]
    out, _, _ = rewrite([("host", "gw"), ("connection", "keep-alive"), ("connection", "x-debug"), ("x-debug", "1")])
    assert values(out, "x-debug") == ["1"]


def test_a_websocket_upgrade_is_read_from_the_first_upgrade_line_as_kong_reads_it():
    """kong/runloop/handler.lua:1330-1333: the first Upgrade line (get_header) being `websocket` makes the request a
    WebSocket handshake upstream, whatever a later line says; a first line of another protocol makes none."""
    out, _, _ = rewrite([("host", "gw"), ("connection", "upgrade"), ("upgrade", "websocket"), ("upgrade", "h2c")])
    assert values(out, "upgrade") == ["websocket"]
    assert values(out, "connection") == ["keep-alive, Upgrade"]
    out, _, _ = rewrite([("host", "gw"), ("connection", "upgrade"), ("upgrade", "h2c"), ("upgrade", "websocket")])
    assert values(out, "upgrade") == []
    assert values(out, "connection") == ["keep-alive"]


def test_connection_tokens_ignore_close_and_keep_alive():
    assert connection_tokens([(b"connection", b"close")]) is None
    assert connection_tokens([(b"connection", b"Keep-Alive, X-A , x-b")]) == {b"x-a", b"x-b"}


def test_connection_options_are_worked_out_once_per_value():
    assert connection_options(b"keep-alive") == frozenset()
    first = connection_options(b"keep-alive, X-Trace")
    assert first == {b"x-trace"}
    assert connection_options(b"keep-alive, X-Trace") is first  # the upstream's next response: remembered


def test_the_framing_of_the_body_is_told_with_the_headers():
    def framing(headers: list[tuple[bytes, bytes]]) -> int:
        return upstream_request_headers(exchange([(b"host", b"gw"), *headers]))[4]

    assert framing([]) == NO_BODY
    assert framing([(b"content-length", b"12")]) == LENGTH
    assert framing([(b"transfer-encoding", b"chunked")]) == CHUNKED


def test_chunked_body_is_reframed_upstream():
    out, _, _ = rewrite([("host", "gw"), ("transfer-encoding", "chunked")])
    assert values(out, "transfer-encoding") == ["chunked"]


def test_host_is_returned_separately_and_not_forwarded():
    out, host, _ = rewrite([("host", "public.example.com:8443"), ("expect", "100-continue")])
    assert host == b"public.example.com:8443"
    assert values(out, "host") == []
    assert values(out, "expect") == []  # the gateway answers 100-continue itself


def test_x_forwarded_for_is_set_to_the_client_address():
    out, _, _ = rewrite([("host", "gw")])
    assert values(out, "x-forwarded-for") == ["203.0.113.7"]


def test_x_forwarded_for_from_an_untrusted_client_gets_the_peer_appended_as_kong_does():
    """kong/runloop/handler.lua: a request's X-Forwarded-For always gets $realip_remote_addr appended."""
    out, _, _ = rewrite([("host", "gw"), ("x-forwarded-for", "10.9.9.9")])
    assert values(out, "x-forwarded-for") == ["10.9.9.9, 203.0.113.7"]
    assert values(out, "x-real-ip") == ["203.0.113.7"]


def test_x_forwarded_host_is_nginxs_host_without_the_port_in_lower_case():
    out, _, _ = rewrite([("host", "Public.Example.com:8443")])
    assert values(out, "x-forwarded-host") == ["public.example.com"]


def test_x_forwarded_host_drops_one_final_dot_as_nginxs_host():
    """ngx_http_validate_host: `if (dot_pos == host_len - 1) host_len--`, after the port is cut."""
    out, _, _ = rewrite([("host", "Public.Example.com.:8443")])
    assert values(out, "x-forwarded-host") == ["public.example.com"]


def test_x_forwarded_for_from_a_trusted_peer_gets_the_peer_appended():
    """Kong's handler.lua: get_header("x_forwarded_for", ctx), the first line of a repeated header, and the peer."""
    out, _, _ = rewrite([("host", "gw"), ("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "198.51.100.2")],
                        trust=True)
    assert values(out, "x-forwarded-for") == ["198.51.100.1, 10.0.0.2"]


def test_x_forwarded_for_from_a_trusted_peer_without_one_is_the_client_address():
    out, _, _ = rewrite([("host", "gw")], trust=True)
    assert values(out, "x-forwarded-for") == ["203.0.113.7"]


def test_x_forwarded_path_and_prefix_are_kongs():
    """kong/runloop/handler.lua: the request's path (no query), and the part a strip_path route matched unless "/";
    a client's own are replaced, a trusted balancer's kept."""
    out, _, _ = rewrite([("host", "gw"), ("x-forwarded-path", "/evil"), ("x-forwarded-prefix", "/evil")],
                        prefix=b"/api")
    assert (values(out, "x-forwarded-path"), values(out, "x-forwarded-prefix")) == (["/api/v1/items"], ["/api"])
    out, _, _ = rewrite([("host", "gw")], prefix=b"/")
    assert values(out, "x-forwarded-prefix") == []
    out, _, _ = rewrite([("host", "gw"), ("x-forwarded-path", "/outer"), ("x-forwarded-prefix", "/lb")], trust=True,
                        prefix=b"/api")
    assert (values(out, "x-forwarded-path"), values(out, "x-forwarded-prefix")) == (["/outer"], ["/lb"])


def test_forwarded_proto_host_port_and_real_ip_are_set():
    out, _, _ = rewrite([("host", "public.example.com")])
    assert values(out, "x-forwarded-proto") == ["http"]
    assert values(out, "x-forwarded-host") == ["public.example.com"]
    assert values(out, "x-forwarded-port") == ["8000"]
    assert values(out, "x-real-ip") == ["203.0.113.7"]


SPOOFED = [("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.example"), ("x-forwarded-port", "443"),
           ("x-real-ip", "10.0.0.66")]


def test_client_supplied_forwarded_headers_are_replaced():
    out, _, _ = rewrite([("host", "public.example.com"), *SPOOFED])
    assert values(out, "x-forwarded-proto") == ["http"]
    assert values(out, "x-forwarded-host") == ["public.example.com"]
    assert values(out, "x-forwarded-port") == ["8000"]
    assert values(out, "x-real-ip") == ["203.0.113.7"]


def test_forwarded_headers_of_a_trusted_peer_are_kept_but_x_real_ip_is_the_client_address():
    out, _, _ = rewrite([("host", "public.example.com"), *SPOOFED], trust=True)
    assert values(out, "x-forwarded-proto") == ["https"]
    assert values(out, "x-forwarded-host") == ["evil.example"]
    assert values(out, "x-forwarded-port") == ["443"]
    assert values(out, "x-real-ip") == ["203.0.113.7"]


CONSUMER_SPOOF = [("x-consumer-id", "x"), ("X-Consumer-Username", "admin"), ("x-consumer-custom-id", "c"),
                  ("x-credential-identifier", "k"), ("x-consumer-groups", "admins"), ("x-anonymous-consumer", "false"),
                  ("x-authenticated-groups", "admins")]


def test_client_supplied_consumer_headers_are_stripped():
    out, _, _ = rewrite([("host", "gw"), *CONSUMER_SPOOF, ("x-keep", "1")])
    assert {k for k, _ in out}.isdisjoint({k.lower() for k, _ in CONSUMER_SPOOF})
    assert values(out, "x-keep") == ["1"]


def test_client_supplied_consumer_headers_are_stripped_from_a_trusted_peer_too():
    out, _, _ = rewrite([("host", "gw"), *CONSUMER_SPOOF], trust=True)
    assert {k for k, _ in out}.isdisjoint({k.lower() for k, _ in CONSUMER_SPOOF})


def test_client_supplied_consumer_headers_spelled_with_underscores_are_stripped_too():
    """A CGI or WSGI upstream reads x_consumer_username as the same HTTP_X_CONSUMER_USERNAME (Kong passes them on:
    underscores_in_headers on)."""
    spoof = [(k.replace("-", "_"), v) for k, v in CONSUMER_SPOOF]
    out, _, _ = rewrite([("host", "gw"), *spoof, ("x_keep", "1")])
    assert {k for k, _ in out}.isdisjoint({k.lower() for k, _ in spoof})
    assert values(out, "x_keep") == ["1"]


def test_the_requests_consumer_is_sent_in_kongs_headers():
    bob = Consumer("4f1c", "bob", "c-7").identity("cred-1", "bob-key")
    out, _, _ = rewrite([("host", "gw"), ("x-consumer-username", "admin")], consumer=bob)
    assert values(out, "x-consumer-id") == ["4f1c"]
    assert values(out, "x-consumer-username") == ["bob"]
    assert values(out, "x-consumer-custom-id") == ["c-7"]
    assert values(out, "x-credential-identifier") == ["bob-key"]
    assert values(out, "x-anonymous-consumer") == []


def test_an_anonymous_consumer_is_marked_and_has_no_credential_header():
    anon = Consumer("9a9a", "guest", None).anonymous
    out, _, _ = rewrite([("host", "gw")], consumer=anon)
    assert values(out, "x-consumer-username") == ["guest"]
    assert values(out, "x-anonymous-consumer") == ["true"]
    assert values(out, "x-credential-identifier") == []
    assert values(out, "x-consumer-custom-id") == []


def test_valid_request_id_is_passed_through():
    out, _, rid = rewrite([("host", "gw"), ("x-request-id", "req-2024-abc_DEF.1")])
    assert rid == b"req-2024-abc_DEF.1"
    assert values(out, "x-request-id") == ["req-2024-abc_DEF.1"]


def test_request_id_is_generated_when_missing():
    out, _, rid = rewrite([("host", "gw")])
    assert re.fullmatch(rb"[0-9a-f]{32}", rid)
    assert values(out, "x-request-id") == [rid.decode()]
    _, _, other = rewrite([("host", "gw")])
    assert other != rid


@pytest.mark.parametrize("bad", ["", "has space", "x" * 201, "tab\there"], ids=["empty", "space", "long", "tab"])
def test_invalid_request_id_is_replaced(bad):
    out, _, rid = rewrite([("host", "gw"), ("x-request-id", bad)])
    assert re.fullmatch(rb"[0-9a-f]{32}", rid)
    assert values(out, "x-request-id") == [rid.decode()]


def test_non_ascii_request_id_is_replaced():
    hdrs = [(b"host", b"gw"), (b"x-request-id", "réq".encode())]
    out, _, rid, _, _ = upstream_request_headers(exchange(hdrs))
    assert re.fullmatch(rb"[0-9a-f]{32}", rid)
    assert [v for k, v in out if k == b"x-request-id"] == [rid]


def test_only_one_request_id_is_forwarded():
    out, _, rid = rewrite([("host", "gw"), ("x-request-id", "first"), ("x-request-id", "second")])
    assert rid == b"first"
    assert values(out, "x-request-id") == ["first"]


def test_traceparent_and_end_to_end_headers_pass_unchanged_in_order():
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    given = [("traceparent", tp), ("tracestate", "vendor=1"), ("authorization", "Bearer t"),
             ("mcp-session-id", "abc"), ("mcp-protocol-version", "2025-06-18"), ("cookie", "a=1")]
    out, _, _ = rewrite([("host", "gw"), *given])
    assert [hv for hv in out if hv[0] in dict(given)] == given


def test_headers_upstream_sends_the_gateways_own_id_as_x_kong_request_id_replacing_the_clients():
    """Kong's X-Kong-Request-Id is its own $kong_request_id: neither the client's X-Kong-Request-Id nor its
    X-Request-Id (which goes on as the X-Request-Id) becomes it."""
    hdrs = [(b"host", b"gw"), (b"x-request-id", b"req-1"), (b"x-kong-request-id", b"forged")]
    ex = exchange(hdrs, kong_request_id=True)
    out, _, rid, _, _ = upstream_request_headers(ex)
    assert rid == b"req-1" and [v for k, v in out if k == b"x-request-id"] == [b"req-1"]
    assert [v for k, v in out if k == b"x-kong-request-id"] == [ex.request_id]
    assert len(ex.request_id) == 32 and ex.request_id not in (b"req-1", b"forged")


def test_without_headers_upstream_a_clients_x_kong_request_id_passes_as_any_header():
    hdrs = [(b"host", b"gw"), (b"x-kong-request-id", b"client's")]
    out, _, _, _, _ = upstream_request_headers(exchange(hdrs))
    assert [v for k, v in out if k == b"x-kong-request-id"] == [b"client's"]
