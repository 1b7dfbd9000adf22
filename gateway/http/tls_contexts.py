"""SSL contexts built once per config load: the listeners' certificates chosen by SNI, and upstream clients; and
those of the gateway's own TLS clients (client_context: probes, Redis, senders), over kong.conf's
lua_ssl_trusted_certificate (TrustStore).

Certificates arrive as PEM text (Kong's declarative `certificates`) or files (kong.conf's `ssl_cert`); the ssl
module loads chains only from files, so PEM text goes through an anonymous in-memory file (memfd): no key is ever
written to disk. Every problem (expired, key not matching, unreadable, not PEM) is a ValueError whose message says
what and which; the caller prefixes the entity's path.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import os
import ssl
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from gateway.http.kong_headers import KONG_CHARSET
from gateway.http.tls import LISTENER_ALPN, SEEN_SNI, ListenerContext, plain_http_head_for
from gateway.kong_array import kong_array

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("gateway.tls")
_Context = TypeVar("_Context", bound=ssl.SSLContext)
# kong/conf_loader/constants.lua CIPHER_SUITES (Mozilla's server-side TLS recommendations, and OpenSSL's FIPS list):
# each suite's protocols, which replace ssl_protocols (kong/conf_loader/parse.lua), and its TLS 1.2 ciphers; TLS 1.3
# suites are OpenSSL's defaults. `old` has kong/templates/nginx_kong.lua's `ssl_conf_command CipherString
# DEFAULT:@SECLEVEL=0` too, which nginx applies after ssl_ciphers: OpenSSL's default list at security level 0 (TLS 1.0
# and 1.1 need it).
SUITES: dict[str, tuple[str, str | None]] = {
    "modern": ("TLSv1.3", None),
    "intermediate": ("TLSv1.2 TLSv1.3",
                     "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                     "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                     "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"),
    "old": ("TLSv1 TLSv1.1 TLSv1.2 TLSv1.3", "DEFAULT:@SECLEVEL=0"),
    "fips": ("TLSv1.2", "TLSv1.2+FIPS:kRSA+FIPS:!eNULL:!aNULL"),
}
# RFC 7919's ffdhe2048 group: the DH parameters Kong sets with the intermediate suite (its `dhparams`, written out
# for nginx's ssl_dhparam), without which the suite's DHE-RSA ciphers cannot be negotiated
FFDHE2048 = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""
# kong/templates/nginx_kong.lua gives the `old` suite's CipherString to TLS clients too: `proxy_ssl_conf_command` (the
# upstream connections) and `lua_ssl_conf_command` (the gateway's own clients); the other suites set none there
_OLD_CLIENT_CIPHERS = "DEFAULT:@SECLEVEL=0"
VERSIONS = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1, "TLSv1.2": ssl.TLSVersion.TLSv1_2,
            "TLSv1.3": ssl.TLSVersion.TLSv1_3}
# The option that disables each version: nginx sets it for every version ssl_protocols leaves out
# (src/event/ngx_event_openssl.c:363-388, ngx_ssl_create), so a list with a gap leaves the gap out
_NO_VERSION = {ssl.TLSVersion.TLSv1: ssl.OP_NO_TLSv1, ssl.TLSVersion.TLSv1_1: ssl.OP_NO_TLSv1_1,
               ssl.TLSVersion.TLSv1_2: ssl.OP_NO_TLSv1_2, ssl.TLSVersion.TLSv1_3: ssl.OP_NO_TLSv1_3}


class ServerOptions:
    """kong.conf's TLS settings for listeners: `protocols` are ssl_protocols, used only with the custom suite;
    `charset` (nginx_http_charset) is for the 400 a plain HTTP request on a TLS port gets."""

    __slots__ = ("protocols", "cipher_suite", "ciphers", "tickets", "charset")

    def __init__(self, protocols: str = "TLSv1.2 TLSv1.3", cipher_suite: str = "intermediate",
                 ciphers: str | None = None, tickets: bool = True, charset: str = KONG_CHARSET) -> None:
        self.protocols = protocols.split()
        self.cipher_suite = cipher_suite
        self.ciphers = ciphers
        self.tickets = tickets
        self.charset = charset


def client_ciphers(cipher_suite: str) -> str | None:
    """The cipher string TLS clients get with kong.conf's ssl_cipher_suite: `old`'s DEFAULT at security level 0
    (OpenSSL then takes an upstream's 1024-bit RSA key, as Kong's nginx does), else None (the context's own)."""
    return _OLD_CLIENT_CIPHERS if cipher_suite == "old" else None


def check_certificate(pem: str, what: str, now: dt.datetime | None = None) -> list[x509.Certificate]:
    """The certificates of a PEM chain; ValueError if there is none. One that has expired or is not valid yet is
    taken with a warning, as Kong takes it (kong/db/schema/typedefs.lua checks only that it parses) and nginx serves
    it: refusing it would refuse every later reload, of any change, from the day it expires. `cryptography` is
    imported here, on first use: a process without certificates never loads it (issue 19)."""
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise ValueError(f"{what}: not a PEM certificate (expected -----BEGIN CERTIFICATE----- ...)") from None
    now = now or dt.datetime.now(dt.UTC)
    leaf = chain[0]
    if leaf.not_valid_after_utc < now:
        log.warning("%s: the certificate expired on %s UTC: clients that check it will refuse it; renew it", what,
                    f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M}")
    elif leaf.not_valid_before_utc > now:
        log.warning("%s: the certificate is not valid before %s UTC: clients that check it will refuse it until "
                    "then", what, f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M}")
    return chain


def check_ca_certificate(pem: str, what: str, now: dt.datetime | None = None) -> None:
    """Kong's checks of a `ca_certificates` entity (kong/db/schema/entities/ca_certificates.lua): one certificate,
    not expired (a CA not valid yet is taken, as Kong takes it), with the CA basic constraint; ValueError otherwise."""
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise ValueError(f"{what}: not a PEM certificate (expected -----BEGIN CERTIFICATE----- ...)") from None
    if len(chain) != 1:
        raise ValueError(f"{what}: one certificate per ca_certificate, got {len(chain)}")
    cert = chain[0]
    if cert.not_valid_after_utc < (now or dt.datetime.now(dt.UTC)):
        raise ValueError(f"{what}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError(f'{what}: the certificate does not appear to be a CA (it is missing the "CA" basic '
                         'constraint)')


def _key_type(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = cert.public_key()
    for kind, name in ((rsa.RSAPublicKey, "RSA"), (ec.EllipticCurvePublicKey, "ECDSA")):
        if isinstance(key, kind):
            return name
    return type(key).__name__.removeprefix("_").removesuffix("PublicKey")  # DSA, Ed25519, ... (cryptography 51
    # deprecates its dsa module: a warning on every use of it)


def check_key(pem: str, what: str) -> None:
    """ValueError unless `pem` is a PEM private key OpenSSL can load without a pass phrase (the gateway takes none,
    as Kong takes none: an encrypted key would have OpenSSL ask for one on the terminal)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise ValueError(f"{what}: the key is encrypted, and the gateway takes no pass phrase: give it decrypted "
                         "(openssl pkey -in KEY -out KEY.plain)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{what}: not a PEM private key (expected -----BEGIN PRIVATE KEY----- ...)") from None


def _no_pass_phrase() -> bytes:
    raise ValueError("the key is encrypted, and the gateway takes no pass phrase")


# OpenSSL's security checks of a certificate chain (SSL_CTX_use_certificate: ssl_security_cert), by reason code
_TOO_WEAK = {
    "CA_MD_TOO_WEAK": "a signature in its chain uses a digest too weak (SHA-1 or MD5)",
    "EE_KEY_TOO_SMALL": "its key is too small (an RSA key under 2048 bits)",
    "CA_KEY_TOO_SMALL": "the key of a certificate in its chain is too small (an RSA key under 2048 bits)",
}


def load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str, what: str, key_what: str | None = None) -> None:
    """Load a PEM certificate chain and key given as text (through memfds, never on disk). `what` names the pair
    in messages, `key_what` the key's own setting where it has one."""
    check_key(key_pem, key_what or what)
    fds = []
    try:
        paths = []
        for text in (cert_pem, key_pem):
            fd = os.memfd_create("gateway-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, text.encode())
            paths.append(f"/proc/self/fd/{fd}")
        try:
            ctx.load_cert_chain(paths[0], paths[1], password=_no_pass_phrase)  # (never a prompt on the terminal)
        except ssl.SSLError as e:
            if "KEY_VALUES_MISMATCH" in str(e):
                reason = "the key does not match the certificate"
            elif (weak := _TOO_WEAK.get(e.reason or "")) is not None:
                reason = (f"the certificate is refused at OpenSSL's security level ({e.reason}): {weak}, so Kong's "
                          "OpenSSL could not use it either; reissue it (signed with SHA-256, with an RSA key of at "
                          "least 2048 bits or an ECDSA one), or, for a listener, set ssl_cipher_suite: old (security "
                          "level 0, as Kong's template sets for it)")
            else:
                reason = f"the certificate or key cannot be loaded ({e.reason or e})"
            raise ValueError(f"{what}: {reason}") from None
    finally:
        for fd in fds:
            os.close(fd)


def read_pem_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def server_context(options: ServerOptions, pairs: Sequence[tuple[str, str]], what: str,
                   names: Sequence[tuple[str, str]] | None = None) -> ListenerContext:
    """A listener context serving `pairs` of (certificate PEM, key PEM) (e.g. an RSA and an ECDSA one). `names`:
    the settings each pair comes from, for messages (default: a certificate entity's fields under `what`)."""
    names = names or [(f"{what}.cert", f"{what}.key"), (f"{what}.cert_alt", f"{what}.key_alt")]
    ctx = ListenerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.plain_http_head = plain_http_head_for(options.charset)
    if options.cipher_suite == "custom":
        protocols, ciphers = options.protocols, options.ciphers
    else:
        suite_protocols, ciphers = SUITES[options.cipher_suite]
        protocols = suite_protocols.split()
    versions = sorted(VERSIONS[p] for p in protocols)
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 (the old suite), OP_NO_TLS*: deprecated in Python, not in
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenSSL
        ctx.minimum_version, ctx.maximum_version = versions[0], versions[-1]
        for version, option in _NO_VERSION.items():
            if versions[0] < version < versions[-1] and version not in versions:
                ctx.options |= option
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ValueError(f'gateway.ssl_ciphers: OpenSSL knows none of "{ciphers}"') from None
    if options.cipher_suite == "intermediate":
        fd = os.memfd_create("gateway-dhparam", os.MFD_CLOEXEC)
        try:
            os.write(fd, FFDHE2048.encode())
            ctx.load_dh_params(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    ctx.set_alpn_protocols(list(LISTENER_ALPN))  # (a client offering none of them: tls.server_handshake refuses it)
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    if options.cipher_suite in ("modern", "intermediate"):  # Kong's prefer_server_ciphers off: all are safe, let the
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # client choose (old, fips and custom: the server's order)
    if not options.tickets:  # nginx's ssl_session_tickets off: SSL_OP_NO_TICKET and no more. TLS 1.2 then resumes
        ctx.options |= ssl.OP_NO_TICKET  # by session id, TLS 1.3 by the stateful tickets OpenSSL still sends, both
        # from the server's session cache (OpenSSL's own, on by default: SSL_SESS_CACHE_SERVER), kept by the context
        # handshakes start with (ServerTls.context), whichever certificate the SNI then picks
    types = []
    for i, (cert_pem, key_pem) in enumerate(pairs):
        cert_what, key_what = names[min(i, len(names) - 1)]
        types.append(_key_type(check_certificate(cert_pem, cert_what)[0]))
        if i and types[i] in types[:i]:  # a context holds one certificate per key type: the second would replace
            raise ValueError(f"{cert_what}: the certificate and the alternative certificate need different key "
                             f"types (e.g. RSA and ECDSA); both are {types[i]}")
        load_chain(ctx, cert_pem, key_pem, what if i == 0 else cert_what, key_what)
    return ctx


def _name_matches(pattern: str, name: str) -> bool:
    """Whether `name` is `pattern` with one label for its `*`: the first (`*.example.com`) or the last (`example.*`)."""
    if pattern.startswith("*."):
        label = name[: len(name) - len(pattern) + 1]
        return name.endswith(pattern[1:]) and label != "" and "." not in label
    if pattern.endswith(".*"):
        label = name[len(pattern) - 1:]
        return name.startswith(pattern[:-1]) and label != "" and "." not in label
    return pattern == name


class ServerTls:
    """The certificates of the TLS listeners: one context per certificate, picked by the client's SNI as Kong's
    find_certificate picks (kong/runloop/certificate.lua): the exact name, then the name with its first label as `*`
    (`*.example.com`, looked up only for names of three labels or more, so `*.com` never matches), then with its
    last label as `*` (`example.*`), then the sni `*`, else the default certificate. A name sent holding a `*` is
    looked up as it is only (produce_wild_snis derives no wildcard from it). Names are compared as strings,
    in the case sent, as Kong's cache keys (`A.test` is not the sni `a.test`). A client without SNI gets the default
    certificate (or the `*` one without a default). With neither, the unrecognized_name alert."""

    def __init__(self, default: ListenerContext | None, by_sni: dict[str, ssl.SSLContext],
                 options: ServerOptions, handshake_timeout: float = 10.0) -> None:
        self.exact = dict(by_sni)  # (a wildcard sni is a key a name holding no `*` never equals)
        self.leading = [(n, c) for n, c in by_sni.items() if n.startswith("*.") and "." in n[2:]]
        self.trailing = [(n, c) for n, c in by_sni.items() if n.endswith(".*")]
        self.star = by_sni.get("*")  # Kong's DEFAULT_SNI
        self.default = default
        self.handshake_timeout = handshake_timeout
        # The context every handshake starts with: the default certificate's, or one with none of its own.
        self.context = default if default is not None else server_context(options, [], "gateway")
        self.context.sni_callback = self._pick

    def select(self, name: str | None) -> ssl.SSLContext | None:
        """The context for an SNI name (None: no match)."""
        if name is None:
            return self.default if self.default is not None else self.star
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        if "*" in name:  # certificate.lua produce_wild_snis: no `*.x` / `x.*` lookup for a name already holding one
            return self.star if self.star is not None else self.default
        for pattern, ctx in self.leading:
            if _name_matches(pattern, name):
                return ctx
        for pattern, ctx in self.trailing:
            if _name_matches(pattern, name):
                return ctx
        return self.star if self.star is not None else self.default

    def _pick(self, tls: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> int | None:
        setattr(tls, SEEN_SNI, name)  # for routing on it (a route's snis)
        chosen = self.select(name)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if chosen is not ctx:
            tls.context = chosen
        return None


class ClientTls:
    """How a service speaks TLS to its targets (hashable by identity: part of the pool's connection keys); `what`
    names the client certificate's setting in messages (e.g. services[0].client_certificate); `ciphers`, the
    cipher string of kong.conf's suite (client_ciphers).

    With `verify`, `context` checks the certificate and the name it is handed; a target that is an address gets
    `address_context()` instead, which checks the certificate but no name: Python's ssl would compare an address
    with the certificate's IP SANs only, where nginx compares it as a name, so tls.client_handshake checks it after
    the handshake (tls.names_address)."""

    __slots__ = ("context", "verify", "_address_context", "_ca_pems", "_client_pair", "_what", "_ciphers")

    def __init__(self, verify: bool, ca_pems: Sequence[str] = (),
                 client_pair: tuple[str, str] | None = None, what: str = "service.client_certificate",
                 ciphers: str | None = None) -> None:
        if client_pair is not None:
            check_certificate(client_pair[0], what)
        self.context = _client_tls_context(verify, verify, ca_pems, client_pair, what, ciphers)
        self.verify = verify
        self._address_context: ssl.SSLContext | None = None  # made on first use: most services never need it
        self._ca_pems, self._client_pair, self._what, self._ciphers = ca_pems, client_pair, what, ciphers

    def address_context(self) -> ssl.SSLContext:
        """The context for a target that is an address (with `verify`): the certificate verified, its names not."""
        if self._address_context is None:
            self._address_context = _client_tls_context(self.verify, False, self._ca_pems, self._client_pair,
                                                        self._what, self._ciphers)
        return self._address_context


def _client_tls_context(verify: bool, check_hostname: bool, ca_pems: Sequence[str],
                        client_pair: tuple[str, str] | None, what: str, ciphers: str | None) -> ssl.SSLContext:
    """An upstream client context as nginx's proxy module makes it: no ALPN (ngx_http_upstream.c:1791-1797 sets it
    only for the HTTP/2 and gRPC proxies), a certificate's name checked with X509_check_host flags 0
    (ngx_event_openssl.c:5275): `a*.example.com` matches `api.example.com`; and `ciphers`, Kong's
    proxy_ssl_conf_command CipherString, whose security level OpenSSL verifies the upstream's chain at."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    ctx.check_hostname = check_hostname
    # Python's default host flags are X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS; CPython's private SSLContext._host_flags
    # (X509_VERIFY_PARAM_set_hostflags, no public setter) takes nginx's 0; test_kong_spec_tls checks it still works
    ctx._host_flags = 0  # type: ignore[attr-defined]
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca_pems:  # (none: Kong's nginx has no proxy_ssl_trusted_certificate, so it trusts no CA at all)
            ctx.load_verify_locations(cadata="\n".join(ca_pems))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if client_pair is not None:
        load_chain(ctx, client_pair[0], client_pair[1], what)
    return ctx


# --- the gateway's own TLS clients -----------------------------------------------------------------------------------

# OpenSSL's own limit on a chain's intermediate certificates (X509_VERIFY_PARAM "default"), the only
# lua_ssl_verify_depth the gateway can obey: Python's ssl module has no SSL_CTX_set_verify_depth
OPENSSL_VERIFY_DEPTH = 100


class TrustStore:
    """kong.conf's lua_ssl_trusted_certificate: what the gateway's own TLS clients (health probes, Redis, the log and
    trace senders, ldap-auth, JWKS fetches) verify servers against: the system's CAs (`system`: OpenSSL's default
    paths, or SSL_CERT_FILE / SSL_CERT_DIR) and/or the PEM certificates given. `ciphers`: the cipher string of
    kong.conf's ssl_cipher_suite (client_ciphers: Kong's lua_ssl_conf_command)."""

    __slots__ = ("system", "cadata", "ciphers")

    def __init__(self, system: bool = True, pems: Sequence[str] = (), ciphers: str | None = None) -> None:
        self.system = system
        self.cadata = "\n".join(pems)
        self.ciphers = ciphers

    @classmethod
    def from_setting(cls, setting: Sequence[str] | str, errors: list[str],
                     what: str = "gateway.lua_ssl_trusted_certificate",
                     cipher_suite: str = "intermediate") -> TrustStore:
        """The store of a setting: a list, or Kong's comma-separated string, of `system`, files, PEM texts and their
        base64 (kong/conf_loader/parse.lua); an entry that gives no certificate appends Kong's message to `errors`.
        `cipher_suite`: kong.conf's ssl_cipher_suite, whose client ciphers the contexts get."""
        system, pems = False, []
        for entry in kong_array(setting):
            if entry == "system":
                system = True
            elif (pem := _ca_pem(entry)) is not None:
                pems.append(pem)
            else:
                shown = "the PEM text given" if "-----BEGIN " in entry else entry
                errors.append(f"{what}: failed loading certificate from {shown}")
        return cls(system, pems, client_ciphers(cipher_suite))

    def context(self, verify: bool, cls: type[_Context]) -> _Context:
        ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
        if self.ciphers is not None:
            ctx.set_ciphers(self.ciphers)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        if self.system:
            ctx.load_default_certs()
        if self.cadata:
            ctx.load_verify_locations(cadata=self.cadata)
        return ctx


def _ca_pem(entry: str) -> str | None:
    """The PEM text of a lua_ssl_trusted_certificate entry (a file, the text, or its base64) if OpenSSL takes
    certificates from it, else None."""
    if os.path.exists(entry):
        try:
            with open(entry, encoding="ascii") as f:
                pem = f.read()
        except (OSError, UnicodeDecodeError):
            return None
    elif "-----BEGIN " in entry:
        pem = entry
    else:
        try:
            pem = base64.b64decode(entry, validate=True).decode("ascii")
        except (binascii.Error, ValueError):
            return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError):
        return None
    return pem


_trust_store = TrustStore()


def use_trust_store(store: TrustStore) -> None:
    """Make `store` what client_context verifies against (the loader installs each config's as it loads it)."""
    global _trust_store
    _trust_store = store


def client_context(verify: bool, cls: type[_Context] = ssl.SSLContext) -> _Context:  # type: ignore[assignment]
    """A new context for one of the gateway's own TLS clients (not for proxying: ClientTls): with `verify`, the
    server's certificate and name are checked against the trust store (kong.conf's lua_ssl_trusted_certificate),
    else nothing is. `cls`: an SSLContext subclass the caller needs."""
    return _trust_store.context(verify, cls)
