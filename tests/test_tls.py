"""TLS on both sides (issue 18), in-process, once per codec: listeners with certificates chosen by SNI, bad input on a
TLS port, https upstreams with verification and client certificates, https-only routes, certificate errors."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import pty
import select
import signal
import socket
import ssl
import sys
import time

import pytest
import trio
from backends import EchoBackend, EndlessSse, free_port, parse_raw_response, raw_exchange, request, service
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tls_helpers import HttpsEcho, Pki, encrypted_pair, expired_pair, https_get

from gateway.config import ConfigError, parse_config
from gateway.http.dates import parse_http_time
from gateway.http.tls import names_address
from gateway.runtime import compile_config

TIMEOUT = 10
CA_GOOD, CA_OTHER, CLIENT_CERT = ("0b0c6f3e-0d55-4b4c-9d6f-3a8a4a1c0001", "0b0c6f3e-0d55-4b4c-9d6f-3a8a4a1c0002",
                                  "0b0c6f3e-0d55-4b4c-9d6f-3a8a4a1c0003")


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def tls_gateway(gateway, nursery, pki: Pki, tmp_path, certificates=None, default=True, **settings):  # noqa: ANN001, ANN003, ANN201
    """A gateway listening on plain HTTP and TLS, in front of an echo backend; returns (http port, tls port, echo)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    http_port, tls_port = free_port(), free_port()
    gw = {"listen": [f"127.0.0.1:{http_port}", f"127.0.0.1:{tls_port} ssl"], **settings}
    if default:
        gw["ssl_cert"], gw["ssl_cert_key"] = pki.files(tmp_path, "default", "default.test")
    doc = {"services": [service("s", f"http://127.0.0.1:{echo.port}")], "certificates": certificates or []}
    await gateway(doc, **gw)
    return http_port, tls_port, echo


def get(port: int, ctx: ssl.SSLContext, server_name: str | None, **kw):  # noqa: ANN003, ANN201
    return trio.to_thread.run_sync(lambda: https_get(port, ctx, server_name, **kw))


# --- listener -------------------------------------------------------------------------------------------------------


async def test_https_listener_serves_and_tells_the_upstream_it_was_https(gateway, nursery, pki, tmp_path):
    _, tls_port, echo = await tls_gateway(gateway, nursery, pki, tmp_path)
    with trio.fail_after(TIMEOUT):
        status, _, body, name = await get(tls_port, pki.client_context(), "default.test")
    assert status == 200 and name == "default.test"
    seen = dict(json.loads(body)["headers"])
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-port"] == str(tls_port)


async def test_plain_listener_beside_it_still_says_http(gateway, nursery, pki, tmp_path):
    http_port, _, echo = await tls_gateway(gateway, nursery, pki, tmp_path)
    reply = await request(http_port, "GET", "/x")
    seen = dict(reply.json()["headers"])
    assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-port"] == str(http_port)


async def test_certificate_is_chosen_by_sni_exact_then_wildcards_else_the_default(gateway, nursery, pki, tmp_path):
    a_cert, a_key = pki.issue("a.example.com")
    w_cert, w_key = pki.issue("*.wild.example.com")
    t_cert, t_key = pki.issue("tail.example.net")
    certificates = [{"cert": a_cert, "key": a_key, "snis": ["a.example.com"]},
                    {"cert": w_cert, "key": w_key, "snis": [{"name": "*.wild.example.com"}]},
                    {"cert": t_cert, "key": t_key, "snis": ["tail.*"]}]
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path, certificates)
    ctx = pki.client_context()
    ctx.check_hostname = False
    with trio.fail_after(TIMEOUT):
        assert (await get(tls_port, ctx, "a.example.com"))[3] == "a.example.com"
        assert (await get(tls_port, ctx, "x.wild.example.com"))[3] == "*.wild.example.com"
        assert (await get(tls_port, ctx, "tail.example"))[3] == "tail.example.net"
        assert (await get(tls_port, ctx, "unknown.test"))[3] == "default.test"
        assert (await get(tls_port, ctx, None))[3] == "default.test"  # no SNI at all


