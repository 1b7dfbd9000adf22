"""http-log, file-log, tcp-log, udp-log and syslog against Kong's own source and spec tests
(kong/plugins/<name>/, spec/03-plugins/03-http-log, 04-file-log, 01-tcp-log, 02-udp-log, 05-syslog)."""

from __future__ import annotations

import base64
import os

import msgspec
import pytest
import trio
from backends import EchoBackend, request, service

from gateway.config import ConfigError, parse_config
from gateway.policies.file_log.handler import FileLog
from gateway.policies.file_log.schema import FileLogConfig
from gateway.policies.http_log.handler import HttpLog
from gateway.policies.http_log.schema import HttpLogConfig
from gateway.runtime import compile_config
from gateway.telemetry.batch import Queues
from gateway.telemetry.lines import Lines

SERVICE = "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"
TIMEOUT = 10


def errors(text: str) -> list[str]:
    """check-config's messages for a config with one service and `text`."""
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(SERVICE + text, "t.yml"), "t.yml")
    return [m.removeprefix("t.yml: ") for m in info.value.messages]


def accepted(text: str) -> bool:
    compile_config(parse_config(SERVICE + text, "t.yml"), "t.yml")
    return True


# --- file-log: Kong's path match -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [" /ovo", "/ovo  ", "\t/ovo", "/ovo*", "/ovo`", "test&thing", "test%thing",
                                  "test\\\\thing", "a"])
def test_file_log_refuses_what_kong_says_is_not_a_valid_filename(path: str):
    """spec/03-plugins/04-file-log/02-schema_spec.lua: no * & % \\ ` anywhere, no white space first or last
    ("beginning spaces are not allowed", "trailing spaces are not allowed"), with Kong's message. Kong's pattern
    (schema.lua) also wants two characters at least."""
    assert errors(f'plugins: [{{name: file-log, config: {{path: "{path}"}}}}]') == [
        "plugins[0].config.path: not a valid filename"]


@pytest.mark.parametrize("path", ["/o vo.loga", "/tmp/log.txt", "ab"])
def test_file_log_accepts_a_filename_with_a_space_inside(path: str):
    """spec/03-plugins/04-file-log/02-schema_spec.lua "accept valid filename that includes space"."""
    assert accepted(f"plugins: [{{name: file-log, config: {{path: '{path}'}}}}]")


# --- http-log: headers as Kong's schema takes them ------------------------------------------------------------------


def test_http_log_refuses_an_empty_header_value():
    """spec/03-plugins/03-http-log/02-schema_spec.lua "does not accept empty header values": a Kong string is at least
    one character."""
    assert errors("plugins: [{name: http-log, config: {http_endpoint: 'http://h/', headers: {X-My-Header: ''}}}]") \
        == ["plugins[0].config.headers: length must be at least 1"]


@pytest.mark.parametrize("name", ["X.Token", "X@Y", "X/Y", "Ä"])
def test_http_log_refuses_a_header_name_kong_does_not_allow(name: str):
    """The header names are typedefs.header_name (kong/tools/http.lua validate_header_name): A-Z, a-z, 0-9, _ and -
    only."""
    assert errors(f"plugins: [{{name: http-log, config: {{http_endpoint: 'http://h/', headers: {{'{name}': v}}}}}}]") \
        == [f"plugins[0].config.headers: bad header name '{name}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"]


def test_http_log_accepts_header_names_of_letters_digits_underscores_and_dashes():
    """spec/03-plugins/03-http-log/02-schema_spec.lua "does accept allowed headers"."""
    assert accepted("plugins: [{name: http-log, config: {http_endpoint: 'http://h/', headers: {X-My-Header: '123', "
                    "X_Your_Header9: abc}}}]")


# --- http-log: what reaches the collector ---------------------------------------------------------------------------


async def _sent(nursery: trio.Nursery, endpoint: str) -> tuple[str, str | None]:
    """(request target, Authorization) of the request http-log sends one entry with, to `endpoint` ({port} is the
    collector's)."""
    collector = EchoBackend("collector")
    await nursery.start(collector.serve)
    config = msgspec.convert({"http_endpoint": endpoint.format(port=collector.port)}, HttpLogConfig)
    with trio.fail_after(TIMEOUT):
        await HttpLog(config, Queues()).send([b'{"a":1}\n'])
    (seen,) = collector.requests
    return seen.target, seen.header("authorization")


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:{port}/logs?token=abc", "http://127.0.0.1:{port}/logs;v=1",
                                      "http://127.0.0.1:{port}/logs;v=1?token=abc#top"])
