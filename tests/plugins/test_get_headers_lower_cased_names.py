"""How plugins find a request header by a configured name with capitals and "_", as Kong's PDK does:
kong.request.get_headers() is a table keyed by the lower-case names as sent ("_" kept: Kong runs nginx with
underscores_in_headers on, kong/templates/nginx_kong.lua:30), whose metatable (lua-resty-core
lib/resty/core/request.lua req_headers_mt, v0.1.26 and later, so Kong 3.x's OpenResty) looks a missed name up
lower-cased first, and only then that with "_" as "-"; kong.request.get_header (kong/tools/http.lua:551-571) reads
nginx's $http_<name> and, when that holds ", ", get_headers()[name]'s first value.

Unit tests of gateway.policies.header_list (which request-termination's trigger, correlation-id's header_name and
request-transformer's $(headers.<name>) read through) and of zipkin's tags header; one gateway for the plugins."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
from plugin_helpers import call, headers_of, http_codec, plugin, seen, start  # noqa: F401

from gateway.policies.header_list import lookup, request_header
from gateway.policies.zipkin.handler import Zipkin
from gateway.policies.zipkin.schema import ZipkinConfig
from gateway.telemetry.batch import Queues


def test_get_headers_looks_a_name_with_capitals_up_lower_cased_before_with_dashes():
    """req_headers_mt.__index: `key = lower(key); local value = rawget(tb, key)`, then, on a miss and only for a key
    with "_", `rawget(tb, str_replace_char(key, '_', '-'))`: headers["X_Stop"] is the `x_stop` lines when there
    are any, else the `x-stop` ones."""
    assert lookup([(b"x-stop", b"dash"), (b"x_stop", b"1"), (b"x_stop", b"2")], b"X_Stop") == [b"1", b"2"]
    assert lookup([(b"x-stop", b"dash")], b"X_Stop") == b"dash"
    assert lookup([(b"x-stop", b"dash")], b"X-Stop") == b"dash"


def test_get_header_of_a_repeated_header_named_with_capitals_and_underscores_is_its_first_line():
    """kong/tools/http.lua:561-570: get_header("X_Request_Tag") with two `x_request_tag` lines has
    $http_x_request_tag "a, b", so it answers get_headers()["X_Request_Tag"][1], found lower-cased: "a"."""
    assert request_header([(b"x_request_tag", b"a"), (b"x_request_tag", b"b")], b"X_Request_Tag") == b"a"


async def test_plugins_find_lines_named_as_their_configured_name_lower_cased(nursery, gateway):
    """correlation-id (handler.lua:57-58) with header_name "X_Request_Tag": get_header finds the client's two
    `x_request_tag` lines ("a"), so Kong sets no id of its own and the upstream gets the client's lines; the echo is
    "a". request-termination (handler.lua:31 `req_headers[conf.trigger]`) with trigger "X_Stop" finds an `x_stop`
    line and answers 403."""
    _, port = await start(nursery, gateway, routes=[
        {"paths": ["/tag"], "plugins": [plugin("correlation-id", header_name="X_Request_Tag", generator="uuid",
                                               echo_downstream=True)]},
        {"paths": ["/stop"], "plugins": [plugin("request-termination", status_code=403, trigger="X_Stop")]}])
    reply = await call(port, "/tag", [("x_request_tag", "a"), ("x_request_tag", "b")])
    assert seen(reply)["headers"].get("x_request_tag") == ["a", "b"]
    assert headers_of(reply, "x-request-tag") == ["a"]
    assert (await call(port, "/stop", [("x_stop", "1")])).status == 403


def test_zipkin_tags_header_named_with_an_underscore_reads_the_underscored_lines_first():
    """kong/plugins/zipkin/handler.lua:176 `request_tags.parse(req_headers[conf.tags_header])` (get_headers()' table):
    tags_header "X_Span_Tags" finds `x_span_tags` lines lower-cased, and only without them the `x-span-tags` ones."""
    zipkin = Zipkin(msgspec.convert({"tags_header": "X_Span_Tags"}, ZipkinConfig), "p", queues=Queues())

    def tag_lines(headers: list[tuple[bytes, bytes]]) -> list[bytes] | None:
        ex = SimpleNamespace(request=SimpleNamespace(headers=headers, method=b"GET"), state=None)
        return zipkin.current(ex).tag_values  # type: ignore[arg-type]

    assert tag_lines([(b"x-span-tags", b"b=2"), (b"x_span_tags", b"a=1")]) == [b"a=1"]
    assert tag_lines([(b"x-span-tags", b"b=2")]) == [b"b=2"]
