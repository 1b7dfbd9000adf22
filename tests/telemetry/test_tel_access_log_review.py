"""gateway.access_log as nginx's access_log and Kong's proxy_access_log take it: what the config may say (a file nginx
could open, the word off, no nginx parameters), when a request starts (its head's first bytes), how a line escapes
DEL, and a log pipe whose reader left (the worker never waits on it)."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator

import pytest
import trio
from backends import log_lines, parse_raw_response, raw_exchange, service

from gateway.cli import EXIT_OK, check_config
from gateway.config import ConfigError, parse_config
from gateway.telemetry.service import access_log_path

TIMEOUT = 10
RESCUE_S = 8.0  # fifo_rescue's reader opens the FIFO this long after it is armed


def _settings(access_log: str) -> str:
    return f'_format_version: "3.0"\ngateway:\n  access_log: {json.dumps(access_log)}\nservices: []\n'


def _refusal(value: str) -> str:
    """The loader's message for gateway.access_log `value` (the test fails if it is accepted)."""
    with pytest.raises(ConfigError) as e:
        parse_config(_settings(value), "gateway.yaml")
    (message,) = [m for m in e.value.messages if "access_log" in m]
    return message


# ---- config load ----------------------------------------------------------------------------------------------------

def test_check_config_refuses_an_access_log_in_a_directory_that_does_not_exist(tmp_path, capsys):
    """nginx opens every access_log file at config load (nginx -t too) and fails on one it cannot open:
    src/core/ngx_cycle.c:383-397 (release-1.27.1): `file[i].fd = ngx_open_file(...); if (file[i].fd ==
    NGX_INVALID_FILE) { ngx_log_error(NGX_LOG_EMERG, ..., ngx_open_file_n " \\"%s\\" failed", ...); goto failed; }`;
    Kong's prefix_handler (kong/cmd/utils/prefix_handler.lua:564-568) writes nginx_acc_logs at start and returns its
    error."""
    path = tmp_path / "gateway.yaml"
    missing = tmp_path / "no-such-dir" / "sub" / "access.log"
    path.write_text(_settings(str(missing)))
    rc = check_config(str(path))
    err = capsys.readouterr().err
    assert rc != EXIT_OK
    assert "gateway.access_log" in err and f"{missing.parent} does not exist" in err


def test_an_access_log_that_is_a_directory_is_refused(tmp_path):
    """ngx_open_file (open(2) with O_WRONLY) of a directory fails with EISDIR: ngx_cycle.c:383-397 fails the start."""
    message = _refusal(str(tmp_path))
    assert f"{tmp_path} is a directory" in message


@pytest.mark.parametrize("value", ["syslog:server=127.0.0.1:514,tag=kong", "syslog:server=unix:/dev/log"])
def test_nginxs_syslog_target_is_refused_not_taken_as_a_file_name(tmp_path, monkeypatch, value):
    """nginx's access_log sends to syslog when its argument starts with `syslog:` (release-1.27.1
    src/http/modules/ngx_http_log_module.c:1285), and Kong passes proxy_access_log to it as it is
    (templates/nginx_kong.lua `access_log ${{PROXY_ACCESS_LOG}};`). Not built here: refused, naming syslog, where the
    first was a file of that name in the working directory and the second "a directory that does not exist"."""
    monkeypatch.chdir(tmp_path)
    message = _refusal(value)
    assert "nginx's syslog target" in message and "does not exist" not in message, message


def test_an_empty_access_log_is_refused(tmp_path):
    """nginx's access_log takes a path, `off` or `syslog:`: "" names no file (ngx_open_file("") fails, ENOENT)."""
    assert "an empty path" in _refusal("")


def test_access_log_off_is_kongs_off_not_a_file_named_off(tmp_path, monkeypatch):
    """kong.conf.default:38-40: `proxy_access_log = logs/access.log  # ... Set this value to `off` to disable logging
    proxy requests`; kong/cmd/utils/prefix_handler.lua:262-264 `if kong_proxy_access_log ~= "off" then
    compile_env.proxy_access_log_enabled = true`. The word (quoted: Kong's value is a string) is no file."""
    monkeypatch.chdir(tmp_path)
    config = parse_config(_settings("off"), "gateway.yaml")
    assert access_log_path(config) is None


def test_access_log_with_nginx_parameters_is_refused_not_taken_as_a_file_name(tmp_path):
    """Kong's proxy_access_log is nginx's access_log arguments (kong/templates/nginx_kong.lua:113 `access_log
    ${{PROXY_ACCESS_LOG}};`, prefix_handler.lua:266-270 splits `path format`), and nginx's access_log takes
    `buffer=`, `flush=`, `gzip`, `if=` after the path (src/http/modules/ngx_http_log_module.c ngx_http_log_set_log).
    The gateway writes JSON lines itself: the parameters are refused, never part of the file's name."""
    message = _refusal(f"{tmp_path / 'access.log'} buffer=32k flush=5s")
    assert "nginx's access_log parameters" in message and "JSON lines" in message


# ---- what a line says -----------------------------------------------------------------------------------------------

