"""Compile the TLS parts of a Config: the listeners' certificates (by SNI) and each https service's client side.

Kept apart from gateway.runtime so that the certificate work (PEM parsing, contexts) is in one place; every problem is
a config error naming the entity, so `gateway check-config` reports an expired or mismatched certificate too.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
from urllib.parse import urlsplit

from gateway.config import Config
from gateway.config.kong_forms import url_host
from gateway.config.listen import listen_flags
from gateway.config.loader import path_of
from gateway.config.schema import Service, Upstream, ssl_cert_values
from gateway.config.tls import CaCertificateEntity, CertificateEntity, certificate_key, ref_id
from gateway.http.tls_contexts import (
    ClientTls,
    ServerOptions,
    ServerTls,
    check_ca_certificate,
    client_ciphers,
    read_pem_file,
    server_context,
)


def tls_listens(config: Config) -> list[str]:
    """The listen entries that terminate TLS (`host:port ssl`)."""
    listens = [config.gateway.listen] if isinstance(config.gateway.listen, str) else config.gateway.listen
    return [addr for addr, flags in map(listen_flags, listens) if "ssl" in flags]


def compile_server_tls(config: Config, errors: list[str]) -> ServerTls | None:
    """The certificates listeners serve, or None when no listener has `ssl`; problems are appended to `errors`,
    those of the certificate entities and of the CA certificates services name too (once each)."""
    gw = config.gateway
    options = ServerOptions(gw.ssl_protocols, gw.ssl_cipher_suite, gw.ssl_ciphers, gw.ssl_session_tickets, gw.charset)
    _check_ca_certificates(config, errors)
    before = len(errors)
    contexts = _certificate_contexts(config, options, errors)
    if not tls_listens(config):
        return None
    default = None
    certs, keys = ssl_cert_values(gw.ssl_cert), ssl_cert_values(gw.ssl_cert_key)
    if certs and len(certs) == len(keys):  # (else the loader said what is wrong)
        try:  # several: one per key type, as a certificate's cert_alt (Kong serves an RSA and an ECDSA one so)
            pairs = [(pem_setting(cert, "gateway.ssl_cert"), pem_setting(key, "gateway.ssl_cert_key"))
                     for cert, key in zip(certs, keys, strict=True)]
            names = [(_setting("gateway.ssl_cert", cert), _setting("gateway.ssl_cert_key", key))
                     for cert, key in zip(certs, keys, strict=True)]
            default = server_context(options, pairs, "gateway.ssl_cert", names)
        except ValueError as e:
            errors.append(str(e))
    by_sni = {}
    for sni in config.snis:
        ctx = contexts.get(ref_id(sni.certificate) or "")
        if ctx is not None:
            by_sni[sni.name] = ctx
    if default is None and not by_sni:
        if len(errors) > before:
            return None  # the certificates given are broken: that was said
        errors.append(f"gateway.listen: {', '.join(tls_listens(config))} terminates TLS but there is no certificate: "
                      "set gateway.ssl_cert and gateway.ssl_cert_key, or add certificates with snis")
        return None
    try:
        return ServerTls(default, by_sni, options, gw.ssl_handshake_timeout_s)
    except ValueError as e:
        errors.append(str(e))
        return None


def _setting(name: str, value: str) -> str:
    """A certificate setting as messages name it: with its file, when it is one (Kong: "failed loading ... from")."""
    return f"{name}: {value}" if "-----BEGIN " not in value and os.path.exists(value) else name


def pem_setting(value: str, what: str) -> str:
    """The PEM text of a kong.conf certificate setting (ssl_cert, ssl_cert_key): a file, else the PEM text itself,
    else its base64 (kong/conf_loader/parse.lua's try_decode_base64)."""
    if "-----BEGIN " in value:
        return value
    if not os.path.exists(value):
        try:
            text = base64.b64decode(value, validate=True).decode("ascii")
        except (binascii.Error, ValueError):
            text = ""
        if "-----BEGIN " in text:
            return text
    return read_pem_file(value, what)


def _certificate_contexts(config: Config, options: ServerOptions, errors: list[str]) -> dict[str, ssl.SSLContext]:
    """A server context per certificate entity (checked even when no listener uses it: check-config says so)."""
    contexts: dict[str, ssl.SSLContext] = {}
    for i, cert in enumerate(config.certificates):
        where = path_of(cert) if path_of(cert) != "?" else f"certificates[{i}]"
        if (cert.cert_alt is None) != (cert.key_alt is None):  # Kong's mutually_required
            errors.append(f"{where}: set both cert_alt and key_alt, or neither")
        try:
            contexts[certificate_key(cert, i)] = server_context(options, _pairs(cert), where)
        except ValueError as e:
            errors.append(str(e))
    return contexts


def _pairs(cert: CertificateEntity) -> list[tuple[str, str]]:
    pairs = [(cert.cert, cert.key)]
    if cert.cert_alt is not None and cert.key_alt is not None:
        pairs.append((cert.cert_alt, cert.key_alt))
    return pairs


def _ca_problem(ca: CaCertificateEntity, index: int) -> str | None:
    where = path_of(ca) if path_of(ca) != "?" else f"ca_certificates[{index}]"
    try:
        check_ca_certificate(ca.cert, f"{where}.cert")
    except ValueError as e:
        return str(e)
    return None


def _check_ca_certificates(config: Config, errors: list[str]) -> None:
    """Kong's checks of the CA certificates https services name, each reported once. (Kong checks every entity;
    those no service names are not, yet: see tests/test_kong_spec_tls.py.)"""
    named = {ca_id for svc in config.services if is_https(svc) for ca_id in svc.ca_certificates or ()}
    for i, ca in enumerate(config.ca_certificates):
        if ca.id in named and (problem := _ca_problem(ca, i)) is not None:
            errors.append(problem)


def is_https(svc: Service) -> bool:
    return svc.protocol == "https" or (svc.url is not None and urlsplit(svc.url).scheme == "https")


def compile_client_ssl(config: Config, errors: list[str]) -> tuple[str, str] | None:
    """kong.conf's client_ssl: the (certificate, key) PEM pair of client_ssl_cert / client_ssl_cert_key (each a file,
    the PEM text or its base64), presented to upstreams when neither the service nor its upstream names a
    client_certificate; None when client_ssl is off or the pair is broken (which is appended to `errors` with Kong's
    messages, kong/conf_loader/parse.lua)."""
    gw = config.gateway
    if not gw.client_ssl:
        return None
    cert, key = gw.client_ssl_cert, gw.client_ssl_cert_key
    if cert is None and key is None:
        # Kong generates no client certificate: its nginx would fail to load proxy_ssl_certificate NONE
        errors.append("gateway.client_ssl: set gateway.client_ssl_cert and gateway.client_ssl_cert_key (the "
                      "certificate presented to upstreams)")
        return None
    if key is None:
        errors.append("gateway.client_ssl_cert_key must be specified")
    elif cert is None:
        errors.append("gateway.client_ssl_cert must be specified")
    before = len(errors)
    pair = [_client_ssl_pem(value, f"gateway.client_ssl_{name}", kind, errors)
            for value, name, kind in ((cert, "cert", "certificate"), (key, "cert_key", "key")) if value is not None]
    if len(errors) > before or cert is None or key is None:
        return None
    try:
        ClientTls(False, (), (pair[0], pair[1]), "gateway.client_ssl_cert")  # the certificate and key checked once
    except ValueError as e:
        errors.append(str(e))
        return None
    return pair[0], pair[1]


def _client_ssl_pem(value: str, what: str, kind: str, errors: list[str]) -> str:
    """A file's text, else the value if it is PEM, else its base64 decoded (kong/conf_loader/parse.lua's
    try_decode_base64); Kong's message ("failed loading certificate from ...") for a value that gives no PEM."""
    if os.path.exists(value):
        try:
            return read_pem_file(value, what)
        except ValueError as e:
            errors.append(str(e))
            return ""
    pem = value
    if "-----BEGIN " not in pem:
        try:
            pem = base64.b64decode(value, validate=True).decode("ascii")
        except (binascii.Error, ValueError):
            pass
    if "-----BEGIN " + ("CERTIFICATE" if kind == "certificate" else "") not in pem:
        shown = "the PEM text given" if "-----BEGIN " in pem else value  # (never key material in a message)
        errors.append(f"{what}: failed loading {kind} from {shown}")
    return pem


def compile_client_tls(svc: Service, config: Config, errors: list[str],
                       client_ssl: tuple[str, str] | None = None) -> ClientTls | None:
    """How an https service speaks TLS to its targets; None for http. The certificate presented is the service's
    client_certificate, else its upstream's (kong/runloop/upstream_ssl.lua), else `client_ssl`'s
    (compile_client_ssl: nginx's proxy_ssl_certificate); the ciphers, those ssl_cipher_suite gives TLS clients
    (`old`: Kong's proxy_ssl_conf_command, security level 0)."""
    if not is_https(svc):
        return None
    where = path_of(svc)
    if svc.tls_verify_depth is not None:
        errors.append(f"{where}.tls_verify_depth: not supported (Python's ssl module cannot limit the chain depth); "
                      "remove it, the whole chain is verified")
    cas = {c.id: (i, c) for i, c in enumerate(config.ca_certificates) if c.id}
    ca_pems = []
    for ca_id in svc.ca_certificates or ():
        found = cas.get(ca_id)
        if found is None or _ca_problem(found[1], found[0]) is not None:
            continue  # reported by the loader, or by compile_server_tls (once, however many services name it)
        ca_pems.append(found[1].cert)
    pair, what = client_ssl, "gateway.client_ssl_cert"
    upstream = _upstream_of(svc, config)
    owners: list[Service | Upstream] = [svc] if upstream is None else [svc, upstream]
    for owner in owners:
        client = ref_id(owner.client_certificate)
        if client is not None:  # (one that does not exist: the loader says so)
            named = [(c.cert, c.key) for i, c in enumerate(config.certificates) if certificate_key(c, i) == client]
            pair, what = (named[0] if named else None), f"{path_of(owner)}.client_certificate"
            break
    try:
        return ClientTls(bool(svc.tls_verify), ca_pems, pair, what, client_ciphers(config.gateway.ssl_cipher_suite))
    except ValueError as e:
        if str(e) not in errors:  # an upstream's, once however many services use it
            errors.append(str(e))
        return None


def _upstream_of(svc: Service, config: Config) -> Upstream | None:
    """The upstream a service's host names, found as gateway.runtime finds it (None: the host is a target)."""
    host = url_host(urlsplit(svc.url)) if svc.url is not None else svc.host
    return next((up for up in config.upstreams if up.name == host), None)
