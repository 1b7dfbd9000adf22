"""The admin channel over tcp with CURVE (README: CLI, "Admin from another host"; gateway.bus.curve).

ZeroMQ's own way: the root's ROUTER is a CURVE server (RFC 26 CurveZMQ, zmq_curve(7): ZMQ_CURVE_SERVER with the
key pair of gateway.admin_curve.secret_key_file), its clients let in by a ZAP handler (RFC 27,
inproc://zeromq.zap.01 on the socket's context) that allows mechanism CURVE and a client key found in a *.key file of
admin_curve.authorized_keys (pyzmq's zmq.auth configure_curve(location=DIR) reads the same files), reading the
directory at each handshake as sshd reads authorized_keys at each connection. The client tells a refused handshake
(ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: the ZAP handler's 400; HANDSHAKE_FAILED_NO_DETAIL/PROTOCOL: the server could
not decrypt the HELLO, a wrong server key) from a silent endpoint with a socket monitor (zmq_socket_monitor(3)).
The end-to-end tests run a real root (`gateway start`) with its admin on tcp://127.0.0.1:PORT.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zmq
from test_shared_state import ENV, Gateway, config, free_port, route
from zmq.utils import z85

from gateway import cli
from gateway.bus.admin_client import AdminRefused, admin_call
from gateway.bus.curve import ClientKeys, ZapHandler, client_keys, read_certificate, read_key_pair
from gateway.config.schema import AdminCurve, GatewaySettings
from gateway.node.admin import curve_changes
from gateway.node.control import ADMIN_TIMEOUT_S

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "scripts" / "ops"
# The admin calls' timeout in the "at once" tests: a refusal that waited for an answer would take it; one said at
# once is held to half of it (milliseconds, a few seconds on a busy host)
CALL_TIMEOUT_S = 10.0
AT_ONCE_S = CALL_TIMEOUT_S / 2


def make_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """`gateway curve-keys DIR NAME`, in this process: (NAME.key, NAME.key_secret)."""
    assert cli.main(["curve-keys", str(directory), name]) == 0
    return directory / f"{name}.key", directory / f"{name}.key_secret"


class CurveGateway(Gateway):
    """A supervised gateway whose admin endpoint is tcp with CURVE; the tests' own calls go as the `ops` client."""

    def __init__(self, workdir: Path, doc: dict, keys: ClientKeys) -> None:
        super().__init__(workdir, doc, workers=1)
        self.endpoint = doc["gateway"]["admin"]
        self.keys = keys

    def admin(self, cmd: str, **args: object) -> object:
        reply = admin_call(self.endpoint, cmd, dict(args) or None, timeout=5.0, curve=self.keys)
        assert reply.ok, reply
        return reply.result


@pytest.fixture(scope="module")
def curve_gw(tmp_path_factory):
    """A gateway on tcp://127.0.0.1:PORT with CURVE: server keys in keys/, client `ops` authorized, `stranger` not."""
    work = tmp_path_factory.mktemp("curve")
    server_public, server_secret = make_keys(work / "keys", "server")
    ops_public, ops_secret = make_keys(work / "clients", "ops")
    make_keys(work / "clients", "stranger")
    (work / "authorized").mkdir()
    shutil.copy(ops_public, work / "authorized" / "ops.key")
    target = f"127.0.0.1:{free_port()}"
    doc = config(free_port(), [{"name": "s", "url": "http://up"}], [route("s", "s")],
                 upstreams=[{"name": "up", "targets": [{"target": target}]}])
    doc["gateway"]["admin"] = f"tcp://127.0.0.1:{free_port()}"
    doc["gateway"]["admin_curve"] = {"secret_key_file": str(server_secret), "authorized_keys": str(work / "authorized")}
    gw = CurveGateway(work, doc, client_keys(str(server_public), str(ops_secret)))
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


def cli_as(gw: CurveGateway, client: str, *args: str, server: str = "keys/server.key") -> subprocess.CompletedProcess:
    """`gateway ARGS --admin tcp://... --curve-server-key SERVER --curve-client-key clients/CLIENT.key_secret`."""
    return gw.cli(*args, "--admin", gw.endpoint, "--curve-server-key", str(gw.dir / server),
                  "--curve-client-key", str(gw.dir / "clients" / f"{client}.key_secret"), timeout=30)


def targets(gw: CurveGateway) -> dict[str, dict]:
    return {t["key"]: t for t in gw.admin("targets", action="list")}  # type: ignore[union-attr]


