"""The TLS server name (SNI) is compared in the case the client sent it, as Kong 3.9.3 compares it: its certificate
lookup (kong/runloop/certificate.lua find_certificate) and its router (kong/router/fields.lua `tls.sni`) both read
ngx.ssl.server_name(), OpenSSL's SSL_get_servername as received (lua-nginx-module src/ngx_http_lua_ssl_certby.c:949),
and compare it as a string with names stored as given (snis.lua and routes' snis: no normalizer)."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, free_port, service
from cryptography import x509
from tls_helpers import Pki

from gateway.config import ConfigError, parse_config
from gateway.http.tls_contexts import ServerOptions, ServerTls, server_context
from gateway.routing import Router, RouteSpec

TIMEOUT = 10


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def client_context() -> ssl.SSLContext:
    """A client that verifies nothing: the certificate served is what is looked at."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def served_name(port: int, server_name: str) -> str:
    """The first DNS name of the certificate a TLS listener serves to a client sending `server_name`."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with client_context().wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)[0]


def routed_to(port: int, server_name: str) -> str:
    """The name of the echo backend a GET over TLS with `server_name` as SNI reaches."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with client_context().wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(b"GET /x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return json.loads(data.partition(b"\r\n\r\n")[2])["name"]


def config(certificates: list[dict[str, Any]]) -> object:
    return parse_config(json.dumps({"certificates": certificates}), "kong.yml")


def test_an_sni_in_another_case_gets_the_default_certificate():
    """kong/runloop/certificate.lua find_certificate (3.9.3:281-291): the cache keys `"snis:" .. sni`, then its
    `*.` and `.*` forms, then `*`, built from the name as sent; so `A.EXAMPLE.TEST` is neither the sni
    `a.example.test` nor `*.example.test` (nor `SHOP.test` the sni `shop.*`) and gets the default certificate."""
    options = ServerOptions()
    exact, wild, suffix, default = (server_context(options, [], n) for n in ("exact", "wild", "suffix", "default"))
    tls = ServerTls(default, {"a.example.test": exact, "*.example.test": wild, "shop.*": suffix}, options)
    assert tls.select("a.example.test") is exact
    assert tls.select("x.example.test") is wild
    assert tls.select("shop.test") is suffix
    assert tls.select("A.EXAMPLE.TEST") is default
    assert tls.select("X.Example.Test") is default
    assert tls.select("SHOP.test") is default


def test_snis_that_differ_only_in_case_are_two_snis():
    """kong/db/schema/entities/snis.lua: `name` is typedefs.wildcard_host, unique, with no normalizer; Kong's
    declarative uniqueness check (kong/db/schema/others/declarative_config.lua:859-871) keys it by the string."""
    config([{"cert": "x", "key": "x", "snis": ["a.test"]}, {"cert": "y", "key": "y", "snis": ["A.test"]}])


def test_the_same_sni_twice_is_refused():
    """The same string twice is still a uniqueness violation (declarative_config.lua:864-869)."""
    with pytest.raises(ConfigError) as e:
        config([{"cert": "x", "key": "x", "snis": ["a.test"]}, {"cert": "y", "key": "y", "snis": ["a.test"]}])
    assert "kong.yml: certificates[1].snis[0].name: 'a.test' is already used by certificates[0].snis[0]" in (
        e.value.messages)


async def test_each_case_of_a_name_gets_its_own_certificate(gateway, nursery, pki, tmp_path: Path):
    """End to end: the name reaches the certificate choice as the client sent it (Python's SNI callback, as
    SSL_get_servername) and config names are kept as given, so `a.test`, `A.test` and `A.TEST` get three
    certificates, as in Kong (certificate.lua find_certificate; `A.TEST` matches no sni: the default)."""
    lower, upper = pki.issue("lower.cert"), pki.issue("upper.cert")
    tls_port = free_port()
    cert, key = pki.files(tmp_path, "default", "default.test")
    doc = {"services": [service("s", "http://127.0.0.1:1", [{"paths": ["/"]}])],
           "certificates": [{"cert": lower[0], "key": lower[1], "snis": ["a.test"]},
                            {"cert": upper[0], "key": upper[1], "snis": ["A.test"]}]}
    await gateway(doc, listen=[f"127.0.0.1:{tls_port} ssl"], ssl_cert=cert, ssl_cert_key=key)
    with trio.fail_after(TIMEOUT):
        served = {n: await trio.to_thread.run_sync(served_name, tls_port, n) for n in ("a.test", "A.test", "A.TEST")}
    assert served == {"a.test": "lower.cert", "A.test": "upper.cert", "A.TEST": "default.test"}


@pytest.mark.parametrize(("snis", "sni", "matches"), [
    (["API.Test"], b"API.Test", True),
    (["API.Test"], b"api.test", False),
    (["api.test"], b"API.TEST", False),
    (["*.api.test"], b"EU.api.test", True),  # the wildcard's label takes any name; the rest is compared as given
    (["*.api.test"], b"eu.API.test", False),
    (["api.*"], b"API.internal", False),
])
def test_a_route_sni_matches_only_in_the_case_given(snis, sni, matches):
    """kong/router/transform.lua sni_val_transform keeps the route's sni as given (a final dot off), and the ATC
    expression `tls.sni == "..."` (`=^`, `^=` for wildcards) compares it with ngx.ssl.server_name() as sent
    (kong/router/fields.lua:109-115), case-sensitively, as route hosts."""
    router = Router([RouteSpec("r", paths=["/"], snis=snis)])
    assert (router.match(b"GET", b"/", b"gw.test", [], None, None, sni) is not None) == matches


async def test_the_router_reads_the_server_name_as_sent(gateway, nursery, pki):
    """End to end: the handshake hands the router the SNI as the client sent it (kong/router/fields.lua:109-115,
    ngx.ssl.server_name()), so `API.TEST` does not match a route's `api.test` and goes to the route without snis."""
    api, web = EchoBackend("api"), EchoBackend("web")
    await nursery.start(api.serve)
    await nursery.start(web.serve)
    cert, key = pki.issue("any.cert")
    tls_port = free_port()
    doc = {"services": [service("api", f"http://127.0.0.1:{api.port}", routes=[{"paths": ["/"], "snis": ["api.test"]}]),
                        service("web", f"http://127.0.0.1:{web.port}", routes=[{"paths": ["/"]}])],
           "certificates": [{"cert": cert, "key": key, "snis": ["*"]}]}
    await gateway(doc, listen=[f"127.0.0.1:{tls_port} ssl"])
    with trio.fail_after(TIMEOUT):
        routed = {n: await trio.to_thread.run_sync(routed_to, tls_port, n) for n in ("api.test", "API.TEST")}
    assert routed == {"api.test": "api", "API.TEST": "web"}


def test_a_preserved_hosts_name_goes_upstream_as_its_sni_in_the_case_sent():
    """preserve_host: Kong's $upstream_host is the Host as sent, and nginx's ngx_http_upstream_ssl_name strips its
    port and lowercases nothing, so the upstream's SNI keeps the client's case."""
    from gateway.pipeline.forward import _sni

    assert _sni(b"Example.Test:8443") == "Example.Test"
    assert _sni(b"[::1]:8443") == "::1"