async def test_latencies_request_and_started_at_count_from_the_first_byte_of_the_head(nursery, gateway, tmp_path):
    """nginx's request starts when its first bytes are read (src/http/ngx_http_request.c:639-640
    ngx_http_alloc_request: `r->start_sec = tp->sec; r->start_msec = tp->msec;`, from :516 `c->data =
    ngx_http_create_request(c);` once recv() gave data), and $request_time is measured from it
    (src/http/modules/ngx_http_log_module.c:847). Kong's serializer: kong/pdk/log.lua `request =
    tonumber(var.request_time) * 1000` and `started_at = okong_request.get_start_time()` (kong/pdk/request.lua:917
    `start_time() * 1000`). A head sent in two pieces 0.5 s apart: request >= 0.45 s, started_at at the first."""
    access = tmp_path / "access.log"
    port = await gateway({"services": [service("svc", "http://127.0.0.1:9", [{"paths": ["/"]}])],
                          "plugins": [{"name": "request-termination", "config": {"status_code": 200}}]},
                         access_log=str(access))
    first_byte_ms = time.time() * 1000
    received, _ = await raw_exchange(port, [b"GET /slow HTTP/1.1\r\n", b"Host: gw\r\nConnection: close\r\n\r\n"],
                                     pause=0.5)
    assert parse_raw_response(received)[0] == 200
    (line,) = await log_lines(access, 1)
    assert line["latencies"]["request"] >= 450, line["latencies"]
    assert line["started_at"] <= first_byte_ms + 100, line["started_at"] - first_byte_ms


async def test_a_head_timeout_logs_the_time_the_head_took_as_request_latency(nursery, gateway, tmp_path):
    """nginx logs a header timeout with status 408 and answers nothing (src/http/ngx_http_request.c:1097-1101
    `ngx_http_close_request(r, NGX_HTTP_REQUEST_TIME_OUT)`) and its $request_time counts from the request's first
    bytes (ngx_http_alloc_request's start_sec/start_msec), so Kong's latencies.request is about
    client_header_timeout."""
    access = tmp_path / "access.log"
    port = await gateway({"services": []}, access_log=str(access), header_timeout_s=0.4)
    received, _ = await raw_exchange(port, b"GET / HTTP/1.1\r\nhost: gw\r\n")
    assert received == b""
    (line,) = await log_lines(access, 1)
    assert line["response"]["status"] == 408
    assert line["latencies"]["request"] >= 300, line["latencies"]


async def test_a_del_byte_is_escaped_as_lua_cjson_escapes_it(nursery, gateway, tmp_path):
    """lua-cjson escapes DEL: openresty/lua-cjson lua_cjson.c `static const char *char2escape[256]`, entry 127
    `"\\\\u007f"`, used by json_append_string for every byte. The querystring `a=%7F` decodes to a DEL byte (as
    ngx.req.get_uri_args does)."""
    access = tmp_path / "access.log"
    port = await gateway({"services": []}, access_log=str(access))
    await raw_exchange(port, b"GET /x?a=%7F HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    (line,) = await log_lines(access, 1)
    assert line["request"]["querystring"] == {"a": "\x7f"}
    raw = access.read_bytes()
    assert b"\x7f" not in raw and b"\\u007f" in raw, raw


# ---- writing --------------------------------------------------------------------------------------------------------

@pytest.fixture
def fifo_rescue(tmp_path) -> Iterator[dict]:  # noqa: ANN001
    """A FIFO for the access log, and a rescue: RESCUE_S after `arm()`, a reader opens it, so a writer blocked in
    open() goes on (the test stays bounded); every descriptor is closed after the gateway has stopped."""
    path = tmp_path / "access.fifo"
    os.mkfifo(path)
    fds: list[int] = []

    def rescue() -> None:
        fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))

    timer = threading.Timer(RESCUE_S, rescue)
    state = {"path": path, "fds": fds, "arm": timer.start}
    yield state
    timer.cancel()
    for fd in fds:
        os.close(fd)


async def test_a_pipe_whose_reader_left_does_not_freeze_the_worker(fifo_rescue, nursery, gateway):
    """nginx keeps the access log's descriptor when a write fails and only logs it, at most once a minute
    (src/http/modules/ngx_http_log_module.c:444-458 ngx_http_log_write: `if (n == -1) { ... if (now -
    log->error_log_time > 59) { ngx_log_error(NGX_LOG_ALERT, ..., ngx_write_fd_n " to \\"%s\\" failed", name); ...}
    return; }`; SIGPIPE is ignored, src/os/unix/ngx_process.c:80). open(O_WRONLY) of a FIFO with no reader would
    block the worker's event loop: the writer keeps the descriptor, and opens with O_NONBLOCK."""
    path = fifo_rescue["path"]
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    fifo_rescue["fds"].append(reader)
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    port = await gateway({"services": []}, access_log=str(path))
    get = b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    assert parse_raw_response((await raw_exchange(port, get))[0])[0] == 404
    with trio.fail_after(TIMEOUT):
        data = b""
        while not data.endswith(b"\n"):
            try:
                data += os.read(reader, 65536)
            except BlockingIOError:
                await trio.sleep(0.02)
    assert json.loads(data)["response"]["status"] == 404
    fifo_rescue["fds"].remove(reader)
    os.close(reader)  # the log shipper goes away
    fifo_rescue["arm"]()
    started = time.monotonic()
    for _ in range(3):  # the first line meets EPIPE; the next ones must not wait for a reader
        assert parse_raw_response((await raw_exchange(port, get))[0])[0] == 404
        await trio.sleep(0.05)
    elapsed = time.monotonic() - started
    # (3 exchanges and 0.15 s of sleeps: well under a second, a few on a busy host; a frozen worker waits RESCUE_S)
    assert elapsed < RESCUE_S / 2, f"the worker stood still {elapsed:.1f}s (until the rescue reader opened the FIFO)"
