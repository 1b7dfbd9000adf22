"""The status server's answers as an nginx server block gives them: its 200s through nginx's not_modified filter
(gateway.status.app.not_modified, on gateway.http.conditional) and Kong's /robots.txt location. The ASGI app is
called directly (no socket): hypercorn only carries what it sends."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from gateway.status import BaseStatusSource, StatusApp
from gateway.status.app import PRECONDITION_FAILED_PAGE, ROBOTS_TXT


async def answer(path: str, headers: list[tuple[bytes, bytes]] | None = None, method: str = "GET") \
        -> tuple[int, dict[bytes, bytes], bytes]:
    """(status, headers, body) of the status app for one request."""
    app = StatusApp(BaseStatusSource(), CollectorRegistry(), check_timeout=0.3)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "query_string": b"", "headers": headers or []},
              receive, send)
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


async def test_if_none_match_star_makes_a_status_answer_a_304_without_body():
    """Kong's Status API is an nginx server block (kong/templates/nginx_kong.lua: `server_name kong_status;`, its
    `location /` content_by_lua), so nginx's not_modified filter runs on its 200s
    (ngx_http_not_modified_filter_module.c:58-61 skips only non-200s, subrequests and r->disable_not_modified).
    `If-None-Match: *` matches any answer (ngx_http_test_if_match), so GET /status is a 304 (lines 90-103: no
    Content-Type, no Content-Length); the headers Kong's status_header_filter set before it stay."""
    status, headers, body = await answer("/status", [(b"if-none-match", b"*")])
    assert (status, body) == (304, b"")
    assert b"content-type" not in headers and b"content-length" not in headers
    assert headers[b"cache-control"] == b"no-store" and b"x-kong-admin-latency" in headers


async def test_a_failed_if_match_makes_a_status_answer_nginxs_own_412_page():
    """ngx_http_not_modified_filter_module.c:71-76: an If-Match that ngx_http_test_if_match rejects is a 412, and an
    answer without ETag (Kong's /status sets none) rejects all but `*` (`if (r->headers_out.etag == NULL) return
    0;`). ngx_http_filter_finalize_request clears the answer's headers (ngx_http_clean_header) and, the status
    server having no error_page, nginx's own page goes out (ngx_http_special_response.c, text/html with the server's
    `charset UTF-8`); Kong's status_header_filter runs on it again."""
    status, headers, body = await answer("/status", [(b"if-match", b'"v1"')])
    assert (status, body) == (412, PRECONDITION_FAILED_PAGE)
    assert headers[b"content-type"] == b"text/html; charset=UTF-8"
    assert b"cache-control" not in headers and b"vary" not in headers
    assert b"x-kong-admin-latency" in headers


async def test_robots_txt_disallows_everything_in_plain_text_without_kongs_headers():
    """kong/templates/nginx_kong.lua's status server: `location /robots.txt { return 200 'User-agent:
    *\\nDisallow: /'; }` (nginx's config reader turns `\\n` into a newline: ngx_conf_file.c), typed by nginx's
    default_type text/plain plus the server's `charset UTF-8`; no header_filter_by_lua there, so no Server or
    X-Kong-Admin-Latency of Kong's."""
    status, headers, body = await answer("/robots.txt")
    assert (status, body) == (200, b"User-agent: *\nDisallow: /") and body == ROBOTS_TXT
    assert headers == {b"content-type": b"text/plain; charset=UTF-8", b"content-length": b"25"}


async def test_robots_txt_is_a_prefix_location_typed_by_its_extension():
    """`location /robots.txt` is a prefix location, longer than `/`, so it answers every path starting with it
    (ngx_http_core_find_location); `return` types the answer from the path's extension (ngx_http_set_exten, then
    ngx_http_set_content_type over nginx's default types: html, gif, jpg), else default_type."""
    status, headers, body = await answer("/robots.txt.html", method="POST")
    assert (status, body) == (200, ROBOTS_TXT)
    assert headers[b"content-type"] == b"text/html; charset=UTF-8"
    assert (await answer("/robots.txt/x"))[1][b"content-type"] == b"text/plain; charset=UTF-8"


async def test_robots_txt_passes_the_conditional_checks_too():
    """The `return 200` answer goes through the same header filters (ngx_http_send_response -> ngx_http_send_header):
    `If-None-Match: *` makes it a 304 without body or type."""
    status, headers, body = await answer("/robots.txt", [(b"if-none-match", b"*")])
    assert (status, headers, body) == (304, {}, b"")