async def test_unknown_sni_without_a_default_certificate_gets_an_alert(gateway, nursery, pki, tmp_path):
    a_cert, a_key = pki.issue("a.example.com")
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path,
                                       [{"cert": a_cert, "key": a_key, "snis": ["a.example.com"]}], default=False)
    with trio.fail_after(TIMEOUT):
        assert (await get(tls_port, pki.client_context(), "a.example.com"))[0] == 200
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            await get(tls_port, pki.client_context(), "other.example.com")


async def test_plain_http_on_the_tls_port_gets_nginx_400(gateway, nursery, pki, tmp_path):
    """nginx's own page for its 497 (ngx_http_special_response.c), shown as 400, and the connection closed; its
    text/html gets Kong's `charset UTF-8` from nginx's charset filter (see the tests below)."""
    _, tls_port, echo = await tls_gateway(gateway, nursery, pki, tmp_path)
    data, _ = await raw_exchange(tls_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert (status, headers["content-type"], headers["connection"]) == (400, "text/html; charset=UTF-8", "close")
    assert body == (b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n"
                    b"<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
                    b"<center>The plain HTTP request was sent to HTTPS port</center>\r\n"
                    b"<hr><center>mcp-gateway</center>\r\n</body>\r\n</html>\r\n")
    assert int(headers["content-length"]) == len(body)
    assert parse_http_time(headers["date"].encode()) is not None  # nginx's header filter dates its 400 too
    head_only, _ = await raw_exchange(tls_port, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    status, head_headers, head_body = parse_raw_response(head_only)  # to a HEAD, the same head and no body
    assert (status, head_body) == (400, b"") and head_headers.keys() == headers.keys()
    assert echo.requests == []


@pytest.mark.parametrize(("settings", "content_type"), [
    ({}, "text/html; charset=UTF-8"),  # Kong's default, kong_defaults.lua:89 nginx_http_charset = UTF-8
    ({"charset": "koi8-r"}, "text/html; charset=koi8-r"),
    ({"charset": "off"}, "text/html"),  # nginx's `charset off`: the type as the page has it
])
async def test_the_plain_http_400_on_a_tls_port_carries_the_configured_charset(gateway, nursery, pki, tmp_path,
                                                                               settings, content_type):
    """nginx sends the NGX_HTTP_TO_HTTPS page (ngx_http_special_response.c, Content-Type text/html) through its
    header filters, ngx_http_charset_filter_module.c among them: text/html is one of its default charset_types
    (line 127), and only a 301 or 302 goes without (ngx_http_set_charset), so `charset` adds itself."""
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path, **settings)
    data, _ = await raw_exchange(tls_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, _ = parse_raw_response(data)
    assert (status, headers["content-type"]) == (400, content_type)


async def test_plain_http_after_empty_lines_on_the_tls_port_gets_nginx_400(gateway, nursery, pki, tmp_path):
    """nginx skips empty lines before a request line (ngx_http_parse_request_line's sw_start; RFC 9112 2.2)."""
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path)
    data, _ = await raw_exchange(tls_port, [b"\r\n", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"], pause=0.05)
    assert parse_raw_response(data)[0] == 400 and b"The plain HTTP request was sent to HTTPS port" in data


def _post_and_read(port: int, size: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


async def test_plain_http_with_a_large_body_on_the_tls_port_still_gets_its_400(gateway, nursery, pki, tmp_path):
    """The body is read and dropped after the answer (nginx's lingering close): closing with it unread would reset
    the connection, and the answer with it, before the client reads it."""
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path)
    with trio.fail_after(20):
        data = await trio.to_thread.run_sync(_post_and_read, tls_port, 4_000_000)
    assert parse_raw_response(data)[0] == 400 and b"The plain HTTP request was sent to HTTPS port" in data


def _client_hello(server_name: bytes) -> bytes:
    """A TLS ClientHello whose SNI is `server_name` (10 bytes), the bytes as they are."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="cafe1.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read().replace(b"cafe1.test", server_name)


async def test_a_server_name_that_is_not_ascii_fails_its_handshake_quietly(gateway, nursery, pki, tmp_path,
                                                                          monkeypatch):
    """Python's ssl module refuses it (internal_error) before the gateway sees it, where nginx serves the default
    certificate; what matters is that no client can fill the log with tracebacks, and the worker goes on."""
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path)
    data, _ = await raw_exchange(tls_port, _client_hello("café.test".encode()))
    assert data[:1] == b"\x15"  # an alert
    assert unraisable == []
    assert (await get(tls_port, pki.client_context(), "default.test"))[0] == 200


@pytest.mark.parametrize("junk", [b"\x16\x03\x01\x00\x05hello", b"\x00\x01\x02garbage\xff" * 10,
                                  b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20])
async def test_garbage_and_truncated_client_hellos_are_dropped_and_the_worker_lives(gateway, nursery, pki, tmp_path,
                                                                                     junk):
    http_port, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path, ssl_handshake_timeout_s=0.5)
    data, _ = await raw_exchange(tls_port, junk, timeout=5)  # a truncated hello waits for the handshake timeout
    assert b"HTTP/1.1 200" not in data
    assert (await get(tls_port, pki.client_context(), "default.test"))[0] == 200
    assert (await request(http_port, "GET", "/x")).status == 200


async def test_a_slow_handshake_is_closed_at_the_handshake_timeout(gateway, nursery, pki, tmp_path):
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path, ssl_handshake_timeout_s=0.5)
    stream = await trio.open_tcp_stream("127.0.0.1", tls_port)
    started = trio.current_time()
    with trio.fail_after(TIMEOUT):
        await stream.send_all(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        assert await stream.receive_some(100) == b""
    assert 0.4 <= trio.current_time() - started < 3
    await stream.aclose()


async def test_alpn_is_http_1_1(gateway, nursery, pki, tmp_path):
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path)

    def alpn() -> str | None:
        ctx = pki.client_context(alpn=False)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="default.test") as tls:
                return tls.selected_alpn_protocol()

    assert await trio.to_thread.run_sync(alpn) == "http/1.1"


def resumed(port: int, pki: Pki, version: ssl.TLSVersion, server_name: str = "default.test") -> bool:
    """Whether a client's second connection (at TLS `version`) resumed the session of its first."""
    ctx = pki.client_context()
    ctx.minimum_version = ctx.maximum_version = version
    session, reused = None, False
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
                tls.sendall(b"GET /x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
                while tls.recv(65536):  # (TLS 1.3's tickets come with the first records after the handshake)
                    pass
                reused, session = tls.session_reused, tls.session
    return reused


@pytest.mark.parametrize("tickets", [True, False], ids=["tickets-on", "tickets-off"])
async def test_a_tls13_session_resumes_whether_session_tickets_are_on_or_off(gateway, nursery, pki, tmp_path,
                                                                             tickets):
    """nginx's `ssl_session_tickets off` is SSL_OP_NO_TICKET and nothing more (ngx_http_ssl_module.c); with Kong's
    session cache (kong/templates/nginx_kong.lua:128 `ssl_session_cache shared:SSL:10m`) OpenSSL then sends TLS 1.3
    tickets that name a session kept in that cache (stateful), and the client resumes as with stateless tickets."""
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path, ssl_session_tickets=tickets)
    with trio.fail_after(TIMEOUT):
        assert await trio.to_thread.run_sync(lambda: resumed(tls_port, pki, ssl.TLSVersion.TLSv1_3)) is True


async def test_a_tls12_session_resumes_by_its_id_with_session_tickets_off(gateway, nursery, pki, tmp_path):
    """Without tickets a TLS 1.2 client resumes by session id, from the server's session cache (nginx_kong.lua:128
    ssl_session_cache)."""
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path, ssl_session_tickets=False)
    with trio.fail_after(TIMEOUT):
        assert await trio.to_thread.run_sync(lambda: resumed(tls_port, pki, ssl.TLSVersion.TLSv1_2)) is True


async def test_a_session_on_a_certificate_the_sni_picked_resumes_with_session_tickets_off(gateway, nursery, pki,
                                                                                            tmp_path):
    """The session cache is the listener's, whichever certificate the SNI picks, as Kong's one shared:SSL zone
    serves every certificate of its one server block."""
    a_cert, a_key = pki.issue("a.example.com")
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path,
                                       [{"cert": a_cert, "key": a_key, "snis": ["a.example.com"]}],
                                       ssl_session_tickets=False)
    with trio.fail_after(TIMEOUT):
        assert await trio.to_thread.run_sync(
            lambda: resumed(tls_port, pki, ssl.TLSVersion.TLSv1_3, "a.example.com")) is True


async def test_tls13_only_refuses_a_tls12_client(gateway, nursery, pki, tmp_path):
    """ssl_protocols applies with ssl_cipher_suite custom (kong.conf.default: ignored with the other suites)."""
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path, ssl_protocols="TLSv1.3",
                                       ssl_cipher_suite="custom", ssl_ciphers="ECDHE+AESGCM")
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        await get(tls_port, ctx, "default.test")


