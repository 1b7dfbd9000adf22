"""The PDK helpers the plugins call, against Kong's own PDK tests (Test::Nginx files under t/01-pdk/ in Kong's
repository: 04-request, 06-service-request, 08-response) and the libraries those functions run on: lua-resty-core's
ngx.req.get_uri_args / get_headers, lua-nginx-module's ngx.encode_args / ngx.decode_args / ngx.req.set_header,
OpenResty's lua-cjson and lua-multipart 0.5.9 (kong-latest.rockspec's `multipart == 0.5.9`).

Unit tests of the helpers where they show it (gateway.policies.request_body, header_list, gateway.http.uri_args),
an in-process gateway where only the plugin shows it (request-transformer, request-termination)."""

from __future__ import annotations

import json

import pytest
from backends import raw_exchange
from plugin_helpers import body_json, call, headers_of, http_codec, plugin, seen, start  # noqa: F401

from gateway.http.uri_args import encode_args as ngx_encode_args
from gateway.policies import cjson
from gateway.policies.header_list import lookup, request_header, set_header
from gateway.policies.multipart import Multipart
from gateway.policies.request_body import FORM, JSON, MULTIPART, get_body, set_body

# --- kong.request.get_body: multipart -----------------------------------------------------------------------------


def test_a_multipart_body_with_lf_line_ends_reads_its_parts():
    """t/01-pdk/04-request/16-get_body.t TEST 3: Test::Nginx sends the body with LF line ends, and lua-multipart
    (which splits lines at CR or LF) reads `test=form-data`."""
    raw = b'--AaB03x\nContent-Disposition: form-data; name="test"\n\nform-data\n--AaB03x--\n'
    assert get_body(b"multipart/form-data; boundary=AaB03x", raw) == (MULTIPART, {"test": "form-data"})


def test_a_multipart_name_sent_twice_with_lf_line_ends_reads_as_a_list():
    """t/01-pdk/04-request/16-get_body.t TEST 25: the same part name twice is an array (get_all_with_arrays)."""
    raw = (b'--AaB03x\nContent-Disposition: form-data; name="test"\n\nform\n'
           b'--AaB03x\nContent-Disposition: form-data; name="test"\n\ndata\n--AaB03x--\n')
    assert get_body(b"multipart/form-data; boundary=AaB03x", raw) == (MULTIPART, {"test": ["form", "data"]})


def test_multipart_reads_as_lua_multipart_does_its_preamble_and_unquoted_names_included():
    """lua-multipart 0.5.9's decode (what kong.request.get_body runs; checked against it under LuaJIT): lines before
    the first delimiter are not dropped but start a value that the first named part continues; a name is what
    follows `name=` less its first and last character (the quotes it assumes), so `name=up` is ""."""
    raw = (b"preamble\r\n--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n"
           b"--b\r\nContent-Disposition: form-data; name=up; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\n"
           b"line1\r\nline2\r\n--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n2\r\n--b--\r\nepilogue")
    assert get_body(b'multipart/form-data; boundary="b"', raw) == (
        MULTIPART, {"a": ["preamble\r\n1", "2"], "": "line1\r\nline2"})


def test_the_multipart_boundary_is_every_non_space_after_boundary_equals():
    """lua-multipart's `;%s*boundary=(%S+)`: a parameter after the boundary, with no space before it, is part of
    the boundary, so the body's delimiters do not match and nothing is read."""
    raw = b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--B--\r\n'
    assert get_body(b"multipart/form-data; boundary=B;charset=utf-8", raw) == (MULTIPART, {})
    assert get_body(b"multipart/form-data; boundary='B'", raw) == (MULTIPART, {"a": "1"})


def test_a_multipart_value_ending_in_two_crs_is_a_lua_error_or_loses_them_by_its_piece_count():
    """lua-multipart sets the CR before the last piece to nil; with the last piece kept (a CR), table.concat sees a
    hole: LuaJIT's length is then the whole count when even (concat fails: Kong answers 500) and stops before the
    hole when odd."""
    def body(crs: int) -> bytes:
        return b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nv' + b"\r" * crs + b"--B--\r\n"
    assert get_body(b"multipart/form-data; boundary=B", body(2)) == (MULTIPART, {"a": "v"})
    with pytest.raises(ValueError, match="concat"):
        get_body(b"multipart/form-data; boundary=B", body(3))


