"""The syslog plugin through the gateway (in-process, real sockets) to a syslog daemon stand-in: a Unix datagram
socket that gateway.syslog_socket points at. Messages are syslog(3)'s, as util-linux's logger writes them to a
local socket; which requests are sent follows Kong's spec (spec/03-plugins/05-syslog/01-log_spec.lua)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio
from backends import EchoBackend, request, service, wait_until

from gateway.config import ConfigError, parse_config
from gateway.policies.syslog.schema import SyslogConfig
from gateway.telemetry.sender import SendError
from gateway.telemetry.syslog_sender import FACILITIES, SEVERITIES, SyslogSender, header

TIMEOUT = 10
MESSAGE = re.compile(rb"^<(\d+)>([A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d) kong\[(\d+)\]: (\{.*\})$", re.DOTALL)


class Daemon:
    """A syslog daemon's /dev/log: a Unix datagram socket at `path` that keeps what it receives."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.datagrams: list[bytes] = []
        self._socket: trio.socket.SocketType | None = None

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = self._socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(self.path)
            task_status.started()
            try:
                while True:
                    self.datagrams.append(await sock.recv(1 << 20))
            except (OSError, trio.ClosedResourceError):  # closed
                pass

    def stop(self) -> None:
        """Close the socket and remove its file, as a daemon that exits does."""
        if self._socket is not None:
            self._socket.close()
        Path(self.path).unlink(missing_ok=True)

    def messages(self) -> list[tuple[int, str, int, dict]]:
        """(PRI, timestamp, pid, the JSON entry) of each datagram; fails on one that is not syslog(3)'s shape."""
        out = []
        for datagram in self.datagrams:
            found = MESSAGE.match(datagram)
            assert found, datagram[:200]
            out.append((int(found[1]), found[2].decode(), int(found[3]), json.loads(found[4])))
        return out


@pytest.fixture
def socket_dir() -> Iterator[str]:
    """A short directory for Unix sockets (a path is at most 107 bytes; pytest's tmp_path can be longer)."""
    path = tempfile.mkdtemp(prefix="gw-syslog-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _gateway(nursery: trio.Nursery, gateway, socket_dir: str, routes: list[dict]) -> tuple[int, Daemon]:  # noqa: ANN001
    backend = EchoBackend()
    await nursery.start(backend.serve)
    daemon = Daemon(os.path.join(socket_dir, "log"))
    await nursery.start(daemon.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)]},
                         syslog_socket=daemon.path)
    return port, daemon


def _route(name: str, **config: str) -> dict:
    return {"name": name, "paths": [f"/{name}"], "plugins": [{"name": "syslog", "config": config}]}


WARNING_ALWAYS = {"successful_severity": "warning", "client_errors_severity": "warning",
                  "server_errors_severity": "warning"}


async def test_logs_to_syslog_if_log_level_is_lower(nursery, gateway, socket_dir):
    """Kong: "logs to syslog if log_level is lower" (info; the requests are warnings)."""
    port, daemon = await _gateway(nursery, gateway, socket_dir, [_route("a", log_level="info", **WARNING_ALWAYS)])
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/a/request", headers=[("sys_log_uuid", "6f1c")])
    assert reply.status == 200
    await wait_until(lambda: daemon.datagrams, "the message")
    [(pri, _, pid, entry)] = daemon.messages()
    assert pri == FACILITIES["user"] * 8 + SEVERITIES["warning"] == 12
    assert pid == os.getpid()  # the worker's (in this test, the worker is this process)
    assert entry["request"]["headers"]["sys_log_uuid"] == "6f1c"
    assert entry["request"]["uri"] == "/a/request" and entry["response"]["status"] == 200


async def test_does_not_log_to_syslog_if_log_level_is_higher(nursery, gateway, socket_dir):
    """Kong: "does not log to syslog if log_level is higher" (err; the requests are warnings)."""
    port, daemon = await _gateway(nursery, gateway, socket_dir, [_route("quiet", log_level="err", **WARNING_ALWAYS),
                                                                _route("loud", log_level="warning",
                                                                       **WARNING_ALWAYS)])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/quiet")).status == 200
        assert (await request(port, "GET", "/loud")).status == 200
    await wait_until(lambda: daemon.datagrams, "the message of /loud")
    await trio.sleep(0.1)
    assert [entry["request"]["uri"] for *_, entry in daemon.messages()] == ["/loud"]


async def test_logs_to_syslog_if_log_level_is_the_same(nursery, gateway, socket_dir):
    port, daemon = await _gateway(nursery, gateway, socket_dir, [_route("a", log_level="warning", **WARNING_ALWAYS)])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/a")).status == 200
    await wait_until(lambda: daemon.datagrams, "the message")
    assert [pri for pri, *_ in daemon.messages()] == [12]