# --- upstreams --------------------------------------------------------------------------------------------------------


async def https_upstream(nursery, pki: Pki, client_ca: str | None = None) -> HttpsEcho:  # noqa: ANN001
    backend = HttpsEcho(pki.issue("upstream.test", "127.0.0.1"), client_ca)
    await nursery.start(backend.serve)
    return backend


async def test_https_service_is_proxied_over_pooled_tls_connections(gateway, nursery, pki):
    backend = await https_upstream(nursery, pki)
    port = await gateway({"services": [service("s", f"https://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        replies = [await request(port, "GET", f"/r{i}") for i in range(5)]
    assert [r.status for r in replies] == [200] * 5, replies[0].body
    assert [r.json()["path"] for r in replies] == [f"/r{i}" for i in range(5)]
    assert backend.connections == 1  # keep-alive TLS connection reused


async def test_tls_verify_with_the_right_ca_passes_and_with_another_fails(gateway, nursery, pki):
    backend = await https_upstream(nursery, pki)
    other = Pki()
    doc = {"services": [
        service("good", f"https://127.0.0.1:{backend.port}", [{"paths": ["/good"]}], tls_verify=True,
                ca_certificates=[CA_GOOD]),
        service("bad", f"https://127.0.0.1:{backend.port}", [{"paths": ["/bad"]}], tls_verify=True,
                ca_certificates=[CA_OTHER], retries=0)],
        "ca_certificates": [{"id": CA_GOOD, "cert": pki.ca_pem}, {"id": CA_OTHER, "cert": other.ca_pem}]}
    port = await gateway(doc)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/good")).status == 200
        bad = await request(port, "GET", "/bad")
    assert bad.status == 502  # the gateway refused the upstream's certificate: the backend saw its handshake fail
    with trio.fail_after(5):
        while backend.handshake_failures == 0:
            await trio.sleep(0.01)


def issued(pki: Pki, cn: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> tuple[str, str]:
    """A certificate of the test CA with subject CN=`cn` and these DNS and IP SANs (none: no subjectAltName), and
    its key."""
    ca_key = serialization.load_pem_private_key(pki.ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30)))
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


async def test_an_ip_targets_certificate_is_checked_as_nginx_checks_it_and_against_its_ip_sans(gateway, nursery, pki):
    """nginx checks an address as a name (ngx_ssl_check_host: X509_check_host): its DNS SANs, else the subject's CN,
    never the IP SANs, which Python's ssl alone would look at; the IP SANs are taken too (RFC 6125)."""
    certificates = {
        "cn": (issued(pki, "127.0.0.1"), 200),  # `openssl req -subj /CN=<ip>`: Kong takes it
        "ip_san": (issued(pki, "upstream.test", ips=("127.0.0.1",)), 200),  # where nginx would not
        "dns_san": (issued(pki, "upstream.test", dns=("127.0.0.1",)), 200),
        "cn_beside_a_dns_san": (issued(pki, "127.0.0.1", dns=("upstream.test",)), 502),  # the CN is not looked at
        "another_address": (issued(pki, "127.0.0.2", ips=("127.0.0.2",)), 502),
    }
    services = []
    for name, (cert, _) in certificates.items():
        backend = HttpsEcho(cert)
        await nursery.start(backend.serve)
        services.append(service(name, f"https://127.0.0.1:{backend.port}", [{"paths": [f"/{name}"]}], retries=0,
                                tls_verify=True, ca_certificates=[CA_GOOD]))
    port = await gateway({"services": services, "ca_certificates": [{"id": CA_GOOD, "cert": pki.ca_pem}]})
    with trio.fail_after(TIMEOUT):
        statuses = {name: (await request(port, "GET", f"/{name}")).status for name in certificates}
    assert statuses == {name: status for name, (_, status) in certificates.items()}


@pytest.mark.parametrize(("cert", "address", "valid"), [
    ({"subject": ((("commonName", "::1"),),)}, "::1", True),
    ({"subject": ((("commonName", "FE80::A"),),)}, "fe80::a", True),  # compared as text, without case
    ({"subject": ((("commonName", "0:0:0:0:0:0:0:1"),),)}, "::1", False),  # (as X509_check_host: another text)
    ({"subjectAltName": (("IP Address", "0:0:0:0:0:0:0:1"),)}, "::1", True),  # Python's way to write it
    ({"subjectAltName": (("IP Address", "10.0.0.5"), ("DNS", "a.test")),
      "subject": ((("commonName", "10.0.0.6"),),)}, "10.0.0.6", False),
    ({"subject": ((("organizationName", "10.0.0.5"),), (("commonName", "x"),), (("commonName", "10.0.0.5"),))},
     "10.0.0.5", True),  # any of the subject's CNs
])
def test_names_address_takes_ip_sans_dns_sans_and_else_the_cn(cert, address, valid):
    assert names_address(cert, address) is valid


async def test_a_certificate_refused_on_a_try_retried_elsewhere_is_logged_with_the_target(gateway, nursery, pki,
                                                                                          caplog):
    """nginx logs every upstream handshake whose certificate fails verification, before its next try
    (ngx_http_upstream_ssl_handshake: "upstream SSL certificate verify error"): the next target's answer must not
    hide an untrusted certificate (a misconfigured target, or someone in the middle)."""
    caplog.set_level(logging.INFO)
    untrusted, trusted = HttpsEcho(Pki().issue("127.0.0.1")), HttpsEcho(pki.issue("127.0.0.1"))
    for backend in (untrusted, trusted):
        await nursery.start(backend.serve)
    targets = [{"target": f"127.0.0.1:{untrusted.port}"}, {"target": f"127.0.0.1:{trusted.port}"}]
    doc = {"upstreams": [{"name": "u", "targets": targets}],
           "services": [service("s", "https://u", tls_verify=True, ca_certificates=[CA_GOOD])],
           "ca_certificates": [{"id": CA_GOOD, "cert": pki.ca_pem}]}
    port = await gateway(doc)
    with trio.fail_after(TIMEOUT):
        assert [(await request(port, "GET", "/")).status for _ in range(2)] == [200, 200]  # round-robin: one or
        refused = [r.getMessage() for r in caplog.records  # both met the untrusted target first
                   if r.levelno == logging.WARNING and "certificate verification failed" in r.getMessage()]
        while untrusted.handshake_failures != len(refused):  # one line per refused handshake
            await trio.sleep(0.01)
    assert refused and all(f"127.0.0.1:{untrusted.port}" in m for m in refused), caplog.text


async def test_client_certificate_is_presented_to_an_upstream_that_requires_one(gateway, nursery, pki):
    backend = await https_upstream(nursery, pki, client_ca=pki.ca_pem)
    cert, key = pki.issue("gateway-client.test")
    doc = {"services": [
        service("with", f"https://127.0.0.1:{backend.port}", [{"paths": ["/with"]}],
                client_certificate={"id": CLIENT_CERT}),
        service("without", f"https://127.0.0.1:{backend.port}", [{"paths": ["/without"]}], retries=0)],
        "certificates": [{"id": CLIENT_CERT, "cert": cert, "key": key}]}
    port = await gateway(doc)
    with trio.fail_after(TIMEOUT):
        ok = await request(port, "GET", "/with")
        refused = await request(port, "GET", "/without")
    assert ok.status == 200 and ok.json()["client_cert"] == "gateway-client.test"
    assert refused.status == 502


# --- https-only routes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "location"), [(426, None), (301, "https://gw.test/x?y=1"),
                                                (308, "https://gw.test/x?y=1")])
async def test_https_only_route_refuses_or_redirects_plain_http(gateway, nursery, pki, tmp_path, code, location):
    echo = EchoBackend()
    await nursery.start(echo.serve)
    route = {"paths": ["/"], "protocols": ["https"], "https_redirect_status_code": code}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [route])]})
    reply = await request(port, "GET", "/x?y=1", host="gw.test")
    assert reply.status == code
    if code == 426:
        assert reply.json()["message" if "message" in reply.json() else "error"] == "Please use HTTPS protocol"
        assert reply.header("upgrade") == "TLS/1.2, HTTP/1.1"
    else:
        assert reply.header("location") == location
    assert echo.requests == []