def test_multipart_delete_of_a_repeated_name_shifts_as_lua_multipart_does():
    """lua-multipart's delete runs table.remove at each of the name's positions in turn, each removal shifting the
    parts after it: deleting a name sent twice removes its first part and the part after its second."""
    parts = Multipart(b'--B\r\nContent-Disposition: form-data; name="d"\r\n\r\n1\r\n'
                      b'--B\r\nContent-Disposition: form-data; name="d"\r\n\r\n2\r\n'
                      b'--B\r\nContent-Disposition: form-data; name="x"\r\n\r\n3\r\n--B--\r\n',
                      b"multipart/form-data; boundary=B")
    parts.delete("d")
    assert parts.tostring() == b'--B\r\nContent-Disposition: form-data; name="d"\r\n\r\n2\r\n--B--\r\n'
    assert parts.get("x") == b"2"  # x's position, counted down by 2, now names the part left behind


def test_multipart_with_every_part_removed_is_written_as_nothing():
    """lua-multipart's encode: no part, no closing delimiter either (an empty body)."""
    parts = Multipart(b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--B--\r\n',
                      b"multipart/form-data; boundary=B")
    parts.delete("a")
    assert parts.tostring() == b""


# --- kong.request.get_body: JSON (kong.tools.cjson: lua-cjson's decode) --------------------------------------------


def test_a_json_body_with_bytes_that_are_not_utf8_is_a_table():
    """16-get_body.t TEST 2 reads a JSON body as a table; lua-cjson does not check UTF-8, so a Latin-1 byte in a
    string is kept, not an "invalid json body"."""
    kind, doc = get_body(b"application/json", b'{"test":"caf\xe9"}')  # type: ignore[misc]
    assert kind == JSON and doc["test"].encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_json_nested_deeper_than_python_allows_is_read_to_lua_cjsons_1000_levels():
    """lua-cjson's decode_max_depth (1000): 1000 levels are a table, 1001 an error ("invalid json body"); neither
    may fail the request with Python's RecursionError."""
    assert get_body(b"application/json", b"[" * 1000 + b"]" * 1000) is not None
    assert get_body(b"application/json", b"[" * 1001 + b"]" * 1001) is None
    assert get_body(b"application/json", b"[" * 100000) is None


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"a":01}', {"a": 1}),  # leading zeros: strtoll
    (b'{"a":+1}', {"a": 1}),
    (b'{"a":0x10}', {"a": 16.0}),  # hex: strtod
    (b'{"a":-.5}', {"a": -0.5}),
    (b'{"a":1.}', {"a": 1.0}),
    (b'{"a":99999999999999999999}', {"a": 2**63 - 1}),  # strtoll saturates
    (b'{"a":"x\ny"}', {"a": "x\ny"}),  # a raw control character in a string
    (b'{"a":1}\x00junk', {"a": 1}),  # a NUL ends the text
])
def test_json_is_read_as_lua_cjson_reads_it(raw: bytes, expected: object):
    """lua-cjson (decode_invalid_numbers on, its default): numbers as strtoll / strtod read them; what Python's json
    refuses there is a table in Kong. Checked against OpenResty's lua-cjson under LuaJIT."""
    assert get_body(b"application/json", raw) == (JSON, expected)


@pytest.mark.parametrize("raw", [b'["\\ud800"]', b'["\\udc80"]', b"\xef\xbb\xbf{}", b"[\x00]\x00"])
def test_json_lua_cjson_refuses_is_an_invalid_json_body(raw: bytes):
    """A lone UTF-16 surrogate escape (high or low), a UTF-8 BOM, UTF-16 (a NUL among the first two bytes:
    lua-cjson's check): "invalid json body", where Python's json reads them all."""
    assert get_body(b"application/json", raw) is None


# --- kong.service.request.set_body --------------------------------------------------------------------------------


