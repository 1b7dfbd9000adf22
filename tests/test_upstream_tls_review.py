"""TLS from the gateway to upstreams against Kong 3.x and nginx 1.27.1, on the points of a review: kong.conf's
`ssl_cipher_suite: old` for the TLS clients (kong/templates/nginx_kong.lua's proxy_ssl_conf_command and
lua_ssl_conf_command), and a preserved Host OpenSSL cannot send as the TLS server name (ngx_http_upstream.c).
In-process gateways on one codec (what is checked is below HTTP framing), loopback backends only."""

from __future__ import annotations

import datetime as dt
import ssl
import tempfile
from pathlib import Path

import pytest
import trio
from backends import request, service
from conftest import build_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from tls_helpers import HttpsEcho, Pki

from gateway.http.tls_contexts import TrustStore, client_context
from gateway.runtime import compile_config

TIMEOUT = 10
CA_ID = "7a1c2e3d-4b5f-4a6b-8c7d-9e0f1a2b3c01"


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def weak_leaf(pki: Pki, name: str) -> tuple[str, str]:
    """A leaf of the test CA for `name` (DNS SAN) with a 1024-bit RSA key: below OpenSSL's security level 2
    (Kong's bundled OpenSSL 3.4's default, Debian's too), fine at level 0."""
    ca_key = serialization.load_pem_private_key(pki.ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert_pem.bytes())
    key = rsa.generate_private_key(65537, 1024)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


class LegacyHttpsEcho(HttpsEcho):
    """HttpsEcho serving a certificate only security level 0 takes (a legacy upstream)."""

    def __init__(self, cert: tuple[str, str]) -> None:
        super().__init__(Pki().issue("placeholder.test"))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
            f.write(cert[0] + cert[1])
        ctx.load_cert_chain(f.name)
        Path(f.name).unlink()
        self.ctx = ctx


# --- ssl_cipher_suite: old is for the TLS clients too ----------------------------------------------------------------


async def test_ssl_cipher_suite_old_proxies_to_a_verified_upstream_with_a_1024_bit_key(gateway, nursery, pki):
    """kong/templates/nginx_kong.lua:31-35: with `ssl_cipher_suite == 'old'`, `proxy_ssl_conf_command CipherString
    DEFAULT:@SECLEVEL=0` beside the listeners' ssl_conf_command: nginx 1.27.1 applies it to the proxy's upstream
    SSL_CTX (src/http/modules/ngx_http_proxy_module.c:5070, ngx_http_proxy_set_ssl), and OpenSSL verifies the
    upstream's chain at the connection's security level, so a 1024-bit RSA upstream key is taken."""
    backend = LegacyHttpsEcho(weak_leaf(pki, "legacy.test"))
    await nursery.start(backend.serve)
    svc = service("s", f"https://localhost:{backend.port}", [{"paths": ["/"], "preserve_host": True}],
                  retries=0, tls_verify=True, ca_certificates=[CA_ID])
    port = await gateway({"services": [svc], "ca_certificates": [{"id": CA_ID, "cert": pki.ca_pem}]},
                         ssl_cipher_suite="old")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", host="legacy.test")
    assert reply.status == 200, reply.body


@pytest.mark.parametrize(("suite", "level"), [("old", 0), ("intermediate", 2)])
def test_an_upstream_tls_context_has_the_security_level_of_the_cipher_suite(suite, level):
    """nginx_kong.lua:33 (proxy_ssl_conf_command, `old` only): every upstream context of an https service, that for
    targets that are addresses too; the other suites leave OpenSSL's default level."""
    config = build_config({"services": [service("s", "https://127.0.0.1:1", tls_verify=True)]}, "llhttp",
                          ssl_cipher_suite=suite)
    tls = compile_config(config).services["s"].tls
    assert tls is not None
    assert (tls.context.security_level, tls.address_context().security_level) == (level, level)


@pytest.mark.parametrize(("suite", "level"), [("old", 0), ("intermediate", 2)])
@pytest.mark.parametrize("verify", [True, False])
def test_the_gateways_own_tls_clients_have_the_security_level_of_the_cipher_suite(suite, level, verify):
    """nginx_kong.lua:32: `lua_ssl_conf_command CipherString DEFAULT:@SECLEVEL=0` with `old`: the cosockets of
    health checks, Redis, the log senders (client_context, over the lua_ssl_trusted_certificate store)."""
    store = TrustStore.from_setting("system", [], cipher_suite=suite)
    assert store.context(verify, ssl.SSLContext).security_level == level


def test_a_loaded_config_gives_the_gateways_own_tls_clients_its_cipher_suites_level():
    """The loader installs the trust store of the config it loads (client_context: health probes, Redis, log
    senders): with `old` at level 0, as lua_ssl_conf_command makes Kong's cosockets'."""
    for suite, level in (("old", 0), ("intermediate", 2)):
        build_config({}, "h11", ssl_cipher_suite=suite)
        assert client_context(True).security_level == level, suite


# --- a preserved Host OpenSSL cannot send as the server name ---------------------------------------------------------


async def test_a_preserved_host_too_long_for_sni_is_a_500_without_retries(gateway, nursery, pki):
    """nginx 1.27.1 src/http/ngx_http_upstream.c:1705-1709 and 1932-1938: when SSL_set_tlsext_host_name() refuses
    the name (OpenSSL: over 255 bytes), ngx_http_upstream_ssl_name returns NGX_ERROR and the request is finalized
    with NGX_HTTP_INTERNAL_SERVER_ERROR: a 500, no next upstream, nothing counted against the target (a client
    cannot spend a preserve_host route's targets' health with one Host header)."""
    backend = HttpsEcho(pki.issue("localhost"))
    await nursery.start(backend.serve)
    route = {"paths": ["/"], "preserve_host": True}
    port = await gateway({"services": [service("s", f"https://localhost:{backend.port}", [route], retries=3)]})
    host = ("a" * 60 + ".") * 5 + "test"  # 309 bytes, every label under 64
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", host=host)
    assert reply.status == 500, reply.body  # Kong's "An unexpected error occurred"
    assert backend.handshake_failures <= 1  # the one connection nginx opened before naming it
