"""The admin channel under abuse, on a real supervised gateway, and the ops scripts that use it (scripts/ops/).

Every request that arrives as a well-formed ZeroMQ message, whatever its content (random bytes, broken JSON,
JSON of the wrong shape, unknown commands and actions, arguments of the wrong type, oversized), gets an error reply
(ok false, with a message); nothing crashes: afterwards `gateway status` answers, requests are proxied, and no
process of the tree was replaced. A message over the socket's 1 MiB cap is dropped by ZeroMQ (the peer is
disconnected) without harm. A tcp:// admin endpoint without CURVE keys (gateway.admin_curve) is refused at start.
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import zmq
from test_shared_state import ENV, ROOT, Backends, Gateway, admin_call, config, free_port, http, key, route

import gateway.node.admin as admin_module
from gateway.bus.admin_protocol import AdminRequest
from gateway.bus.admin_server import bind_admin
from gateway.bus.zmq_trio import PUMP_BATCH, PumpedSocket, TrioSocket
from gateway.node.admin import changes_state, serve_admin
from gateway.node.control import render_status
from gateway.node.root import SUPERVISOR_ANSWER_S, Node, load_validated
from supervisor import ChildInfo
from supervisor.core import ChildState
from supervisor.spec import ChildType

OPS = ROOT / "scripts" / "ops"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """1 worker (and the keeper); upstream `up` of two targets behind a circuit breaker."""
    with Backends("a", "b") as (a, b):
        targets = [{"target": f"127.0.0.1:{x.port}"} for x in (a, b)]
        doc = config(free_port(), [{"name": "cb", "url": "http://up"}], [route("cb", "cb")],
                     [{"name": "circuit-breaker", "service": "cb", "config": {}}],
                     [{"name": "up", "targets": targets}])
        gw = Gateway(tmp_path_factory.mktemp("admin"), doc, workers=1)
        try:
            gw.start()
            yield gw, a, b
        finally:
            gw.stop()


def dealer(gw: Gateway) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(gw.endpoint)
    return sock


def error_reply(frame: bytes) -> str:
    reply = json.loads(frame)
    assert reply["v"] == 1 and reply["ok"] is False, reply
    assert isinstance(reply["error"], str) and reply["error"], reply
    return reply["error"]


def tree(gw: Gateway) -> dict[str, tuple[int, int]]:
    """{child id: (pid, restarts)} for the keeper and every worker."""
    children = gw.children()
    out = {"keeper": (children["keeper"]["pid"], children["keeper"]["restarts"])}
    for name, child in children.items():
        if name.startswith("workers@"):
            out |= {w["id"]: (w["pid"], w["restarts"]) for w in child["children"]}
    return out


def still_serving(gw: Gateway, before: dict[str, tuple[int, int]]) -> None:
    status = gw.cli("status", "--config", str(gw.config))
    assert status.returncode == 0 and "keeper" in status.stdout, status.stderr
    assert int((gw.dir / "run" / "gateway.pid").read_text()) == gw.root
    assert tree(gw) == before
    reply = trio.run(http, gw.port, "/cb")
    assert reply.status == 200, reply


def test_admin_socket_is_private(gateway):
    gw, _, _ = gateway
    mode = os.stat(gw.dir / "run" / "admin.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_every_malformed_request_gets_an_error_and_nothing_breaks(gateway):
    gw, a, _ = gateway
    before = tree(gw)
    target = key("up", a)
    rng = random.Random(5)
    garbage = [rng.randbytes(n) for n in (1, 2, 7, 64, 500, 4096, 60000)]
    garbage += [bytes(rng.randrange(32, 127) for _ in range(n)) for n in (3, 40, 300)]  # printable noise
    malformed = [b"{", b"}", b'{"cmd":', b'{"cmd": "status"', b"nul", b"\xff\xfe{}", b'{"cmd": "status"}}',
                 b'{"cmd": "status", "cmd": 1}', b"\x00", b'"', b"[", b"{'cmd': 'status'}", b"NaN"]
    wrong_shape = [[], 1, "status", None, True, {}, {"args": {}}, {"cmd": 5}, {"cmd": None}, {"cmd": ["status"]},
                   {"cmd": "status", "args": []}, {"cmd": "status", "args": "x"}, {"cmd": "status", "args": None},
                   {"v": 2, "cmd": "status"}, {"v": "1", "cmd": "status"}, {"cmd": "status", "extra": 1},
                   {"cmd": "status", "args": {"k": 1}, "id": 7}]
    unknown = [{"cmd": "frobnicate"}, {"cmd": ""}, {"cmd": "STATUS"}, {"cmd": "status "}, {"cmd": "x" * 5000},
               {"cmd": "reload_config"}, {"cmd": "breakers", "args": {"action": "explode"}},
               {"cmd": "limits", "args": {"action": "explode"}}, {"cmd": "targets", "args": {"action": "explode",
                                                                                             "target": target}}]
    bad_args = [{"cmd": "breakers", "args": {"action": "reset"}},
                {"cmd": "breakers", "args": {"action": "open", "target": "nope|1.2.3.4:5"}},
                {"cmd": "breakers", "args": {"action": "open", "target": ["a", "b"]}},
                {"cmd": "breakers", "args": {"action": "reset", "target": {"a": 1}}},
                {"cmd": "breakers", "args": {"action": ["list"]}},
                {"cmd": "limits", "args": {"key": "nope"}},
                {"cmd": "limits", "args": {"key": ["x"]}},
                {"cmd": "limits", "args": {"action": "reset"}},
                {"cmd": "targets", "args": {"action": "drain"}},
                {"cmd": "targets", "args": {"action": "drain", "target": "nope"}},
                {"cmd": "targets", "args": {"action": "drain", "target": [target]}},
                {"cmd": "targets", "args": {"action": "weight", "target": target}},
                {"cmd": "targets", "args": {"action": "weight", "target": target, "weight": "abc"}},
                {"cmd": "targets", "args": {"action": "weight", "target": target, "weight": 70000}},
                {"cmd": "targets", "args": {"action": "weight", "target": target, "weight": -1}},
                {"cmd": "targets", "args": {"action": "weight", "target": target, "weight": [1]}},
                {"cmd": "targets", "args": {"action": "weight", "target": target, "weight": {"w": 1}}},
                {"cmd": "targets", "args": {"action": "weight", "target": target, "weight": 2 ** 70}},
                {"cmd": "breakers", "args": {"action": "open", "target": 2 ** 70}}]
    payloads = garbage + malformed + [json.dumps(x).encode() for x in wrong_shape + unknown + bad_args]
    payloads.append(b'{"cmd": "targets", "args": {"action": "weight", "target": "%s", "weight": 1e400}}'
                    % target.encode())
    payloads.append(json.dumps({"cmd": "status", "args": {"pad": "x" * (70 * 1024)}}).encode())  # > 64 KiB
    sock = dealer(gw)
    try:
        errors = []
        for payload in payloads:
            sock.send_multipart([b"", payload])
            delimiter, reply = sock.recv_multipart()
            assert delimiter == b""
            errors.append(error_reply(reply))
        assert any("too large" in e for e in errors)
        assert any("unknown command 'frobnicate'" in e for e in errors)
        assert any("malformed request" in e for e in errors)
        assert any("unsupported protocol version 2" in e for e in errors)
        assert any("missing argument target" in e for e in errors)
        # empty frames: an empty payload, an empty message behind the delimiter
        for frames in ([b""], [b"", b""], [b"", b"", b""]):
            sock.send_multipart(frames)
            *envelope, reply = sock.recv_multipart()
            assert envelope == frames[:-1]
            error_reply(reply)
        # multi-frame garbage: the reply comes back behind the same envelope
        sock.send_multipart([b"junk-1", b"\x00\xff", b"{not json"])
        assert sock.recv_multipart()[:2] == [b"junk-1", b"\x00\xff"]
    finally:
        sock.close()
    # a DEALER without the empty delimiter frame is answered too (and a good request works)
    bare = dealer(gw)
    try:
        bare.send(b"\x01garbage")
        error_reply(bare.recv())
        bare.send(b'{"cmd": "status"}')
        assert json.loads(bare.recv())["ok"] is True
    finally:
        bare.close()
    # a REQ socket with an empty request
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    try:
        req.connect(gw.endpoint)
        req.send(b"")
        error_reply(req.recv())
    finally:
        req.close()
    print(f"\nadmin fuzz: {len(payloads) + 7} malformed requests, each answered with an error")
    still_serving(gw, before)
    assert {t["key"]: t["drained"] for t in gw.admin("targets")}[target] is False  # type: ignore[union-attr]


def test_a_message_over_the_size_cap_is_dropped_harmlessly(gateway):
    gw, _, _ = gateway
    before = tree(gw)
    sock = dealer(gw)
    sock.setsockopt(zmq.RCVTIMEO, 500)
    try:
        sock.send_multipart([b"", b"x" * (2 << 20)])  # over MAXMSGSIZE (1 MiB): ZeroMQ disconnects the peer
        with pytest.raises(zmq.Again):
            sock.recv_multipart()
    finally:
        sock.close()
    still_serving(gw, before)


def test_a_tcp_admin_endpoint_is_refused_at_start(tmp_path):
    port = free_port()
    doc = config(port, [{"name": "s", "url": "http://127.0.0.1:9"}], [route("s", "s")])
    doc["gateway"]["admin"] = f"tcp://127.0.0.1:{free_port()}"
    gw = Gateway(tmp_path, doc, workers=1)
    try:
        out = gw.cli("start", "--config", str(gw.config), "--workers", "1")
        assert out.returncode != 0
        assert "tcp" in out.stderr and "CURVE" in out.stderr and "ipc://" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr + gw.log()
        assert not (tmp_path / "run" / "gateway.pid").exists()
    finally:
        gw.stop()


def ops(gw: Gateway, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(OPS / script), *args], cwd=gw.dir, env=ENV, capture_output=True,
                          text=True, timeout=30)


def test_ops_scripts_against_a_live_gateway(gateway):
    gw, a, b = gateway
    for script in ("breakers", "drain-target"):
        assert os.access(OPS / script, os.X_OK)
        helped = ops(gw, script, "--help")
        assert helped.returncode == 0 and "--admin" in helped.stdout
        assert len((OPS / script).read_text().splitlines()) <= 65
        assert "gateway" not in {line.split()[1].split(".")[0] for line in (OPS / script).read_text().splitlines()
                                 if line.startswith(("import ", "from "))}
    ka, kb = key("up", a), key("up", b)
    table = ops(gw, "breakers")  # default endpoint: ipc://run/admin.sock in the cwd
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TARGET", "STATE", "REQUESTS", "FAILURES", "PROBES"]
    assert {line.split()[0]: line.split()[1] for line in lines[1:]} == {ka: "closed", kb: "closed"}
    opened = ops(gw, "breakers", "--admin", gw.endpoint, "--open", kb)
    assert opened.returncode == 0, opened.stderr
    assert f"{kb}  forced_open" in opened.stdout
    assert gw.admin("breakers")[kb]["state"] == "forced_open"  # type: ignore[index]
    assert ops(gw, "breakers", "--reset", kb).returncode == 0
    assert gw.admin("breakers")[kb]["state"] == "closed"  # type: ignore[index]
    unknown = ops(gw, "breakers", "--reset", "nope")
    assert unknown.returncode == 1 and "no circuit breaker for target" in unknown.stderr
    nobody = ops(gw, "breakers", "--admin", f"ipc://{gw.dir}/run/nobody.sock", "--timeout", "0.3")
    assert nobody.returncode == 1 and "no answer" in nobody.stderr

    drained = ops(gw, "drain-target", ka)
    assert drained.returncode == 0, drained.stderr
    rows = {line.split()[0]: line.split()[1:] for line in drained.stdout.splitlines()[1:]}
    assert rows[ka] == ["yes", "config"] and rows[kb] == ["no", "config"]
    replies = trio.run(lambda: _burst(gw))
    assert {r.headers["x-backend"] for r in replies} == {"b"}  # the drained target gets nothing new
    assert ops(gw, "drain-target", "--enable", ka).returncode == 0
    weighted = ops(gw, "drain-target", "--weight", "0", kb)
    assert weighted.returncode == 0, weighted.stderr
    rows = {line.split()[0]: line.split()[1:] for line in weighted.stdout.splitlines()[1:]}
    assert rows[ka] == ["no", "config"] and rows[kb] == ["no", "0"]
    replies = trio.run(lambda: _burst(gw))
    assert {r.headers["x-backend"] for r in replies} == {"a"}
    assert ops(gw, "drain-target", "--weight", "100", kb).returncode == 0
    assert ops(gw, "drain-target", "--list").returncode == 0
    refused = ops(gw, "drain-target", "--weight", "-3", kb)
    assert refused.returncode == 1 and "weight must be 0..65535" in refused.stderr
    assert ops(gw, "drain-target").returncode == 2  # no target: usage error


async def _burst(gw: Gateway) -> list:
    return [await http(gw.port, "/cb") for _ in range(6)]


def test_deeply_nested_huge_or_out_of_range_requests_get_a_clear_error_and_log_no_traceback(gateway):
    gw, _, _ = gateway
    before = tree(gw)
    deep = 10_000  # nested 10,000 deep, yet under the 64 KiB limit
    payloads = {
        "nested argument": b'{"cmd": "status", "args": {"a": ' + b"[" * deep + b"]" * deep + b"}}",
        "nested object argument": b'{"cmd": "status", "args": {"a": ' + b'{"b": ' * deep + b"1" + b"}" * deep + b"}}",
        "nested document": b"[" * deep + b"]" * deep,
        "nested command": b'{"cmd": ' + b"[" * deep + b"]" * deep + b"}",
        "nested unknown field": b'{"cmd": "status", "x": ' + b"[" * deep + b"]" * deep + b"}",
        "huge": json.dumps({"cmd": "status", "args": {"pad": "x" * (900 * 1024)}}).encode(),
        "integer beyond 64 bits": b'{"cmd": "targets", "args": {"action": "weight", "target": "x", "weight": '
                                  + str(2**70).encode() + b"}}",
    }
    sock = dealer(gw)
    try:
        for what, payload in payloads.items():
            sock.send_multipart([b"", payload])
            _, reply = sock.recv_multipart()
            error = error_reply(reply)
            assert error.startswith(("malformed request", "request too large")), (what, error)
    finally:
        sock.close()
    still_serving(gw, before)
    assert "Traceback" not in gw.log() and "internal error" not in gw.log()


# ---- arguments the keeper and the root refuse in one plain line ----------------------------------------------------


def test_a_reload_path_with_a_nul_byte_is_rejected_plainly_without_a_traceback(gateway):
    """open() raises ValueError (not OSError) for a NUL byte: the root refuses the path as it refuses any config it
    cannot read, keeping the running one, instead of an "internal error" and a traceback in its log."""
    gw, _, _ = gateway
    reply = admin_call(gw.endpoint, "reload", config=f"{gw.dir}/a\x00b.yaml")
    assert reply["ok"] is False
    assert reply["error"].startswith("config rejected, still serving the previous one:")
    assert "the path contains a NUL byte" in reply["error"] and "internal error" not in reply["error"]
    assert "Traceback" not in gw.log()


def test_an_unknown_target_is_quoted_whole_and_one_that_is_not_a_string_is_named_as_such(gateway):
    """A KeyError's message reaches the operator whole (its closing quote was stripped with the repr's); a target of
    another JSON type is not "unknown" but of the wrong type."""
    gw, _, _ = gateway
    assert admin_call(gw.endpoint, "breakers", action="open", target="zz") == {
        "v": 1, "ok": False, "error": "no circuit breaker for target 'zz'"}
    assert admin_call(gw.endpoint, "targets", action="drain", target="zz")["error"] == (
        "no target 'zz'; `targets` lists them as upstream|host:port")
    for cmd, action in (("breakers", "open"), ("breakers", "reset"), ("targets", "drain")):
        for value in (None, 5, True, 1.5):
            reply = admin_call(gw.endpoint, cmd, action=action, target=value)
            assert reply["ok"] is False, (cmd, value)
            assert reply["error"] == (f"target={json.dumps(value)}: target must be a string upstream|host:port"), \
                (cmd, value, reply)


def test_a_weight_that_is_not_a_whole_number_is_refused_with_the_range_and_changes_nothing(gateway):
    """Kong's target weight is an integer 0..65535: null, a float, a boolean or other text is refused with the
    keeper's own range message (not Python's int() words, nor 1.5 or true applied as 1)."""
    gw, a, _ = gateway
    target = key("up", a)
    before = {t["key"]: t["weight"] for t in gw.admin("targets")}[target]  # type: ignore[index, union-attr]
    for value in (None, 1.5, True, False, "1.5", " 7", "+7", "٣", -1, 65536):
        reply = admin_call(gw.endpoint, "targets", action="weight", target=target, weight=value)
        assert reply["ok"] is False, (value, reply)
        assert reply["error"] == f"weight must be 0..65535 (an integer), got {json.dumps(value)}", (value, reply)
    assert {t["key"]: t["weight"] for t in gw.admin("targets")}[target] == before  # type: ignore[index, union-attr]


def test_a_weight_of_thousands_of_digits_is_refused_with_the_range_not_a_python_hint(gateway):
    """kong/db/schema/entities/targets.lua:33: `weight = { ..., type = "integer", default = 100, between = { 0,
    65535 } }`. A pasted or runaway `weight=<5000 digits>` got Python's own "Exceeds the limit (4300 digits) for
    integer string conversion ... use sys.set_int_max_str_digits()" instead of the range the other bad weights get."""
    gw, a, _ = gateway
    reply = admin_call(gw.endpoint, "targets", action="weight", target=key("up", a), weight="9" * 5000)
    assert reply["ok"] is False
    assert reply["error"].startswith('weight must be 0..65535 (an integer), got "999'), reply["error"][:300]
    assert "set_int_max_str_digits" not in reply["error"]