def test_a_form_is_written_with_ngx_encode_args_escaping():
    """07-set_body.t TEST 9 and 14 (ngx.encode_args): lua-nginx-module's uri_component table leaves ALPHA, DIGIT
    and - . _ ~ ! * ' ( ) as they are; Python's quote escapes ! * ' ( )."""
    body, _ = set_body(FORM, {"a": "!*'()", "b c": "é/"}, b"application/x-www-form-urlencoded")
    assert body == b"a=!*'()&b%20c=%C3%A9%2F"


def test_json_is_written_by_lua_cjson_with_16_digits():
    """07-set_body.t TEST 20 / 11-exit.t TEST 45: set_body's cjson.safe is the module Kong's globalpatches set to
    16 digits; it escapes "/" and writes every number with %.16g (1.0 is 1)."""
    body, _ = set_body(JSON, {"p": "a/b", "n": 1.0, "f": 0.1 + 0.2, "big": 12345678901234567890}, b"application/json")
    assert body == b'{"p":"a\\/b","n":1,"f":0.3,"big":1.234567890123457e+19}'


def test_set_body_picks_its_writer_by_the_content_type_as_it_is():
    """kong/pdk/service/request.lua set_body: set_body_handlers[boundaryless_mime], no lower-casing: a type
    get_body reads ("Application/JSON") is set_body's "unsupported content type" error."""
    with pytest.raises(ValueError, match="unsupported content type"):
        set_body(JSON, {"a": "1"}, b"Application/JSON")


def test_multipart_set_body_takes_the_rest_of_the_type_as_its_boundary():
    """set_body's boundary: what follows "boundary=" to the end (unquoted), so a parameter after it stays in it."""
    body, content_type = set_body(MULTIPART, {"a": "1"}, b"multipart/form-data; boundary=q; x=y")
    assert content_type == b"multipart/form-data; boundary=q; x=y"
    assert body.startswith(b"--q; x=y\r\n")


def test_cjson_refuses_nan():
    """lua-cjson's encode_invalid_numbers (off): a NaN or an infinity read from a body cannot be written again."""
    with pytest.raises(ValueError, match="NaN or Infinity"):
        cjson.encode(cjson.decode(b'{"a":NaN}'))


# --- ngx.encode_args ----------------------------------------------------------------------------------------------


def test_ngx_encode_args_keeps_the_characters_lua_nginx_module_keeps():
    """08-set_query.t TEST 7 / 12 (a space is %20, a key is escaped too), with the rest of the uri_component
    table."""
    assert ngx_encode_args({b"hello world": b"!*'()~._-"}) == b"hello%20world=!*'()~._-"


# --- kong.request.get_header / get_headers ------------------------------------------------------------------------


def test_get_header_finds_a_name_written_with_underscores():
    """13-get_header.t TEST 2: `x_foo_header` and `x_Foo_header` find X-Foo-Header ($http_x_foo_header)."""
    headers = [(b"x-foo-header", b"Hello")]
    assert request_header(headers, b"x_foo_header") == b"Hello"
    assert request_header(headers, b"x_Foo_header") == b"Hello"


def test_get_header_has_no_header_limit_unless_the_value_holds_a_comma():
    """13-get_header.t TEST 5: a header after 100 others is found ($http_accept); a value with ", " is looked up
    again in get_headers(), which reads 100 lines."""
    headers = [(b"x-header-%d" % i, b"test") for i in range(100)]
    assert request_header([*headers, (b"accept", b"text/html")], b"Accept") == b"text/html"
    assert request_header([*headers, (b"accept", b"a, b")], b"Accept") is None
    assert request_header([(b"accept", b"a"), (b"accept", b"b")], b"accept") == b"a"  # 13-get_header.t TEST 1


def test_get_headers_reads_100_lines_and_looks_names_up_as_its_metatable_does():
    """14-get_headers.t TEST 3 and 4: the table holds the first 100 lines; `headers["X_Foo_Header"]` finds
    x-foo-header (lower-cased, "_" as "-")."""
    headers = [(b"x-foo-header", b"Hello"), *[(b"x-header-%d" % i, b"test") for i in range(99)], (b"late", b"x")]
    assert lookup(headers, b"X_Foo_Header") == b"Hello"
    assert lookup(headers, b"late") is None