# --- end to end --------------------------------------------------------------------------------------------------


def test_an_authorized_client_gets_status_reload_and_targets(curve_gw):
    """zmq_curve(7): a client with the server's public key and a key pair the ZAP handler allows (RFC 27, status
    200) talks to the admin channel as an ipc client does: `gateway status`, `reload`, the keeper's `targets`."""
    status = cli_as(curve_gw, "ops", "status")
    assert status.returncode == 0 and "worker-1" in status.stdout, status.stderr
    reload = cli_as(curve_gw, "ops", "reload")
    assert reload.returncode == 0 and "generation 2 serving" in reload.stdout, reload.stderr
    assert [t["key"].split("|")[0] for t in curve_gw.admin("targets", action="list")] == ["up"]  # type: ignore[union-attr]


def test_an_unknown_client_key_is_refused_at_once_and_nothing_is_applied(curve_gw):
    """RFC 27: the ZAP handler answers 400 for a key authorized_keys does not hold; the client's monitor reports
    ZMQ_EVENT_HANDSHAKE_FAILED_AUTH (zmq_socket_monitor(3)) within milliseconds, not a timeout's "no answer", and the
    request it queued never reaches the gateway."""
    (key,) = targets(curve_gw)
    stranger = client_keys(str(curve_gw.dir / "keys" / "server.key"),
                           str(curve_gw.dir / "clients" / "stranger.key_secret"))
    started = time.monotonic()
    with pytest.raises(AdminRefused) as refused:
        admin_call(curve_gw.endpoint, "targets", {"action": "drain", "target": key}, timeout=CALL_TIMEOUT_S,
                   curve=stranger)
    took = time.monotonic() - started
    assert took < AT_ONCE_S, f"the refusal took {took:.1f}s"
    public = read_certificate(str(curve_gw.dir / "clients" / "stranger.key"))[0].decode()
    assert str(refused.value) == (f"the gateway at {curve_gw.endpoint} refused this client key (its public key "
                                  f"{public} is not in admin_curve.authorized_keys)")
    out = cli_as(curve_gw, "stranger", "admin", "targets", "drain", f"target={key}")
    assert out.returncode == 1 and out.stderr == f"gateway: {refused.value}\n"
    assert targets(curve_gw)[key]["drained"] is False


def test_a_refused_key_is_logged_once_a_minute_with_its_key_and_address(curve_gw):
    """The ZAP handler logs a refusal at warning with the key's Z85 and the peer's address (RFC 27's address
    frame), once a minute per key: a client retrying in a loop does not flood the log. (The line is written before
    the refusal is sent.)"""
    _, secret = make_keys(curve_gw.dir / "clients", "logged")
    keys = client_keys(str(curve_gw.dir / "keys" / "server.key"), str(secret))
    for _ in range(3):
        with pytest.raises(AdminRefused):
            admin_call(curve_gw.endpoint, "status", None, timeout=5.0, curve=keys)
    lines = [line for line in curve_gw.log().splitlines() if keys.client.public.decode() in line]
    assert len(lines) == 1 and " WARNING " in lines[0] and "from 127.0.0.1" in lines[0], lines


def test_a_wrong_server_key_gets_its_message(curve_gw):
    """CurveZMQ (RFC 26): a HELLO boxed for another server key cannot be opened; the server drops the connection
    and the client's monitor reports HANDSHAKE_FAILED_NO_DETAIL (PROTOCOL for a mechanism mismatch): said at once,
    naming the server key as the likely fault."""
    clients = curve_gw.dir / "clients"
    wrong = client_keys(str(clients / "stranger.key"), str(clients / "ops.key_secret"))
    started = time.monotonic()
    with pytest.raises(AdminRefused):
        admin_call(curve_gw.endpoint, "status", None, timeout=CALL_TIMEOUT_S, curve=wrong)
    took = time.monotonic() - started
    assert took < AT_ONCE_S, f"the failed handshake took {took:.1f}s"
    out = cli_as(curve_gw, "ops", "status", server="clients/stranger.key")
    public = wrong.server.decode()
    assert out.returncode == 1 and out.stderr == (
        f"gateway: the CURVE handshake with {curve_gw.endpoint} failed, likely a wrong server key: --curve-server-key "
        f"(public key {public}) must be the gateway's admin_curve.secret_key_file public key (or the endpoint is no "
        "CURVE admin endpoint)\n")


