"""The admin channel's review (what bad input must get: one clear error, never a traceback, never a silent wrong
action): ipc paths that name a file, arguments that are not UTF-8, arguments a command does not take, and changes
whose client gave up before their turn came."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio
import zmq
from test_admin_channel import serving_admin
from test_shared_state import ENV, ROOT, Backends, Gateway, config, free_port, key, route

from gateway.bus import protocol as p
from gateway.bus.admin_client import admin_call
from gateway.bus.admin_protocol import AdminRequest, argument_problem
from gateway.bus.admin_server import AdminCommandError, bind_admin
from gateway.bus.zmq_trio import TrioSocket
from gateway.cli import SettingError, main
from gateway.config import parse_config
from gateway.keeper.process import serve_keeper
from gateway.keeper.state import Keeper
from gateway.node.root import KEEPER_ANSWER_S, Node, load_validated

OPS = ROOT / "scripts" / "ops"
MINIMAL = json.dumps(config(9, [{"name": "s", "url": "http://127.0.0.1:9"}], [route("s", "s")]))


def config_file(tmp_path: Path, **gateway: object) -> Path:
    """A valid config in `tmp_path` (never started), its `gateway:` block updated with `gateway`."""
    doc = json.loads(MINIMAL)
    doc["gateway"].update(gateway)
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(doc))
    return path


def precious(tmp_path: Path, name: str = "precious.txt") -> Path:
    path = tmp_path / name
    path.write_text("operator data\n")
    return path


# ---- 1. an ipc path naming what is not a socket is refused, never deleted ------------------------------------------


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_bind_admin_refuses_a_path_that_is_not_a_socket_and_leaves_it(tmp_path, kind):
    """nginx never removes what a listen path names at start: bind() fails (src/core/ngx_connection.c:604-626,
    "bind() to unix:... failed"); it deletes a unix socket file only as it closes its own listener (1152-1163).
    bind_admin unlinked whatever no process listened on, and ZeroMQ's ipc bind unlinks too."""
    target = precious(tmp_path)
    path = target if kind == "file" else tmp_path / "admin.sock"
    if kind == "symlink":
        path.symlink_to(target)
    ctx = zmq.Context()
    try:
        with pytest.raises(ValueError) as refused:
            bind_admin(ctx, f"ipc://{path}")
    finally:
        ctx.term()
    assert str(refused.value) == f"{path} exists and is not a socket; choose another path"
    assert path.is_symlink() == (kind == "symlink") and target.read_text() == "operator data\n"


def test_start_refuses_a_gateway_admin_path_naming_a_file_and_keeps_the_file(tmp_path):
    """`gateway start` with gateway.admin naming a data file replaced it with its socket (and removed that at stop);
    it now fails before it forks, naming the setting, the path and what to do (exit 1, as for a file it cannot
    write), as nginx fails a listen it cannot bind (ngx_connection.c:604-626)."""
    kept = precious(tmp_path)
    path = config_file(tmp_path, admin=f"ipc://{kept}", pid_file=f"{tmp_path}/run/gateway.pid",
                       listen=f"127.0.0.1:{free_port()}")
    try:
        out = subprocess.run([sys.executable, "-m", "gateway", "start", "--config", str(path)], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=30)
    finally:  # (one that started: stopped, as `gateway stop` does)
        subprocess.run([sys.executable, "-m", "gateway", "stop", "--config", str(path), "--timeout", "5"],
                       cwd=tmp_path, env=ENV, capture_output=True, timeout=30)
    assert kept.read_text() == "operator data\n"
    assert (out.returncode, out.stderr) == (1, f"gateway: cannot start: {path}: gateway.admin: {kept} exists and is "
                                               "not a socket; choose another path\n")