# --- kong.response.set_header -------------------------------------------------------------------------------------


def test_response_set_header_ignores_transfer_encoding():
    """08-response/05-set_header.t TEST 8: "manually setting Transfer-Encoding. Ignored."."""
    headers = [(b"content-length", b"2")]
    assert set_header(headers, b"transfer-encoding", b"gzip") == [(b"content-length", b"2")]


async def test_response_transformer_cannot_add_a_transfer_encoding(nursery, gateway):
    """05-set_header.t TEST 8 through response-transformer's `add` (kong.response.set_header): the response keeps
    its Content-Length framing, with no Transfer-Encoding beside it."""
    _, port = await start(nursery, gateway, plugins=[plugin("response-transformer",
                                                            add={"headers": ["transfer-encoding:gzip"]})])
    reply = await call(port, "/x")
    assert reply.status == 200 and headers_of(reply, "transfer-encoding") == []


async def test_response_header_names_with_underscores_are_sent_with_dashes(nursery, gateway):
    """lua-nginx-module's ngx_http_lua_ffi_set_resp_header: an "_" in a response header name is sent as "-"."""
    _, port = await start(nursery, gateway, plugins=[plugin("response-transformer", add={"headers": ["x_under:1"]})])
    reply = await call(port, "/x")
    assert headers_of(reply, "x-under") == ["1"] and headers_of(reply, "x_under") == []


# --- request-transformer: the service.request setters -------------------------------------------------------------


async def _transformed(nursery, gateway, target: bytes, headers: bytes = b"", body: bytes = b"",
                       **config: object) -> dict:
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer", **config)])
    length = b"content-length: %d\r\n" % len(body) if body else b""
    data, _ = await raw_exchange(port, b"POST " + target + b" HTTP/1.1\r\nhost: a\r\nconnection: close\r\n" +
                                 headers + length + b"\r\n" + body)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    doc = json.loads(rest)
    got: dict[str, list[str]] = {}
    for name, value in doc["headers"]:
        got.setdefault(name, []).append(value)
    return {"path": doc["path"], "headers": got, "body": doc["body"].encode("latin-1")}


async def test_set_query_escapes_as_ngx_encode_args_and_reads_as_get_query(nursery, gateway):
    """08-set_query.t TEST 7 and 12 (ngx.encode_args' escaping, sorted) over 12-get_query.t's reading
    (lua-resty-core: "%FF" is the byte 0xFF, "=v" has no name and is dropped): the query goes upstream as
    "a=!*'()&e=%FF&z=1", not re-encoded from a UTF-8 decoding ("%EF%BF%BD") nor with "!*'()" escaped."""
    got = await _transformed(nursery, gateway, b"/x?e=%FF&=v&a=!*'()", add={"querystring": ["z:1"]})
    assert got["path"] == "/x?a=!*'()&e=%FF&z=1"


async def test_get_query_counts_only_named_arguments_toward_its_100(nursery, gateway):
    """12-get_query.t TEST 4 (100 arguments) with lua-resty-core's count: empty pieces are not arguments, so an
    argument after 150 "&" is still among the first 100."""
    got = await _transformed(nursery, gateway, b"/x?" + b"&" * 150 + b"a=1", add={"querystring": ["z:1"]})
    assert got["path"] == "/x?a=1&z=1"


async def test_a_header_value_from_a_template_cannot_end_its_line(nursery, gateway):
    """kong.service.request.set_header (ngx.req.set_header): lua-nginx-module's ngx_http_lua_copy_escaped_header
    writes a CR or LF in a value as %0D / %0A; a query argument in a header template cannot add header lines."""
    got = await _transformed(nursery, gateway, b"/x?q=a%0D%0Ax-injected:%201",
                             add={"headers": ["x-q:$(query_params.q)"]})
    assert got["headers"]["x-q"] == ["a%0D%0Ax-injected: 1"] and "x-injected" not in got["headers"]


async def test_a_configured_value_outside_latin1_goes_upstream_as_utf8(nursery, gateway):
    """09-set_header.t TEST 6: the value is sent as given (Lua strings are bytes: the config's UTF-8), not a 500."""
    got = await _transformed(nursery, gateway, b"/x", add={"headers": ["x-u:\u20ac"]})
    assert got["headers"]["x-u"] == ["\u20ac".encode().decode("latin-1")]