def test_a_key_copied_into_authorized_keys_works_without_a_reload_and_one_removed_stops(curve_gw):
    """sshd reads authorized_keys at each connection (sshd(8) AUTHORIZED_KEYS FILE FORMAT); the ZAP handler reads
    the directory at each handshake: a client's NAME.key copied in is let in at its next connection, one removed is
    refused at its next, with no reload."""
    public, secret = make_keys(curve_gw.dir / "clients", "newcomer")
    keys = client_keys(str(curve_gw.dir / "keys" / "server.key"), str(secret))
    with pytest.raises(AdminRefused):
        admin_call(curve_gw.endpoint, "status", None, timeout=5.0, curve=keys)
    shutil.copy(public, curve_gw.dir / "authorized" / "newcomer.key")
    assert admin_call(curve_gw.endpoint, "status", None, timeout=5.0, curve=keys).ok
    os.unlink(curve_gw.dir / "authorized" / "newcomer.key")
    with pytest.raises(AdminRefused):
        admin_call(curve_gw.endpoint, "status", None, timeout=5.0, curve=keys)


def test_a_plain_zmq_client_gets_nothing_and_the_gateway_keeps_serving(curve_gw):
    """A client without CURVE (ZeroMQ's NULL mechanism) fails the handshake (RFC 23: the mechanisms must match)
    and reaches neither the ZAP handler nor the admin server: no answer; the gateway goes on serving."""
    before = curve_gw.admin("status")["pid"]  # type: ignore[index]
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.linger, sock.rcvtimeo = 0, 500
    try:
        sock.connect(curve_gw.endpoint)
        sock.send(b'{"v": 1, "cmd": "stop", "args": {}}')
        with pytest.raises(zmq.Again):
            sock.recv()
    finally:
        sock.close()
    assert curve_gw.admin("status")["pid"] == before  # type: ignore[index]


def test_the_ops_scripts_take_curve_keys_for_a_tcp_endpoint(curve_gw):
    """scripts/ops (plain pyzmq, README: CLI) reach a tcp endpoint with --curve-server-key / --curve-client-key, and
    say at once that a tcp endpoint needs them."""
    args = [sys.executable, str(OPS / "drain-target"), "--list", "--admin", curve_gw.endpoint]
    keys = ["--curve-server-key", str(curve_gw.dir / "keys" / "server.key"),
            "--curve-client-key", str(curve_gw.dir / "clients" / "ops.key_secret")]
    listed = subprocess.run([*args, *keys], env=ENV, capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and "up|127.0.0.1:" in listed.stdout, listed.stderr
    bare = subprocess.run(args, env={k: v for k, v in ENV.items() if not k.startswith("GATEWAY_ADMIN")},
                          capture_output=True, text=True, timeout=30)
    assert bare.returncode == 1 and "tcp admin endpoints need --curve-server-key and --curve-client-key" in bare.stderr


# --- the CLI without a gateway -------------------------------------------------------------------------------------


def test_a_tcp_endpoint_without_keys_is_refused_at_once(monkeypatch, capsys):
    """No CURVE keys, no handshake: the CLI says what it needs before it connects (exit 1), not a timeout later."""
    for name in ("GATEWAY_ADMIN_SERVER_KEY", "GATEWAY_ADMIN_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    cli.parser.cache_clear()  # (its defaults are read from the environment)
    try:
        started = time.monotonic()
        assert cli.main(["status", "--admin", f"tcp://127.0.0.1:{free_port()}"]) == 1
        took = time.monotonic() - started
        # (milliseconds, a few seconds on a busy host; a CLI that tried the endpoint waits out ADMIN_TIMEOUT_S, 5 s)
        assert took < ADMIN_TIMEOUT_S / 2, f"the refusal took {took:.1f}s"
    finally:
        cli.parser.cache_clear()
    assert capsys.readouterr().err.startswith(
        "gateway: tcp admin endpoints need --curve-server-key and --curve-client-key")


def test_the_server_key_comes_from_the_configs_secret_key_file(tmp_path):
    """With --config naming a tcp admin endpoint, the server's key is the public half of its
    admin_curve.secret_key_file when this user can read it: only --curve-client-key is needed."""
    from gateway.node.control import CurveFiles, curve_keys

    server_public, server_secret = make_keys(tmp_path / "keys", "server")
    _, client_secret = make_keys(tmp_path / "keys", "ops")
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"admin": "tcp://127.0.0.1:1", "admin_curve": {
        "secret_key_file": str(server_secret), "authorized_keys": str(tmp_path)}}}))
    keys = curve_keys(CurveFiles(None, str(client_secret)), str(path))
    assert keys.server == read_certificate(str(server_public))[0]


