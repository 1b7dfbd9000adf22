"""TLS, client side and upstream side, against Kong's own spec tests: spec/02-integration/05-proxy/06-ssl_spec.lua
(certificates by SNI, the default certificate, https-only routes, upstream verification, proxy_ssl_name),
18-upstream_tls_spec.lua (mutual TLS to upstreams, tls_verify, ca_certificates), and the schemas and kong.conf
parsing they rest on (kong/db/schema/entities/certificates.lua, snis.lua, ca_certificates.lua, services.lua,
kong/runloop/certificate.lua, kong/runloop/handler.lua, kong/conf_loader/parse.lua). In-process, once per codec.

The tests marked xfail need changes outside the TLS files: they state Kong's behaviour and turn into failures
(strict) once the change is made."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from backends import Client, EchoBackend, free_port, raw_exchange, request, service
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tls_helpers import HttpsEcho, Pki, ca_and_leaf, expired_pair

from gateway.config import ConfigError, parse_config
from gateway.http.kong_errors import nginx_page
from gateway.http.tls_contexts import ServerOptions, ServerTls, TrustStore, server_context, use_trust_store
from gateway.runtime import compile_config

TIMEOUT = 10
CERT_A, CERT_B, CERT_C = ("6e0a3f5c-1d2b-4c3d-8e4f-5a6b7c8d9e01", "6e0a3f5c-1d2b-4c3d-8e4f-5a6b7c8d9e02",
                          "6e0a3f5c-1d2b-4c3d-8e4f-5a6b7c8d9e03")
CA_ID = "6e0a3f5c-1d2b-4c3d-8e4f-5a6b7c8d9e10"
UNTRUSTED = {"tls_verify": True, "ca_certificates": [CA_ID]}


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(autouse=True)
def _system_trust_store() -> Any:
    """A config parsed here may set lua_ssl_trusted_certificate for the process: back to `system` after each test."""
    yield
    use_trust_store(TrustStore())


def leaf(tls: ssl.SSLSocket) -> x509.Certificate:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def first_name(cert: x509.Certificate) -> str:
    """The first DNS name of a certificate's SAN (trustme puts its names there)."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)[0]


