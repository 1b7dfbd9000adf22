"""A real LDAP server for tests: Debian's slapd (installed by scripts/setup), on free loopback ports, stopped by pid.

The directory (mdb, in a temporary directory) holds dc=example,dc=com with ou=scientists and the USERS below, their
passwords stored salted-SHA1 ({SSHA}) as slappasswd would. With a `Pki` (tests/tls_helpers.py), the server also
speaks LDAPS on `tls_port` and StartTLS on `port`, with a certificate for localhost and 127.0.0.1 issued by the
Pki's CA.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from backends import apt_lock, free_port, stop_process, wait_port
from tls_helpers import Pki

from gateway.policies.ldap_auth.client import current_pools

SLAPD = "/usr/sbin/slapd"  # not on a non-root PATH
SLAPADD = "/usr/sbin/slapadd"
SCHEMAS = "/etc/ldap/schema"
MODULES = "/usr/lib/ldap"
BASE_DN = "dc=example,dc=com"
PEOPLE_DN = f"ou=scientists,{BASE_DN}"
USERS = {"einstein": "password", "curie": "radium:polonium", "newton": "apple"}  # uid -> password


def find_slapd() -> tuple[str | None, str]:
    """(path to slapd, or None and why not): apt-get installs slapd when we are root and it is missing, without
    letting the package start the system's slapd (a policy-rc.d that refuses, ours only while installing)."""
    if os.access(SLAPD, os.X_OK) and os.access(SLAPADD, os.X_OK):
        return SLAPD, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "slapd is not installed and apt-get cannot install it here (not root, or no apt-get)"
    with apt_lock():  # (the other test process may be installing it, its policy-rc.d in place: wait for it)
        if os.access(SLAPD, os.X_OK) and os.access(SLAPADD, os.X_OK):
            return SLAPD, ""
        policy = Path("/usr/sbin/policy-rc.d")
        ours = not policy.exists()
        if ours:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            cmd = ["apt-get", "install", "-y", "-q", "slapd", "ldap-utils"]
            if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
                proc = subprocess.run(cmd, env=env, capture_output=True, timeout=600, text=True)
                if proc.returncode != 0:
                    return None, f"apt-get install slapd failed: {proc.stderr.strip()[-300:]}"
        finally:
            if ours:
                policy.unlink()
    if os.access(SLAPD, os.X_OK) and os.access(SLAPADD, os.X_OK):
        return SLAPD, ""
    return None, f"slapd installed but {SLAPD} or {SLAPADD} is missing"


def ssha(password: str) -> str:
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def directory_ldif(users: dict[str, str]) -> str:
    entries = [f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n",
               f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: scientists\n"]
    for uid, password in users.items():
        entries.append(f"dn: uid={uid},{PEOPLE_DN}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid.title()}\n"
                       f"sn: {uid.title()}\nuserPassword: {ssha(password)}\n")
    return "\n".join(entries)


class SlapdProcess:
    """One slapd on 127.0.0.1 (LDAP on `port`; LDAPS on `tls_port` with a Pki), its data under `workdir`."""

    def __init__(self, workdir: Path, pki: Pki | None = None, users: dict[str, str] = USERS) -> None:
        self.workdir = workdir
        self.pki = pki
        self.users = users
        self.port = free_port()
        self.tls_port = free_port() if pki is not None else None
        self.ca_file = workdir / "ca.pem"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        lines = [f"include {SCHEMAS}/{name}.schema" for name in ("core", "cosine", "inetorgperson")]
        if self.pki is not None:
            cert, key = self.pki.files(self.workdir, "slapd", "localhost", "127.0.0.1")
            self.ca_file.write_text(self.pki.ca_pem)
            lines += [f"TLSCertificateFile {cert}", f"TLSCertificateKeyFile {key}"]
        lines += [f"modulepath {MODULES}", "moduleload back_mdb",
                  f"pidfile {self.workdir / 'slapd.pid'}", f"argsfile {self.workdir / 'slapd.args'}",
                  "database mdb", "maxsize 16777216", f'suffix "{BASE_DN}"', f'rootdn "cn=admin,{BASE_DN}"',
                  f"directory {data}"]
        conf = self.workdir / "slapd.conf"
        conf.write_text("\n".join(lines) + "\n")
        ldif = self.workdir / "directory.ldif"
        ldif.write_text(directory_ldif(self.users))
        proc = subprocess.run([SLAPADD, "-f", str(conf), "-l", str(ldif)], capture_output=True, text=True,
                              timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"slapadd failed: {proc.stderr.strip()[-500:]}")
        return conf

    def start(self) -> None:
        conf = self._write_config()
        urls = f"ldap://127.0.0.1:{self.port}/"
        if self.tls_port is not None:
            urls += f" ldaps://127.0.0.1:{self.tls_port}/"
        log = open(self.workdir / "slapd.log", "ab")  # noqa: SIM115 - handed to the child
        # -d 0: in the foreground (it does not fork), so the pid is ours to stop
        self.proc = subprocess.Popen([SLAPD, "-f", str(conf), "-h", urls, "-d", "0"], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        try:
            for port in (self.port, self.tls_port):
                if port is not None:
                    wait_port(port, max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"slapd did not listen: {self.log_tail()}") from None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def log_tail(self) -> str:
        try:
            return (self.workdir / "slapd.log").read_text(errors="replace")[-500:]
        except OSError:
            return ""


async def close_kept_connections() -> None:
    """Close the LDAP connections the gateway kept when the test ends (its nursery is cancelled)."""
    try:
        await trio.sleep_forever()
    finally:
        current_pools().clear()


@pytest.fixture(scope="module", name="slapd")
def slapd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdProcess]:
    """`slapd`: a real slapd (Debian's) with the test directory, for a module's tests; they skip where there is
    none. (Imported by the modules that use it, as `slapd_fixture`.)"""
    path, why = find_slapd()
    if path is None:
        pytest.skip(why)
    server = SlapdProcess(tmp_path_factory.mktemp("slapd"), Pki())
    server.start()
    try:
        yield server
    finally:
        server.stop()
