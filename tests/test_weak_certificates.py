"""A certificate OpenSSL refuses at the security level of the cipher suite (the SHA-1 one of Kong's docs) is refused
at load with why and what to do, as Kong could never serve it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _sha1_signed(name: str, tmp_path: Path) -> tuple[str, str]:
    """An RSA 2048 certificate a CA signed with SHA-1 (openssl x509 -sha1; cryptography refuses to sign with SHA-1),
    as the certificate of Kong's docs (developer.konghq.com/gateway/entities/certificate/, "Set up a Certificate":
    www.dimi.fr, issued by "Dimi CA", sha1WithRSAEncryption). (A self-signed one's signature is never checked.)"""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=Dimi CA", "-days", "30",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", "leaf.key", "-out", "leaf.csr")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-sha1",
        "-days", "30", "-out", "leaf.crt")
    return (tmp_path / "leaf.crt").read_text(), (tmp_path / "leaf.key").read_text()


def _check_config(doc: dict[str, Any], tmp_path: Path) -> tuple[int, str]:
    """`gateway check-config` on `doc` (the CLI, as an operator runs it): (exit status, output)."""
    import subprocess
    import sys

    path = tmp_path / "kong.yml"
    path.write_text(json.dumps(doc))
    gateway_cli = str(Path(sys.executable).parent / "gateway")
    done = subprocess.run([gateway_cli, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_the_docs_sha1_certificate_is_refused_with_a_message_that_says_why_and_what_to_do(tmp_path):
    """Kong 3.9.3 loads this certificate (kong/db/schema/typedefs.lua:224-231 validate_certificate only parses it)
    and, with ssl_cipher_suite intermediate, fails its handshakes (kong/runloop/certificate.lua:361-365: set_cert ->
    OpenSSL's SSL_use_certificate security check, a SHA-1 signature refused above security level 0); with `old`
    (kong/templates/nginx_kong.lua:31-35, @SECLEVEL=0) it serves it. check-config refuses it under intermediate
    (Kong could never serve it) saying why (a SHA-1 signature, OpenSSL's CA_MD_TOO_WEAK, not that code alone) and
    what to do (reissue it with SHA-256, or ssl_cipher_suite: old), and loads it under `old`."""
    cert, key = _sha1_signed("www.dimi.fr", tmp_path)
    doc = {"_format_version": "3.0", "certificates": [{"cert": cert, "key": key, "snis": [{"name": "www.dimi.fr"}]}]}
    status, output = _check_config(doc, tmp_path)
    assert status == 2, output
    assert "SHA-1" in output and "ssl_cipher_suite" in output, output
    status, output = _check_config({**doc, "gateway": {"ssl_cipher_suite": "old"}}, tmp_path)
    assert status == 0, output
