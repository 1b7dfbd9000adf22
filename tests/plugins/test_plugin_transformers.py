"""Kong's request-transformer and response-transformer over the real gateway, with the examples of Kong's docs:
headers, query strings and bodies (JSON, form and multipart) on the way in; headers and JSON bodies on the way out."""

from __future__ import annotations

import json

import pytest
import trio
from backends import SseBackend, service
from plugin_helpers import (
    body_json,
    call,
    headers_of,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    refused,
    seen,
    start,
)

# --- request-transformer --------------------------------------------------------------------------------------------


async def test_request_headers_are_removed_renamed_replaced_added_and_appended(nursery, gateway):
    rt = plugin("request-transformer", remove={"headers": ["x-drop"]}, rename={"headers": ["x-old:x-new"]},
                replace={"headers": ["x-rep:replaced", "x-absent:never"]}, add={"headers": ["x-add:added",
                                                                                        "x-rep:not-added"]},
                append={"headers": ["x-app:two"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x", [("x-drop", "1"), ("x-old", "o"), ("x-rep", "r"), ("x-app", "one")]))
    h = got["headers"]
    assert "x-drop" not in h and "x-old" not in h and "x-absent" not in h
    assert h["x-new"] == ["o"] and h["x-rep"] == ["replaced"] and h["x-add"] == ["added"]
    assert h["x-app"] == ["one", "two"]


async def test_request_query_arguments_are_transformed(nursery, gateway):
    rt = plugin("request-transformer", remove={"querystring": ["drop"]}, rename={"querystring": ["old:new"]},
                replace={"querystring": ["rep:R"]}, add={"querystring": ["add:A", "rep:no"]},
                append={"querystring": ["app:2"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x?drop=1&old=o&rep=r&app=1&keep=k"))
    path, _, query = got["path"].partition("?")
    assert path == "/x"
    assert sorted(query.split("&")) == sorted(["new=o", "rep=R", "app=1", "app=2", "keep=k", "add=A"])


async def test_a_json_request_body_is_transformed_and_its_length_follows(nursery, gateway):
    rt = plugin("request-transformer", remove={"body": ["secret"]}, rename={"body": ["old:new"]},
                replace={"body": ["rep:R", "missing:M"]}, add={"body": ["added:yes"]}, append={"body": ["tags:b"]})
    backend, port = await start(nursery, gateway, plugins=[rt])
    body = json.dumps({"secret": "s", "old": 1, "rep": "r", "tags": "a"}).encode()
    got = seen(await call(port, "/x", [("content-type", "application/json")], method="POST", body=body))
    assert json.loads(got["body"]) == {"new": 1, "rep": "R", "added": "yes", "tags": ["a", "b"]}
    assert got["headers"]["content-length"] == [str(len(got["body"]))]


async def test_a_chunked_json_body_is_sent_upstream_with_a_length(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer", add={"body": ["k:v"]})])
    got = seen(await call(port, "/x", [("content-type", "application/json")], method="POST",
                          body=[b'{"a":', b' 1}']))
    assert json.loads(got["body"]) == {"a": 1, "k": "v"}
    assert "transfer-encoding" not in got["headers"]


async def test_a_form_body_is_transformed(nursery, gateway):
    rt = plugin("request-transformer", remove={"body": ["b"]}, add={"body": ["c:3"]}, append={"body": ["a:9"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x", [("content-type", "application/x-www-form-urlencoded")], method="POST",
                          body=b"a=1&b=2"))
    assert sorted(got["body"].split("&")) == ["a=1", "a=9", "c=3"]


MULTIPART = "multipart/form-data; boundary=xYzZY"


def multipart(*parts: tuple[str, str, str]) -> bytes:
    """A multipart/form-data body of (name, extra header line or "", value) parts."""
    out = b"".join(b'--xYzZY\r\nContent-Disposition: form-data; name="%s"%s\r\n\r\n%s\r\n' % (
        name.encode(), extra.encode(), value.encode()) for name, extra, value in parts)
    return out + b"--xYzZY--\r\n"


async def test_a_multipart_body_is_transformed_as_kongs_lua_multipart_does(nursery, gateway):
    """transform_multipart_body with lua-multipart 0.5.9 (checked under LuaJIT): rename, then remove, replace (a
    replaced part moves to the end) and add (appended); append does nothing; untouched parts keep their headers.
    lua-multipart's delete of a repeated name removes its parts one by one from a list that shifts under it, so
    the second "drop" survives and the renamed "new" goes instead: Kong's output, reproduced."""
    rt = plugin("request-transformer", remove={"body": ["drop"]}, rename={"body": ["old:new"]},
                replace={"body": ["rep:R", "missing:M"]}, add={"body": ["added:yes", "keep:no"]},
                append={"body": ["keep:appended"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    body = multipart(("keep", '; filename="a.txt"\r\nContent-Type: text/plain', "file"), ("rep", "", "r"),
                     ("old", "", "o"), ("drop", "", "1"), ("drop", "", "2"))
    got = seen(await call(port, "/x", [("content-type", MULTIPART)], method="POST", body=body))
    assert got["body"].encode() == multipart(("keep", '; filename="a.txt"\r\nContent-Type: text/plain', "file"),
                                              ("drop", "", "2"), ("rep", "", "R"), ("added", "", "yes"))
    assert got["headers"]["content-length"] == [str(len(got["body"]))]
    assert got["headers"]["content-type"] == [MULTIPART]


async def test_a_multipart_body_is_written_again_on_any_remove_and_never_appended_to(nursery, gateway):
    """Kong sets `removed` for every configured name, present or not, so the body is written again; append is not
    applied to a multipart body. lua-multipart keeps a preamble as the start of the first part's value."""
    rt = plugin("request-transformer", remove={"body": ["absent"]}, append={"body": ["a:2"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    body = b"preamble\r\n" + multipart(("a", "", "1"))
    got = seen(await call(port, "/x", [("content-type", MULTIPART)], method="POST", body=body))
    assert got["body"].encode() == multipart(("a", "", "preamble\r\n1"))


async def test_a_multipart_body_only_appended_to_is_forwarded_as_sent(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer", append={"body": ["a:2"]})])
    body = b"preamble\r\n" + multipart(("a", "", "1"))
    got = seen(await call(port, "/x", [("content-type", MULTIPART)], method="POST", body=body))
    assert got["body"].encode() == body


async def test_an_empty_json_body_only_gets_added_keys(nursery, gateway):
    rt = plugin("request-transformer", remove={"body": ["x"]}, add={"body": ["k:v"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    got = seen(await call(port, "/x", [("content-type", "application/json")], method="POST"))
    assert json.loads(got["body"]) == {"k": "v"}


async def test_templates_take_values_from_request_headers_and_query(nursery, gateway):
    rt = plugin("request-transformer", add={"headers": ["x-from-header:$(headers.x_user)",
                                                       "x-from-query:id=$(query_params[\"id\"])",
                                                       "x-missing:[$(headers.nope)]"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    h = seen(await call(port, "/x?id=42", [("x-user", "ann")]))["headers"]
    assert (h["x-from-header"], h["x-from-query"], h["x-missing"]) == (["ann"], ["id=42"], ["[]"])


async def test_http_method_changes_the_upstream_method(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer", http_method="PUT")])
    assert seen(await call(port, "/x", method="POST", body=b"{}"))["method"] == "PUT"


@pytest.mark.parametrize(("config", "message"), [
    ({"replace": {"uri": "/$(shared.v)"}}, "config.replace.uri: only the templates"),
    ({"add": {"headers": ["x:$(os.getenv('HOME'))"]}}, "config.add.headers[0]: only the templates"),
    ({"add": {"body": ["novalue"]}}, "config.add.body[0]: key 'novalue' has no value"),
    ({"rename": {"headers": ["x-a:not valid"]}}, "config.rename.headers[0]: 'not valid' is not a valid header"),
    ({"add": {"cookies": ["a:b"]}}, "config.add.cookies"),
    ({"remove": {"headers": ["x-a\n"]}}, "config.remove.headers[0]: "),
])
def test_request_transformer_config_errors_name_the_field(config, message):
    assert message in refused({"name": "request-transformer", "config": config})


# --- response-transformer -------------------------------------------------------------------------------------------


async def test_response_headers_are_removed_renamed_replaced_added_and_appended(nursery, gateway):
    rt = plugin("response-transformer", remove={"headers": ["x-backend"]}, rename={"headers": ["x-request-id:x-rid"]},
                replace={"headers": ["content-type:application/json; charset=utf-8"]},
                add={"headers": ["x-added:1"]}, append={"headers": ["x-added:2"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    reply = await call(port, "/x")
    assert reply.status == 200
    assert reply.header("x-backend") is None and reply.header("x-request-id") is None and reply.header("x-rid")
    assert reply.header("content-type") == "application/json; charset=utf-8"
    assert headers_of(reply, "x-added") == ["1", "2"]


async def test_a_json_response_body_is_transformed_with_json_types(nursery, gateway):
    rt = plugin("response-transformer", remove={"json": ["headers", "body_sha256"]}, rename={"json": ["name:backend"]},
                replace={"json": ["method:changed"]}, add={"json": ["count:7", "ok:true", "name:ignored"],
                                                            "json_types": ["number", "boolean"]},
                append={"json": ["method:more"]})
    _, port = await start(nursery, gateway, plugins=[rt])
    for framing in ("length", "chunked"):
        reply = await call(port, f"/x?framing={framing}")
        doc = body_json(reply)
        assert "headers" not in doc and "body_sha256" not in doc
        assert (doc["backend"], doc["method"], doc["count"], doc["ok"]) == ("echo", ["changed", "more"], 7, True)
        assert "name" in doc and doc["name"] == "ignored"  # renamed away first, so add puts it back
        assert reply.header("content-length") == str(len(reply.body))


async def test_a_body_that_is_not_json_passes_unchanged(nursery, gateway):
    _, port = await start(nursery, gateway, plugins=[plugin("response-transformer", add={"json": ["a:b"]})])
    reply = await call(port, "/x?bytes=5000")
    assert reply.status == 200 and len(reply.body) == 5000 and reply.header("content-length") == "5000"


async def test_the_gateways_own_json_error_is_transformed(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth"},
                                           plugin("response-transformer", add={"json": ["hint:send apikey"]})]}]
    _, port = await start(nursery, gateway, routes)
    reply = await call(port, "/x")
    doc = body_json(reply)
    assert reply.status == 401 and doc["message"] == "No API key found in request" and doc["hint"] == "send apikey"


async def test_an_event_stream_is_never_buffered(nursery, gateway):
    sse = SseBackend(events=3, gap=0.4)
    await nursery.start(sse.serve)
    rt = plugin("response-transformer", add={"json": ["a:b"], "headers": ["x-seen:yes"]})
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{sse.port}", [{"paths": ["/"]}])],
                          "plugins": [rt]})
    with trio.fail_after(10):
        reply = await call(port, "/events")
    assert reply.header("x-seen") == "yes"
    times = [t for t, _ in reply.chunks]
    assert len(times) >= 3 and times[-1] - times[0] >= 0.6  # events arrived as sent, not all at the end


@pytest.mark.parametrize(("config", "message"), [
    ({"add": {"json": ["novalue"]}}, "config.add.json[0]: should match the pattern"),
    ({"add": {"json_types": ["integer"]}}, "config.add.json_types[0]: expected one of"),
    ({"remove": {"body": ["x"]}}, "config.remove.body"),
])
def test_response_transformer_config_errors_name_the_field(config, message):
    assert message in refused({"name": "response-transformer", "config": config})