def test_curve_keys_writes_a_usable_pair_and_never_replaces_one(tmp_path, capsys):
    """`gateway curve-keys DIR NAME` writes zmq.auth.create_certificates' NAME.key (0644) and NAME.key_secret (0600),
    a matching pair (zmq_curve_public), prints the public key and where each goes, and refuses to overwrite."""
    assert cli.main(["curve-keys", str(tmp_path / "k"), "ops"]) == 0
    public_file, secret_file = tmp_path / "k" / "ops.key", tmp_path / "k" / "ops.key_secret"
    assert stat.S_IMODE(public_file.stat().st_mode) == 0o644 and stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    pair = read_key_pair(str(secret_file))
    assert read_certificate(str(public_file)) == (pair.public, None)
    printed = capsys.readouterr().out
    assert printed.startswith(f"public key {pair.public.decode()}\n") and "authorized_keys" in printed
    before = secret_file.read_bytes()
    assert cli.main(["curve-keys", str(tmp_path / "k"), "ops"]) == 1
    assert "ops.key exists; it is not replaced" in capsys.readouterr().err
    assert secret_file.read_bytes() == before and sorted(os.listdir(tmp_path / "k")) == ["ops.key", "ops.key_secret"]


# --- check-config --------------------------------------------------------------------------------------------------


@pytest.fixture
def curve_files(tmp_path):
    """A server pair in keys/ and an authorized/ directory holding a client's public key; the cwd is tmp_path."""
    make_keys(tmp_path / "keys", "server")
    public, _ = make_keys(tmp_path / "clients", "ops")
    (tmp_path / "authorized").mkdir()
    shutil.copy(public, tmp_path / "authorized" / "ops.key")
    return tmp_path


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], admin: str = "tcp://127.0.0.1:5555",
          curve: dict | None = None) -> tuple[int, str]:
    """check-config's exit status and its output (stderr), for a file whose gateway.admin and admin_curve are these."""
    gateway: dict = {"admin": admin, "status_listen": None, "pid_file": str(tmp_path / "run" / "gateway.pid"),
                     "log_file": str(tmp_path / "run" / "gateway.log")}
    if curve is not None:
        gateway["admin_curve"] = curve
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"_format_version": "3.0", "gateway": gateway, "services": []}))
    code = cli.check_config(str(path))
    out = capsys.readouterr()
    return code, out.err or out.out


def valid(tmp_path: Path) -> dict:
    return {"secret_key_file": str(tmp_path / "keys" / "server.key_secret"),
            "authorized_keys": str(tmp_path / "authorized")}


def test_check_config_accepts_a_tcp_endpoint_with_curve_keys(curve_files, capsys):
    code, out = check(curve_files, capsys, curve=valid(curve_files))
    assert code == 0, out


def test_check_config_refuses_a_tcp_endpoint_without_admin_curve(curve_files, capsys):
    """A tcp admin endpoint without CURVE would let anyone who reaches the port stop the gateway: refused, naming
    gateway.admin_curve and `gateway curve-keys`."""
    code, out = check(curve_files, capsys)
    assert code == 2 and out.endswith(
        'gateway.admin: "tcp://127.0.0.1:5555" is a tcp endpoint, which needs CURVE keys to keep others off the '
        "admin channel: set gateway.admin_curve (secret_key_file, authorized_keys; `gateway curve-keys DIR NAME` "
        "writes key files), or use an ipc:// path (e.g. ipc://run/admin.sock)\n"), out


def test_check_config_refuses_admin_curve_beside_an_ipc_endpoint(curve_files, capsys):
    code, out = check(curve_files, capsys, admin="ipc://run/admin.sock", curve=valid(curve_files))
    assert code == 2 and "gateway.admin_curve: CURVE keys are for a tcp:// admin endpoint" in out, out


@pytest.mark.parametrize(("secret", "expected"), [
    ("keys/missing.key_secret", "admin_curve.secret_key_file: cannot read {d}/keys/missing.key_secret: No such file "
                                "or directory"),
    ("keys", "admin_curve.secret_key_file: {d}/keys is not a file"),
    ("gw.yaml", 'admin_curve.secret_key_file: {d}/gw.yaml is not a ZeroMQ certificate (a `public-key = "..."` line '
                "of 40 Z85 characters"),
    ("keys/server.key", "admin_curve.secret_key_file: {d}/keys/server.key holds no secret key (it is a public "
                        "certificate, NAME.key); give the NAME.key_secret file"),
])
def test_check_config_refuses_a_secret_key_file_it_cannot_use(curve_files, capsys, secret, expected):
    code, out = check(curve_files, capsys, curve={**valid(curve_files), "secret_key_file": str(curve_files / secret)})
    assert code == 2 and f"gateway.{expected.format(d=curve_files)}" in out, out