# ---- the admin endpoint under a flood ------------------------------------------------------------------------------


def test_a_client_flooding_the_admin_endpoint_does_not_hold_up_another_clients_status(gateway):
    """README (Admin): "Each request is answered in a task of its own"; nginx's event loop handles one bounded batch
    of ready events per turn (src/event/ngx_event.c, ngx_process_events_and_timers: ngx_process_events, then timers
    and posted events). Two clients sending malformed requests without pause (their error replies never read) kept
    the root inside PumpedSocket.pump, which read until the queue was empty: another client's `status`, the signal
    handler and the supervisors waited seconds, until the flood paused."""
    gw, _, _ = gateway
    before = tree(gw)
    stop = threading.Event()

    def flood() -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(gw.endpoint)
        deadline = time.monotonic() + 6
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    sock.send(b"x", zmq.NOBLOCK)
                except zmq.Again:
                    time.sleep(0.0001)
        finally:
            sock.close()

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    for t in flooders:
        t.start()
    asker = dealer(gw)
    try:
        time.sleep(0.5)
        began = time.monotonic()
        asker.send_multipart([b"", b'{"v": 1, "cmd": "status"}'])
        answered = asker.poll(4000) and json.loads(asker.recv_multipart()[-1])["ok"]
        took = time.monotonic() - began
    finally:
        stop.set()
        for t in flooders:
            t.join(timeout=10)
        asker.close()
    # (milliseconds; up to a few seconds on a busy host, where the flood's threads take their share too: a root held
    # in its pump until the flood pauses answers after the flood's 6 s, past the poll's 4)
    assert answered and took < 2.5, f"`status` took {took:.1f}s (answered: {answered}) while two clients flooded"
    still_serving(gw, before)