@pytest.mark.parametrize("setting", ["admin", "bus", "bus-pub"])
def test_check_config_refuses_an_admin_or_bus_path_naming_a_file(tmp_path, capsys, setting):
    """check-config makes the checks a start makes of its sockets (as `nginx -t` binds nothing but checks its
    files): a gateway.admin or gateway.bus path, or the bus's PUB twin beside it, naming a file is refused."""
    kept = precious(tmp_path, "bus-pub.sock" if setting == "bus-pub" else "precious.txt")
    endpoint = f"ipc://{tmp_path}/bus.sock" if setting == "bus-pub" else f"ipc://{kept}"
    name = setting.split("-")[0]
    path = config_file(tmp_path, **{name: endpoint})
    assert main(["check-config", str(path)]) == 2
    line = f"{path}: gateway.{name}: {kept} exists and is not a socket; choose another path"
    assert capsys.readouterr().err == f"{line}\n"
    assert kept.read_text() == "operator data\n"


@pytest.mark.parametrize("which", ["bus", "pub"])
async def test_the_keeper_refuses_a_bus_path_naming_a_file_and_leaves_it(tmp_path, which):
    """The keeper unlinked whatever its bus paths named before binding; now a file there stops its start with the
    one line its supervisor shows (SettingError), naming gateway.bus, the path and what to do."""
    kept = precious(tmp_path, "bus.sock" if which == "bus" else "bus-pub.sock")
    keeper = Keeper(parse_config(MINIMAL), workers=1)
    with pytest.raises(SettingError) as refused, trio.fail_after(5):  # (one that binds serves until cancelled)
        await serve_keeper(keeper, f"ipc://{tmp_path}/bus.sock")
    assert f"gateway.bus: cannot bind ipc://{kept}" in str(refused.value.strerror)
    assert str(refused.value.strerror).endswith(f"{kept} exists and is not a socket; choose another path")
    assert kept.read_text() == "operator data\n"


# ---- 2. an argument that is not UTF-8: one line naming it, no traceback -----------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[str]:
    """A Unix socket that accepts connections (so the CLI goes as far as sending): its ipc:// endpoint."""
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        sock.listen()
        yield f"ipc://{path}"


@pytest.mark.parametrize(("words", "line"), [
    (["targets", "drain", "target=up|\udcff"],
     "the argument target=up|\\xff is not UTF-8 text; the admin channel's JSON cannot carry it: give it as UTF-8 text"),
    (["reload", "config=/tmp/caf\udce9.yaml"],
     "the argument config=/tmp/caf\\xe9.yaml is not UTF-8 text; the admin channel's JSON cannot carry it: rename the "
     "file"),
])
def test_a_non_utf8_admin_argument_gets_one_line_naming_it(listener, capsys, words, line):
    """A shell passes a Latin-1 file name or target as bytes that are not UTF-8 (Python holds them as surrogate
    escapes), which JSON cannot carry: the encoder's UnicodeEncodeError escaped `gateway admin` as a traceback."""
    assert main(["admin", "--admin", listener, *words]) == 1
    assert capsys.readouterr().err == f"gateway: {line}\n"


def test_gateway_reload_from_a_non_utf8_file_name_gets_one_line_naming_it(tmp_path, listener, capsys):
    """`gateway reload --config F` checks F (it is valid), then sends its path: a traceback after the check had
    said the file is good; now exit 1, as a refused reload that is not the config's fault."""
    name = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.yaml"))
    Path(name).write_text(MINIMAL)
    assert main(["reload", "--admin", listener, "--config", name]) == 1
    assert capsys.readouterr().err == (f"gateway: the argument config={tmp_path}/caf\\xe9.yaml is not UTF-8 text; "
                                       "the admin channel's JSON cannot carry it: rename the file\n")


# ---- 3. an argument a command does not take is refused, never ignored -------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Node:
    """A root that has loaded its config, is past its start and runs nothing, for its handle_admin."""
    path = config_file(tmp_path)
    made = Node(str(path), None)
    made.config = load_validated(str(path))[1]
    made.run_dir = str(tmp_path)  # (where a reload would write its snapshot, were it not refused)
    made.root = object()  # type: ignore[assignment]  # (a started root's: else a command is answered "starting")
    made._start_over.set()
    return made