async def test_a_replaced_header_keeps_its_place(nursery, gateway):
    """09-set_header.t TEST 9 (set_header replaces every line of the name) with ngx.req.set_header's way of doing it
    (headers_in.c ngx_http_set_header_helper): the first line takes the value where it is, the others go."""
    got = await _transformed(nursery, gateway, b"/x", b"x-a: 1\r\nx-b: 2\r\nx-a: 3\r\n",
                             replace={"headers": ["x-a:new"]})
    names = [name for name in got["headers"] if name in ("x-a", "x-b")]
    assert names == ["x-a", "x-b"] and got["headers"]["x-a"] == ["new"]


async def test_header_changes_see_the_first_100_lines_only(nursery, gateway):
    """14-get_headers.t TEST 4: transform_headers works on kong.request.get_headers(), 100 lines: a header after
    them is not there to remove."""
    filler = b"".join(b"x-h-%d: 1\r\n" % i for i in range(99))  # with Host, 100 lines
    got = await _transformed(nursery, gateway, b"/x", filler + b"x-drop: 1\r\n", remove={"headers": ["x-drop"]})
    assert got["headers"]["x-drop"] == ["1"]
    got = await _transformed(nursery, gateway, b"/x", b"x-drop: 1\r\n" + filler, remove={"headers": ["x-drop"]})
    assert "x-drop" not in got["headers"]


async def test_a_form_body_is_read_by_ngx_decode_args_and_written_by_ngx_encode_args(nursery, gateway):
    """transform_url_encoded_body: ngx.decode_args then ngx.encode_args: the byte of "%FF" is written "%FF" again,
    and "!*'()" stays as it is."""
    got = await _transformed(nursery, gateway, b"/x", b"content-type: application/x-www-form-urlencoded\r\n",
                             b"e=%FF&s=!*'()", add={"body": ["z:1"]})
    assert sorted(got["body"].split(b"&")) == [b"e=%FF", b"s=!*'()", b"z=1"]


async def test_a_json_body_is_written_again_by_lua_cjson_with_14_digits(nursery, gateway):
    """request-transformer's own cjson.safe.new() (14 digits, "/" escaped): 1.0 is 1, 0.1 + 0.2 is 0.3."""
    got = await _transformed(nursery, gateway, b"/x", b"content-type: application/json\r\n",
                             b'{"p":"a/b","n":1.0,"f":0.30000000000000004}', remove={"body": ["gone"]})
    assert json.loads(got["body"]) == {"p": "a/b", "n": 1, "f": 0.3}
    assert b'"p":"a\\/b"' in got["body"] and b'"n":1,' in got["body"] + b"," and b"1.0" not in got["body"]


async def test_a_json_array_body_is_written_again_and_a_scalar_one_fails(nursery, gateway):
    """transform_json_body indexes the decoded value: an array takes the names into its hash part, which cjson does
    not write (the array is written again, compact); a number cannot be indexed (a Lua error: Kong's 500)."""
    got = await _transformed(nursery, gateway, b"/x", b"content-type: application/json\r\n", b"[1, 2.0, \"a/b\"]",
                             add={"body": ["k:v"]})
    assert got["body"] == b'[1,2,"a\\/b"]'
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer", add={"body": ["k:v"]})])
    reply = await call(port, "/x", [("content-type", "application/json")], method="POST", body=b"12")
    assert reply.status == 500


async def test_a_multipart_body_is_changed_as_lua_multipart_changes_it(nursery, gateway):
    """transform_multipart_body with lua-multipart 0.5.9 (run under LuaJIT for these expectations): renaming `old`
    appends `new`; deleting the twice-sent `drop` removes its first part and then, the parts having shifted, the
    one at its second position (`new`), leaving its second part."""
    def part(name: str, value: str) -> bytes:
        return b'--xYzZY\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (name.encode(), value.encode())
    body = part("keep", "k") + part("old", "o") + part("drop", "1") + part("drop", "2") + b"--xYzZY--\r\n"
    got = await _transformed(nursery, gateway, b"/x", b"content-type: multipart/form-data; boundary=xYzZY\r\n", body,
                             rename={"body": ["old:new"]}, remove={"body": ["drop"]})
    assert got["body"] == part("keep", "k") + part("drop", "2") + b"--xYzZY--\r\n"
    assert got["headers"]["content-length"] == [str(len(got["body"]))]