async def test_the_severity_is_the_one_configured_for_the_responses_class(nursery, gateway, socket_dir):
    """2xx/3xx: successful_severity; 4xx: client_errors_severity; 5xx: server_errors_severity; in the facility."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    daemon = Daemon(os.path.join(socket_dir, "log"))
    await nursery.start(daemon.serve)
    config = {"log_level": "debug", "successful_severity": "info", "client_errors_severity": "notice",
              "server_errors_severity": "crit", "facility": "local0"}
    port = await gateway({"services": [
        service("up", f"http://127.0.0.1:{backend.port}", [{"name": "up", "paths": ["/up"]}]),
        service("down", "http://127.0.0.1:9", [{"name": "down", "paths": ["/down"]}], retries=0)],
        "plugins": [{"name": "syslog", "config": config}]}, syslog_socket=daemon.path)
    with trio.fail_after(TIMEOUT):
        statuses = [(await request(port, "GET", path)).status for path in ("/up", "/nowhere", "/down")]
    assert statuses == [200, 404, 502]
    await wait_until(lambda: len(daemon.datagrams) >= 3, "three messages")
    by_status = {entry["response"]["status"]: pri for pri, _, _, entry in daemon.messages()}
    assert by_status == {200: 16 * 8 + 6, 404: 16 * 8 + 5, 502: 16 * 8 + 2}


async def test_a_daemon_that_restarts_gets_the_messages_after_it_is_back(nursery, gateway, socket_dir, caplog):
    """syslog(3)'s rule: a failed send is tried once more on a new connection (the new daemon's socket); what is sent
    while no daemon listens is lost, without slowing a request."""
    port, daemon = await _gateway(nursery, gateway, socket_dir, [_route("a")])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/a/before")).status == 200
        await wait_until(lambda: daemon.datagrams, "the first message")
        daemon.stop()
        started = trio.current_time()
        assert (await request(port, "GET", "/a/down")).status == 200
        took = trio.current_time() - started
        assert took < TIMEOUT / 2, f"{took:.1f}s"  # (milliseconds; seconds on a busy host)
    await wait_until(lambda: any("could not send" in r.getMessage() for r in caplog.records), "a lost message logged")
    back = Daemon(daemon.path)
    await nursery.start(back.serve)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/a/after")).status == 200
    await wait_until(lambda: back.datagrams, "the message after the restart")
    assert [entry["request"]["uri"] for *_, entry in back.messages()] == ["/a/after"]


async def test_the_first_message_after_a_daemon_restarted_is_not_lost(nursery, gateway, socket_dir):
    """The kept connection is to the old daemon's socket: the send fails and goes again on a new connection."""
    port, daemon = await _gateway(nursery, gateway, socket_dir, [_route("a")])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/a/before")).status == 200
        await wait_until(lambda: daemon.datagrams, "the first message")
        daemon.stop()
        back = Daemon(daemon.path)
        await nursery.start(back.serve)
        assert (await request(port, "GET", "/a/after")).status == 200
    await wait_until(lambda: back.datagrams, "the message after the restart")
    assert [entry["request"]["uri"] for *_, entry in back.messages()] == ["/a/after"]


def test_the_header_is_syslog3s_as_logger_writes_it_to_a_local_socket(socket_dir):
    """util-linux's logger writes to a Unix socket as syslog(3) does: `<PRI>Mmm dd HH:MM:SS ident[pid]: `."""
    if shutil.which("logger") is None:
        pytest.skip("util-linux's logger is not installed")
    path = os.path.join(socket_dir, "logger")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        for _ in range(3):  # a second may turn between the two stamps: then try again
            before = time.time()
            subprocess.run(["logger", "-u", path, "--id=4242", "-t", "kong", "-p", "local3.err", "{}"], check=True)
            theirs = sock.recv(4096)
            if int(time.time()) == int(before):
                break
    assert theirs == header(19 * 8 + 3, b"kong", 4242, before) + b"{}"


@pytest.mark.parametrize("month", range(12))
def test_the_header_spells_every_month_and_pads_the_day_as_strftime_in_the_c_locale(month):
    for day in (1, 9, 10, 28):
        when = time.mktime((2026, month + 1, day, 7, 5, 3, 0, 0, -1))
        expected = time.strftime("<14>%b %e %H:%M:%S kong[7]: ", time.localtime(when)).encode()
        assert header(14, b"kong", 7, when) == expected


async def test_the_sender_says_why_it_could_not_send(socket_dir):
    sender = SyslogSender(os.path.join(socket_dir, "nobody"), timeout=5)
    with pytest.raises(SendError, match=r"^syslog /.*/nobody: could not send: No such file or directory$"):
        await sender.send(b"<14>x")


async def test_a_stream_socket_gets_each_message_ended_by_a_nul_as_glibc_sends_it(socket_dir):
    """glibc's openlog falls back to SOCK_STREAM when the daemon listens on one (syslog-ng's unix-stream: connect
    fails with EPROTOTYPE) and ends each message with a NUL byte; datagrams only lost every entry there."""
    path = os.path.join(socket_dir, "stream")
    sender = SyslogSender(path, timeout=TIMEOUT)
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        await listener.bind(path)
        listener.listen(1)
        with trio.fail_after(TIMEOUT):
            await sender.send(b"<14>first")
            await sender.send(b"<11>second")
            conn, _ = await listener.accept()
            received = b""
            with conn:
                while received.count(b"\0") < 2:
                    received += await conn.recv(65536)
    sender.close()
    assert received == b"<14>first\0<11>second\0"


@pytest.mark.parametrize(("config", "message"), [
    ({"log_level": "warn"}, "Invalid enum value 'warn'"),
    ({"facility": "LOCAL0"}, "Invalid enum value 'LOCAL0'"),
    ({"custom_fields_by_lua": {"a": "return 1"}}, "custom_fields_by_lua: the gateway runs no Lua; remove it"),
    ({"host": "h"}, "unknown field `host`"),
])
def test_config_errors_name_the_field(config: dict, message: str):
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(config, SyslogConfig)


def test_kongs_defaults():
    config = SyslogConfig()
    assert (config.log_level, config.successful_severity, config.client_errors_severity,
            config.server_errors_severity, config.facility) == ("info", "info", "info", "info", "user")


@pytest.mark.parametrize("path", ["", "/" + "a" * 107])
def test_a_syslog_socket_that_cannot_be_a_unix_socket_path_is_refused(path):
    with pytest.raises(ConfigError, match=r"gateway: syslog_socket: expected the path of a Unix socket, 1 to 107 "):
        parse_config(f"gateway: {{syslog_socket: '{path}'}}", "g.yaml")