async def test_reload_refuses_an_argument_it_does_not_take(node):
    """`gateway admin reload conifg=NEW` (config= misspelt) reloaded the file the gateway runs from and said ok. As
    Kong's schemas refuse an unknown field ("unknown field", kong/db/schema/init.lua:1123) and the protocol an
    unknown key, the command refuses it, naming it and what it takes."""
    with pytest.raises(AdminCommandError) as refused:
        await node.handle_admin(AdminRequest("reload", {"conifg": "/tmp/new.yaml"}))
    assert str(refused.value) == "unknown argument 'conifg' for reload; it takes config=..., KONG_*=..."
    assert node.generation == 0


def test_reload_still_takes_kong_variables_and_a_command_without_arguments_takes_none():
    """`gateway reload` sends its environment's KONG_<KEY> variables (kong/cmd/reload.lua loads kong.conf in its own
    process); `status` takes nothing, so `status verbose` is refused rather than ignored."""
    assert argument_problem("reload", {"config": "/x.yaml", "KONG_HEADERS": "off", "KONG_NOT_A_KEY": "1"}) is None
    assert argument_problem("status", {"action": "verbose"}) == "unknown argument 'action' for status; it takes none"


async def test_reload_with_an_empty_config_is_refused(node):
    """`gateway admin reload config=` reloaded the running file (the empty path was taken for none)."""
    with pytest.raises(AdminCommandError) as refused:
        await node.handle_admin(AdminRequest("reload", {"config": ""}))
    assert str(refused.value) == ("reload: config= is empty; give the config file's path, or leave config= out to "
                                  "re-read the file the gateway runs from")


@pytest.mark.parametrize(("cmd", "args", "error"), [
    ("proxy-cache", {"action": "flush", "plugn": "p1"},
     "unknown argument 'plugn' for proxy-cache flush; it takes action=..., plugin=..."),
    ("targets", {"target": "up|127.0.0.1:1", "weight": "5"},  # (no action: a listing)
     "unknown argument 'target' for targets list; it takes action=..."),
])
def test_a_keeper_action_refuses_an_argument_it_does_not_take(cmd, args, error):
    """`proxy-cache action=flush plugn=ID` flushed every plugin's dictionary (Kong's DELETE /proxy-cache), not ID's;
    `targets target=K weight=5` (the action forgotten) listed the targets and said ok."""
    keeper = Keeper(parse_config(MINIMAL), workers=1)
    with pytest.raises(ValueError) as refused:
        keeper.admin(cmd, args, 0.0, 0.0)
    assert str(refused.value) == error


@pytest.mark.parametrize(("words", "error"), [
    (["targets", "drain", "target=A", "target=B"],
     "admin: target= is given twice ('A' and 'B'): a command takes each argument once; send one command for each "
     "value"),
    (["breakers", "open", "reset", "target=A"],
     "admin: two actions, 'open' and 'reset' (a bare word is the action): a command does one; send one command for "
     "each"),
    (["limits", "=x"], "admin: '=x' has no KEY before its '='; write KEY=VALUE"),
])
def test_a_repeated_or_nameless_cli_argument_is_a_usage_error(capsys, words, error):
    """`gateway admin targets drain target=A target=B` drained B alone and exited 0 (the last value won); two bare
    action words did the last. A usage error (exit 2), as argparse's own."""
    with pytest.raises(SystemExit) as exited:
        main(["admin", "--admin", "ipc:///nonexistent/admin.sock", *words])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(f"gateway: error: {error}\n")


# ---- 4. a change its client gave up on is never carried out later ----------------------------------------------


@pytest.fixture
async def server(tmp_path):
    """serve_admin on a real ROUTER with a handler whose changes wait for `release`; a DEALER to it. Yields
    (dealer, release, seen: (cmd, n, timeout_ms) as the handler was given each)."""
    seen: list[tuple[object, ...]] = []
    async with serving_admin(tmp_path, lambda r: seen.append((r.cmd, r.args.get("n"), r.timeout_ms))) as (dealer,
                                                                                                          release):
        yield dealer, release, seen


