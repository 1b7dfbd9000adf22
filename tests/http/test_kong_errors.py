"""Kong's error bodies: the texts per status, the templates, and the content type chosen by Accept."""

from __future__ import annotations

import json

import pytest

from gateway.http.kong_errors import JSON_TYPE, TEXT_TYPE, error_body, error_message, page_type, response_type


@pytest.mark.parametrize(("status", "text"), [
    (404, "Not found"), (429, "Too many requests"), (502, "An invalid response was received from the upstream server"),
    (503, "The upstream server is currently unavailable"), (504, "The upstream server is timing out"),
    (599, "The upstream server responded with 599")])
def test_kongs_default_messages(status, text):
    assert error_message(status) == text


@pytest.mark.parametrize(("accept", "expected"), [
    (None, JSON_TYPE), (b"*/*", JSON_TYPE), (b"text/html", b"text/html; charset=utf-8"),
    (b"text/html;q=0.5, application/xml", b"application/xml; charset=utf-8"),
    (b"text/*", b"text/plain; charset=utf-8"), (b"application/json, text/event-stream", JSON_TYPE),
    (b"image/png", JSON_TYPE), (b"garbage", JSON_TYPE)])
def test_the_content_type_follows_accept_as_kongs_get_response_type(accept, expected):
    assert response_type(accept) == expected


HTML = b"text/html; charset=utf-8"


@pytest.mark.parametrize(("headers", "expected"), [
    ([], TEXT_TYPE),
    ([(b"accept", b"text/html")], HTML),
    ([(b"content-type", b"application/json"), (b"accept", b"text/html")], HTML),  # Accept first, wherever it is
    ([(b"content-type", b"application/json")], JSON_TYPE),
    ([(b"content-type", b"application/xml; charset=utf-8")], b"application/xml; charset=utf-8"),
    ([(b"content-type", b"multipart/form-data; boundary=x")], JSON_TYPE),  # get_response_type's default
    ([(b"accept", b"")], JSON_TYPE),  # an empty Accept is there: not error_default_type
    ([(b"accept", b"*/*")], JSON_TYPE)], ids=["nothing", "accept", "accept-over-content-type", "content-type",
                                              "xml", "unknown-type", "empty-accept", "curl"])
def test_nginx_error_pages_take_accept_then_content_type_then_error_default_type(headers, expected):
    assert page_type(headers, TEXT_TYPE) == expected


def test_error_default_type_is_the_format_of_a_request_that_says_nothing():
    assert page_type([(b"user-agent", b"x")], HTML) == HTML


def test_the_json_body_is_kongs_template_with_the_message_escaped():
    body = error_body('say "hi"\n', b"abc")
    assert body == b'{\n  "message":"say \\"hi\\"\\n",\n  "request_id":"abc"\n}'
    assert json.loads(body) == {"message": 'say "hi"\n', "request_id": "abc"}


@pytest.mark.parametrize(("content_type", "expected"), [
    (b"text/plain; charset=utf-8", b"no <route>\nrequest_id: r1\n"),
    (b"application/xml; charset=utf-8", b"<message>no &lt;route&gt;</message>"),
    (b"text/html; charset=utf-8", b"<p>no &lt;route&gt;.</p>")])
def test_other_templates_escape_the_message(content_type, expected):
    assert expected in error_body("no <route>", b"r1", content_type)
