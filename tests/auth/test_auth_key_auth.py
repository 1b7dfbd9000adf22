"""Kong's key-auth through the in-process gateway: kong/plugins/key-auth's answers and what reaches the upstream."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from auth_helpers import (
    call,
    consumer_id,
    http_codec,  # noqa: F401 - the fixture: one codec
    message,
    start,
    upstream,
)

CONSUMERS = [
    {"username": "bob", "keyauth_credentials": [{"key": "kong", "id": "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"}]},
    {"username": "no-body"},
]


async def key_gateway(nursery, gateway, **config):  # noqa: ANN001,ANN003,ANN201
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth", "config": config}]}]
    return await start(nursery, gateway, routes, consumers=CONSUMERS)


async def test_no_key_is_401_with_kongs_message_and_challenge(nursery, gateway):
    _, port = await key_gateway(nursery, gateway)
    reply = await call(port)
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})
    assert reply.header("www-authenticate") == "Key"


@pytest.mark.parametrize("where", ["header", "query", "bare-query"])
async def test_an_empty_key_is_no_key(nursery, gateway, where):
    _, port = await key_gateway(nursery, gateway)
    reply = await call(port, "/?apikey=" if where == "query" else "/?apikey" if where == "bare-query" else "/",
                       headers=[("apikey", "")] if where == "header" else [])
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


async def test_the_realm_is_in_the_challenge(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, realm="test-realm")
    reply = await call(port)
    assert reply.header("www-authenticate") == 'Key realm="test-realm"'


@pytest.mark.parametrize("where", ["header", "query"])
async def test_an_unknown_key_is_401_unauthorized(nursery, gateway, where):
    _, port = await key_gateway(nursery, gateway)
    reply = await call(port, "/?apikey=123" if where == "query" else "/",
                       headers=[("apikey", "123")] if where == "header" else [])
    assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})
    assert reply.header("www-authenticate") == "Key"


@pytest.mark.parametrize("where", ["header", "query"])
async def test_a_valid_key_reaches_upstream_with_kongs_consumer_headers(nursery, gateway, where):
    _, port = await key_gateway(nursery, gateway)
    seen = upstream(await call(port, "/?apikey=kong" if where == "query" else "/",
                               headers=[("apikey", "kong")] if where == "header" else []))
    assert seen["x-consumer-username"] == "bob"
    assert seen["x-consumer-id"] == consumer_id("bob")
    assert seen["x-credential-identifier"] == "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"  # key-auth names the credential id
    assert "x-anonymous-consumer" not in seen


@pytest.mark.parametrize(("target", "headers"), [
    ("/?apikey=kong&apikey=kong", []),
    ("/?apikey=kong&apikey", []),
    ("/", [("apikey", "kong"), ("apikey", "kong")]),
], ids=["query", "query-and-bare", "header"])
async def test_a_key_given_twice_is_duplicate(nursery, gateway, target, headers):
    _, port = await key_gateway(nursery, gateway)
    reply = await call(port, target, headers=headers)
    assert (reply.status, message(reply)) == (401, {"message": "Duplicate API key found"})
    assert reply.header("www-authenticate") == "Key"


async def test_the_header_is_looked_at_before_the_query(nursery, gateway):
    _, port = await key_gateway(nursery, gateway)
    assert (await call(port, "/?apikey=nope", headers=[("apikey", "kong")])).status == 200
    assert (await call(port, "/?apikey=kong", headers=[("apikey", "nope")])).status == 401


async def test_key_in_header_and_key_in_query_can_be_turned_off(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_in_header=False)
    assert (await call(port, headers=[("apikey", "kong")])).status == 401
    assert (await call(port, "/?apikey=kong")).status == 200


async def test_key_in_query_off(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_in_query=False)
    reply = await call(port, "/?apikey=kong")
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


async def test_several_key_names_are_tried_in_order(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_names=["x-api-key", "api_key"])
    assert (await call(port, headers=[("x-api-key", "kong")])).status == 200
    assert (await call(port, headers=[("api-key", "kong")])).status == 200  # ngx: "_" in a name matches "-"
    assert (await call(port, "/?api_key=kong")).status == 200
    assert (await call(port, headers=[("apikey", "kong")])).status == 401


async def test_without_hide_credentials_the_key_goes_upstream(nursery, gateway):
    _, port = await key_gateway(nursery, gateway)
    seen = upstream(await call(port, "/request?c=value1&b=value2&apikey=kong&a=value3", headers=[("apikey", "kong")]))
    assert seen["apikey"] == "kong"
    assert seen[":path"] == "/request?c=value1&b=value2&apikey=kong&a=value3"


async def test_hide_credentials_strips_the_key_from_header_and_query_keeping_the_order(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, hide_credentials=True)
    seen = upstream(await call(port, "/request?c=value1&b=value2&apikey=kong&a=value3"))
    assert seen[":path"] == "/request?c=value1&b=value2&a=value3"
    seen = upstream(await call(port, "/request", headers=[("apikey", "kong")]))
    assert "apikey" not in seen
    seen = upstream(await call(port, "/request?c=valu%651&api%6B%65%79=kong&a=x"))
    assert seen[":path"] == "/request?c=value1&a=x"  # written again, as Kong (spec 09-key-auth "encoded query")
    seen = upstream(await call(port, "/request?apikey=kong"))
    assert seen[":path"] == "/request"


async def test_options_passes_when_run_on_preflight_is_false(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, run_on_preflight=False)
    assert (await call(port, method="OPTIONS")).status == 200
    assert (await call(port)).status == 401


async def test_anonymous_lets_a_failed_request_through_as_the_anonymous_consumer(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, anonymous="no-body")
    seen = upstream(await call(port, headers=[("apikey", "kong")]))
    assert (seen["x-consumer-username"], seen.get("x-anonymous-consumer")) == ("bob", None)
    for headers in ([], [("apikey", "wrong")], [("apikey", "a"), ("apikey", "b")]):
        seen = upstream(await call(port, headers=headers))
        assert seen["x-anonymous-consumer"] == "true"
        assert seen["x-consumer-username"] == "no-body"
        assert "x-credential-identifier" not in seen


# --- key_in_body (Kong's spec: "key in request body", "config.hide_credentials") ----------------------------------

FORM, JSON_TYPE, MULTIPART = "application/x-www-form-urlencoded", "application/json", "multipart/form-data"
BOUNDARY = "xYzZY"


def encoded(kind: str, fields: dict) -> tuple[str, bytes]:
    """(Content-Type, body) of `fields` as a client encodes them."""
    if kind == FORM:
        return kind, urlencode(fields, doseq=True).encode()
    if kind == JSON_TYPE:
        return kind, json.dumps(fields).encode()
    parts = b"".join(b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (
        BOUNDARY.encode(), k.encode(), v.encode()) for k, v in fields.items())
    return f"{MULTIPART}; boundary={BOUNDARY}", parts + b"--%s--\r\n" % BOUNDARY.encode()


async def post(port: int, kind: str, fields: dict, target: str = "/", headers: list | None = None):  # noqa: ANN201
    content_type, body = encoded(kind, fields)
    return await call(port, target, [("content-type", content_type), *(headers or [])], "POST", body=body)


def body_seen(reply) -> bytes:  # noqa: ANN001
    assert reply.status == 200, (reply.status, reply.body)
    return reply.json()["body"].encode()


@pytest.mark.parametrize("kind", [FORM, JSON_TYPE, MULTIPART])
async def test_key_in_body_authenticates_valid_credentials(nursery, gateway, kind):
    _, port = await key_gateway(nursery, gateway, key_in_body=True)
    seen = upstream(await post(port, kind, {"apikey": "kong"}))
    assert seen["x-consumer-username"] == "bob"


@pytest.mark.parametrize("kind", [FORM, JSON_TYPE, MULTIPART])
@pytest.mark.parametrize("where", ["query", "header"])
async def test_key_in_body_still_authenticates_credentials_in_query_or_header(nursery, gateway, kind, where):
    """authenticates valid credentials in query / in header (the body holding another name)"""
    _, port = await key_gateway(nursery, gateway, key_in_body=True)
    reply = await post(port, kind, {"non_apikey": "kong"}, "/?apikey=kong" if where == "query" else "/",
                       [("apikey", "kong")] if where == "header" else [])
    assert upstream(reply)["x-consumer-username"] == "bob"


@pytest.mark.parametrize("kind", [FORM, JSON_TYPE, MULTIPART])
async def test_key_in_body_returns_401_unauthorized_on_invalid_key(nursery, gateway, kind):
    _, port = await key_gateway(nursery, gateway, key_in_body=True)
    reply = await post(port, kind, {"apikey": "123"})
    assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})
    assert reply.header("www-authenticate") == "Key"


@pytest.mark.parametrize(("kind", "body"), [(JSON_TYPE, b'{"apikey": ["kong", "kong"]}'),
                                            (FORM, b"apikey=kong&apikey=kong"),
                                            (f"{MULTIPART}; boundary=b", b'--b\r\nContent-Disposition: form-data; '
                                             b'name="apikey"\r\n\r\nkong\r\n--b\r\nContent-Disposition: '
                                             b'form-data; name="apikey"\r\n\r\nkong\r\n--b--\r\n')])
async def test_key_in_body_handles_a_duplicated_key(nursery, gateway, kind, body):
    _, port = await key_gateway(nursery, gateway, key_in_body=True)
    reply = await call(port, "/", [("content-type", kind)], "POST", body=body)
    assert (reply.status, message(reply)) == (401, {"message": "Duplicate API key found"})


@pytest.mark.parametrize("body", [b"apikey[]=kong&apikey[]=kong", b"apikey[1]=kong&apikey[1]=kong"])
async def test_key_in_body_does_not_identify_indexed_names_as_api_keys(nursery, gateway, body):
    _, port = await key_gateway(nursery, gateway, key_in_body=True)
    reply = await call(port, "/", [("content-type", FORM)], "POST", body=body)
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


@pytest.mark.parametrize(("content_type", "body"), [("text/plain", b"foobar"), ("text/plain", b"apikey=kong"),
                                                    (JSON_TYPE, b"{not json"), (JSON_TYPE, b'"kong"'),
                                                    (JSON_TYPE, b'{"apikey": 12}'), (None, b"apikey=kong")])
async def test_key_in_body_finds_no_key_in_a_body_kong_cannot_read_as_arguments(nursery, gateway, content_type,
                                                                                 body):
    """fails with 'key_in_body' and unsupported content type (and what else get_body refuses)"""
    _, port = await key_gateway(nursery, gateway, key_in_body=True, hide_credentials=True)
    headers = [("content-type", content_type)] if content_type else []
    reply = await call(port, "/", headers, "POST", body=body)
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


async def test_key_in_body_ignores_a_body_over_the_limit(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_in_body=True)
    body = b"apikey=kong&pad=" + b"x" * (1024 * 1024)
    reply = await call(port, "/", [("content-type", FORM)], "POST", body=body)
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


async def test_without_key_in_body_a_key_in_the_body_is_not_read(nursery, gateway):
    _, port = await key_gateway(nursery, gateway)
    reply = await post(port, FORM, {"apikey": "kong"})
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


@pytest.mark.parametrize("kind", [FORM, JSON_TYPE, MULTIPART])
async def test_hide_credentials_false_sends_the_body_key_to_upstream_as_sent(nursery, gateway, kind):
    _, port = await key_gateway(nursery, gateway, key_in_body=True)
    content_type, body = encoded(kind, {"apikey": "kong", "foo": "bar"})
    reply = await call(port, "/", [("content-type", content_type)], "POST", body=body)
    assert body_seen(reply) == body


async def test_hide_credentials_takes_the_key_out_of_a_form_and_writes_it_as_kong_does(nursery, gateway):
    """true doesn't send key to upstream; true preserves body MIME type (names in lexicographic order)"""
    _, port = await key_gateway(nursery, gateway, key_in_body=True, hide_credentials=True)
    reply = await call(port, "/", [("content-type", FORM)], "POST", body=b"zeta=1&apikey=kong&alpha=a+b&flag")
    assert body_seen(reply) == b"alpha=a%20b&flag&zeta=1"
    seen = upstream(reply)
    assert seen["content-type"] == FORM and seen["x-consumer-username"] == "bob"