@pytest.fixture
async def timed_server(tmp_path):
    """`server`'s (dealer, release, seen), and when (trio.current_time()) the handler began each."""
    seen: list[tuple[object, ...]] = []
    began: list[float] = []

    def note(r: AdminRequest) -> None:
        seen.append((r.cmd, r.args.get("n"), r.timeout_ms))
        began.append(trio.current_time())

    async with serving_admin(tmp_path, note) as (dealer, release):
        yield dealer, release, seen, began


async def send(sock: TrioSocket, cmd: str, timeout_ms: int | None = None, **args: object) -> None:
    request = {"v": 1, "cmd": cmd, "args": args, **({"timeout_ms": timeout_ms} if timeout_ms else {})}
    await sock.send_multipart([b"", json.dumps(request).encode()])


async def reply(sock: TrioSocket) -> dict:
    with trio.fail_after(2):
        return json.loads((await sock.recv_multipart())[-1])


async def test_a_change_still_queued_past_its_clients_timeout_is_refused_not_carried_out(server):
    """README (Admin channel): a command reported unanswered "is never applied later". A drain queued behind a slow
    reload outlived its client's --timeout (exit 1, "no answer") and was carried out when its turn came. The request
    carries its client's timeout; a change whose turn comes past it is refused; one without (an old client) waits."""
    sock, release, seen = server
    await send(sock, "reload", n=1)
    await send(sock, "targets", 100, action="drain", n=2)
    await send(sock, "targets", None, action="drain", n=3)
    await trio.sleep(0.2)
    release.set()
    assert (await reply(sock))["result"] == 1
    assert (await reply(sock))["error"] == ("not carried out: it waited behind earlier changes past the client's "
                                            "timeout (100 ms); nothing was changed")
    assert (await reply(sock))["result"] == 3
    assert [(cmd, n) for cmd, n, _ in seen] == [("reload", 1), ("targets", 3)]


async def test_a_change_is_handed_what_is_left_of_its_clients_timeout(timed_server):
    """The handler's own deadlines (the keeper's) count from what is left when the change's turn comes, not from
    the whole timeout: the client stopped waiting that long after it sent."""
    sock, release, seen, handed = timed_server
    await send(sock, "reload", n=1)
    sent = trio.current_time()
    await send(sock, "breakers", 2000, action="open", n=2)
    await trio.sleep(0.5)
    release.set()
    assert [(await reply(sock))["result"] for _ in range(2)] == [1, 2]
    waited_ms = (handed[1] - sent) * 1000  # at least what the server counted: it received the change after `sent`
    # 2000 less what it waited: at least the 500 ms before the release (the whole 2000 if it were handed that), at
    # most 300 ms more for its receipt after the send on a busy host; and no less than the test saw it wait
    assert 2000 - waited_ms - 1 <= seen[1][2] <= 1800, (seen, waited_ms)


async def test_a_keeper_command_waits_for_the_keeper_no_longer_than_its_client(node):
    """The root-to-keeper deadline (keeper_link: past it the keeper refuses the command) is the earlier of the root's
    own and its client's: a keeper answer that comes after the client gave up must find the command refused."""
    timeouts = []

    class Keeper:
        async def call(self, cmd, args, timeout):
            timeouts.append(timeout)
            return p.AdminResult(id=1, ok=True, result=[])

    node.keeper = Keeper()
    await node.handle_admin(AdminRequest("targets", {"action": "drain", "target": "t"}, timeout_ms=300))
    await node.handle_admin(AdminRequest("targets", {"action": "drain", "target": "t"}))
    assert timeouts == [0.3, KEEPER_ANSWER_S]


def test_the_cli_client_sends_its_timeout(tmp_path):
    """admin_call (the CLI's, and the tests') sends its timeout as timeout_ms, whole milliseconds rounded down."""
    endpoint = f"ipc://{tmp_path}/admin.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    got = []

    def answer():
        frames = router.recv_multipart()
        got.append(json.loads(frames[-1]))
        router.send_multipart([*frames[:-1], b'{"v": 1, "ok": true, "result": 1}'])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert admin_call(endpoint, "status", None, timeout=2.5).result == 1
    finally:
        thread.join(5)
        router.close(linger=0)
        ctx.term()
    assert got == [{"v": 1, "cmd": "status", "args": {}, "timeout_ms": 2500}]