@pytest.fixture
def pair(tmp_path):
    """A ROUTER (to pump) and a DEALER connected to it over ipc."""
    ctx = zmq.Context()
    router, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for sock in (router, client):
        sock.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{tmp_path}/pump.sock")
    client.connect(f"ipc://{tmp_path}/pump.sock")
    try:
        yield router, client
    finally:
        client.close()
        router.close()
        ctx.term()


async def test_a_pumped_socket_hands_over_a_backlog_in_bounded_batches_letting_other_tasks_run(pair):
    """As nginx takes one bounded batch of events per turn (src/event/ngx_event.c), PumpedSocket.run hands at most
    PUMP_BATCH messages to its callback, then lets the other tasks run: 500 messages waiting are taken over several
    turns of another task (they were all taken in one, the loop held up for as long as messages kept coming)."""
    router, client = pair
    for _ in range(500):
        client.send(b"x")
    time.sleep(0.3)  # (all of them with the ROUTER before it is read)
    got: list[list[bytes]] = []
    seen = [0]  # how many the callback had at each turn of this task
    pumped = PumpedSocket(router, got.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pumped.run)
        with trio.fail_after(5):
            while len(got) < 500:
                await trio.lowlevel.checkpoint()
                seen.append(len(got))
        nursery.cancel_scope.cancel()
    steps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert max(steps) <= 2 * PUMP_BATCH, steps  # (Trio may run a round's tasks in either order: two batches at most)
    assert len(got) == 500


