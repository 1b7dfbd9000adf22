"""gateway.policies.request_body: Kong's kong.request.get_body and kong.service.request.set_body, without sockets."""

from __future__ import annotations

import json

import pytest

from gateway.policies.request_body import FORM, JSON, MAX_POST_ARGS, MULTIPART, get_body, media_type, set_body


@pytest.mark.parametrize(("content_type", "kind"), [
    (b"application/x-www-form-urlencoded", FORM), (b"Application/JSON; charset=utf-8", JSON),
    (b"application/json-patch+json", JSON),  # Kong's find(...) == 1: the type starts with it
    (b"multipart/form-data; boundary=x", MULTIPART), (b"text/plain", None), (None, None), (b"", None),
    (b"x; application/json", None),
])
def test_the_media_type_is_the_one_the_content_type_starts_with(content_type: bytes | None, kind: str | None):
    assert media_type(content_type) == kind


def test_a_form_reads_as_get_post_args_does():
    assert get_body(FORM.encode(), b"a=1&b=x+y%21&flag&a=2&&e=") == (
        FORM, {"a": ["1", "2"], "b": "x y!", "flag": True, "e": ""})


def test_a_form_reads_its_first_100_arguments_only():
    raw = "&".join(f"k{i}=v" for i in range(MAX_POST_ARGS + 5)).encode()
    kind, args = get_body(FORM.encode(), raw)  # type: ignore[misc]
    assert len(args) == MAX_POST_ARGS and "k99" in args and "k100" not in args


@pytest.mark.parametrize(("raw", "expected"), [(b'{"a": 1}', (JSON, {"a": 1})), (b"[1, 2]", (JSON, [1, 2])),
                                               (b'"text"', None), (b"12", None), (b"{bad", None), (b"", None)])
def test_json_reads_as_an_object_or_an_array_only(raw: bytes, expected: object):
    assert get_body(b"application/json", raw) == expected


def test_a_multipart_body_reads_each_parts_value_by_name_as_lua_multipart_does():
    """lua-multipart 0.5.9 (Kong's, checked under LuaJIT): a preamble becomes the start of the first part's value,
    and an unquoted `name=up` reads as the name ""."""
    raw = (b"preamble\r\n--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n"
           b"--b\r\nContent-Disposition: form-data; name=up; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\n"
           b"line1\r\nline2\r\n--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n2\r\n--b--\r\nepilogue")
    assert get_body(b'multipart/form-data; boundary="b"', raw) == (MULTIPART, {"a": ["preamble\r\n1", "2"],
                                                                                "": "line1\r\nline2"})


def test_a_multipart_content_type_without_a_boundary_reads_as_no_arguments():
    assert get_body(b"multipart/form-data", b"--b\r\n\r\n") == (MULTIPART, {})


def test_a_form_is_written_in_lexicographic_order_with_ngx_escaping():
    body, content_type = set_body(FORM, {"zeta": "1", "b": ["x y", "2"], "flag": True, "off": False, "a": "é/"},
                                  b"application/x-www-form-urlencoded")
    assert body == b"a=%C3%A9%2F&b=x%20y&b=2&flag&zeta=1"
    assert content_type == b"application/x-www-form-urlencoded"


def test_json_is_written_compact():
    body, content_type = set_body(JSON, {"a": [1, {"b": None}], "é": True}, b"application/json")
    assert body == '{"a":[1,{"b":null}],"é":true}'.encode() and json.loads(body)["é"] is True
    assert content_type == b"application/json"


def test_multipart_is_written_one_part_per_name_sorted_with_the_requests_boundary():
    body, content_type = set_body(MULTIPART, {"z": "1", "a": True}, b'multipart/form-data; boundary="q"; x=y')
    assert body == (b'--q\r\nContent-Disposition: form-data; name="a"\r\n\r\ntrue\r\n'
                    b'--q\r\nContent-Disposition: form-data; name="z"\r\n\r\n1\r\n--q--\r\n')
    assert content_type == b"multipart/form-data; boundary=q"


def test_multipart_gets_a_new_boundary_when_a_value_holds_the_old_one():
    body, content_type = set_body(MULTIPART, {"a": "x\n--q tail"}, b"multipart/form-data; boundary=q")
    boundary = content_type.partition(b"boundary=")[2]
    assert boundary.isdigit() and boundary != b"q"
    assert body.startswith(b"--" + boundary + b"\r\n") and body.endswith(b"--" + boundary + b"--\r\n")
    assert get_body(content_type, body) == (MULTIPART, {"a": "x\n--q tail"})


@pytest.mark.parametrize("args", [{"a": "1", "b": ["2", "3"], "c": True}, {"k": "v w", "é": "ü"}])
def test_what_is_written_as_a_form_reads_back_the_same(args: dict):
    body, content_type = set_body(FORM, args, FORM.encode())
    assert get_body(content_type, body) == (FORM, args)
