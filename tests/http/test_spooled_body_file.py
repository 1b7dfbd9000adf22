"""Where a request body too large for memory is spooled (nginx's client_body_temp_path: Kong's
nginx_http_client_body_temp_path, by default client_body_temp in its prefix, the gateway's run directory), and what
a full disk there does: nginx's 500 with one log line, before any upstream is contacted.

nginx writes such a body to its temporary file a buffer at a time and its end before the proxying starts (nginx
release-1.27.1 src/http/ngx_http_request_body.c:1340-1343 and 1358-1362, each `return
NGX_HTTP_INTERNAL_SERVER_ERROR` when the write fails); the failed write is one [crit] line naming the file and the
errno (src/os/unix/ngx_files.c:219-220, `pwrite() "%s" failed`). A full disk is a 1 MiB tmpfs the test mounts (and
unmounts at its end; skipped where mounting is not allowed). Gateways are in-process workers (the `gateway` fixture)
but for one real `gateway start` (e2e_helpers.GatewayNode, stopped by pid); backends live in the test's nursery, on
loopback.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from backends import EchoBackend, parse_raw_response, read_to_end, service, upload
from e2e_helpers import GatewayNode
from e2e_helpers import request as http_request

from gateway import worker
from gateway.config import ConfigError, parse_config
from gateway.node.files import make_body_temp_dir
from gateway.pipeline import request_buffer
from gateway.pipeline.forward import Forwarder
from gateway.runtime import compile_config

TIMEOUT = 10


def mount_small_disk(mnt: Path) -> None:
    """A 1 MiB tmpfs at `mnt` (made if missing); the test is skipped where mounting is not allowed."""
    mnt.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")


def unmount(mnt: Path) -> None:
    subprocess.run(["umount", str(mnt)], capture_output=True)
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 1 MiB tmpfs under tmp_path; the in-process worker's spool directory is set back after the test."""
    monkeypatch.setattr(request_buffer, "_temp_dir", request_buffer._temp_dir)
    mnt = tmp_path / "small-disk"
    mount_small_disk(mnt)
    try:
        yield mnt
    finally:
        unmount(mnt)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def send_all_but_the_last_bytes_later(port: int, room: int) -> bytes:
    """A body of `room` + 100 bytes: `room` of them at once, the last 100 after a pause (they are what does not fit);
    then the answer, read to the end of the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await stream.send_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (room + 100))
        block = b"y" * 65536
        sent = 0
        while sent < room:
            piece = block[:room - sent]
            await stream.send_all(piece)
            sent += len(piece)
        await trio.sleep(0.5)
        await stream.send_all(b"z" * 100)
        received, _ = await read_to_end(stream)
    await trio.aclose_forcefully(stream)
    return received


# --- the directory ---------------------------------------------------------------------------------------------------

def test_the_spool_directory_is_client_body_temp_in_the_run_directory_made_0700(tmp_path: Path) -> None:
    """nginx's default client_body_temp_path is `client_body_temp` under its prefix (auto/options:634,
    `NGX_HTTP_CLIENT_TEMP_PATH=${NGX_HTTP_CLIENT_TEMP_PATH:-client_body_temp}`, merged in
    src/http/ngx_http_core_module.c:3876-3878; Kong runs nginx with `-p <prefix>`), made 0700 at start
    (src/core/ngx_file.c:607, ngx_create_paths). The run directory is made too, for `gateway run`, which no root
    started."""
    run_dir = tmp_path / "run"
    path = make_body_temp_dir(str(run_dir), "client_body_temp")
    assert path == str(run_dir / "client_body_temp")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert make_body_temp_dir(str(run_dir), "client_body_temp") == path  # (every worker: there already)
    assert make_body_temp_dir(str(run_dir), "../bodies") == str(tmp_path / "bodies")  # relative: to the run dir
    assert make_body_temp_dir(str(run_dir), str(tmp_path / "abs")) == str(tmp_path / "abs")


def test_a_spool_directory_that_cannot_be_made_says_which_setting_and_what_to_do(tmp_path: Path) -> None:
    """nginx's ngx_create_paths fails the start naming the directory (src/core/ngx_file.c:607-613); it makes the
    last component only."""
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=r"gateway.client_body_temp_path: .*/file is not a directory; remove it, or "):
        make_body_temp_dir(str(tmp_path), "file")
    with pytest.raises(OSError, match=r"gateway.client_body_temp_path: cannot create the directory .*/no/such "
                                      r"\(No such file or directory\); create it, or choose another path"):
        make_body_temp_dir(str(tmp_path / "run"), str(tmp_path / "no" / "such"))


def _loaded(gateway: dict[str, object]) -> str | list[str]:
    try:
        config = parse_config(json.dumps({"gateway": gateway}), "f")
        compile_config(config, "f")
    except ConfigError as e:
        return [m.removeprefix("f: ") for m in e.messages]
    return config.gateway.client_body_temp_path


def test_kongs_nginx_http_client_body_temp_path_is_the_setting_and_its_levels_are_refused() -> None:
    """Kong injects any nginx_http_<directive> into nginx's http block (kong/templates/nginx_kong.lua:42-44, `for _,
    el in ipairs(nginx_http_directives)`): nginx_http_client_body_temp_path is nginx's client_body_temp_path,
    `path [level1 [level2 [level3]]]`; NONE writes no directive, so nginx's default holds. Levels spread named
    files over subdirectories: the gateway's files have no name, so they are refused, not ignored."""
    assert _loaded({}) == "client_body_temp"
    assert _loaded({"nginx_http_client_body_temp_path": " /srv/bodies "}) == "/srv/bodies"
    assert _loaded({"nginx_http_client_body_temp_path": "NONE"}) == "client_body_temp"
    assert _loaded({"client_body_temp_path": "/srv/bodies"}) == "/srv/bodies"
    assert _loaded({"nginx_http_client_body_temp_path": "/srv/bodies 1 2"}) == [
        "gateway: client_body_temp_path (kong.conf's nginx_http_client_body_temp_path): expected a directory alone, "
        "got '/srv/bodies 1 2': nginx's levels (the words after the path) are not taken, the gateway's body files "
        "having no name to spread over subdirectories"]


# --- a full disk (in-process workers) ---------------------------------------------------------------------------------

async def test_a_body_that_fills_the_disk_is_a_500_the_client_reads_with_one_error_line_and_no_traceback(
        nursery: trio.Nursery, gateway, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    """A 4 MiB upload on a 1 MiB spool directory: nginx logs the failed write (one line, its errno) and answers 500
    through Kong's error page, then closes with a lingering close, reading what the client still sends
    (src/http/ngx_http_request.c:2810-2817: the read that filled the buffer leaves c->read->ready set), so a client
    that sends its whole body before reading (curl, urllib3) reads the 500, not a reset."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]},
                         client_body_temp_path=str(small_disk))
    size = 4 << 20
    with caplog.at_level(logging.INFO):
        received, reset = await upload(port, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size,
                                       size, timeout=TIMEOUT)
    assert not reset, "the client's upload was reset after the 500 (no lingering close)"
    status, headers, body = parse_raw_response(received)
    assert (status, headers["connection"]) == (500, "close")
    assert b"An unexpected error occurred" in body
    assert echo.requests == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"could not write to a temporary file in {small_disk}, for the request body of POST /up from 127.0.0.1 "
        "(28: No space left on device): 500; free space there (or fix what the error says), or set "
        "gateway.client_body_temp_path to another directory"]
    assert errors[0].exc_info is None


async def test_a_body_a_plugin_reads_that_fills_the_disk_is_the_same_500_not_a_plugin_failure(
        nursery: trio.Nursery, gateway, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    """request-size-limiting reads a chunked body whole in access (kong/plugins/request-size-limiting/handler.lua:
    ngx.req.read_body when there is no Content-Length); the file nginx writes it to failing is nginx's 500 with its
    one error line, as for a body the proxying reads, never the plugin's "An unexpected error occurred" traceback."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")],
                          "plugins": [{"name": "request-size-limiting", "config": {"allowed_payload_size": 10}}]},
                         client_body_temp_path=str(small_disk))
    piece = b"10000\r\n" + b"x" * 65536 + b"\r\n"
    with caplog.at_level(logging.INFO), trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(64):  # 4 MiB on a 1 MiB disk
                await stream.send_all(piece)
            await stream.send_all(b"0\r\n\r\n")
        except trio.BrokenResourceError:
            pass
        received, _ = await read_to_end(stream)
        await stream.aclose()
    status, _, _ = parse_raw_response(received)
    assert status == 500
    assert echo.requests == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(",")[0] for r in errors] == [f"could not write to a temporary file in {small_disk}"]
    assert errors[0].exc_info is None


async def test_a_body_whose_last_bytes_do_not_fit_is_a_500_before_any_upstream_is_contacted(
        nursery: trio.Nursery, gateway, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    """The body fills the disk but for its last 100 bytes, which come after a pause: nginx writes the body's end
    to its file before the proxying starts (src/http/ngx_http_request_body.c:1358-1362, before the post handler
    ngx_http_upstream_init): its 500 comes before any upstream connection. (Those bytes would wait in the file
    object's buffer until the first try read the body back, its upstream connected by then.)"""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]},
                         client_body_temp_path=str(small_disk))
    with caplog.at_level(logging.INFO):
        received = await send_all_but_the_last_bytes_later(port, free_bytes(small_disk))
    assert received.startswith(b"HTTP/1.1 500 "), received[:200]
    assert echo.connections == 0, "an upstream connection was opened for a body the gateway could not store"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(",")[0] for r in errors] == [f"could not write to a temporary file in {small_disk}"]


async def test_a_spooled_body_that_cannot_be_read_back_leaves_no_request_counted_on_its_target(
        nursery: trio.Nursery, gateway, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A try counts its request on the target (what least-connections picks by, and
    gateway_upstream_active_requests) until it ends; nginx's upstream request starts only with its body whole in
    hand (ngx_http_upstream_init after ngx_http_read_client_request_body). A body file that fails as it is rewound
    for the try fails before anything is counted or connected, not between the count and the try's end."""
    forwarders: list[Forwarder] = []

    class Recorded(Forwarder):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            forwarders.append(self)

    def rewind(self: request_buffer.SpooledBody) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(worker, "Forwarder", Recorded)
    monkeypatch.setattr(request_buffer.SpooledBody, "rewind", rewind)
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]})
    size = 64 << 10
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(TIMEOUT):
        await stream.send_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        await trio.sleep(0.05)  # (the body comes after its head: spooled, not in hand)
        await stream.send_all(b"b" * size)
        received, _ = await read_to_end(stream)
    await trio.aclose_forcefully(stream)
    assert received.startswith(b"HTTP/1.1 500 "), received[:200]
    assert forwarders[-1].active == {}
    assert echo.connections == 0


# --- a started gateway ------------------------------------------------------------------------------------------------

async def test_a_started_gateway_spools_in_its_run_directory_and_counts_no_request_for_a_body_it_could_not_store(
        tmp_path: Path) -> None:
    """`gateway start` with the default setting: a body being proxied is in an unnamed file under
    <run directory>/client_body_temp (Kong's <prefix>/client_body_temp, not the system's /tmp); with that directory
    full (a 1 MiB tmpfs mounted on it) a body whose end does not fit is a 500 with no upstream contacted, no request
    left in progress on the target (gateway_upstream_active_requests, collected from the worker) and one error line
    in the log, no traceback."""
    body_dir = tmp_path / "gw" / "run" / "client_body_temp"
    mount_small_disk(body_dir)
    echo = EchoBackend()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(echo.serve)
            node = GatewayNode(tmp_path / "gw", {"services": [service("s", f"http://127.0.0.1:{echo.port}")]})
            try:
                await node.start(workers=1)
                (worker_pid,) = await node.worker_pids()
                size = 64 << 10
                stream = await trio.open_tcp_stream("127.0.0.1", node.port)
                with trio.fail_after(TIMEOUT):
                    await stream.send_all(b"POST /up?hold=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                          b"Content-Length: %d\r\n\r\n" % size + b"b" * size)
                    while not echo.requests:  # the whole body is spooled and sent: the backend holds its answer
                        await trio.sleep(0.05)
                    files = [target for fd in os.listdir(f"/proc/{worker_pid}/fd")
                             if "(deleted)" in (target := _link(f"/proc/{worker_pid}/fd/{fd}")) or "/#" in target]
                    echo.release.set()
                    await read_to_end(stream)
                await trio.aclose_forcefully(stream)
                connections = echo.connections
                received = await send_all_but_the_last_bytes_later(node.port, free_bytes(body_dir))
                await trio.sleep(1.5)  # (the metrics are collected from the worker now and then)
                text = (await http_request(node.status_port, "GET", "/metrics")).body.decode()
                log = node.log()
            finally:
                node.cleanup()
                nursery.cancel_scope.cancel()
    finally:
        unmount(body_dir)
    assert files, "no temporary body file found among the worker's descriptors"
    assert all(f.startswith(str(body_dir.resolve())) for f in files), files
    assert received.startswith(b"HTTP/1.1 500 "), received[:200]
    assert echo.connections == connections
    active = [line for line in text.splitlines()
              if line.startswith("gateway_upstream_active_requests{") and f"127.0.0.1:{echo.port}" in line]
    assert all(line.endswith(" 0.0") for line in active), active
    assert f"could not write to a temporary file in {body_dir.resolve()}" in log, log[-2000:]
    assert "Traceback" not in log and "request handler failed" not in log, log[-3000:]


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