async def test_a_send_that_leaves_messages_waiting_wakes_the_receiving_task_for_them(pair):
    """ZMQ_FD is edge-triggered (zmq_getsockopt(3)): a send, which pumps at most PUMP_BATCH of the messages waiting,
    consumes the edge; the task parked on the fd is woken for the rest, not left asleep until the peer sends again
    (a bus reply or a keeper heartbeat left unread)."""
    router, client = pair
    got: list[list[bytes]] = []
    pumped = PumpedSocket(router, got.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pumped.run)
        await trio.sleep(0.1)  # parked on the fd: nothing has come
        for _ in range(3 * PUMP_BATCH):
            client.send(b"x")
        time.sleep(0.3)  # (blocking: the loop does not look at the fd until the send below has taken the edge)
        assert pumped.send([b"nobody", b"dropped"])  # (a ROUTER drops a message for a peer it does not know)
        assert len(got) == PUMP_BATCH
        with trio.fail_after(2):
            while len(got) < 3 * PUMP_BATCH:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


# ---- the admin server: reads answered during a change, changes one after another ----------------------------------


@asynccontextmanager
async def serving_admin(tmp_path: Path, note: Callable[[AdminRequest], object]) -> AsyncIterator[
        tuple[TrioSocket, trio.Event]]:
    """serve_admin on a real ROUTER socket with a handler that calls `note` with each request as it begins and whose
    changes wait for `release` (a `fail` command raises); a DEALER to talk to it: (dealer, release)."""
    ctx = zmq.Context()
    router = bind_admin(ctx, f"ipc://{tmp_path}/admin.sock")
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(f"ipc://{tmp_path}/admin.sock")
    release = trio.Event()

    async def handler(request):
        note(request)
        if request.cmd == "fail":
            raise RuntimeError("boom")
        if changes_state(request):
            await release.wait()
        return request.args.get("n")

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_admin, router, handler)
            yield TrioSocket(client), release
            nursery.cancel_scope.cancel()
    finally:
        client.close()
        router.close()
        ctx.term()