async def test_hide_credentials_takes_the_key_out_of_a_json_body(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_in_body=True, hide_credentials=True)
    reply = await call(port, "/", [("content-type", "application/json; charset=utf-8")], "POST",
                       body=b'{"apikey": "kong", "foo": "bar", "n": [1, 2]}')
    assert json.loads(body_seen(reply)) == {"foo": "bar", "n": [1, 2]}
    assert upstream(reply)["content-type"] == "application/json; charset=utf-8"


async def test_hide_credentials_takes_the_key_out_of_a_multipart_body(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_in_body=True, hide_credentials=True)
    content_type, body = encoded(MULTIPART, {"zeta": "1", "apikey": "kong", "foo": "bar"})
    reply = await call(port, "/", [("content-type", content_type)], "POST", body=body)
    assert body_seen(reply) == (b'--xYzZY\r\nContent-Disposition: form-data; name="foo"\r\n\r\nbar\r\n'
                                b'--xYzZY\r\nContent-Disposition: form-data; name="zeta"\r\n\r\n1\r\n--xYzZY--\r\n')
    assert upstream(reply)["content-type"] == "multipart/form-data; boundary=xYzZY"


async def test_hide_credentials_takes_the_name_out_of_the_body_when_the_key_came_in_a_header(nursery, gateway):
    """Kong's handler: with key_in_body, the body is written without the name whichever place gave the key."""
    _, port = await key_gateway(nursery, gateway, key_in_body=True, hide_credentials=True)
    reply = await call(port, "/", [("content-type", FORM), ("apikey", "kong")], "POST", body=b"b=2&apikey=x&a=1")
    assert body_seen(reply) == b"a=1&b=2"
    assert "apikey" not in upstream(reply)


async def test_the_content_length_sent_upstream_is_the_rewritten_bodys(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_in_body=True, hide_credentials=True)
    reply = await call(port, "/", [("content-type", FORM)], "POST", body=b"apikey=kong&a=1")
    assert upstream(reply)["content-length"] == "3"