def handshake(port: int, server_name: str | None, ciphers: str | None = None) -> x509.Certificate:
    """The certificate a TLS listener presents to a client sending `server_name` as SNI (None: no SNI); `ciphers`
    limits a TLS 1.2 client to some key types. Verifies nothing (the SNI may be no host name)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if ciphers is not None:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return leaf(tls)


async def cert_for(port: int, server_name: str | None, ciphers: str | None = None) -> x509.Certificate:
    with trio.fail_after(TIMEOUT):
        return await trio.to_thread.run_sync(lambda: handshake(port, server_name, ciphers))


async def tls_listener(gateway, nursery, pki: Pki, tmp_path: Path, certificates: list[dict[str, Any]],  # noqa: ANN001
                       default: bool = True, routes: list[dict[str, Any]] | None = None,
                       **settings: Any) -> tuple[int, int, EchoBackend]:
    """A gateway with a plain and a TLS listener before an echo backend: (http port, tls port, echo). The default
    certificate (gateway.ssl_cert) is for "default.test", as Kong's is its own "localhost"."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    http_port, tls_port = free_port(), free_port()
    gw: dict[str, Any] = {"listen": [f"127.0.0.1:{http_port}", f"127.0.0.1:{tls_port} ssl"], **settings}
    if default:
        gw["ssl_cert"], gw["ssl_cert_key"] = pki.files(tmp_path, "default", "default.test")
    doc = {"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)], "certificates": certificates}
    await gateway(doc, **gw)
    return http_port, tls_port, echo


def config_errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        compile_config(parse_config(json.dumps(doc), "c.yml"), "c.yml")
    return e.value.messages


def loads(doc: dict[str, Any]) -> None:
    compile_config(parse_config(json.dumps(doc), "c.yml"), "c.yml")


# --- 06-ssl_spec: the certificate a handshake gets -----------------------------------------------------------------


async def test_sni_picks_exact_names_then_prefix_then_suffix_wildcards(gateway, nursery, pki, tmp_path):
    """06-ssl_spec "wildcard sni": Kong's fixture, two certificates and five names (kong/runloop/certificate.lua's
    find_certificate: the exact name, then the first label as `*`, then the last label as `*`)."""
    alt, alt_alt = pki.issue("ssl-alt.test"), pki.issue("ssl-alt-alt.test")
    certificates = [{"cert": alt[0], "key": alt[1], "snis": ["*.wildcard.com", "wildcard.*"]},
                    {"cert": alt_alt[0], "key": alt_alt[1],
                     "snis": ["wildcard.org", "test.wildcard.*", "*.www.wildcard.com"]}]
    _, tls_port, _ = await tls_listener(gateway, nursery, pki, tmp_path, certificates)
    expected = {"test.wildcard.com": "ssl-alt.test",  # prefix
                "wildcard.eu": "ssl-alt.test",  # suffix
                "wildcard.org": "ssl-alt-alt.test",  # exact before the suffix wildcard.*
                "test.wildcard.org": "ssl-alt-alt.test",  # suffix test.wildcard.*
                "test.www.wildcard.com": "ssl-alt-alt.test",  # only the first label is a wildcard's
                "a.b.wildcard.com": "default.test"}  # *.wildcard.com stands for one label
    for name, cert in expected.items():
        assert first_name(await cert_for(tls_port, name)) == cert, name


@pytest.mark.parametrize("server_name", [None, "test.com", "a.example.com:600", "a.example.com:88888",
                                         "*.exam*le.com", "a.exam*le.com"])
async def test_no_sni_an_unknown_or_a_malformed_one_gets_the_default_certificate(gateway, nursery, pki, tmp_path,
                                                                                   server_name):
    """06-ssl_spec "sets the default fallback SSL certificate if no SNI match", "global SSL" (no SNI) and
    "kong.runloop.certificate invalid SNI" (a port, two wildcards, a wildcard inside: the default, no error)."""
    a = pki.issue("a.example.com")
    _, tls_port, _ = await tls_listener(gateway, nursery, pki, tmp_path,
                                        [{"cert": a[0], "key": a[1], "snis": ["a.example.com"]}])
    assert first_name(await cert_for(tls_port, server_name)) == "default.test"
    assert first_name(await cert_for(tls_port, "a.example.com")) == "a.example.com"


def test_a_prefix_wildcard_stands_for_one_label_of_three_or_more():
    """kong/runloop/certificate.lua's produce_wild_snis: `*` replaces the first label only when two more follow
    (`([^.]+)(\\.[^.]+\\.\\S+)`), so `*.com` never matches: Kong does not look it up for "example.com"."""
    options = ServerOptions()
    ctx = {n: server_context(options, [], n) for n in ("*.com", "*.example.com", "*", "example.*")}
    tls = ServerTls(None, ctx, options)
    assert tls.select("example.com") is ctx["example.*"]
    assert tls.select("a.example.com") is ctx["*.example.com"]
    assert tls.select("a.b.example.com") is ctx["*"]
    assert tls.select("example.net") is ctx["example.*"]
    assert tls.select("x.org") is ctx["*"]


def test_the_star_sni_is_the_certificate_of_names_nothing_else_matches():
    """06-ssl_spec "sets the default certificate of '*' SNI" (kong/runloop/certificate.lua's DEFAULT_SNI, looked up
    after the exact name and both wildcards); a client without SNI gets the default certificate (ssl_cert), as in
    Kong, or the `*` one when there is none (Kong would serve its own generated one; an alert says less)."""
    options = ServerOptions()
    star, exact, default = (server_context(options, [], n) for n in ("star", "exact", "default"))
    with_default = ServerTls(default, {"*": star, "a.test": exact}, options)
    assert with_default.select("a.test") is exact
    assert with_default.select("other.test") is star
    assert with_default.select(None) is default
    without = ServerTls(None, {"*": star, "a.test": exact}, options)
    assert without.select("other.test") is star
    assert without.select(None) is star


async def test_the_star_sni_serves_its_certificate_to_unknown_names(gateway, nursery, pki, tmp_path):
    """06-ssl_spec "sets the default certificate of '*' SNI" (and spec/01-unit/01-db/01-schema/11-snis_spec.lua
    "accepts a * for default certificate")."""
    star = pki.issue("ssl-example.test")
    _, tls_port, _ = await tls_listener(gateway, nursery, pki, tmp_path,
                                        [{"cert": star[0], "key": star[1], "snis": ["*"]}])
    assert first_name(await cert_for(tls_port, "example.com")) == "ssl-example.test"
    assert first_name(await cert_for(tls_port, None)) == "default.test"


def test_an_sni_name_has_one_wildcard_at_most(pki):
    """11-snis_spec "rejects multiple wildcards" (typedefs.wildcard_host: "only one wildcard must be specified");
    "accepts a * for default certificate"."""
    cert, key = pki.issue("a.test")
    for name in ("*.example.*", "*.*.wildcard.*"):
        (message,) = config_errors({"certificates": [{"cert": cert, "key": key, "snis": [name]}]})
        assert message == f'c.yml: certificates[0].snis[0].name: only one wildcard must be specified, got "{name}"'
    loads({"certificates": [{"id": CERT_A, "cert": cert, "key": key}], "snis": [{"name": "*", "certificate": CERT_A}]})


@pytest.mark.parametrize(("name", "problem"), [
    ("foo.*.com", "wildcard must be leftmost or rightmost character"),
    ("*.wildcard.com:8000", "must not have a port"),
    ("valid.name:8000", "must not have a port"),
    ("127.0.0.1", "must not be an IP"),
    ("::1", "must not be an IP"),
    ("example^com", "invalid value: example^com"),
])
def test_an_sni_name_is_checked_as_kongs_wildcard_host(pki, name, problem):
    """11-snis_spec "rejects wrong wildcard placements", "... with a port", "... with an IP", "rejects
    non-hostname values": typedefs.wildcard_host's messages."""
    cert, key = pki.issue("a.test")
    (message,) = config_errors({"certificates": [{"cert": cert, "key": key, "snis": [name]}]})
    assert message == f'c.yml: certificates[0].snis[0].name: {problem}, got "{name}"'


def test_sni_names_kong_accepts_load(pki):
    """11-snis_spec "accepts a hostname" and "accepts wildcards"; and a wildcard that is not a whole label
    (`*foo.test`), which typedefs.wildcard_host accepts too."""
    cert, key = pki.issue("a.test")
    loads({"certificates": [{"cert": cert, "key": key, "snis": [
        "valid.name", "foo.valid.name", "*.wildcard.com", "wildcard.*", "test.wildcard.*", "foo.test.wildcard.*",
        "*.test.wildcard.com", "*foo.test", "bar*"]}]})


async def test_a_wildcard_that_is_not_a_whole_label_never_selects_its_certificate(gateway, nursery, pki, tmp_path):
    """kong/runloop/certificate.lua produce_wild_snis looks up `*` + the name from its first dot, and the name to
    its last dot + `*`: an sni `*foo.test` is never one of them, so its certificate is never served."""
    odd = pki.issue("odd.test")
    _, tls_port, _ = await tls_listener(gateway, nursery, pki, tmp_path,
                                        [{"cert": odd[0], "key": odd[1], "snis": ["*foo.test"]}])
    for name in ("api.foo.test", "xfoo.test", "foo.test"):
        assert first_name(await cert_for(tls_port, name)) == "default.test"


async def test_cert_alt_is_served_to_clients_of_its_key_type(gateway, nursery, tmp_path):
    """06-ssl_spec's certificates carry cert_alt/key_alt (an ECDSA pair beside the RSA one): nginx serves the one
    the client's cipher suites can use (kong/runloop/certificate.lua sets both)."""
    ca = trustme.CA()
    rsa_leaf = ca.issue_cert("ssl-example.test", key_type=trustme.KeyType.RSA)
    ecdsa_leaf = ca.issue_cert("ssl-example.test", key_type=trustme.KeyType.ECDSA)
    pem = [("".join(b.bytes().decode() for b in c.cert_chain_pems), c.private_key_pem.bytes().decode())
           for c in (rsa_leaf, ecdsa_leaf)]
    certificates = [{"cert": pem[0][0], "key": pem[0][1], "cert_alt": pem[1][0], "key_alt": pem[1][1],
                     "snis": ["ssl-example.test"]}]
    _, tls_port, _ = await tls_listener(gateway, nursery, Pki(), tmp_path, certificates)
    rsa_cert = await cert_for(tls_port, "ssl-example.test", "ECDHE-RSA-AES128-GCM-SHA256")
    ecdsa_cert = await cert_for(tls_port, "ssl-example.test", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert isinstance(rsa_cert.public_key(), rsa.RSAPublicKey)
    assert isinstance(ecdsa_cert.public_key(), ec.EllipticCurvePublicKey)


async def test_ssl_cert_may_list_an_rsa_and_an_ecdsa_default_certificate(gateway, nursery, tmp_path):
    """kong.conf's ssl_cert and ssl_cert_key are arrays (kong.conf.default: "a list of ... certificates"): the
    default certificate of each key type, served to the clients of that type."""
    ca = trustme.CA()
    paths = []
    for n, key_type in enumerate((trustme.KeyType.RSA, trustme.KeyType.ECDSA)):
        leaf = ca.issue_cert("default.test", key_type=key_type)
        cert, key = tmp_path / f"c{n}.pem", tmp_path / f"k{n}.pem"
        cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        paths.append((str(cert), str(key)))
    _, tls_port, _ = await tls_listener(gateway, nursery, Pki(), tmp_path, [], default=False,
                                        ssl_cert=f"{paths[0][0]},{paths[1][0]}",
                                        ssl_cert_key=[paths[0][1], paths[1][1]])
    rsa_cert = await cert_for(tls_port, None, "ECDHE-RSA-AES128-GCM-SHA256")
    ecdsa_cert = await cert_for(tls_port, None, "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert isinstance(rsa_cert.public_key(), rsa.RSAPublicKey)
    assert isinstance(ecdsa_cert.public_key(), ec.EllipticCurvePublicKey)


def test_ssl_cert_and_ssl_cert_key_come_in_pairs_with_kongs_messages(pki, tmp_path):
    """kong/conf_loader/parse.lua: "ssl_cert_key must be specified", "ssl_cert was specified 2 times while
    ssl_cert_key was specified 1 times"."""
    cert, key = pki.files(tmp_path, "d", "default.test")
    listen = {"listen": "127.0.0.1:8443 ssl"}
    assert config_errors({"gateway": {**listen, "ssl_cert": cert}})[0] == (
        "c.yml: gateway.ssl_cert_key must be specified")
    assert config_errors({"gateway": {**listen, "ssl_cert": [cert, cert], "ssl_cert_key": key}})[0] == (
        "c.yml: gateway.ssl_cert was specified 2 times while gateway.ssl_cert_key was specified 1 times")


# --- 06-ssl_spec: https-only routes reached over plain HTTP ---------------------------------------------------------


async def test_an_https_only_route_answers_plain_http_with_426_and_keeps_the_connection(gateway, nursery):
    """06-ssl_spec "blocks request without HTTPS if protocols = { http }": 426, {"message": "Please use HTTPS
    protocol"}, Connection naming Upgrade, `Upgrade: TLS/1.2, HTTP/1.1`; also for a route with snis (#6425: a plain
    request is not asked for its SNI). kong.response.error keeps the connection (nginx adds its keep-alive)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    routes = [{"protocols": ["https"], "hosts": ["example.com", "ssl1.com"]},
              {"protocols": ["https"], "hosts": ["sni.example.com"], "snis": ["sni.example.com"]}]
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]})
    async with await Client.connect(port) as client:
        for host in ("example.com", "sni.example.com", "example.com"):  # one connection: it stays open
            reply = await client.request("GET", "/", host=host)
            assert reply.status == 426, (host, reply.body)
            assert reply.json()["message"] == "Please use HTTPS protocol"
            assert reply.header("content-type") == "application/json; charset=utf-8"
            assert reply.header("upgrade") == "TLS/1.2, HTTP/1.1"
            assert "upgrade" in [v.strip().lower() for k, v in reply.headers if k == "connection"
                                 for v in v.split(",")]
    assert echo.requests == []


@pytest.mark.parametrize(("code", "target", "location"), [(301, "/redirect-301", "https://example.com/redirect-301"),
                                                          (302, "/redirect-302?foo=bar",
                                                           "https://example.com/redirect-302?foo=bar")])
async def test_an_https_only_route_with_a_redirect_code_redirects(gateway, nursery, code, target, location):
    """06-ssl_spec "returns 301 / 302 when route has https_redirect_status_code set": Location is https://, the
    host and the request URI with its query (kong/runloop/handler.lua: forwarded_host .. ctx.request_uri)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    routes = [{"protocols": ["https"], "hosts": ["example.com"], "paths": [target.partition("?")[0]],
               "https_redirect_status_code": code}]
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]})
    reply = await request(port, "GET", target, host="example.com")
    assert (reply.status, reply.header("location"), reply.body) == (code, location, nginx_page(code))
    assert reply.header("content-type").startswith("text/html")  # kong.response.exit(code) without a body: nginx's
    assert echo.requests == []