async def test_http_log_requests_the_endpoints_path_only(nursery, endpoint: str):
    """kong/plugins/http-log/handler.lua sends to fmt("%s://%s:%d%s", scheme, host, port, parsed_url.path):
    socket.url's path, without the URL's ;params and ?query."""
    target, _ = await _sent(nursery, endpoint)
    assert target == "/logs"


async def test_http_log_requests_slash_for_an_endpoint_without_a_path(nursery):
    """handler.lua parse_url: no path is "/"."""
    target, _ = await _sent(nursery, "http://127.0.0.1:{port}")
    assert target == "/"


@pytest.mark.parametrize(("userinfo", "credentials"), [("user:pw", "user:pw"), ("us%40er:p%3Ass", "us%40er:p%3Ass"),
                                                       ("user", "user"), ("user:", "user:")])
async def test_http_log_basic_credentials_are_the_userinfo_as_written(nursery, userinfo: str, credentials: str):
    """handler.lua: Authorization is "Basic " .. encode_base64(parsed_url.userinfo), socket.url's userinfo as the
    URL has it: not percent-decoded, and no ":" added when there is no password."""
    _, authorization = await _sent(nursery, f"http://{userinfo}@127.0.0.1:{{port}}/logs")
    assert authorization == "Basic " + base64.b64encode(credentials.encode()).decode()


# --- file-log: the line and the file it goes to ----------------------------------------------------------------------


async def test_file_log_line_escapes_forward_slashes_as_cjson(nursery, gateway, tmp_path):
    """kong/plugins/file-log/handler.lua:37 writes cjson.encode(message) with OpenResty's lua-cjson, whose
    encode_escape_forward_slash is on by default (as for syslog, http-log, tcp-log, udp-log and loggly, which encode
    the entry with the same cjson): the logged uri /api/x is written `"uri":"\\/api\\/x"`."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "api", "paths": ["/api"], "plugins": [{"name": "file-log", "config": {"path": str(log)}}]}])]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/api/x")).status == 200
        while not (log.exists() and log.read_text().endswith("\n")):
            await trio.sleep(0.01)
    raw = log.read_text()
    assert '"uri":"\\/api\\/x"' in raw, raw[:200]
    assert "/" not in raw.replace("\\/", "")


class _Entry:
    """What FileLog defers (Entry.json_line reads entry.json())."""

    def __init__(self, text: str) -> None:
        self.text = text

    def json(self) -> bytes:
        return b'{"uuid":"%s"}' % self.text.encode()


def test_file_log_logs_are_lost_if_reopen_false_and_the_file_was_removed_after_a_reopen_write(tmp_path):
    """spec/03-plugins/04-file-log/01-log_spec.lua:536-553 with kong/plugins/file-log/handler.lua:31-59: the worker
    keeps one file per path for every instance; a reopen = true write closes it, opens the path and keeps the new
    file; a reopen = false instance then writes to that file, and the removed path is not created again."""
    path = tmp_path / "file.log"
    lines = Lines()
    writer = lines.writer_for(str(path))
    reopening = FileLog(FileLogConfig(path=str(path), reopen=True), writer)
    keeping = FileLog(FileLogConfig(path=str(path), reopen=False), writer)
    try:
        reopening.log_entry(_Entry("first"))  # type: ignore[arg-type]
        lines.flush()
        assert path.read_text() == '{"uuid":"first"}\n'
        os.remove(path)
        keeping.log_entry(_Entry("second"))  # type: ignore[arg-type]
        lines.flush()
        assert not path.exists()
    finally:
        lines.close()


def test_file_log_a_reopen_write_recreates_a_removed_file(tmp_path):
    """kong/plugins/file-log/handler.lua:38-56: with reopen = true the path is opened again before the write
    (O_CREAT), so a removed file comes back (spec 04-file-log/01-log_spec.lua "reopens file on each request")."""
    path = tmp_path / "file.log"
    lines = Lines()
    writer = lines.writer_for(str(path))
    reopening = FileLog(FileLogConfig(path=str(path), reopen=True), writer)
    try:
        reopening.log_entry(_Entry("first"))  # type: ignore[arg-type]
        lines.flush()
        os.remove(path)
        reopening.log_entry(_Entry("second"))  # type: ignore[arg-type]
        lines.flush()
        assert path.read_text() == '{"uuid":"second"}\n'
    finally:
        lines.close()