@pytest.fixture
async def admin_server(tmp_path):
    """serving_admin's (dealer, release), and the commands in the order the handler began them."""
    started: list[str] = []
    async with serving_admin(tmp_path, lambda r: started.append(f"{r.cmd} {r.args.get('n')}")) as (dealer, release):
        yield dealer, release, started


async def _send(sock: TrioSocket, cmd: str, **args: object) -> None:
    await sock.send_multipart([b"", json.dumps({"cmd": cmd, "args": args}).encode()])


async def _reply(sock: TrioSocket) -> dict:
    with trio.fail_after(2):
        return json.loads((await sock.recv_multipart())[-1])


async def test_reads_are_answered_while_a_reload_runs_and_changes_wait_their_turn_in_order(admin_server):
    """A reload that takes long (its new workers starting) no longer holds up `status` or a listing; a second reload
    and a breaker opened after it still wait, and run in the order they came (one DEALER: one ordered pipe)."""
    sock, release, started = admin_server
    await _send(sock, "reload", n=1)
    await _send(sock, "reload", n=2)
    await _send(sock, "breakers", action="open", n=3)
    await _send(sock, "status", n=4)
    await _send(sock, "targets", n=5)  # action list
    assert {(await _reply(sock))["result"] for _ in range(2)} == {4, 5}  # while reload 1 waits
    await trio.sleep(0.05)
    assert [c for c in started if not c.startswith(("status", "targets"))] == ["reload 1"]
    release.set()
    assert [(await _reply(sock))["result"] for _ in range(3)] == [1, 2, 3]
    assert [c for c in started if not c.startswith(("status", "targets"))] == ["reload 1", "reload 2", "breakers 3"]