@pytest.mark.parametrize(("trusted", "proto", "status"), [
    ([], "https", 426),  # "blocks HTTP request with HTTPS in x-forwarded-proto" (from not trusted_ip)
    (["127.0.0.1"], "https", 200),  # "allows HTTP requests with x-forwarded-proto" (from trusted_ip)
    (["127.0.0.1"], "httpsa", 426),  # "blocks HTTP requests with invalid x-forwarded-proto"
    (["1.2.3.4"], "https", 426),  # "blocks with https x-forwarded-proto from untrusted client"
])
async def test_a_trusted_balancers_x_forwarded_proto_is_the_scheme(gateway, nursery, trusted, proto, status):
    """06-ssl_spec "from not trusted_ip" / "from trusted_ip": the scheme is X-Forwarded-Proto only when the peer is in
    trusted_ips (kong/runloop/handler.lua: forwarded_proto ~= "https")."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    routes = [{"protocols": ["https"], "hosts": ["example.com"]}]
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]}, trusted_ips=trusted)
    reply = await request(port, "GET", "/status/200", host="example.com", headers=[("x-forwarded-proto", proto)])
    assert reply.status == status, reply.body


async def test_x_forwarded_proto_is_compared_as_sent(gateway, nursery):
    """kong/runloop/handler.lua: `forwarded_proto ~= "https"` on get_header's value, not lower-cased: a trusted
    balancer's `HTTPS` is not https (426), like 06-ssl_spec's "httpsa"."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    routes = [{"protocols": ["https"], "hosts": ["example.com"]}]
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]},
                         trusted_ips=["127.0.0.1"])
    reply = await request(port, "GET", "/", host="example.com", headers=[("x-forwarded-proto", "HTTPS")])
    assert reply.status == 426


async def test_an_http_only_route_is_reached_over_tls_too(gateway, nursery, pki, tmp_path):
    """kong/router/transform.lua puts no net.protocol predicate on an http route (only snis are asked, of https
    requests): a route with protocols [http] matches a request that came over TLS, and is proxied."""
    routes = [{"protocols": ["http"], "paths": ["/"]}]
    _, tls_port, echo = await tls_listener(gateway, nursery, pki, tmp_path, [], routes=routes)
    ctx = pki.client_context()
    with trio.fail_after(TIMEOUT):
        status = await trio.to_thread.run_sync(lambda: _https_status(tls_port, ctx, "default.test"))
    assert status == 200 and len(echo.requests) == 1