class _RequestBeforeTimeouts(msgspec.Struct, forbid_unknown_fields=True):
    """AdminRequest as gateways before timeout_ms decoded it."""

    cmd: str
    args: dict[str, object] = {}
    v: int = 1


def test_a_gateway_from_before_timeout_ms_is_asked_again_without_it(tmp_path):
    """A CLI upgraded under a running gateway (`gateway stop` after installing the new version): that gateway
    refuses the request whole for its unknown timeout_ms, so it is asked again as it knows it, and answers."""
    endpoint = f"ipc://{tmp_path}/admin.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    got: list[bytes] = []

    def answer_as_an_older_gateway():
        for _ in range(2):
            if not router.poll(3000):
                return
            frames = router.recv_multipart()
            got.append(frames[-1])
            try:
                request = msgspec.json.decode(frames[-1], type=_RequestBeforeTimeouts)
            except msgspec.ValidationError as e:
                reply = {"v": 1, "ok": False, "error": f"malformed request: {e}"}
            else:
                reply = {"v": 1, "ok": True, "result": request.cmd}
            router.send_multipart([*frames[:-1], json.dumps(reply).encode()])
            if reply["ok"]:
                return

    thread = threading.Thread(target=answer_as_an_older_gateway)
    thread.start()
    try:
        assert admin_call(endpoint, "stop", None, timeout=2.0).result == "stop"
    finally:
        thread.join(5)
        router.close(linger=0)
        ctx.term()
    assert [json.loads(raw).get("timeout_ms") for raw in got] == [2000, None]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """1 worker (and the keeper); upstream `up` of two targets."""
    with Backends("a", "b") as (a, b):
        targets = [{"target": f"127.0.0.1:{x.port}"} for x in (a, b)]
        doc = config(free_port(), [{"name": "s", "url": "http://up"}], [route("s", "s")], [],
                     [{"name": "up", "targets": targets}])
        gw = Gateway(tmp_path_factory.mktemp("adminreview"), doc, workers=1)
        try:
            gw.start()
            yield gw, a
        finally:
            gw.stop()


def test_a_drain_its_script_gave_up_on_behind_a_slow_reload_is_never_applied(gateway, tmp_path):
    """End to end: `scripts/ops/drain-target --timeout 0.3 K` sent while a reload checks a large file (seconds)
    exits 1 ("no answer"), and the target stays undrained after the reload, as the README promises."""
    gw, a = gateway
    ka = key("up", a)
    big = json.loads(gw.config.read_text())
    big["services"] = [{"name": f"s{i}", "url": f"http://127.0.0.1:{1000 + i}",
                        "routes": [{"name": f"r{i}", "paths": [f"/p{i}"]}]} for i in range(12000)]
    big["services"].append({"name": "bad", "url": "http://127.0.0.1:1", "retries": "many"})  # rejected at its end
    big["routes"] = []
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big))
    result: list = []
    reloader = threading.Thread(target=lambda: result.append(admin_call(gw.endpoint, "reload", {"config": str(path)},
                                                                        timeout=20)))
    reloader.start()
    try:
        time.sleep(0.2)
        out = subprocess.run([sys.executable, str(OPS / "drain-target"), "--admin", gw.endpoint, "--timeout", "0.3",
                              ka], cwd=gw.dir, env=ENV, capture_output=True, text=True, timeout=30)
        reloader.join(20)
        assert result and result[0].ok is False, result  # (the reload was still checking: the drain waited)
        assert out.returncode == 1 and "no answer" in out.stderr, (out.returncode, out.stdout, out.stderr)
        assert {t["key"]: t["drained"] for t in gw.admin("targets")}[ka] is False
    finally:
        reloader.join(20)
        gw.admin("targets", action="enable", target=ka)
