"""Certificates and TLS peers for the TLS tests: a test CA (trustme), PEM text and files, an HTTPS echo backend, and
raw TLS clients built on the standard library (independent of the gateway's own TLS layer)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import h11
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Pki:
    """A test CA and certificates it issued, as PEM text."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.ca_pem = self.ca.cert_pem.bytes().decode()

    def issue(self, *names: str) -> tuple[str, str]:
        """(certificate chain PEM, key PEM) for `names`."""
        cert = self.ca.issue_cert(*names)
        return "".join(b.bytes().decode() for b in cert.cert_chain_pems), cert.private_key_pem.bytes().decode()

    def files(self, directory: Path, stem: str, *names: str) -> tuple[str, str]:
        """The same, written as files (for kong.conf-style ssl_cert / ssl_cert_key)."""
        cert, key = self.issue(*names)
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_text(cert)
        key_path.write_text(key)
        return str(cert_path), str(key_path)

    def client_context(self, alpn: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca_pem)
        if alpn:
            ctx.set_alpn_protocols(["http/1.1"])
        return ctx


def gw_test_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(a server context for gw.test, a client context trusting it), the files in `directory`."""
    pki = Pki()
    cert, key = pki.files(directory, "gw", "gw.test")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, pki.client_context()


def self_signed(common_name: str, days_from: int, days_to: int, passphrase: bytes | None = None) -> tuple[str, str]:
    """A self-signed EC certificate valid from `days_from` to `days_to` days from now, and its key (encrypted
    with `passphrase` when given), as PEM text."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now + dt.timedelta(days=days_from))
            .not_valid_after(now + dt.timedelta(days=days_to)).sign(key, hashes.SHA256()))
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode())


def encrypted_pair() -> tuple[str, str]:
    """A self-signed certificate for enc.test, and its key encrypted with a pass phrase."""
    return self_signed("enc.test", -1, 30, b"secret")


def expired_pair() -> tuple[str, str]:
    """A self-signed certificate that expired yesterday, and its key."""
    return self_signed("expired.test", -30, -1)


def ca_and_leaf(common_name: str, dns_names: list[str]) -> tuple[str, str, str]:
    """(CA PEM, leaf PEM, leaf key PEM): a new CA and a leaf it signed, subject CN `common_name`, with a DNS
    subjectAltName of `dns_names` when there are any (none: no subjectAltName at all). Unlike trustme's, any name
    goes, e.g. a partial wildcard (`a*.example.test`)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
                                        critical=False)
    leaf = builder.sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return ca.public_bytes(pem).decode(), leaf.public_bytes(pem).decode(), key_pem


def peer_common_name(tls_sock: ssl.SSLSocket | ssl.SSLObject) -> str:
    """The first SAN DNS name of the certificate the server presented."""
    der = tls_sock.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)[0]


def https_get(port: int, ctx: ssl.SSLContext, server_name: str | None, path: str = "/x",
              host: str = "gw.test") -> tuple[int, dict[str, str], bytes, str]:
    """One blocking HTTPS GET with the standard library: (status, headers, body, certificate name)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            name = peer_common_name(tls)
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body, name


class HttpsEcho:
    """An HTTPS upstream (trio.SSLStream + h11) answering JSON that describes each request and the client
    certificate it saw; counts connections, and records the ALPN protocol each handshake selected (None: none; set
    protocols on `ctx` to offer some)."""

    def __init__(self, cert: tuple[str, str], client_ca: str | None = None, name: str = "tls-echo") -> None:
        self.name = name
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
            f.write(cert[0] + cert[1])
        self.ctx.load_cert_chain(f.name)
        Path(f.name).unlink()
        if client_ca is not None:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(cadata=client_ca)
        self.port = 0
        self.connections = 0
        self.handshake_failures = 0
        self.alpn_selected: list[str | None] = []
        self.requests: list[dict[str, Any]] = []

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._on_conn, listeners, handler_nursery=nursery)

    async def _on_conn(self, stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, self.ctx, server_side=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError):
            self.handshake_failures += 1
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        self.alpn_selected.append(tls.selected_alpn_protocol())
        peer = tls.getpeercert()
        client = next((v for k, v in peer.get("subjectAltName", ()) if k == "DNS"), None) if peer else None
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = None
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await tls.receive_some(65536))
                        continue
                    if isinstance(ev, h11.Request):
                        request = ev
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    elif isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                        return
                assert request is not None
                seen = {"name": self.name, "path": request.target.decode(), "client_cert": client,
                        "sni": None, "headers": [(k.decode(), v.decode()) for k, v in request.headers]}
                self.requests.append(seen)
                body = json.dumps(seen).encode()
                await tls.send_all(conn.send(h11.Response(status_code=200, headers=[
                    ("content-type", "application/json"), ("content-length", str(len(body)))])) +
                    conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, ssl.SSLError):
            pass
        finally:
            await trio.aclose_forcefully(tls)