# --- request-termination: get_headers and response.exit -----------------------------------------------------------


async def test_a_trigger_written_with_underscores_finds_the_dashed_header(nursery, gateway):
    """14-get_headers.t TEST 3: `req_headers[conf.trigger]` goes through the metatable, so trigger "X_Foo" finds
    an "X-Foo" header."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=403,
                                                            trigger="X_Foo")])
    assert (await call(port, "/x", [("x-foo", "1")])).status == 403
    assert (await call(port, "/x")).status == 200


async def test_a_trigger_after_the_100th_header_line_is_not_seen(nursery, gateway):
    """14-get_headers.t TEST 4: kong.request.get_headers() reads 100 lines; a trigger header after them is not
    there, and the request goes on."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=403,
                                                            trigger="x-stop")])
    filler = [(f"x-h-{i}", "1") for i in range(99)]  # with Host, 100 lines
    assert (await call(port, "/x", [*filler, ("x-stop", "1")])).status == 200
    assert (await call(port, "/x", [("x-stop", "1"), *filler])).status == 403


async def test_an_echo_writes_numbers_as_kong_response_exit_does(nursery, gateway):
    """11-exit.t TEST 45: kong.response.exit's cjson writes numbers with 16 digits, so a body's 1.0 echoes as 1 and
    9007199254740992 stays whole."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=200, echo=True)])
    reply = await call(port, "/x", [("content-type", "application/json")], method="POST",
                       body=b'{"n":1.0,"m":9007199254740992}')
    assert reply.status == 200
    assert b'"n":1,' in reply.body + b"," or b'"n":1}' in reply.body
    assert b'"m":9007199254740992' in reply.body and body_json(reply)["request"]["body"] == {
        "n": 1, "m": 9007199254740992}


async def test_correlation_id_finds_its_header_as_get_header_does_and_echoes_it_with_dashes(nursery, gateway):
    """correlation-id/handler.lua: kong.request.get_header(header_name) ("_" and "-" alike, 13-get_header.t) and
    kong.response.set_header(header_name) (an "_" written "-")."""
    _, port = await start(nursery, gateway, plugins=[plugin("correlation-id", header_name="Kong_Request_ID",
                                                            echo_downstream=True)])
    reply = await call(port, "/x", [("kong-request-id", "abc")])
    assert headers_of(reply, "kong-request-id") == ["abc"]
    assert seen(reply)["headers"]["kong-request-id"] == ["abc"]


@pytest.mark.parametrize(("plugin_name", "config", "line"), [
    ("request-termination", {"status_code": 200, "content_type": "text/x\r\nx-evil: 1", "body": "b"},
     b"content-type: text/x%0D%0Ax-evil: 1"),
    ("response-transformer", {"add": {"headers": ["x-a:v\x0bb"]}}, b"x-a: v%0Bb"),
    ("cors", {"origins": ["*"], "exposed_headers": ["a\r\nx-evil: 1"]},
     b"access-control-expose-headers: a%0D%0Ax-evil: 1"),
])
async def test_a_control_byte_a_plugin_sets_in_a_header_is_escaped_never_a_line_break(nursery, gateway, plugin_name,
                                                                                      config, line):
    """lua-nginx-module's ngx.header and ngx.req.set_header escape a value's control bytes but HTAB as %XX
    (ngx_http_lua_copy_escaped_header): a configured value cannot add a header line of its own."""
    _, port = await start(nursery, gateway, plugins=[plugin(plugin_name, **config)])
    data, _ = await raw_exchange(port, b"GET /x HTTP/1.1\r\nhost: a\r\norigin: http://a\r\nconnection: close\r\n\r\n")
    head = data.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert line in head and not any(h.startswith(b"x-evil") for h in head)