@pytest.mark.parametrize(("host", "location"), [("GW.test:8000", "https://gw.test/x"), ("[::1]:8000", "https://[::1]/x")])
async def test_a_redirect_to_https_drops_the_plain_listeners_port(gateway, nursery, host, location):
    """Kong's Location is https:// and nginx's $host (no port, lower case): the plain port would not speak TLS."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    route = {"paths": ["/"], "protocols": ["https"], "https_redirect_status_code": 301}
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [route])]})
    reply = await request(port, "GET", "/x", host=host)
    assert (reply.status, reply.header("location")) == (301, location)


# --- certificate errors are config errors naming the entity ----------------------------------------------------------


def config_errors(doc: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        compile_config(parse_config(doc, "c.yml"), "c.yml")
    return e.value.messages


def test_an_expired_certificate_loads_with_a_warning_as_in_kong(pki, caplog):
    """Kong checks only that a certificate parses (kong/db/schema/typedefs.lua) and nginx serves it: refusing it
    would refuse every reload, of any change, from the day it expires."""
    cert, key = expired_pair()
    good = pki.issue("good.test")
    doc = json.dumps({"certificates": [{"cert": cert, "key": key, "snis": ["e.test"]},
                                       {"cert": good[0], "key": good[1], "snis": ["good.test"]}],
                      "gateway": {"listen": "127.0.0.1:8443 ssl"}})
    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        runtime = compile_config(parse_config(doc, "c.yml"), "c.yml")
    assert set(runtime.server_tls.exact) == {"e.test", "good.test"}  # type: ignore[union-attr]
    (record,) = [r for r in caplog.records if r.name == "gateway.tls"]
    assert record.getMessage().startswith("certificates[0].cert: the certificate expired on ")


def test_an_encrypted_key_is_a_config_error_naming_the_key(pki):
    cert, key = encrypted_pair()
    doc = json.dumps({"certificates": [{"cert": cert, "key": key, "snis": ["enc.test"]}]})
    assert config_errors(doc) == ["c.yml: certificates[0].key: the key is encrypted, and the gateway takes no pass "
                                  "phrase: give it decrypted (openssl pkey -in KEY -out KEY.plain)"]


def test_check_config_on_a_terminal_never_asks_for_a_pass_phrase(tmp_path):
    """OpenSSL asks for the pass phrase of an encrypted key on the terminal unless told there is none."""
    cert, key = encrypted_pair()
    (tmp_path / "enc.crt").write_text(cert)
    (tmp_path / "enc.key").write_text(key)
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps({"gateway": {"listen": "127.0.0.1:18443 ssl", "ssl_cert": str(tmp_path / "enc.crt"),
                                              "ssl_cert_key": str(tmp_path / "enc.key")}}))
    pid, fd = pty.fork()
    if pid == 0:  # the child: check-config with the pty as its terminal
        os.execv(sys.executable, [sys.executable, "-m", "gateway", "check-config", str(config)])
    output, status = b"", None
    deadline = time.monotonic() + 15
    try:
        while status is None and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    output += os.read(fd, 4096)
                except OSError:
                    pass
            done, code = os.waitpid(pid, os.WNOHANG)
            status = code if done else None
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert b"Enter PEM pass phrase" not in output, output
    assert status is not None and os.waitstatus_to_exitcode(status) == 2, output  # check-config: does not check
    assert f"gateway.ssl_cert_key: {tmp_path / 'enc.key'}: the key is encrypted".encode() in output, output


def test_a_certificates_key_that_is_not_a_key_is_reported_on_the_key_field(pki):
    cert, _ = pki.issue("a.test")
    doc = json.dumps({"certificates": [{"cert": cert, "key": "-----BEGIN PRIVATE KEY-----\nAAAA\n"
                                                              "-----END PRIVATE KEY-----\n"}]})
    assert config_errors(doc) == ["c.yml: certificates[0].key: not a PEM private key (expected -----BEGIN PRIVATE "
                                  "KEY----- ...)"]


def test_an_ssl_cert_key_file_that_is_not_a_key_is_reported_with_its_setting_and_file(pki, tmp_path):
    cert, _ = pki.files(tmp_path, "d", "default.test")
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    doc = json.dumps({"gateway": {"listen": "127.0.0.1:8443 ssl", "ssl_cert": cert, "ssl_cert_key": str(bad)}})
    assert config_errors(doc) == [f"c.yml: gateway.ssl_cert_key: {bad}: not a PEM private key (expected -----BEGIN "
                                  "PRIVATE KEY----- ...)"]


def test_an_ssl_cert_file_that_is_not_a_certificate_is_reported_with_its_setting_and_file(pki, tmp_path):
    _, key = pki.files(tmp_path, "d", "default.test")
    bad = tmp_path / "bad.crt"
    bad.write_text("not a certificate\n")
    doc = json.dumps({"gateway": {"listen": "127.0.0.1:8443 ssl", "ssl_cert": str(bad), "ssl_cert_key": key}})
    assert config_errors(doc) == [f"c.yml: gateway.ssl_cert: {bad}: not a PEM certificate (expected -----BEGIN "
                                  "CERTIFICATE----- ...)"]


def test_key_that_does_not_match_is_a_config_error(pki):
    cert, _ = pki.issue("a.test")
    _, other_key = pki.issue("b.test")
    doc = json.dumps({"certificates": [{"cert": cert, "key": other_key}]})
    assert config_errors(doc) == ["c.yml: certificates[0]: the key does not match the certificate"]


def test_unreadable_default_certificate_is_a_config_error(tmp_path):
    doc = json.dumps({"gateway": {"listen": "127.0.0.1:8443 ssl", "ssl_cert": str(tmp_path / "none.crt"),
                                  "ssl_cert_key": str(tmp_path / "none.key")}})
    assert config_errors(doc)[0].startswith(f"c.yml: gateway.ssl_cert: cannot read {tmp_path / 'none.crt'}")


def test_tls_listener_without_any_certificate_is_a_config_error():
    doc = json.dumps({"gateway": {"listen": ["127.0.0.1:8000", "127.0.0.1:8443 ssl"]}})
    assert "there is no certificate" in config_errors(doc)[0]


@pytest.mark.parametrize(("fields", "message"), [
    ({"url": "http://a:1", "tls_verify": True}, "services[0].tls_verify: only for protocol https"),
    ({"url": "https://a:1", "ca_certificates": ["nope"]}, "services[0].ca_certificates[0]: no ca_certificate"),
    ({"url": "https://a:1", "client_certificate": {"id": "nope"}}, "services[0].client_certificate: no certificate"),
    ({"url": "https://a:1", "tls_verify_depth": 2}, "services[0].tls_verify_depth: not supported"),
])
def test_service_tls_fields_are_checked(fields, message):
    doc = json.dumps({"services": [{"name": "s", **fields}]})
    with pytest.raises(ConfigError) as e:
        compile_config(parse_config(doc, "c.yml"), "c.yml")
    assert any(message in m for m in e.value.messages), e.value.messages


def test_unknown_listen_option_is_refused():
    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps({"gateway": {"listen": "127.0.0.1:8443 ssl http2"}}), "c.yml")
    assert e.value.messages == ['c.yml: gateway.listen: the listen option "http2" is not supported: HTTP/2 is not '
                                'built (this listener would serve HTTP/1.1 only); remove the word (Kong\'s default '
                                'proxy_listen has it: write "0.0.0.0:8443 ssl reuseport backlog=16384" for its '
                                '"0.0.0.0:8443 http2 ssl reuseport backlog=16384")']


# --- active health checks over TLS ------------------------------------------------------------------------------------


async def test_https_health_probe_succeeds_and_fails_verification_as_configured(nursery, pki):
    from gateway.health.machine import Event
    from gateway.health.policy import ActivePolicy
    from gateway.health.probe import probe

    backend = await https_upstream(nursery, pki)
    unverified = ActivePolicy(type="https", https_verify_certificate=False, timeout_s=5)
    verified = ActivePolicy(type="https", https_verify_certificate=True, https_sni="upstream.test", timeout_s=5)
    assert await probe("127.0.0.1", backend.port, unverified) == Event.SUCCESS
    assert await probe("127.0.0.1", backend.port, verified) == Event.TCP_FAILURE  # the test CA is not trusted
    with trio.fail_after(5):  # the backend saw the client give up its handshake
        while backend.handshake_failures == 0:
            await trio.sleep(0.01)


async def test_a_client_that_resets_right_after_its_handshake_does_not_harm_the_worker(gateway, nursery, pki, tmp_path):
    _, tls_port, _ = await tls_gateway(gateway, nursery, pki, tmp_path)

    def handshake_then_reset() -> None:
        ctx = pki.client_context()
        for _ in range(20):
            raw = socket.create_connection(("127.0.0.1", tls_port), timeout=5)
            tls = ctx.wrap_socket(raw, server_hostname="default.test")  # takes over raw's descriptor
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            tls.close()  # no close_notify; linger 0: a reset while the server still sends its tickets

    await trio.to_thread.run_sync(handshake_then_reset)
    assert (await get(tls_port, pki.client_context(), "default.test"))[0] == 200


async def sse_over_tls(gateway, nursery, pki: Pki, tmp_path, sse_keepalive: float):  # noqa: ANN001, ANN201
    """An endless SSE backend behind a TLS listener, and a TLS client that has asked it for its stream."""
    sse = EndlessSse()
    await nursery.start(sse.serve)
    tls_port = free_port()
    cert, key = pki.files(tmp_path, "default", "default.test")
    await gateway({"services": [service("s", f"http://127.0.0.1:{sse.port}")]},
                  listen=[f"127.0.0.1:{tls_port} ssl"], ssl_cert=cert, ssl_cert_key=key, sse_keepalive=sse_keepalive)
    with trio.fail_after(TIMEOUT):
        client = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", tls_port), pki.client_context(),
                                server_hostname="default.test", https_compatible=True)
        await client.send_all(b"GET /events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
    return sse, client


@pytest.mark.parametrize("close_notify", [True, False], ids=["close_notify", "bare_eof"])
async def test_closing_an_sse_response_over_tls_closes_the_upstream_stream_at_once(gateway, nursery, pki, tmp_path,
                                                                                    close_notify):
    sse, client = await sse_over_tls(gateway, nursery, pki, tmp_path, sse_keepalive=30)
    with trio.fail_after(TIMEOUT):
        received = b""
        while b"data: one" not in received:
            received += await client.receive_some(4096)
        if close_notify:
            await client.aclose()
        else:
            await client.transport_stream.aclose()
        closed_at = trio.current_time()
        while sse.closed_at is None:
            await trio.sleep(0.01)
    assert sse.closed_at - closed_at < 1.0  # not at the next keep-alive comment (30 s)


async def test_an_idle_sse_stream_over_tls_gets_its_keepalive_comments(gateway, nursery, pki, tmp_path):
    """TLS records are written by the stream's own task, so the wheel wakes it to send what it owes."""
    sse, client = await sse_over_tls(gateway, nursery, pki, tmp_path, sse_keepalive=0.1)
    with trio.fail_after(TIMEOUT):
        received = b""
        while received.count(b": keepalive\n\n") < 3:
            received += await client.receive_some(4096)
        await client.aclose()
    assert b"data: one\n\n" in received