def _https_status(port: int, ctx: ssl.SSLContext, name: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return int(data.split(b" ", 2)[1])


async def test_plain_http_on_the_tls_port_gets_nginxs_own_html_page(gateway, nursery, pki, tmp_path):
    """nginx answers a plain request on an ssl listener with status 497, shown as 400 with its built-in page: Kong's
    error_page directives (kong/templates/nginx_kong.lua: 400 404 405 408 411 412 413 414 417, 494, 500 502 503 504)
    do not name 497, so Kong's error handler does not render it; the connection is closed."""
    _, tls_port, echo = await tls_listener(gateway, nursery, pki, tmp_path, [])
    data, _ = await raw_exchange(tls_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\ncontent-type: text/html" in head.lower() and b"\r\nconnection: close" in head.lower()
    assert body.startswith(b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>"
                           b"\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
                           b"<center>The plain HTTP request was sent to HTTPS port</center>\r\n")
    assert echo.requests == []


# --- 06-ssl_spec / 18-upstream_tls_spec: the upstream side ---------------------------------------------------------


class SniEcho(HttpsEcho):
    """HttpsEcho that also records the server name each TLS client sent (None: no SNI)."""

    def __init__(self, cert: tuple[str, str], client_ca: str | None = None) -> None:
        super().__init__(cert, client_ca)
        self.server_names: list[str | None] = []
        self.ctx.sni_callback = lambda _obj, name, _ctx: self.server_names.append(name)  # type: ignore[func-returns-value]


async def sni_echo(nursery: trio.Nursery, cert: tuple[str, str], client_ca: str | None = None) -> SniEcho:
    backend = SniEcho(cert, client_ca)
    await nursery.start(backend.serve)
    return backend


async def test_tls_verify_refuses_an_untrusted_upstream_with_kongs_502(gateway, nursery, pki):
    """06-ssl_spec "prevents requests to upstream that does not possess a trusted certificate" and 18-upstream_tls
    "#db turn it on, request is blocked": 502 "An invalid response was received from the upstream server"; without
    tls_verify ("default is off") the same upstream answers."""
    backend = await sni_echo(nursery, pki.issue("upstream.test", "127.0.0.1"))
    other = Pki()
    url = f"https://127.0.0.1:{backend.port}"
    doc = {"services": [service("verified", url, [{"paths": ["/tls"]}], retries=0, **UNTRUSTED),
                        service("unverified", url, [{"paths": ["/off"]}])],
           "ca_certificates": [{"id": CA_ID, "cert": other.ca_pem}]}
    port = await gateway(doc)
    with trio.fail_after(TIMEOUT):
        refused = await request(port, "GET", "/tls")
        passed = await request(port, "GET", "/off")
    assert refused.status == 502
    assert b"An invalid response was received from the upstream server" in refused.body
    assert passed.status == 200


async def test_tls_verify_without_ca_certificates_trusts_no_ca(gateway, nursery, pki, tmp_path, monkeypatch):
    """Kong's services.tls_verify: "If default CA list in Nginx are not specified and TLS verification is enabled,
    then handshake with upstream server will always fail (because no CA are trusted)": nginx_kong.lua sets no
    proxy_ssl_trusted_certificate, so the system's CAs are not used either (here the test CA is the system's)."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(pki.ca_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    backend = await sni_echo(nursery, pki.issue("upstream.test", "127.0.0.1"))
    url = f"https://127.0.0.1:{backend.port}"
    port = await gateway({"services": [service("verified", url, [{"paths": ["/tls"]}], retries=0, tls_verify=True),
                                       service("named", url, [{"paths": ["/ca"]}], tls_verify=True,
                                               ca_certificates=[CA_ID])],
                          "ca_certificates": [{"id": CA_ID, "cert": pki.ca_pem}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/tls")).status == 502
        assert (await request(port, "GET", "/ca")).status == 200


@pytest.mark.parametrize(("names", "host", "status"), [
    (["a*.example.test"], "api.example.test", 200),  # a partial wildcard in the leftmost label
    (["a*.example.test"], "bpi.example.test", 502),  # whose fixed part must match
    (["*.example.test"], "a.b.example.test", 502),  # a wildcard stands for one label
    (["localhost"], None, 200),  # the service's host, named in a DNS subjectAltName
])
async def test_tls_verify_checks_the_name_as_nginxs_x509_check_host(gateway, nursery, names, host, status):
    """nginx src/event/ngx_event_openssl.c:5275 (ngx_ssl_check_host): X509_check_host(cert, name, len, 0, NULL),
    flags 0, so no X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS (Python's default): `a*.example.test` matches
    `api.example.test`. The name is `proxy_ssl_name $upstream_host` (kong/templates/nginx_kong.lua), the client's
    Host with preserve_host."""
    ca, cert, key = ca_and_leaf("upstream", names)
    backend = HttpsEcho((cert, key))
    await nursery.start(backend.serve)
    route = {"paths": ["/"], "preserve_host": host is not None}
    port = await gateway({"services": [service("s", f"https://localhost:{backend.port}", [route], retries=0,
                                               tls_verify=True, ca_certificates=[CA_ID])],
                          "ca_certificates": [{"id": CA_ID, "cert": ca}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/", host=host)).status == status


async def test_no_alpn_is_offered_to_an_https_upstream(gateway, nursery, pki):
    """nginx src/http/ngx_http_upstream.c:1791-1797: ALPN is set on an upstream TLS connection only when
    u->ssl_alpn_protocol is set, which the HTTP/1.x proxy module Kong proxies with never sets (only
    ngx_http_proxy_v2_module.c and the grpc module do): an upstream offering ALPN selects none for Kong's
    connection (and one that refuses a client without a common protocol still serves it)."""
    backend = HttpsEcho(pki.issue("upstream.test", "127.0.0.1"))
    backend.ctx.set_alpn_protocols(["http/1.1"])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("s", f"https://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/x")).status == 200
    assert backend.alpn_selected == [None]


@pytest.mark.parametrize(("fields", "target_port"), [
    ({"protocol": "https", "host": "127.0.0.1"}, 80),  # `port` defaults to 80 whatever the protocol
    ({"url": "https://127.0.0.1"}, 443),  # the url shorthand's default for https
    ({"url": "http://127.0.0.1"}, 80),
])
def test_a_services_port_defaults_as_kongs_schema_says(fields, target_port):
    """kong/db/schema/entities/services.lua:18,38: `port` defaults to 80 (Kong's own spec,
    spec/01-unit/01-db/01-schema/11-declarative_config/02-process_auto_fields_spec.lua "accepts entities":
    protocol https and host example.com give port = 80); only the url shorthand (lines 97-102) picks 443 for an
    https URL without a port."""
    doc = {"services": [{"name": "s", **fields, "routes": [{"paths": ["/"]}]}]}
    runtime = compile_config(parse_config(json.dumps(doc), "c.yml"), "c.yml")
    assert runtime.services["s"].group.targets[0].port == target_port


@pytest.mark.parametrize(("host", "preserve_host", "sent_host", "sni"), [
    ("localhost", True, "ssl3.com:8443", "ssl3.com"),  # "properly sets the upstream SNI with preserve_host: true"
    ("localhost", False, "no-sni.com", "localhost"),  # "false"
    ("127.0.0.1", False, "nil-sni.com", None),  # "false and IP-based upstream_url": no SNI
])
async def test_the_upstream_sni_is_nginxs_proxy_ssl_name(gateway, nursery, pki, host, preserve_host, sent_host, sni):
    """06-ssl_spec "proxy_ssl_name": `proxy_ssl_name $upstream_host` (without its port), none for an address."""
    backend = await sni_echo(nursery, pki.issue("localhost", "ssl3.com", "127.0.0.1"))
    route = {"paths": ["/"], "preserve_host": preserve_host}
    port = await gateway({"services": [service("s", f"https://{host}:{backend.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", host=sent_host)
    assert reply.status == 200, reply.body
    assert backend.server_names == [sni]


async def test_a_preserved_host_that_is_an_address_sends_no_sni(gateway, nursery, pki):
    """nginx's proxy_ssl_name $upstream_host with preserve_host: the client's Host without its port; an address is
    no server name (RFC 6066), so no SNI is sent, not the service's host name."""
    backend = await sni_echo(nursery, pki.issue("localhost", "127.0.0.1"))
    route = {"paths": ["/"], "preserve_host": True}
    port = await gateway({"services": [service("s", f"https://localhost:{backend.port}", [route])]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", host="127.0.0.1:8000")
    assert reply.status == 200, reply.body
    assert backend.server_names == [None]


@pytest.mark.parametrize(("host", "sni"), [("a" * 64 + ".example.com", "a" * 64 + ".example.com"),
                                         (".example.com", None)], ids=["label-over-63-bytes", "leading-dot"])
async def test_a_preserved_host_idna_refuses_is_proxied_as_nginx_does(gateway, nursery, pki, host, sni, caplog):
    """nginx sends $upstream_host as it came (SSL_set_tlsext_host_name, no IDNA check): a label over 63 bytes goes as
    the SNI; a name Python's ssl cannot send at all goes without one. Either was a 500 with a traceback."""
    backend = await sni_echo(nursery, pki.issue("localhost", "127.0.0.1"))
    route = {"paths": ["/"], "preserve_host": True}
    port = await gateway({"services": [service("s", f"https://localhost:{backend.port}", [route], retries=0)]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", host=host)
    assert reply.status == 200, reply.body
    assert ["host", host] in reply.json()["headers"]
    assert backend.server_names == [sni]
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_service_client_certificate_is_presented_for_mutual_tls(gateway, nursery, pki):
    """18-upstream_tls "client certificate supplied via service.client_certificate": the upstream requiring a client
    certificate answers; "no client certificate supplied": it does not (nginx's 400 there, a refused handshake and
    so 502 here: what the upstream does)."""
    backend = await sni_echo(nursery, pki.issue("example.com", "127.0.0.1"), client_ca=pki.ca_pem)
    client = pki.issue("foo.example.test")
    url = f"https://127.0.0.1:{backend.port}"
    doc = {"services": [service("mtls", url, [{"paths": ["/mtls"]}], client_certificate={"id": CERT_A}),
                        service("none", url, [{"paths": ["/none"]}], retries=0)],
           "certificates": [{"id": CERT_A, "cert": client[0], "key": client[1]}]}
    port = await gateway(doc)
    with trio.fail_after(TIMEOUT):
        ok = await request(port, "GET", "/mtls")
        refused = await request(port, "GET", "/none")
    assert ok.status == 200 and ok.json()["client_cert"] == "foo.example.test"
    assert refused.status == 502


async def test_an_upstreams_client_certificate_is_presented_unless_the_service_has_one(gateway, nursery, pki):
    """18-upstream_tls "mutual TLS authentication against upstream with Upstream object": upstream.client_certificate
    is presented when the service has none (kong/runloop/upstream_ssl.lua's fallback_upstream_client_cert), and
    "Service.client_certificate takes precedence" when both are set."""
    backend = await sni_echo(nursery, pki.issue("example.com", "127.0.0.1"), client_ca=pki.ca_pem)
    good, bad = pki.issue("foo.example.test"), Pki().issue("bad.example.com")
    targets = [{"target": f"127.0.0.1:{backend.port}"}]
    doc = {"upstreams": [{"name": "backend-mtls", "client_certificate": {"id": CERT_A}, "targets": targets},
                         {"name": "backend-bad", "client_certificate": {"id": CERT_B}, "targets": targets}],
           "services": [service("up", "https://backend-mtls/", [{"paths": ["/mtls-upstream"]}]),
                        service("both", "https://backend-bad/", [{"paths": ["/both"]}],
                                client_certificate={"id": CERT_A})],
           "certificates": [{"id": CERT_A, "cert": good[0], "key": good[1]},
                            {"id": CERT_B, "cert": bad[0], "key": bad[1]}]}
    port = await gateway(doc)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/mtls-upstream")).json()["client_cert"] == "foo.example.test"
        assert (await request(port, "GET", "/both")).json()["client_cert"] == "foo.example.test"


async def test_client_ssl_presents_a_global_client_certificate(gateway, nursery, pki, tmp_path):
    """kong.conf's client_ssl (kong/templates/nginx_kong.lua: proxy_ssl_certificate ${{CLIENT_SSL_CERT}}): every
    https upstream gets that certificate, unless the service's client_certificate overrides it."""
    backend = await sni_echo(nursery, pki.issue("example.com", "127.0.0.1"), client_ca=pki.ca_pem)
    cert, key = pki.files(tmp_path, "client", "kong-client.test")
    port = await gateway({"services": [service("s", f"https://127.0.0.1:{backend.port}")]},
                         client_ssl=True, client_ssl_cert=cert, client_ssl_cert_key=key)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/")).json()["client_cert"] == "kong-client.test"


async def test_client_ssl_comes_after_the_services_and_the_upstreams_certificate(gateway, nursery, pki, tmp_path):
    """nginx's proxy_ssl_certificate (client_ssl) is the base; kong/runloop/upstream_ssl.lua sets the service's
    client_certificate over it, else the upstream's (fallback_upstream_client_cert)."""
    backend = await sni_echo(nursery, pki.issue("example.com", "127.0.0.1"), client_ca=pki.ca_pem)
    cert, key = pki.files(tmp_path, "client", "kong-client.test")
    for_service, for_upstream = pki.issue("service.test"), pki.issue("upstream.test")
    url = f"https://127.0.0.1:{backend.port}"
    doc = {"upstreams": [{"name": "with-cert", "client_certificate": {"id": CERT_B},
                          "targets": [{"target": f"127.0.0.1:{backend.port}"}]}],
           "services": [service("global", url, [{"paths": ["/global"]}]),
                        service("upstream", "https://with-cert", [{"paths": ["/upstream"]}]),
                        service("service", url, [{"paths": ["/service"]}], client_certificate={"id": CERT_A})],
           "certificates": [{"id": CERT_A, "cert": for_service[0], "key": for_service[1]},
                            {"id": CERT_B, "cert": for_upstream[0], "key": for_upstream[1]}]}
    port = await gateway(doc, client_ssl=True, client_ssl_cert=cert, client_ssl_cert_key=key)
    with trio.fail_after(TIMEOUT):
        for path, name in (("/global", "kong-client.test"), ("/upstream", "upstream.test"),
                           ("/service", "service.test")):
            assert (await request(port, "GET", path)).json()["client_cert"] == name, path


# --- what is refused, or not, at config load -----------------------------------------------------------------------


def _pem(leaf: trustme.LeafCert) -> tuple[str, str]:
    return "".join(b.bytes().decode() for b in leaf.cert_chain_pems), leaf.private_key_pem.bytes().decode()


def test_cert_alt_and_key_alt_are_set_together():
    """kong/db/schema/entities/certificates.lua: mutually_required cert_alt, key_alt."""
    ca = trustme.CA()
    rsa_pair = _pem(ca.issue_cert("a.test", key_type=trustme.KeyType.RSA))
    ecdsa_pair = _pem(ca.issue_cert("a.test"))
    for half in ({"cert_alt": ecdsa_pair[0]}, {"key_alt": ecdsa_pair[1]}):
        (message,) = config_errors({"certificates": [{"cert": rsa_pair[0], "key": rsa_pair[1], **half}]})
        assert message == "c.yml: certificates[0]: set both cert_alt and key_alt, or neither"


def test_cert_alt_is_of_another_key_type():
    """kong/db/schema/entities/certificates.lua: "certificate and alternative certificate need to have different
    type (e.g. RSA and ECDSA)" (one of each type is what a listener can hold)."""
    ca = trustme.CA()
    one, two = _pem(ca.issue_cert("a.test")), _pem(ca.issue_cert("b.test"))
    (message,) = config_errors({"certificates": [{"cert": one[0], "key": one[1], "cert_alt": two[0],
                                                  "key_alt": two[1]}]})
    assert message == ("c.yml: certificates[0].cert_alt: the certificate and the alternative certificate need "
                       "different key types (e.g. RSA and ECDSA); both are ECDSA")


def test_a_key_alt_that_does_not_match_names_the_alternative_certificate():
    """kong/db/schema/entities/certificates.lua: "alternative certificate does not match key"."""
    ca = trustme.CA()
    rsa_pair = _pem(ca.issue_cert("a.test", key_type=trustme.KeyType.RSA))
    ecdsa_pair, other = _pem(ca.issue_cert("a.test")), _pem(ca.issue_cert("b.test"))
    (message,) = config_errors({"certificates": [{"cert": rsa_pair[0], "key": rsa_pair[1],
                                                  "cert_alt": ecdsa_pair[0], "key_alt": other[1]}]})
    assert message == "c.yml: certificates[0].cert_alt: the key does not match the certificate"


def test_an_upstreams_client_certificate_names_a_certificate():
    """kong/db/schema/entities/upstreams.lua: client_certificate is a foreign key to certificates."""
    (message,) = config_errors({"upstreams": [{"name": "u", "client_certificate": {"id": CERT_A}}]})
    assert message == f"c.yml: upstreams[0].client_certificate: no certificate with id '{CERT_A}'"


def test_client_ssl_is_checked_as_kong_checks_it(pki, tmp_path):
    """kong/conf_loader/parse.lua with client_ssl on: both halves, each a file, the PEM text or its base64 that
    loads; off, they are not read. Neither set: Kong's nginx could not load its proxy_ssl_certificate."""
    cert, key = pki.files(tmp_path, "client", "kong-client.test")
    missing = str(tmp_path / "none.crt")

    def errors(**settings: Any) -> list[str]:
        return config_errors({"gateway": {"client_ssl": True, **settings}})

    assert errors(client_ssl_cert=cert) == ["c.yml: gateway.client_ssl_cert_key must be specified"]
    assert errors(client_ssl_cert_key=key) == ["c.yml: gateway.client_ssl_cert must be specified"]
    assert errors(client_ssl_cert=missing, client_ssl_cert_key=key) == [
        f"c.yml: gateway.client_ssl_cert: failed loading certificate from {missing}"]
    assert errors(client_ssl_cert=cert, client_ssl_cert_key="nope") == [
        "c.yml: gateway.client_ssl_cert_key: failed loading key from nope"]
    assert errors(client_ssl_cert=cert, client_ssl_cert_key=pki.issue("other.test")[1]) == [
        "c.yml: gateway.client_ssl_cert: the key does not match the certificate"]
    assert errors() == ["c.yml: gateway.client_ssl: set gateway.client_ssl_cert and gateway.client_ssl_cert_key (the "
                        "certificate presented to upstreams)"]
    loads({"gateway": {"client_ssl": True, "client_ssl_cert": Path(cert).read_text(),
                       "client_ssl_cert_key": base64.b64encode(Path(key).read_bytes()).decode()}})
    loads({"gateway": {"client_ssl_cert": missing, "client_ssl_cert_key": "nope"}})


def _service_with_ca(ca_pem: str) -> dict[str, Any]:
    return {"services": [{"name": "s", "url": "https://a.test", **UNTRUSTED}],
            "ca_certificates": [{"id": CA_ID, "cert": ca_pem}]}


def test_a_ca_certificate_is_one_ca_that_has_not_expired(pki):
    """kong/db/schema/entities/ca_certificates.lua (and 04-admin_api/16-ca_certificates_routes_spec "non CA cert",
    "expired cert", "multiple certs"): one certificate, not expired, with the CA basic constraint."""
    leaf_pem = pki.issue("leaf.test")[0].split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    (message,) = config_errors(_service_with_ca(leaf_pem))
    assert message == ('c.yml: ca_certificates[0].cert: the certificate does not appear to be a CA (it is missing '
                       'the "CA" basic constraint)')
    (message,) = config_errors(_service_with_ca(pki.ca_pem + Pki().ca_pem))
    assert message == "c.yml: ca_certificates[0].cert: one certificate per ca_certificate, got 2"
    (message,) = config_errors(_service_with_ca(expired_pair()[0]))
    assert message.startswith("c.yml: ca_certificates[0].cert: the certificate expired on ")
    loads(_service_with_ca(pki.ca_pem))


@pytest.mark.xfail(strict=True, reason="tls_runtime checks the ca_certificates services name; checking all of them "
                                       "refuses tests/kongconfig/real/deck/...sync__009-skip-ca-cert__kong3x.yaml "
                                       "(an expired CA), which LOADS.txt lists as loading")
def test_a_ca_certificate_no_service_names_is_checked_too():
    """kong/db/schema/entities/ca_certificates.lua checks every entity: an expired CA is refused at load whether or
    not a service uses it."""
    errors = config_errors({"ca_certificates": [{"id": CA_ID, "cert": expired_pair()[0]}]})
    assert errors[0].startswith("c.yml: ca_certificates[0].cert: the certificate expired on ")


def test_ssl_cert_may_be_the_pem_text_or_its_base64(pki, tmp_path):
    """kong/conf_loader/parse.lua: ssl_cert / ssl_cert_key that are not files are the PEM text, or its base64
    (try_decode_base64)."""
    cert, key = pki.issue("default.test")
    for pair in ((cert, key), (base64.b64encode(cert.encode()).decode(), base64.b64encode(key.encode()).decode())):
        loads({"gateway": {"listen": "127.0.0.1:8443 ssl", "ssl_cert": pair[0], "ssl_cert_key": pair[1]}})
    errors = config_errors({"gateway": {"listen": "127.0.0.1:8443 ssl", "ssl_cert": str(tmp_path / "none.crt"),
                                        "ssl_cert_key": key}})
    assert errors[0].startswith(f"c.yml: gateway.ssl_cert: cannot read {tmp_path / 'none.crt'}")


def _negotiated_cipher(server: ssl.SSLContext, client_ciphers: str) -> str:
    """The cipher a TLS 1.2 client offering `client_ciphers` (in its order of preference) gets, over memory BIOs."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(client_ciphers)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    c = client.wrap_bio(bios[0], bios[1], server_hostname="a.test")
    s = server.wrap_bio(bios[2], bios[3], server_side=True)
    for _ in range(10):
        for side, out, into in ((c, bios[1], bios[2]), (s, bios[3], bios[0])):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            into.write(out.read())
    return c.cipher()[0]  # type: ignore[index]


@pytest.mark.parametrize(("suite", "client_first"), [("intermediate", True), ("custom", False)])
def test_intermediate_and_modern_let_the_client_choose_the_cipher(pki, suite, client_first):
    """kong/conf_loader/constants.lua: prefer_server_ciphers "off" for modern and intermediate ("as all are safe,
    let client choose"), "on" for old and fips, kong.conf's ssl_prefer_server_ciphers (on) for custom."""
    ciphers = None if suite == "intermediate" else "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
    server = server_context(ServerOptions(cipher_suite=suite, ciphers=ciphers), [pki.issue("a.test")], "t")
    got = _negotiated_cipher(server, "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert got == ("ECDHE-ECDSA-AES256-GCM-SHA384" if client_first else "ECDHE-ECDSA-AES128-GCM-SHA256")


async def test_ssl_protocols_applies_only_with_the_custom_cipher_suite(gateway, nursery, pki, tmp_path):
    """kong.conf.default: ssl_protocols "is ignored if ssl_cipher_suite is not custom" (kong/conf_loader/parse.lua
    sets nginx_http_ssl_protocols from the suite: intermediate is TLSv1.2 TLSv1.3)."""
    _, tls_port, _ = await tls_listener(gateway, nursery, pki, tmp_path, [], ssl_protocols="TLSv1.3")
    cert = await cert_for(tls_port, "default.test", "ECDHE-ECDSA-AES128-GCM-SHA256")  # a TLS 1.2 client
    assert first_name(cert) == "default.test"


@pytest.mark.parametrize(("suite", "versions"), [("modern", ("TLSv1_3", "TLSv1_3")),
                                                 ("intermediate", ("TLSv1_2", "TLSv1_3")),
                                                 ("old", ("TLSv1", "TLSv1_3")),
                                                 ("fips", ("TLSv1_2", "TLSv1_2")),
                                                 ("custom", ("TLSv1_1", "TLSv1_2"))])
def test_each_cipher_suite_has_kongs_protocols(suite, versions):
    """kong/conf_loader/constants.lua CIPHER_SUITES: modern TLSv1.3, intermediate TLSv1.2 TLSv1.3, old TLSv1 to
    TLSv1.3, fips TLSv1.2; custom takes ssl_protocols (here "TLSv1.1 TLSv1.2"), which the others ignore."""
    options = ServerOptions("TLSv1.1 TLSv1.2", suite, "ECDHE+AESGCM" if suite == "custom" else None)
    ctx = server_context(options, [], suite)
    assert (ctx.minimum_version.name, ctx.maximum_version.name) == versions


async def test_the_old_suite_serves_a_tls_1_1_client_and_fips_refuses_tls_1_3(gateway, nursery, pki, tmp_path):
    """ssl_cipher_suite old: TLSv1.1 served (kong/templates/nginx_kong.lua's `CipherString DEFAULT:@SECLEVEL=0`
    makes OpenSSL 3 take it); fips: TLSv1.2 only."""

    def version(port: int, tls_version: ssl.TLSVersion) -> str | None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = tls_version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="default.test") as tls:
                return tls.version()

    _, old_port, _ = await tls_listener(gateway, nursery, pki, tmp_path, [], ssl_cipher_suite="old")
    _, fips_port, _ = await tls_listener(gateway, nursery, pki, tmp_path, [], ssl_cipher_suite="fips")
    with trio.fail_after(TIMEOUT):
        assert await trio.to_thread.run_sync(version, old_port, ssl.TLSVersion.TLSv1_1) == "TLSv1.1"
        assert await trio.to_thread.run_sync(version, fips_port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
        with pytest.raises(ssl.SSLError):
            await trio.to_thread.run_sync(version, fips_port, ssl.TLSVersion.TLSv1_3)


async def test_the_intermediate_suite_serves_its_dhe_ciphers(gateway, nursery, pki, tmp_path):
    """kong/conf_loader/constants.lua: intermediate's dhparams are ffdhe2048 (nginx's ssl_dhparam), so its DHE-RSA
    ciphers are served: a TLS 1.2 client offering only DHE-RSA-AES128-GCM-SHA256 gets its handshake."""
    leaf = trustme.CA().issue_cert("rsa.test", key_type=trustme.KeyType.RSA)
    cert, key = _pem(leaf)
    _, tls_port, _ = await tls_listener(gateway, nursery, pki, tmp_path,
                                        [{"cert": cert, "key": key, "snis": ["rsa.test"]}])
    assert isinstance((await cert_for(tls_port, "rsa.test", "DHE-RSA-AES128-GCM-SHA256")).public_key(),
                      rsa.RSAPublicKey)


def test_ssl_protocols_is_checked_only_with_the_custom_suite():
    """Kong ignores ssl_protocols unless ssl_cipher_suite is custom; with custom, nginx's protocol names."""
    loads({"gateway": {"ssl_protocols": "SSLv3"}})
    (message,) = config_errors({"gateway": {"ssl_cipher_suite": "custom", "ssl_ciphers": "ECDHE+AESGCM",
                                            "ssl_protocols": "SSLv3"}})
    assert message == ('c.yml: gateway.ssl_protocols: expected some of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3 (e.g. '
                       '"TLSv1.2 TLSv1.3"), got "SSLv3"')


def test_lua_ssl_trusted_certificate_takes_one_or_more_ca_files(pki, tmp_path):
    """27-lua-ssl-trusted-cert_spec "works with single entry" / "works with multiple entries": a comma-separated
    list of PEM files (or `system`, the default) trusted by the gateway's own TLS clients."""
    first, second = tmp_path / "ca1.crt", tmp_path / "ca2.crt"
    first.write_text(pki.ca_pem)
    second.write_text(Pki().ca_pem)
    parse_config(json.dumps({"gateway": {"lua_ssl_trusted_certificate": f"system,{first},{second}"}}), "c.yml")
    as_list = [str(first), pki.ca_pem, base64.b64encode(pki.ca_pem.encode()).decode()]  # a file, PEM, base64
    parse_config(json.dumps({"gateway": {"lua_ssl_trusted_certificate": as_list}}), "c.yml")


def test_lua_ssl_trusted_certificate_entries_give_certificates(tmp_path):
    """kong/conf_loader/parse.lua: an entry that is not `system` nor a file must be a certificate (or its base64):
    "lua_ssl_trusted_certificate: failed loading certificate from ..."."""
    missing = str(tmp_path / "none.crt")
    (message,) = config_errors({"gateway": {"lua_ssl_trusted_certificate": f"system, {missing}"}})
    assert message == f"c.yml: gateway.lua_ssl_trusted_certificate: failed loading certificate from {missing}"


def test_lua_ssl_verify_depth_is_refused_unless_it_is_openssls_own():
    """kong.conf's lua_ssl_verify_depth (default 1) limits the chains the gateway's own clients take; Python's ssl
    module cannot (no SSL_CTX_set_verify_depth), so only OpenSSL's own limit, 100, is obeyed."""
    (message,) = config_errors({"gateway": {"lua_ssl_verify_depth": 1}})
    assert message == ("c.yml: gateway.lua_ssl_verify_depth: 1 cannot be obeyed: Python's ssl module cannot limit the "
                       "depth of a certificate chain, so the gateway's TLS clients take chains of up to OpenSSL's 100 "
                       "intermediate certificates; remove it (or set 100)")
    parse_config(json.dumps({"gateway": {"lua_ssl_verify_depth": 100}}), "c.yml")


async def test_the_gateways_own_tls_clients_verify_against_lua_ssl_trusted_certificate(nursery, pki, tmp_path):
    """27-lua-ssl-trusted-cert_spec: what the gateway's own clients trust is the setting's CAs, with the system's
    only when `system` is listed: the health probe, the log and trace senders, JWKS fetches, Redis and ldap-auth
    (their contexts, gateway.http.tls_contexts.client_context)."""
    from gateway.health.machine import Event
    from gateway.health.policy import ActivePolicy
    from gateway.health.probe import probe
    from gateway.mcp.httpget import FetchError, Url, get
    from gateway.policies.ldap_auth.client import Server
    from gateway.ratelimit.redis_client import RedisSettings, tls_context
    from gateway.telemetry.sender import SendError, connect

    backend = await sni_echo(nursery, pki.issue("upstream.test", "127.0.0.1"))
    ours, other = tmp_path / "ca.crt", tmp_path / "other.crt"
    ours.write_text(pki.ca_pem)
    other.write_text(Pki().ca_pem)
    policy = ActivePolicy(type="https", https_verify_certificate=True, https_sni="upstream.test", timeout_s=5)

    async def verified() -> bool:
        with trio.fail_after(TIMEOUT):
            ok = await probe("127.0.0.1", backend.port, policy) == Event.SUCCESS
            try:
                await (await connect("127.0.0.1", backend.port, tls=True, server_hostname="upstream.test",
                                     verify=True, timeout=5, where="t")).aclose()
            except SendError:
                assert not ok
            else:
                assert ok
            try:
                await get(Url(f"https://127.0.0.1:{backend.port}/"), timeout=5, max_bytes=65536)
            except FetchError:
                assert not ok
            else:
                assert ok
            return ok

    def trusted(ca_pem: str) -> bool:
        der = ssl.PEM_cert_to_DER_cert(ca_pem)
        contexts = [tls_context(RedisSettings("r", ssl=True, ssl_verify=True)),
                    Server("h", 636, ldaps=True, start_tls=False, verify=True, timeout=1, keepalive=1).context()]
        found = [der in ctx.get_ca_certs(binary_form=True) for ctx in contexts if ctx is not None]
        assert len(set(found)) == 1
        return found[0]

    assert not await verified() and not trusted(pki.ca_pem)  # system: the test CA is no system CA
    parse_config(json.dumps({"gateway": {"lua_ssl_trusted_certificate": f"system,{ours}"}}), "c.yml")
    assert await verified() and trusted(pki.ca_pem)
    parse_config(json.dumps({"gateway": {"lua_ssl_trusted_certificate": str(other)}}), "c.yml")
    assert not await verified() and not trusted(pki.ca_pem)