async def test_a_failing_handler_and_a_flood_get_error_replies(admin_server, monkeypatch):
    """A handler's exception is an `internal error` reply (logged); past MAX_IN_FLIGHT requests being answered, the
    next is refused with `busy` at once instead of queued without bound; a malformed one is answered at once."""
    sock, release, _ = admin_server
    await _send(sock, "fail")
    assert (await _reply(sock))["error"] == "internal error: RuntimeError: boom"
    monkeypatch.setattr(admin_module, "MAX_IN_FLIGHT", 2)
    for n in range(3):
        await _send(sock, "reload", n=n)
    assert (await _reply(sock))["error"] == "busy: 2 admin requests are being answered; try again"
    await sock.send_multipart([b"", b"{"])
    assert (await _reply(sock))["error"].startswith("malformed request")
    release.set()
    assert sorted([(await _reply(sock))["result"] for _ in range(2)]) == [0, 1]


async def test_a_message_with_more_envelope_than_a_router_adds_is_dropped_unanswered(admin_server):
    """MAXMSGSIZE bounds each frame, not a message: twenty 900 KiB frames before a good request (18 MiB, no frame
    over 1 MiB) get no answer, as a message over 1 MiB gets none, nor does a request behind more envelope frames than
    MAX_ENVELOPE_FRAMES; neither is handled, nor echoed back. One with a DEALER's or a REQ's envelope is answered."""
    sock, _, started = admin_server
    request = json.dumps({"cmd": "status", "args": {"n": 1}}).encode()
    await sock.send_multipart([b"", *[b"x" * (900 << 10)] * 20, request])
    await sock.send_multipart([b""] * admin_module.MAX_ENVELOPE_FRAMES + [request])  # (the ROUTER adds one more)
    await sock.send_multipart([b"x" * admin_module.MAX_ENVELOPE_BYTES, request])
    await _send(sock, "status", n=2)
    assert (await _reply(sock))["result"] == 2
    with trio.move_on_after(0.2):
        extra = await sock.recv_multipart()
        raise AssertionError(f"a reply of {sum(map(len, extra))} bytes")
    assert started == ["status 2"]


