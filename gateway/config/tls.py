"""Kong's TLS entities and kong.conf's TLS settings, as msgspec Structs.

- `certificates`: a PEM certificate (chain) and key, optionally `cert_alt`/`key_alt` (an ECDSA pair beside an RSA one),
  and nested `snis` (names served with it). `snis`: a name (exact, `*.example.com` or `example.*`) and the
  `certificate` it selects, by id. `ca_certificates`: one CA certificate each, for verifying upstreams.
- In the `gateway:` block (kong.conf's names): `ssl_cert` / `ssl_cert_key` (a file, the PEM text or its base64: the
  default certificate, for clients that send no SNI or an unknown one), `ssl_cipher_suite` (each suite with its own
  protocols) or `custom` with `ssl_ciphers` and `ssl_protocols`, `ssl_session_tickets`, and ours,
  `ssl_handshake_timeout_s`; for the gateway's TLS clients, `client_ssl` / `client_ssl_cert` / `client_ssl_cert_key`
  (to upstreams) and `lua_ssl_trusted_certificate` / `lua_ssl_verify_depth` (its own: probes, Redis, senders).
- A listen address with ` ssl` (Kong's `proxy_listen = 0.0.0.0:8443 ssl`) terminates TLS; with ` proxy_protocol`
  its connections start with a PROXY protocol header (gateway.http.proxy_protocol).
Certificates are checked when the config is compiled (gateway.http.tls_contexts): expired, mismatched or unreadable
ones are config errors naming the entity.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from gateway.config.typedefs import KongString


class _Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, dict=True):
    """Same options as gateway.config.schema.Base (not imported from there: schema imports this module)."""


class Ref(_Base):
    """A foreign key in Kong's declarative form: `{id: ...}`."""

    id: str


class SniEntity(_Base):
    """Kong's `snis` entity: a name and the certificate (id) served for it."""

    name: str
    certificate: str | Ref | None = None  # implied when nested under a certificate
    id: str | None = None
    tags: list[str] = []


class CertificateEntity(_Base):
    """Kong's `certificates` entity (PEM text, as in a declarative file)."""

    cert: str
    key: str
    cert_alt: str | None = None
    key_alt: str | None = None
    snis: list[str | SniEntity] = []
    id: str | None = None
    tags: list[str] = []


class CaCertificateEntity(_Base):
    """Kong's `ca_certificates` entity: one CA certificate, referenced by id from services' `ca_certificates`."""

    cert: KongString
    cert_digest: KongString | None = None
    id: str | None = None
    tags: list[str] = []


CipherSuite = Literal["modern", "intermediate", "old", "fips", "custom"]  # kong/conf_loader/constants.lua


def listen_flags(entry: str) -> tuple[str, set[str]]:
    """("host:port", {"ssl", ...}) of a listen entry as kong.conf writes it: "0.0.0.0:8443 ssl"."""
    parts = entry.split()
    return (parts[0] if parts else ""), set(parts[1:])


LISTEN_FLAGS = {"ssl", "proxy_protocol"}  # of kong/conf_loader/listeners.lua's http flags, those built
NGX_LISTEN_BACKLOG = 511  # nginx's listen without backlog=N on Linux (src/os/unix/ngx_linux_config.h)
_NGX_MAX_INT_T = 2**63 - 1  # ngx_atoi's limit (NGX_MAX_INT_T_VALUE, 64-bit)
_INT_MAX = 2**31 - 1
_DIGITS = re.compile(r"[0-9]+")


def status_options(flags: set[str]) -> tuple[int, bool, list[str]]:
    """(backlog, reuseport, the options refused) of status_listen's nginx listen options: `reuseport` and
    `backlog=N` are taken (Kong's default line has both), and `proxy_protocol` (a PROXY protocol header read first:
    gateway.status.server), any other is refused, as is a backlog nginx refuses."""
    backlog, reuseport, refused = NGX_LISTEN_BACKLOG, False, []
    for flag in sorted(flags):
        if flag == "reuseport":
            reuseport = True
        elif flag.startswith("backlog=") and (value := _listen_backlog(flag[8:])) is not None:
            backlog = value
        elif flag != "proxy_protocol":
            refused.append(flag)
    return backlog, reuseport, refused


def _listen_backlog(text: str) -> int | None:
    """The backlog nginx's `backlog=N` gives listen(), as a value Python's listen() takes, or None where nginx says
    "invalid backlog": ngx_atoi (ASCII digits, at most NGX_MAX_INT_T_VALUE) stored in a C int (the low 32 bits), 0
    and -1 refused (src/http/ngx_http_core_module.c:4053-4060). A negative int is read unsigned by Linux's listen()
    and capped at net.core.somaxconn: INT_MAX is capped the same way (Python's listen() makes a negative one 0)."""
    if not _DIGITS.fullmatch(text) or int(text) > _NGX_MAX_INT_T:
        return None
    low = int(text) & 0xFFFFFFFF
    as_int = low - 2**32 if low > _INT_MAX else low
    if as_int in (0, -1):
        return None
    return as_int if as_int > 0 else _INT_MAX


def certificate_key(cert: CertificateEntity, index: int) -> str:
    """The key the runtime knows a certificate by: its id, or its place in the file (for nested snis; no reference
    can name it so: Kong's certificates are referenced by id only)."""
    return cert.id or f"certificates[{index}]"


def flatten_tls(certificates: list[CertificateEntity], snis: list[SniEntity]) -> None:
    """Nested `snis` (names or sni entities) of a certificate become top-level sni entities naming it."""
    for i, cert in enumerate(certificates):
        for j, item in enumerate(cert.snis):
            sni = SniEntity(name=item) if isinstance(item, str) else item
            sni.certificate = Ref(id=certificate_key(cert, i))
            sni._certificate = cert  # type: ignore[attr-defined]  # resolved: a place in the file is no reference
            sni._path = f"{getattr(cert, '_path', f'certificates[{i}]')}.snis[{j}]"  # type: ignore[attr-defined]
            snis.append(sni)
        cert.snis = []


def ref_id(ref: str | Ref | None) -> str | None:
    return ref.id if isinstance(ref, Ref) else ref