def test_check_config_refuses_a_secret_key_file_others_may_read(curve_files, capsys):
    """As ssh refuses a private key others may read (ssh's sshkey_perm_ok: "Permissions 0644 for '%s' are too
    open")."""
    secret = curve_files / "keys" / "server.key_secret"
    secret.chmod(0o640)
    code, out = check(curve_files, capsys, curve=valid(curve_files))
    assert code == 2 and f"gateway.admin_curve.secret_key_file: permissions 0640 for {secret} are too open" in out, out


@pytest.mark.parametrize(("setup", "expected"), [
    ("missing", "cannot read {d}/authorized: No such file or directory"),
    ("file", "{d}/authorized is not a directory"),
    ("empty", "{d}/authorized holds no client public key (a NAME.key file, as `gateway curve-keys DIR NAME` writes), "
              "so no client could connect"),
    ("junk", "{d}/authorized/bad.key is not a ZeroMQ certificate"),
])
def test_check_config_refuses_authorized_keys_no_client_could_use(curve_files, capsys, setup, expected):
    authorized = curve_files / "authorized"
    shutil.rmtree(authorized)
    if setup == "file":
        authorized.write_text("")
    elif setup in ("empty", "junk"):
        authorized.mkdir()
        if setup == "junk":
            (authorized / "bad.key").write_text("not a certificate\n")
    code, out = check(curve_files, capsys, curve=valid(curve_files))
    assert code == 2 and f"gateway.admin_curve.authorized_keys: {expected.format(d=curve_files)}" in out, out


def test_check_config_refuses_admin_curve_with_a_libzmq_without_curve(curve_files, capsys, monkeypatch):
    monkeypatch.setattr(zmq, "has", lambda capability: capability != "curve")
    code, out = check(curve_files, capsys, curve=valid(curve_files))
    assert code == 2 and "gateway.admin_curve: this pyzmq's libzmq" in out and "built without CURVE" in out, out


# --- units ---------------------------------------------------------------------------------------------------------


def test_a_reload_names_a_changed_admin_curve_field_as_a_start_setting():
    """As gateway.admin (README: "a reload that changes one says so"): the root keeps its CURVE keys until the next
    start, and the reload names each field it left."""
    def settings(**curve: str) -> GatewaySettings:
        return GatewaySettings(admin="tcp://127.0.0.1:1", admin_curve=AdminCurve(**curve) if curve else None)

    running = settings(secret_key_file="a", authorized_keys="d")
    assert curve_changes(running, settings(secret_key_file="a", authorized_keys="d")) == []
    assert curve_changes(running, settings(secret_key_file="a", authorized_keys="e")) == [
        "admin_curve.authorized_keys"]
    assert curve_changes(running, settings()) == ["admin_curve"]


def test_the_zap_handler_lets_in_curve_clients_whose_key_is_authorized_only(tmp_path):
    """RFC 27's reply: 200 with the key's NAME as user id for an authorized CURVE key; 400 for another key, another
    mechanism, or a request of another ZAP version."""
    public, _ = make_keys(tmp_path / "authorized", "ops")
    known = read_certificate(str(public))[0]
    ctx = zmq.Context()
    handler = ZapHandler(ctx, str(tmp_path / "authorized"))
    try:
        def request(mechanism: bytes, credentials: list[bytes], version: bytes = b"1.0") -> list[bytes]:
            reply = handler.answer([b"id", b"", version, b"7", b"gateway.admin", b"10.0.0.1", b"", mechanism,
                                    *credentials])
            assert reply is not None
            return reply[4:7]

        assert request(b"CURVE", [z85.decode(known)]) == [b"200", b"OK", b"ops"]
        assert request(b"CURVE", [bytes(32)])[0] == b"400"
        assert request(b"PLAIN", [b"user", b"pass"])[0] == b"400"
        assert request(b"CURVE", [z85.decode(known)], version=b"2.0")[0] == b"400"
    finally:
        handler.close()
        ctx.term()