def test_only_reads_skip_the_queue_of_changes():
    """status, workers and the keeper's listings are reads; reload, stop and every other keeper action (or one
    that is not a string) may change state."""
    reads = [("status", {}), ("workers", {}), ("breakers", {}), ("breakers", {"action": "list"}), ("limits", {}),
             ("limits", {"action": "show", "key": "k"}), ("targets", {}), ("proxy-cache", {"action": "get"}),
             ("frobnicate", {})]
    changes = [("reload", {}), ("stop", {}), ("breakers", {"action": "open"}), ("breakers", {"action": "reset"}),
               ("limits", {"action": "reset"}), ("targets", {"action": "drain"}), ("targets", {"action": "weight"}),
               ("targets", {"action": 5}), ("proxy-cache", {"action": "purge"}), ("proxy-cache", {"action": "flush"})]
    assert not any(changes_state(AdminRequest(cmd, args)) for cmd, args in reads)
    assert all(changes_state(AdminRequest(cmd, args)) for cmd, args in changes)


async def test_status_shows_a_busy_supervisors_last_listed_children_instead_of_waiting(tmp_path, autojump_clock):
    """The root supervisor answers between operations (OTP's): while a reload starts the new generation, or the old
    one drains, `status` and `workers` wait SUPERVISOR_ANSWER_S for it, then show the children it last listed,
    marked busy, instead of outwaiting the CLI's 5 s."""

    class Busy:
        async def which_children(self):
            await trio.sleep_forever()

    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config(free_port(), [{"name": "s", "url": "http://127.0.0.1:9"}], [route("s", "s")])))
    node = Node(str(path), None)
    node.config = load_validated(str(path))[1]
    node.root = Busy()
    node._last_listed["root"] = [ChildInfo("keeper", None, ChildState.RUNNING, ChildType.WORKER, 2)]
    began = trio.current_time()
    status = await node.status()
    assert trio.current_time() - began == pytest.approx(SUPERVISOR_ANSWER_S)
    assert status["tree"]["busy"] is True
    assert [(c["id"], c["restarts"]) for c in status["tree"]["children"]] == [("keeper", 2)]
    assert await node.handle_admin(AdminRequest("workers")) == []
    assert "busy starting or stopping a child" in render_status(status)


