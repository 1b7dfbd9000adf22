"""Kong's TLS entities and kong.conf's TLS settings, as msgspec Structs.

- `certificates`: a PEM certificate (chain) and key, optionally `cert_alt`/`key_alt` (an ECDSA pair beside an RSA one),
  and nested `snis` (names served with it). `snis`: a name (exact, `*.example.com` or `example.*`) and the
  `certificate` it selects, by id. `ca_certificates`: one CA certificate each, for verifying upstreams.
- In the `gateway:` block (kong.conf's names): `ssl_cert` / `ssl_cert_key` (a file, the PEM text or its base64: the
  default certificate, for clients that send no SNI or an unknown one), `ssl_cipher_suite` (each suite with its own
  protocols) or `custom` with `ssl_ciphers` and `ssl_protocols`, `ssl_session_tickets`, and ours,
  `ssl_handshake_timeout_s`; for the gateway's TLS clients, `client_ssl` / `client_ssl_cert` / `client_ssl_cert_key`
  (to upstreams) and `lua_ssl_trusted_certificate` / `lua_ssl_verify_depth` (its own: probes, Redis, senders).
- A listen address with ` ssl` (Kong's `proxy_listen = 0.0.0.0:8443 ssl`) terminates TLS (its words are read by
  gateway.config.listen).
Certificates are checked when the config is compiled (gateway.http.tls_contexts): expired, mismatched or unreadable
ones are config errors naming the entity.
"""

from __future__ import annotations

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