def test_the_text_status_lists_a_retiring_generation_and_its_draining_workers_after_the_tree():
    status = {"version": "1", "pid": 10, "uptime_s": 5.0, "generation": 2, "listen": ["127.0.0.1:8000"],
              "config": "gateway.yaml",
              "tree": {"id": "root", "type": "supervisor", "strategy": "one_for_one", "intensity": 5, "period_s": 60,
                       "children": [{"id": "workers@2", "type": "supervisor", "state": "running", "children": []}]},
              "retiring": [{"id": "workers@1", "type": "supervisor", "state": "retiring",
                            "children": [{"id": "worker-1", "type": "worker", "state": "draining", "pid": 42,
                                          "uptime_s": 9.0}]}]}
    lines = render_status(status).splitlines()
    assert lines[-2:] == ["workers@1  retiring", "└─ worker-1  pid 42  up 9.0s  draining"]


def test_status_is_answered_while_a_reload_checks_a_large_config(gateway):
    """A reload's check of its file (read, parse, compile: seconds for thousands of services) runs beside the root's
    loop, so `status` is answered meanwhile, as the README promises for reads during a reload (it waited for the
    whole check: 2 s for 8,000 services, past the CLI's patience at 10,000). The file is rejected at its last
    service, so the gateway keeps its config."""
    gw, _, _ = gateway
    big = json.loads(gw.config.read_text())
    big["services"] = [{"name": f"s{i}", "url": f"http://127.0.0.1:{1000 + i}",
                        "routes": [{"name": f"r{i}", "paths": [f"/p{i}"]}]} for i in range(8000)]
    big["services"].append({"name": "bad", "url": "http://127.0.0.1:1", "retries": "many"})
    big["routes"] = []
    path = f"{gw.dir}/big.json"
    with open(path, "w") as f:
        json.dump(big, f)
    reloader, asker = dealer(gw), dealer(gw)
    try:
        reloader.send_multipart([b"", json.dumps({"v": 1, "cmd": "reload", "args": {"config": path}}).encode()])
        time.sleep(0.3)
        asked = time.monotonic()
        asker.send_multipart([b"", b'{"v": 1, "cmd": "status"}'])
        assert asker.poll(8000), "no answer to status"
        waited = time.monotonic() - asked
        assert json.loads(asker.recv_multipart()[-1])["ok"] is True
        answered_first = not reloader.poll(0)
        assert reloader.poll(15000), "no answer to the reload"
        rejected = json.loads(reloader.recv_multipart()[-1])
        assert rejected["ok"] is False and "config rejected" in rejected["error"], rejected
        assert answered_first, f"status took {waited:.2f}s and came after the reload's answer"
    finally:
        reloader.close()
        asker.close()
