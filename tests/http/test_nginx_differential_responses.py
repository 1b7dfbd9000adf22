"""The gateway against a real nginx configured as Kong 3.9.3's proxy location, on some 470 upstream answers generated
by code (upstream -> proxy -> client, once per server codec): a scripted upstream answers each case's exact bytes
to a GET or a HEAD (then keeps its connection, closes it, or closes it a moment later), and what the client gets
(status, 1xx answers, reason, headers, body and its framing, whether a cut body is visibly cut and how its
connection ends, whether a second request on its connection is answered), whether the proxy asked the upstream more
than once and whether it kept the upstream connection for another request are the same, except for the differences
in ALLOWED (each documented in the README, or nginx 1.22's only) and those FINDINGS name (each pinned by an
xfail(strict=True) test of what nginx 1.27.1 does). A new difference, or an allowed one that is gone, fails with a
table of them.

nginx runs once for the module as a child process with Kong's proxy directives (kong/templates/nginx_kong.lua,
nginx.lua and kong_defaults.lua at 3.9.3), its `upstream` of six servers to the one upstream (the service's retries
5 and the first try). What Kong's Lua does to an answer is applied to nginx's (kong_view): header_filter.before's
removal of what the upstream's Connection names, of an Upgrade and of a Trailer (kong/runloop/handler.lua:1487-1508),
header_filter.after's Via (1551-1570). Not compared: the headers Kong adds (X-Kong-*, Via's own token, a Server or
Date the upstream did not send or Kong removed; the gateway's X-Request-Id), nginx's `Connection: keep-alive`
(ngx_http_header_filter_module.c:563-564), which HTTP/1.1 implies and the gateway leaves out; the body, Content-Type
and Content-Length of an error the proxy makes itself (Kong's error handler writes its own); a reason phrase nginx
relays empty (the gateway fills one in); of two different statuses, the rest of the answers; where nginx's header
filter writes the headers it places itself (Server, Date, Content-Type, Content-Length, Last-Modified, Location,
Transfer-Encoding, Connection, Keep-Alive: first, ngx_http_header_filter_module.c:473-576, where the gateway keeps
the upstream's order): those are compared as a set, the others in order too; how many tries (one on a pooled
connection that fails is free for both, nginx's u->peer.cached, and how many such there are depends on the pool),
only whether there was more than one. Waits are bounded (a stalled body ends at a read_timeout of 1 s) and the cases
run 32 at a time: a side takes 2-3 s."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio
from backends import service, stop_process
from conftest import CODECS
from kong_nginx import KONG_HTTP, NGINX, NO_NGINX, Nginx, answer_events, events_after, nginx_version

from gateway.http.codec import END, ProtocolError
from gateway.http.codecs import codec_classes

READ_TIMEOUT_S = 1  # the service's read_timeout and nginx's proxy_read_timeout: a stalled body ends after it
TRIES = 6  # Kong's default retries (5) and the first try

# ---- nginx ---------------------------------------------------------------------------------------------------------

NGINX_CONF = KONG_HTTP + """
    upstream kong_upstream {  # nginx_kong.lua:74: retries + 1 tries, max_fails 0; kong_defaults.lua:75-77
{servers}
        keepalive 512;
        keepalive_requests 10000;
        keepalive_timeout 60s;
    }

    server {
        listen 127.0.0.1:{port};
        server_name kong;
        location / {  # nginx_kong.lua:162-214, for a GET or HEAD without Upgrade or TE
            default_type '';
            proxy_http_version 1.1;
            proxy_buffering on;
            proxy_request_buffering on;
            proxy_read_timeout {read_timeout}s;
            proxy_set_header TE '';
            proxy_set_header Host 127.0.0.1:{up};
            proxy_set_header Upgrade '';
            proxy_set_header Connection keep-alive;
            proxy_pass_header Server;
            proxy_pass_header Date;
            proxy_pass http://kong_upstream;
        }
    }
}
"""


# ---- the corpus ----------------------------------------------------------------------------------------------------


class Case(NamedTuple):
    name: str
    pieces: tuple[bytes, ...]  # the upstream's answer, written PIECE_GAP_S apart
    after: str = "keep"  # keep (read the next request) | close | late (close LATE_CLOSE_S after)
    method: str = "GET"


BODY = b"hello world"
HEAD = b"HTTP/1.1 200 OK\r\n"


def _framed(kind: str, body: bytes = BODY) -> tuple[bytes, str]:
    """The rest of a head after its fields (with the blank line) and the body, framed `kind`, and what the upstream
    then does."""
    if kind == "cl":
        return b"Content-Length: %d\r\n\r\n" % len(body) + body, "keep"
    if kind == "chunked":
        return b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n", "keep"
    return b"\r\n" + body, "close"  # close-delimited


# status lines nginx reads (ngx_http_parse_status_line, ngx_http_parse.c:1621-1811: a status of any 3 digits), and
# those it cannot, whose bytes it relays as an HTTP/0.9 body (ngx_http_proxy_module.c:1823-1847)
STATUS_LINES = [  # each framed three ways, and answering HEAD
    b"HTTP/1.1 200 OK", b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.0 200 OK", b"HTTP/1.1 200 " + b"R" * 300,
    b"HTTP/2.0 200 OK", b"HTTP/1.2 200 OK", b"HTTP/1.1  200 OK", b"HTTP/10.1 200 OK", b"HTTP/1.1 200 OK\tx",
    b"HTTP/1.1 200 O\x01K", b"HTTP/1.10 200 OK", b"HTTP/1.1 200 \xc3\xa9t\xc3\xa9", b"HTTP/1.1 404 Not Found",
]
STATUS_CODES = [  # with a Content-Length, and answering HEAD
    b"HTTP/1.1 201 Created", b"HTTP/1.1 299 X", b"HTTP/1.1 302 Found", b"HTTP/1.1 500 Err", b"HTTP/1.1 502 Bad",
    b"HTTP/1.1 503 X", b"HTTP/1.1 600 X", b"HTTP/1.1 999 X", b"HTTP/1.1 400 Bad", b"HTTP/1.1 401 U",
    b"HTTP/1.1 413 X", b"HTTP/1.1 494 X", b"HTTP/1.1 499 X", b"HTTP/1.1 504 X", b"HTTP/1.1 505 X",
]
UNREAD_STATUS_LINES = [
    b"HTTP/1.1 20 X", b"HTTP/1.1 2000 X", b"HTTP/1.1 abc X", b"HTTP/0.9 200 OK", b"HTTP/1 200 OK",
    b"http/1.1 200 OK", b"ICY 200 OK", b"HTTP/1.1\t200 OK", b"HTTP/1.1 200OK", b"HTTP/1.1 -20 X",
]

# (name, header lines, framing: cl | chunked | close | `cl:<value>` a Content-Length as given | chunkbody (the lines
# frame it, a chunked body follows) | chunkbody10 (the same in an HTTP/1.0 answer))
HEADER_SETS: list[tuple[str, list[bytes], str]] = [
    ("cl-dup-equal", [b"Content-Length: 11"], "cl"), ("cl-dup-diff", [b"Content-Length: 12"], "cl"),
    ("cl-list", [], "cl:11, 11"), ("cl-plus", [], "cl:+11"), ("cl-zeros", [], "cl:011"), ("cl-neg", [], "cl:-1"),
    ("cl-alpha", [], "cl:abc"), ("cl-huge", [], "cl:99999999999999999999"), ("cl-empty", [], "cl:"),
    ("cl-spaces", [], "cl:  11  "), ("cl-tab", [], "cl:\t11"),
    ("cl+te", [b"Content-Length: 11"], "chunked"), ("cl+te-wrongcl", [b"Content-Length: 3"], "chunked"),
    ("te-gzip", [b"Transfer-Encoding: gzip"], "close"),
    ("te-gzip-chunked", [b"Transfer-Encoding: gzip, chunked"], "chunkbody"),
    ("te-chunked-gzip", [b"Transfer-Encoding: chunked, gzip"], "close"),
    ("te-dup-chunked", [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], "chunkbody"),
    ("te-Chunked", [b"Transfer-Encoding: Chunked"], "chunkbody"),
    ("te-identity", [b"Transfer-Encoding: identity"], "close"), ("te-identity-cl", [b"Transfer-Encoding: identity"],
                                                                  "cl"),
    ("te-chunked-sp", [b"Transfer-Encoding: chunked "], "chunkbody"), ("te-empty", [b"Transfer-Encoding: "], "cl"),
    ("te-x", [b"Transfer-Encoding: x"], "close"),
    ("te-chunked,chunked", [b"Transfer-Encoding: chunked, chunked"], "chunkbody"),
    ("te-http10-chunked", [b"Transfer-Encoding: chunked"], "chunkbody10"),
    ("conn-close", [b"Connection: close"], "cl"), ("conn-keep", [b"Connection: keep-alive"], "cl"),
    ("conn-names-xfoo", [b"Connection: X-Foo", b"X-Foo: 1", b"X-Bar: 2"], "cl"),
    ("conn-close-xfoo", [b"Connection: close, X-Foo", b"X-Foo: 1"], "cl"),
    ("conn-names-cl", [b"Connection: Content-Length"], "cl"),
    ("conn-names-ct", [b"Connection: Content-Type", b"Content-Type: text/x"], "cl"),
    ("conn-names-date", [b"Connection: Date", b"Date: Tue, 01 Jan 2030 00:00:00 GMT"], "cl"),
    ("conn-names-server", [b"Connection: Server", b"Server: up"], "cl"),
    ("conn-names-te", [b"Connection: Transfer-Encoding"], "chunked"),
    ("conn-names-setcookie", [b"Connection: Set-Cookie", b"Set-Cookie: a=1"], "cl"),
    ("conn-names-location", [b"Connection: Location", b"Location: /x"], "cl"),
    ("conn-names-etag", [b"Connection: ETag", b"ETag: \"a\""], "cl"),
    ("conn-names-lastmod", [b"Connection: Last-Modified", b"Last-Modified: Tue, 01 Jan 2030 00:00:00 GMT"], "cl"),
    ("conn-names-cc", [b"Connection: Cache-Control", b"Cache-Control: no-cache"], "cl"),
    ("conn-names-vary", [b"Connection: Vary", b"Vary: Accept"], "cl"),
    ("conn-upgrade", [b"Connection: upgrade", b"Upgrade: foo"], "cl"),
    ("conn-dup", [b"Connection: X-Foo", b"Connection: X-Bar", b"X-Foo: 1", b"X-Bar: 2"], "cl"),
    ("conn-empty", [b"Connection: "], "cl"), ("conn-weird", [b"Connection: ,,X-Foo ,", b"X-Foo: 1"], "cl"),
    ("conn-Close-case", [b"Connection: CLOSE"], "cl"),
    ("keep-alive-hdr", [b"Keep-Alive: timeout=5, max=3"], "cl"), ("trailer-hdr", [b"Trailer: X-T"], "chunked"),
    ("upgrade-hdr", [b"Upgrade: h2c"], "cl"), ("upgrade-empty", [b"Upgrade: "], "cl"),
    ("proxy-conn", [b"Proxy-Connection: close"], "cl"),
    ("obs-fold", [b"X-A: a", b"  b"], "cl"), ("obs-fold-tab", [b"X-A: a", b"\tb"], "cl"),
    ("name-space", [b"X A: b"], "cl"), ("name-at", [b"X@A: b"], "cl"), ("name-empty", [b": v"], "cl"),
    ("name-underscore", [b"X_A: b"], "cl"), ("name-space-before-colon", [b"X-A : b"], "cl"),
    ("no-space", [b"X-A:b"], "cl"), ("no-colon", [b"Garbage"], "cl"), ("value-ctl", [b"X-A: a\x01b"], "cl"),
    ("value-del", [b"X-A: a\x7fb"], "cl"), ("value-8bit", [b"X-A: caf\xc3\xa9"], "cl"),
    ("value-nul", [b"X-A: a\x00b"], "cl"), ("value-empty", [b"X-A:"], "cl"), ("value-trailing-ws", [b"X-A: a  \t"],
                                                                               "cl"),
    ("name-dot", [b"X.A: b"], "cl"), ("name-slash", [b"X/A: b"], "cl"), ("name-8bit", [b"X\xc3\xa9: b"], "cl"),
    ("name-colon-only", [b":"], "cl"), ("name-lead-space", [b" X-A: b"], "cl"),
    ("setcookie-dup", [b"Set-Cookie: a=1", b"Set-Cookie: b=2", b"Set-Cookie: c=3"], "cl"),
    ("cc-dup", [b"Cache-Control: no-cache", b"Cache-Control: private"], "cl"),
    ("ct-dup", [b"Content-Type: text/plain", b"Content-Type: text/html"], "cl"),
    ("ct-plain", [b"Content-Type: text/plain"], "cl"), ("ct-json", [b"Content-Type: application/json"], "cl"),
    ("ct-charset", [b"Content-Type: text/html; charset=latin1"], "cl"),
    ("server", [b"Server: upstream/1"], "cl"), ("server-dup", [b"Server: a", b"Server: b"], "cl"),
    ("date", [b"Date: Tue, 01 Jan 2030 00:00:00 GMT"], "cl"),
    ("date-dup", [b"Date: Tue, 01 Jan 2030 00:00:00 GMT", b"Date: Wed, 02 Jan 2030 00:00:00 GMT"], "cl"),
    ("date-bad", [b"Date: yesterday"], "cl"),
    ("location-dup", [b"Location: /a", b"Location: /b"], "cl"), ("location-rel", [b"Location: a/b"], "cl"),
    ("etag-dup", [b"ETag: \"a\"", b"ETag: \"b\""], "cl"),
    ("lastmod-dup", [b"Last-Modified: Tue, 01 Jan 2030 00:00:00 GMT", b"Last-Modified: x"], "cl"),
    ("expires-dup", [b"Expires: 0", b"Expires: 1"], "cl"), ("refresh-dup", [b"Refresh: 1", b"Refresh: 2"], "cl"),
    ("status-hdr", [b"Status: 404 Nope"], "cl"), ("status-hdr-dup", [b"Status: 201", b"Status: 202"], "cl"),
    ("via", [b"Via: 1.1 up"], "cl"), ("via-dup", [b"Via: 1.1 a", b"Via: 1.1 b"], "cl"),
    ("vary-dup", [b"Vary: A", b"Vary: B"], "cl"), ("link-dup", [b"Link: </a>", b"Link: </b>"], "cl"),
    ("www-auth-dup", [b"WWW-Authenticate: Basic", b"WWW-Authenticate: Bearer"], "cl"),
    ("ce-gzip", [b"Content-Encoding: gzip"], "cl"), ("accept-ranges", [b"Accept-Ranges: bytes"], "cl"),
    ("content-range", [b"Content-Range: bytes 0-10/100"], "cl"),
    ("x-accel-buffering", [b"X-Accel-Buffering: no"], "cl"), ("x-accel-expires", [b"X-Accel-Expires: 10"], "cl"),
    ("x-accel-charset", [b"X-Accel-Charset: koi8-r", b"Content-Type: text/plain"], "cl"),
    ("x-accel-charset-utf8", [b"X-Accel-Charset: utf-8", b"Content-Type: application/json"], "cl"),
    ("x-accel-limit-rate", [b"X-Accel-Limit-Rate: 100"], "cl"),
    ("x-kong-upstream-status", [b"X-Kong-Upstream-Status: 7"], "cl"),
    ("case-mixed", [b"x-MiXeD: 1", b"X-mixed: 2"], "cl"),
    ("many-50", [b"X-H%d: v" % i for i in range(50)], "cl"), ("many-100", [b"X-H%d: v" % i for i in range(100)], "cl"),
    ("lf-only", [], "lf"), ("cr-cr-lf", [], "crcrlf"),
]


HEAD_TOO = ("cl", "te", "conn", "keep", "trailer", "upgrade", "proxy", "no-colon", "ct-dup", "server-dup",
            "date-dup")  # the header sets that answer HEAD too: framing, connection, the headers nginx places


def _head_padding(total: int) -> bytes:
    """An X-Pad header line that makes a head of it and `Content-Length: 11` `total` bytes long."""
    base = len(HEAD + b"X-Pad: \r\n" + b"Content-Length: 11\r\n\r\n")
    return b"X-Pad: " + b"p" * (total - base) + b"\r\n"


BIG = bytes(range(256)) * 400  # 102,400 bytes
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"

# (name, pieces, after)
BODY_CASES: list[tuple[str, list[bytes], str]] = [
    ("cl-short-extra", [HEAD + b"Content-Length: 5\r\n\r\nhello world"], "keep"),
    ("cl-exact-then-junk", [HEAD + b"Content-Length: 11\r\n\r\nhello worldHTTP/1.1 200 OK\r\n\r\n"], "keep"),
    ("cl-long-close", [HEAD + b"Content-Length: 20\r\n\r\nhello world"], "close"),
    ("cl-long-late-close", [HEAD + b"Content-Length: 20\r\n\r\nhello world"], "late"),
    ("cl-long-stalled", [HEAD + b"Content-Length: 20\r\n\r\nhello world"], "keep"),
    ("cl-zero-extra", [HEAD + b"Content-Length: 0\r\n\r\nxyz"], "keep"),
    ("cl-zero", [HEAD + b"Content-Length: 0\r\n\r\n"], "keep"),
    ("cl-close-after", [HEAD + b"Content-Length: 11\r\n\r\nhello world"], "close"),
    ("cl-big", [HEAD + b"Content-Length: %d\r\n\r\n" % len(BIG) + BIG], "keep"),
    ("cl-big-cut", [HEAD + b"Content-Length: %d\r\n\r\n" % (len(BIG) + 5) + BIG], "close"),
    ("close-big", [HEAD + b"\r\n" + BIG], "close"),
    ("close-empty", [HEAD + b"\r\n"], "close"),
    ("close-http10", [b"HTTP/1.0 200 OK\r\n\r\n" + BODY], "close"),
    ("http10-cl-keep", [b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n" + BODY], "keep"),
    ("http10-cl-ka", [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 11\r\n\r\n" + BODY], "keep"),
    ("chunk-ext", [CHUNKED + b"b;ext=1\r\nhello world\r\n0\r\n\r\n"], "keep"),
    ("chunk-ext-quoted", [CHUNKED + b"b;e=\"q;x\"\r\nhello world\r\n0\r\n\r\n"], "keep"),
    ("chunk-ext-last", [CHUNKED + b"b\r\nhello world\r\n0;x=1\r\n\r\n"], "keep"),
    ("chunk-trailer", [CHUNKED + b"b\r\nhello world\r\n0\r\nX-T: 1\r\n\r\n"], "keep"),
    ("chunk-trailer-declared", [HEAD + b"Trailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"b\r\nhello world\r\n0\r\nX-T: 1\r\n\r\n"], "keep"),
    ("chunk-trailer-cl", [CHUNKED + b"b\r\nhello world\r\n0\r\nContent-Length: 5\r\n\r\n"], "keep"),
    ("chunk-bad-size", [CHUNKED + b"zz\r\nhello world\r\n0\r\n\r\n"], "close"),
    ("chunk-neg-size", [CHUNKED + b"-1\r\nhello world\r\n0\r\n\r\n"], "close"),
    ("chunk-sp-size", [CHUNKED + b"b  \r\nhello world\r\n0\r\n\r\n"], "keep"),
    ("chunk-sp-before", [CHUNKED + b" b\r\nhello world\r\n0\r\n\r\n"], "close"),
    ("chunk-huge-size", [CHUNKED + b"ffffffffffffffffff\r\nhello world\r\n0\r\n\r\n"], "close"),
    ("chunk-zeros", [CHUNKED + b"0000b\r\nhello world\r\n0\r\n\r\n"], "keep"),
    ("chunk-upper", [CHUNKED + b"B\r\nhello world\r\n0\r\n\r\n"], "keep"),
    ("chunk-0x", [CHUNKED + b"0xb\r\nhello world\r\n0\r\n\r\n"], "close"),
    ("chunk-lf-only", [CHUNKED + b"b\nhello world\n0\n\n"], "keep"),
    ("chunk-no-last", [CHUNKED + b"b\r\nhello world\r\n"], "close"),
    ("chunk-no-last-late-close", [CHUNKED + b"b\r\nhello world\r\n"], "late"),
    ("chunk-no-final-crlf", [CHUNKED + b"b\r\nhello world\r\n0\r\n"], "close"),
    ("chunk-data-long", [CHUNKED + b"5\r\nhello world\r\n0\r\n\r\n"], "close"),
    ("chunk-data-short", [CHUNKED + b"f\r\nhello world"], "close"),
    ("chunk-missing-crlf", [CHUNKED + b"b\r\nhello world0\r\n\r\n"], "close"),
    ("chunk-extra-after", [CHUNKED + b"b\r\nhello world\r\n0\r\n\r\nJUNK"], "keep"),
    ("chunk-empty-body", [CHUNKED + b"0\r\n\r\n"], "keep"),
    ("chunk-many", [CHUNKED + b"".join(b"1\r\n%c\r\n" % c for c in BODY) + b"0\r\n\r\n"], "keep"),
    ("chunk-big", [CHUNKED + b"%x\r\n" % len(BIG) + BIG + b"\r\n0\r\n\r\n"], "keep"),
    ("chunk-pieces", [CHUNKED + b"b\r\nhello", b" world\r\n", b"0\r\n\r\n"], "keep"),
    ("chunk-size-line-long", [CHUNKED + b"b;" + b"e" * 5000 + b"\r\nhello world\r\n0\r\n\r\n"], "close"),
    ("early-close-empty", [b""], "close"),
    ("early-close-status", [b"HTTP/1.1 20"], "close"),
    ("early-close-head", [HEAD + b"Content-Le"], "close"),
    ("early-close-noblank", [HEAD + b"Content-Length: 11\r\n"], "close"),
    ("http09", [BODY], "close"),
    ("http09-html", [b"<html>hi</html>"], "close"),
    ("head-pieces", [b"HTTP/1.1 200 OK\r\nContent-", b"Length: 11\r\n", b"\r\nhello", b" world"], "keep"),
    ("1xx-100", [b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD + b"Content-Length: 11\r\n\r\n" + BODY], "close"),
    ("1xx-103", [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + HEAD + b"Content-Length: 11\r\n\r\n" + BODY],
     "close"),
    ("1xx-two", [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 P\r\n\r\n" + HEAD + b"Content-Length: 11\r\n\r\n" + BODY],
     "close"),
    ("1xx-then-204", [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"], "close"),
    ("1xx-pieces", [b"HTTP/1.1 100 Continue\r\n\r\n", HEAD + b"Content-Length: 11\r\n\r\n" + BODY], "close"),
    ("101-noupgrade", [b"HTTP/1.1 101 Switching Protocols\r\n\r\n"], "close"),
    ("101-upgrade-hdr", [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"],
     "close"),
    ("204", [b"HTTP/1.1 204 No Content\r\n\r\n"], "keep"),
    ("204-cl0", [b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"], "keep"),
    ("204-cl5-body", [b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"], "keep"),
    ("204-cl5-nobody", [b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"], "keep"),
    ("204-chunked", [b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"], "keep"),
    ("204-chunked-nobody", [b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"], "keep"),
    ("204-junk", [b"HTTP/1.1 204 No Content\r\n\r\nJUNK"], "keep"),
    ("204-ct", [b"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\n\r\n"], "keep"),
    ("204-close", [b"HTTP/1.1 204 No Content\r\n\r\n"], "close"),
    ("205", [b"HTTP/1.1 205 Reset\r\nContent-Length: 0\r\n\r\n"], "keep"),
    ("205-body", [b"HTTP/1.1 205 Reset\r\nContent-Length: 5\r\n\r\nhello"], "keep"),
    ("304", [b"HTTP/1.1 304 Not Modified\r\n\r\n"], "keep"),
    ("304-cl", [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 11\r\n\r\n"], "keep"),
    ("304-cl-body", [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 11\r\n\r\nhello world"], "keep"),
    ("304-chunked", [b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"], "keep"),
    ("304-etag-ct", [b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Type: text/plain\r\n\r\n"], "keep"),
    ("304-close", [b"HTTP/1.1 304 Not Modified\r\n\r\n"], "close"),
    ("no-framing-http11", [HEAD + b"Content-Type: text/plain\r\n\r\n" + BODY], "close"),
    *[(f"head-size-{n}", [HEAD + _head_padding(n) + b"Content-Length: 11\r\n\r\n" + BODY], "keep")
      for n in (4000, 4095, 4096, 4097, 5000)],
    ("head-size-4096-split", [HEAD + _head_padding(4096)[:2000], _head_padding(4096)[2000:]
                              + b"Content-Length: 11\r\n\r\n" + BODY], "keep"),
    ("head-4090-plus-body", [HEAD + _head_padding(4090) + b"Content-Length: 110\r\n\r\n" + BODY * 10], "keep"),
]


def _header_answer(lines: list[bytes], kind: str) -> tuple[list[bytes], str]:
    head = HEAD + b"".join(h + b"\r\n" for h in lines)
    if kind.startswith("cl:"):
        return [head + b"Content-Length: " + kind[3:].encode() + b"\r\n\r\n" + BODY], "close"
    if kind == "chunkbody":
        return [head + b"\r\nb\r\nhello world\r\n0\r\n\r\n"], "keep"
    if kind == "chunkbody10":
        return [head.replace(b"HTTP/1.1", b"HTTP/1.0") + b"\r\nb\r\nhello world\r\n0\r\n\r\n"], "keep"
    if kind == "lf":
        return [b"HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 11\n\n" + BODY], "keep"
    if kind == "crcrlf":
        return [b"HTTP/1.1 200 OK\r\nX-A: 1\r\r\nContent-Length: 11\r\n\r\n" + BODY], "keep"
    rest, after = _framed(kind)
    return [head + rest], after


def _head_only(pieces: list[bytes]) -> tuple[bytes, ...]:
    """The answer to HEAD: the head of `pieces` alone."""
    whole = b"".join(pieces)
    end = whole.find(b"\r\n\r\n")
    return (whole[:end + 4] if end >= 0 else whole,)


def corpus() -> list[Case]:
    """Every case, the same every run; names are unique (ALLOWED names them)."""
    cases: list[Case] = []
    for line in STATUS_LINES + STATUS_CODES:
        for kind in ("cl", "chunked", "close") if line in STATUS_LINES else ("cl",):
            rest, after = _framed(kind)
            cases.append(Case(f"status {line[:30]!r} {kind}", (line + b"\r\n" + rest,), after))
        rest, after = _framed("cl")
        cases.append(Case(f"status {line[:30]!r} HEAD", _head_only([line + b"\r\n" + rest]), after, "HEAD"))
    for line in UNREAD_STATUS_LINES:  # closed after: nginx ends the HTTP/0.9 body it relays then
        rest, _ = _framed("cl")
        cases.append(Case(f"status {line[:30]!r} unread", (line + b"\r\n" + rest,), "close"))
    # a status below 100, which nginx relays: with a Content-Length (else nginx frames its body by no length and
    # keeps the connection, as for a 1xx: ngx_http_chunked_filter_module.c:65-72)
    for method in ("GET", "HEAD"):
        rest, after = _framed("cl")
        cases.append(Case(f"status 099 {method}", (b"HTTP/1.1 099 X\r\n" + rest,), after, method))
    for name, lines, kind in HEADER_SETS:
        pieces, after = _header_answer(lines, kind)
        cases.append(Case(f"hdr {name}", tuple(pieces), after))
        if kind in ("cl", "chunked") and name.startswith(HEAD_TOO):
            cases.append(Case(f"hdr {name} HEAD", _head_only(pieces), after, "HEAD"))
    for name, pieces, after in BODY_CASES:
        cases.append(Case(f"body {name}", tuple(pieces), after))
        # a HEAD's answer with a body: of one piece, which nginx reads with the head (the bytes of a later piece, or
        # a later close, could meet another request on the connection nginx pooled); not a 1xx or 101, nor an
        # HTTP/0.9 answer (nginx relays the first as the answer, and of the last nothing to a HEAD, and keeps the
        # connection: a client would wait)
        if len(pieces) == 1 and after != "late" and not name.startswith(("1xx", "101", "http09")):
            cases.append(Case(f"body {name} HEAD", tuple(pieces), after, "HEAD"))
    assert len({c.name for c in cases}) == len(cases), "two cases of the same name"
    return cases


CORPUS = corpus()
INDEX = {c.name: i for i, c in enumerate(CORPUS)}

# ---- the upstream: answers each case's bytes, records its connections ----------------------------------------------

PIECE_GAP_S = 0.02
LATE_CLOSE_S = 0.1
SECOND_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class UpConn:
    """One connection the upstream accepted: the targets of the requests it carried, and who ended it."""

    targets: list[str] = field(default_factory=list)
    ended_by: str | None = None  # "proxy" (its FIN or reset), "upstream" (the case's close)


class Upstream:
    """Answers `/c/<side>/<i>` with case i's pieces, anything else with SECOND_ANSWER, kept alive; served by the
    trio loop of the side it answers (no threads: the proxy and the client run there too)."""

    def __init__(self) -> None:
        self.port = 0
        self.by_target: dict[str, list[UpConn]] = {}  # the connection of each request to a target

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=512)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        record, buf = UpConn(), b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = await stream.receive_some(65536)
                        if not data:
                            record.ended_by = "proxy"
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
                    self.by_target.setdefault(target, []).append(record)
                    record.targets.append(target)
                    if not await self._answer(stream, target):
                        record.ended_by = "upstream"
                        return
            except trio.BrokenResourceError:
                record.ended_by = "proxy"

    async def _answer(self, stream: trio.SocketStream, target: str) -> bool:
        """Write the answer to `target`; false when the case then closes the connection."""
        parts = target.split("/")
        if len(parts) != 4 or parts[1] != "c":
            await stream.send_all(SECOND_ANSWER)
            return True
        case = CORPUS[int(parts[3])]
        for n, piece in enumerate(case.pieces):
            if n:
                await trio.sleep(PIECE_GAP_S)
            await stream.send_all(piece)
        if case.after == "late":
            await trio.sleep(LATE_CLOSE_S)
        return case.after == "keep"


# ---- the client ----------------------------------------------------------------------------------------------------

ANSWER_S = 6.0  # bounds on a hang, never waited out but by one (a stalled body ends after READ_TIMEOUT_S; a GET
SECOND_S = 3.0  # that every connection fails is tried again on each pooled one: slow on a busy host)


@dataclass
class Answer:
    """One response as the client read it."""

    status: int | str  # the final status, or how the connection ended before one: closed | reset | garbage
    reason: bytes = b""
    version: bytes = b""
    interim: list[int] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    framing: str = ""  # cl | chunked | close | none
    body: bytes = b""
    complete: bool = False


@dataclass
class Outcome:
    """What one case did: the client's answer, how its connection ended while it read the answer (eof, reset or
    None: still open), the second request's answer on the same connection (None when not sent: the first did not
    end whole on an open connection), whether the proxy asked the upstream more than once and whether it kept the
    upstream connection."""

    first: Answer
    end: str | None = None
    second: str | None = None
    retried: bool = False
    kept: bool | None = None


class _Stream:
    """A client connection's reads, buffered; `end` once it ended: eof or reset."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buf, self.end = stream, bytearray(), None

    async def fill(self) -> bool:
        if self.end:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.end = "reset"
            return False
        if not data:
            self.end = "eof"
        self.buf += data
        return bool(data)

    async def until(self, sep: bytes) -> bytes | None:
        while (i := self.buf.find(sep)) < 0:
            if not await self.fill():
                return None
        out = bytes(self.buf[:i])
        del self.buf[:i + len(sep)]
        return out

    async def take(self, n: int | None) -> bytes:
        """n bytes (fewer if the connection ends), or with None all up to its end."""
        while (n is None or len(self.buf) < n) and await self.fill():
            pass
        out = bytes(self.buf[:n])
        del self.buf[:len(out)]
        return out


async def _chunked(s: _Stream) -> tuple[bytes, bool]:
    """A chunked body's data and whether its last chunk and trailer section came whole."""
    body = b""
    while (line := await s.until(b"\r\n")) is not None:
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            return body + b"<bad chunk line %r>" % line[:40], False
        if size == 0:
            while (trailer := await s.until(b"\r\n")) is not None:
                if not trailer:
                    return body, True
            return body, False
        data = await s.take(size + 2)
        body += data[:size]
        if data[size:] != b"\r\n":
            return body, False
    return body, False


async def read_answer(s: _Stream, method: str) -> Answer:
    """The final response (1xx ones noted), its body read as its head frames it."""
    interim: list[int] = []
    while True:
        while b"\r\n\r\n" not in s.buf:
            if len(s.buf) >= 9 and not s.buf.startswith(b"HTTP/1.1 "):
                return Answer("garbage", interim=interim)  # (an HTTP/0.9 answer: nginx relays what it cannot read)
            if not await s.fill():
                return Answer(s.end or "closed", interim=interim)
        head = await s.until(b"\r\n\r\n")
        assert head is not None
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version != b"HTTP/1.1" or not (code.isdigit() and len(code) == 3):  # (an HTTP/0.9 body relayed)
            return Answer("garbage", interim=interim)
        if 100 <= int(code) < 200 and int(code) != 101:
            interim.append(int(code))
            continue
        break
    headers = [(k.lower(), v.lstrip(b" \t")) for k, _, v in (h.partition(b":") for h in lines[1:])]
    out = Answer(int(code), reason, version, interim, headers)
    names = {k for k, _ in headers}
    if method == "HEAD" or out.status in (101, 204, 304):
        out.framing, out.complete = "none", True
    elif b"transfer-encoding" in names:
        out.framing = "chunked"
        out.body, out.complete = await _chunked(s)
    elif b"content-length" in names:
        length = int(dict(headers)[b"content-length"])
        out.framing, out.body = "cl", await s.take(length)
        out.complete = len(out.body) == length
    else:
        out.framing, out.body = "close", await s.take(None)
        out.complete = s.end == "eof"
    return out


async def exchange(port: int, target: str, method: str) -> tuple[Answer, str | None, str | None]:
    """`method target` on a new connection, and a second request on it when the first answer left it open."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    s = _Stream(stream)
    first, second = Answer("timeout"), None
    try:
        await stream.send_all(f"{method} {target} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
        with trio.move_on_after(ANSWER_S):
            first = await read_answer(s, method)
        if isinstance(first.status, int) and first.complete and not s.end and first.status != 101:
            second = "hang"
            with trio.move_on_after(SECOND_S):
                await stream.send_all(f"GET {target}/2 HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
                answer = await read_answer(s, "GET")
                second = (f"{answer.status} {answer.body!r}" if isinstance(answer.status, int)
                          else f"{answer.status} {bytes(s.buf[:40])!r}")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        second = "reset"
    finally:
        await trio.aclose_forcefully(stream)
    return first, s.end if second is None else None, second


def _kept(requests: list[UpConn], target: str) -> bool | None:
    """Whether the proxy kept the connection of the last try for another request (None: the upstream closed it)."""
    if not requests:
        return None
    conn = requests[-1]
    if conn.targets[-1] != target:
        return True
    return None if conn.ended_by == "upstream" else conn.ended_by is None




async def run_side(port: int, side: str, upstream: Upstream) -> dict[str, Outcome]:
    """Every case through one proxy, up to 32 at a time: what each case did."""
    answers: dict[str, tuple[Answer, str | None, str | None]] = {}
    limiter = trio.CapacityLimiter(32)

    async def one(i: int, case: Case) -> None:
        async with limiter:
            answers[case.name] = await exchange(port, f"/c/{side}/{i}", case.method)

    async with trio.open_nursery() as nursery:
        for i, case in enumerate(CORPUS):
            nursery.start_soon(one, i, case)
    await trio.sleep(0.3)  # the proxy's FIN on an upstream connection it did not keep
    out = {}
    for i, case in enumerate(CORPUS):
        target = f"/c/{side}/{i}"
        requests = upstream.by_target.get(target, [])
        first, end, second = answers[case.name]
        kept = _kept(requests, target) if case.after == "keep" else None  # (closed by the upstream, or both)
        out[case.name] = Outcome(first, end, second, len(requests) > 1, kept)
    return out


# ---- what is compared -----------------------------------------------------------------------------------------------

PLACED = {b"server", b"date", b"content-type", b"content-length", b"last-modified", b"location",
          b"transfer-encoding", b"connection", b"keep-alive"}  # written first by nginx's header filter
KONG_SETS = {b"x-kong-upstream-latency", b"x-kong-proxy-latency", b"x-kong-request-id", b"x-kong-response-latency",
             b"x-request-id"}  # (the gateway echoes its request id as X-Request-Id, README: Headers)


class Difference(NamedTuple):
    case: str
    aspect: str
    nginx: str
    gateway: str


def _upstream_fields(case: Case) -> list[tuple[bytes, bytes]]:
    """The header fields of the case's final answer as sent (after any 1xx), names in lower case."""
    heads = b"".join(case.pieces).split(b"\r\n\r\n")
    head = next((h for h in heads if not re.match(rb"HTTP/1\.1 1\d\d ", h)), heads[0])
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])]


def _upstream_status(case: Case) -> tuple[int, bytes] | None:
    """The final status and reason the upstream sent, when its status line is a plain one."""
    for head in b"".join(case.pieces).split(b"\r\n\r\n"):
        found = re.match(rb"HTTP/1\.[01] (\d{3}) ?([^\r\n]*)", head)
        if found and not 100 <= int(found.group(1)) < 200:
            return int(found.group(1)), found.group(2)
    return None


def _csv(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def kong_clears(case: Case) -> set[bytes]:
    """The names Kong's header_filter.before clears from the answer (handler.lua:1487-1508): those the upstream's
    Connection lines name (joined, as nginx 1.23+'s $upstream_http_connection gives them) unless the value is only
    keep-alive, close or upgrade; an Upgrade the request did not ask for; a Trailer (the request had no TE)."""
    fields = _upstream_fields(case)
    connection = b", ".join(v for k, v in fields if k == b"connection")
    clears = {b"trailer"} | ({b"upgrade"} if any(k == b"upgrade" for k, _ in fields) else set())
    if connection not in (b"keep-alive", b"close", b"upgrade"):
        clears |= _csv(connection) - {b"close", b"upgrade", b"keep-alive"}
    return clears


def kong_view(case: Case, answer: Answer) -> tuple[list[tuple[bytes, bytes]], str]:
    """nginx's headers and framing as Kong's header filter leaves them: the names kong_clears gives removed (but
    Transfer-Encoding: nginx's chunked filter writes its own after Kong's), and a cleared Content-Length makes the
    body chunked (lua-nginx-module clears r->headers_out.content_length_n); the Via lines one, the upstream's
    joined (handler.lua:1567-1570; Kong's own token is not compared)."""
    clears = kong_clears(case) - {b"transfer-encoding"}
    headers = [(k, v) for k, v in answer.headers if k not in clears]
    framing = answer.framing
    if b"content-length" in clears and framing == "cl":
        framing = "chunked"
        headers.append((b"transfer-encoding", b"chunked"))
    via = [v for k, v in headers if k == b"via"]
    if len(via) > 1:
        first = next(n for n, (k, _) in enumerate(headers) if k == b"via")
        headers = [(k, v) for k, v in headers if k != b"via"]
        headers.insert(first, (b"via", b", ".join(via)))
    return headers, framing


def _gateway_view(answer: Answer) -> tuple[list[tuple[bytes, bytes]], str]:
    """The gateway's headers without its own Via token (a Via of its own alone removed), and its framing."""
    out = []
    for k, v in answer.headers:
        if k == b"via":
            v = re.sub(rb"(, )?1\.1 mcp-gateway/\S+$", b"", v)
            if not v:
                continue
        out.append((k, v))
    return out, answer.framing


def _made(case: Case, answer: Answer) -> bool:
    """An error of the proxy's own (a 5xx the upstream did not send): its body, Kong's error handler's, is not
    compared, nor its Content-Type and Content-Length."""
    return isinstance(answer.status, int) and answer.status >= 500 and \
        (answer.status, answer.reason) != _upstream_status(case)


def view(case: Case, out: Outcome, nginx: bool) -> dict[str, Any]:
    """What is compared of one case's outcome."""
    a = out.first
    v: dict[str, Any] = {"status": a.status, "interim": a.interim, "retried": out.retried, "kept": out.kept}
    if not isinstance(a.status, int):
        return v
    made = _made(case, a)
    headers, framing = kong_view(case, a) if nginx else _gateway_view(a)
    sent, clears = {k for k, _ in _upstream_fields(case)}, kong_clears(case)
    own = KONG_SETS | {k for k in (b"server", b"date") if made or k not in sent or k in clears}
    if made:
        own |= {b"content-type", b"content-length"}
    headers = [(k, val) for k, val in headers
               if k not in own and (k, val.lower()) != (b"connection", b"keep-alive")]
    v |= {"version": a.version, "framing": framing, "complete": a.complete, "second": out.second,
          "headers": sorted(headers), "order": [k for k, _ in headers if k not in PLACED]}
    if not made:
        v["reason"] = a.reason
    if not a.complete:
        v["end"] = out.end
    elif not made:
        v["body"] = a.body
    return v


def compare(case: Case, n: Outcome, g: Outcome) -> list[Difference]:
    """Where the gateway's outcome differs from nginx's for one case: of two different statuses (or ends before
    one) the rest of the answers is not compared but whether the client's connection served the second request;
    the headers' order only when they are the same; a reason nginx relays empty not compared."""
    vn, vg = view(case, n, True), view(case, g, False)
    if vn["status"] != vg["status"]:
        vn, vg = ({k: v[k] for k in ("status", "interim", "retried", "kept", "second") if k in v} for v in (vn, vg))
    if vn.get("reason") == b"" and "reason" in vg:
        vg["reason"] = b""
    if vn.get("headers") != vg.get("headers"):
        vn.pop("order", None)
        vg.pop("order", None)
    return [Difference(case.name, k, repr(vn.get(k)), repr(vg.get(k))) for k in sorted(set(vn) | set(vg))
            if vn.get(k) != vg.get(k)]


def differences(nginx: dict[str, Outcome], gateway: dict[str, Outcome]) -> set[Difference]:
    return {d for case in CORPUS for d in compare(case, nginx[case.name], gateway[case.name])}


# ---- the allowed differences ----------------------------------------------------------------------------------------

DATA_PLANE = "README, What the data plane does"
ANY = "<any>"  # in an Allowed entry's diffs: whatever that side's value


@dataclass(frozen=True)
class Allowed:
    """A known difference: in each of `cases`, each of `diffs` (aspect, nginx's, the gateway's; ANY: any value).
    `below` set: only with an nginx older than that version (a difference the nginx running here has, and nginx
    1.27.1, Kong 3.9.3's, has not: `source` says where 1.27.1 behaves as the gateway)."""

    name: str
    reason: str
    source: str  # the README passage, or nginx 1.27.1's source line
    cases: tuple[str, ...]
    diffs: tuple[tuple[str, Any, Any], ...]
    codecs: tuple[str, ...] = tuple(CODECS)
    below: tuple[int, ...] | None = None

    def applies(self, codec: str, version: tuple[int, ...]) -> bool:
        return codec in self.codecs and (self.below is None or version < self.below)

    def allows(self, d: Difference) -> bool:
        return d.case in self.cases and any(
            d.aspect == aspect and n in (ANY, d.nginx) and g in (ANY, d.gateway) for aspect, n, g in self._reprs())

    def _reprs(self) -> list[tuple[str, str, str]]:
        return [(a, n if n is ANY else repr(n), g if g is ANY else repr(g)) for a, n, g in self.diffs]

    def missing(self, seen: set[Difference]) -> list[Difference]:
        """The differences of the entry that did not happen."""
        return [Difference(c, a, n, g) for c in self.cases for a, n, g in self._reprs()
                if not any(d.case == c and d.aspect == a and n in (ANY, d.nginx) and g in (ANY, d.gateway)
                           for d in seen)]


def _named(prefix: str, names: str, suffix: str = "") -> tuple[str, ...]:
    return tuple(f"{prefix} {n}{suffix}" for n in names.split())


CUT = ("a Content-Length body or a chunked one cut short (the upstream closed, or sent nothing for read_timeout): "
       "nginx closes the client's connection with a FIN after what it relayed (ngx_http_upstream.c:4638-4664: "
       "NGX_ERROR, flushed, r->keepalive = 0); the gateway resets it")
ALLOWED = [
    Allowed(
        "an upstream's 1xx answers are read past",
        "nginx 1.27.1 expects no 1xx (\"no 1xx since we don't send Expect and Upgrade\", ngx_http_proxy_module.c:"
        "2063-2069): it takes a 100 or 103 as the answer, writes its head and relays the bytes after it, the final "
        "answer's head among them, as that answer's body; the gateway reads past them to the final answer",
        f"{DATA_PLANE} (the codecs): \"an upstream's 1xx answers before its final one (`100 Continue`, `103 Early "
        "Hints`) are read past, not relayed, where nginx 1.27.1, which expects none, relays the first as the answer "
        "and the bytes after it as its body\"",
        _named("body", "1xx-100 1xx-103 1xx-two 1xx-then-204 1xx-pieces"),
        (("interim", ANY, []),)),
    Allowed(
        "a 101 to a request that asked for no upgrade",
        "nginx 1.27.1 relays a 101 as the answer and closes the upstream connection (ngx_http_proxy_module.c:2015-2021:"
        " u->upgrade only when the request had Upgrade); the gateway answers 502",
        f"{DATA_PLANE} (WebSockets): \"A 101 to a request that is not a WebSocket upgrade is a 502, a deliberate "
        "deviation (nginx passes it on as a final answer)\"",
        _named("body", "101-noupgrade 101-upgrade-hdr"),
        (("status", 101, 502), ("second", None, ANY))),
    Allowed(
        "a status line nginx cannot read",
        "nginx 1.27.1 relays the upstream's bytes as an HTTP/0.9 body, without a head (ngx_http_proxy_module.c:1823-"
        "1847: \"upstream sent no valid HTTP/1.0 header\"); the gateway answers 502",
        f"{DATA_PLANE} (the codecs): \"a status line nginx cannot read (`ICY 200 OK`, `HTTP/1 200`), whose bytes it "
        "relays as an HTTP/0.9 body, are a 502 here, on purpose (llhttp refuses both, and the gateway does not speak "
        "HTTP/0.9, as with clients)\"",
        tuple(f"status {line[:30]!r} unread" for line in UNREAD_STATUS_LINES)
        + _named("body", "http09 http09-html"),
        (("status", "garbage", 502), ("second", None, ANY))),
    Allowed(
        "a status below 100",
        "nginx 1.27.1 reads any three digits as the status (ngx_http_parse_status_line, ngx_http_parse.c:1757-1773) "
        "and relays `HTTP/1.1 099 X` as it relays a 200, its connection kept; the gateway answers 502",
        f"{DATA_PLANE} (the codecs): \"a status below 100 (`HTTP/1.1 099`), which nginx relays as any three digits, "
        "are a 502 here, on purpose\"",
        ("status 099 GET", "status 099 HEAD"),
        (("status", ANY, ANY), ("kept", ANY, ANY))),
    Allowed(
        "a chunked body broken in its first read",
        "nginx 1.27.1 writes the head before its body pipe reads the first chunk, but postpones it; at an invalid "
        "chunk the pipe aborts and the request ends neither flushed nor answered (ngx_http_upstream.c:4124-4127, "
        "4638-4664): the client's connection closes with nothing; the gateway answers 502 on a connection it keeps",
        f"{DATA_PLANE} (the codecs): \"a chunked body broken in the upstream's first read of it (before the head went "
        "to the client) is a 502, the client's connection kept, where nginx closes it without an answer\"",
        _named("body", "chunk-bad-size chunk-neg-size chunk-sp-before chunk-huge-size chunk-0x chunk-data-long "
                       "chunk-missing-crlf"),
        (("status", ANY, ANY), ("second", ANY, ANY))),
    Allowed(
        "a header line without a colon",
        "nginx 1.27.1 takes `Garbage` as a header of that name with an empty value (ngx_http_parse_header_line, "
        "ngx_http_parse.c:900-912: CR or LF in sw_name) and relays it; the gateway answers 502",
        f"{DATA_PLANE} (the codecs): \"a header line without a colon, which nginx takes as a name with an empty "
        "value, ... are a 502 here, on purpose (llhttp refuses both ...)\"",
        ("hdr no-colon", "hdr no-colon HEAD"),
        (("status", 200, 502), ("kept", True, False))),
    Allowed(
        "a cut body resets the client's connection", CUT,
        f"{DATA_PLANE} (errors): \"An upstream that dies mid-response makes the gateway reset the client connection, "
        "so a cut body never looks complete\"",
        _named("body", "cl-long-close cl-long-late-close cl-long-stalled cl-big-cut chunk-no-last "
                       "chunk-no-last-late-close chunk-no-final-crlf chunk-data-short"),
        (("end", "eof", "reset"),)),
    Allowed(
        "bytes after an answer to HEAD keep the upstream connection out of the pool",
        "nginx 1.27.1 ends a HEAD at its answer's head (ngx_http_upstream.c:3221-3234), drops what came with it in "
        "the same read and keeps the connection (ngx_http_proxy_module.c:2063-2069); the gateway closes it",
        f"{DATA_PLANE} (the codecs): \"After an answer to HEAD, any byte more keeps the upstream connection out of "
        "the pool\"",
        _named("body", "cl-short-extra cl-exact-then-junk cl-long-stalled cl-zero-extra chunk-ext chunk-ext-quoted "
                       "chunk-ext-last chunk-trailer chunk-trailer-declared chunk-trailer-cl chunk-sp-size chunk-zeros "
                       "chunk-upper chunk-lf-only chunk-extra-after chunk-empty-body chunk-many 204-cl5-body "
                       "204-chunked 204-junk 205-body 304-cl-body head-size-4000", " HEAD"),
        (("kept", True, False),)),
    Allowed(
        "a Connection that names Content-Length",
        "Kong's header_filter.before clears every header the upstream's Connection names (handler.lua:1487-1498), "
        "Content-Length too, and nginx then frames the body chunked (HEAD: neither); the gateway keeps the framing",
        f"{DATA_PLANE} (Headers): \"hop-by-hop headers (and those named in ... any of a response's, which nginx "
        "joins, except Content-Length, Transfer-Encoding and Host, which are framing, not connection options ...) "
        "are removed both ways\"",
        ("hdr conn-names-cl", "hdr conn-names-cl HEAD"),
        (("headers", ANY, ANY),)),
    Allowed(
        "a Connection that names Content-Length: the framing",
        "as above, for a body: chunked through Kong, with its Content-Length from the gateway",
        f"{DATA_PLANE} (Headers): see the entry above",
        ("hdr conn-names-cl",),
        (("framing", "chunked", "cl"),)),
    Allowed(
        "an upstream's Content-Length with leading zeros goes as it came",
        "nginx 1.27.1 writes the number it read (ngx_http_upstream.c:2947, ngx_http_header_filter_module.c:504-508: "
        "`Content-Length: %O`), `11` for `011`; the gateway relays `011`",
        f"{DATA_PLANE} (the codecs): \"a Content-Length must be below 2**63, leading zeros aside (nginx's ngx_atoof: "
        "a client's `003` is 3, and goes upstream as `3`; an upstream's, relayed as it came, too ...)\"",
        ("hdr cl-zeros",),
        (("headers", [(b"content-length", b"11")], [(b"content-length", b"011")]),)),
    Allowed(
        "a bare LF in an upstream's chunked body",
        "nginx 1.27.1 ends a chunk line at a bare LF (ngx_http_parse_chunked, ngx_http_parse.c:2236-2240); the "
        "gateway answers 502",
        f"{DATA_PLANE} (the codecs): \"The h11 codec checks chunked framing as strictly as llhttp "
        "(`gateway/http/chunked.py`: no bare LF or CR, ...)\"",
        ("body chunk-lf-only",),
        (("status", 200, 502), ("kept", True, False))),
    Allowed(
        "a head of exactly proxy_buffer_size",
        "nginx 1.27.1 reads a head that fills its 4096-byte buffer whole, then gives that full buffer to its body "
        "pipe to read into (ngx_http_upstream.c:3287-3319), whose readv of no bytes returns 0, taken as the "
        "upstream's close (ngx_event_pipe.c:326-329, \"upstream prematurely closed connection\"): the body is cut; "
        "the gateway relays it whole",
        f"{DATA_PLANE} (the codecs): \"an answer whose head is exactly 4096 bytes has its body relayed whole, where "
        "nginx 1.27.1 cuts it: its buffer full, it reads no bytes into it and takes that as the upstream's close\"",
        _named("body", "head-size-4096 head-size-4096-split"),
        (("body", None, ANY), ("complete", False, True), ("end", "eof", None), ("kept", False, True),
         ("second", None, ANY))),
    # nginx 1.22's, not 1.27.1's
    Allowed(
        "two Content-Length headers",
        "nginx 1.22 takes the last; 1.27.1 answers 502 \"upstream sent duplicate header line\" and closes the "
        "connection (ngx_http_upstream.c:4728-4736), as the gateway",
        "nginx 1.27.1: ngx_http_upstream.c:4728-4736",
        _named("hdr", "cl-dup-equal cl-dup-diff") + _named("hdr", "cl-dup-equal cl-dup-diff", " HEAD"),
        (("status", 200, 502), ("kept", True, False)), below=(1, 23)),
    Allowed(
        "a Content-Length that is no number",
        "nginx 1.22 reads the body to the close; 1.27.1 answers 502 \"upstream sent invalid Content-Length header\" "
        "(ngx_http_upstream.c:4747-4754), as the gateway (a tab before or after the digits is the value's to nginx, "
        "which skips spaces alone: ngx_http_parse.c:972-1012)",
        "nginx 1.27.1: ngx_http_upstream.c:4747-4754",
        _named("hdr", "cl-list cl-plus cl-neg cl-alpha cl-huge cl-empty cl-tab"),
        (("status", 200, 502),), below=(1, 23)),
    Allowed(
        "Content-Length and Transfer-Encoding",
        "nginx 1.22 frames by Transfer-Encoding (or ignores one it does not know); 1.27.1 answers 502 \"upstream "
        "sent Content-Length and Transfer-Encoding headers at the same time\" and closes the connection "
        "(ngx_http_upstream.c:4738-4744, 5210-5215), as the gateway",
        "nginx 1.27.1: ngx_http_upstream.c:4738-4744, 5210-5215",
        _named("hdr", "cl+te cl+te-wrongcl te-identity-cl te-empty")
        + _named("hdr", "cl+te cl+te-wrongcl te-identity-cl te-empty", " HEAD"),
        (("status", 200, 502), ("kept", True, False)), below=(1, 23)),
    Allowed(
        "a Transfer-Encoding other than chunked, or two",
        "nginx 1.22 ignores a coding it does not know and frames by `chunked` anywhere in the value; 1.27.1 answers "
        "502 \"upstream sent unknown Transfer-Encoding\" or \"duplicate header line\" (ngx_http_upstream.c:5200-5208, "
        "5217-5232), as the gateway",
        "nginx 1.27.1: ngx_http_upstream.c:5200-5208, 5217-5232; README: \"as nginx >= 1.23 answers them\"",
        _named("hdr", "te-gzip te-identity te-x"),
        (("status", 200, 502),), below=(1, 23)),
    Allowed(
        "a Transfer-Encoding other than chunked, or two: the connection",
        "nginx 1.27.1's 502 closes the connection the answer came on, not kept without u->keepalive "
        "(ngx_http_upstream.c:4540-4566), as the gateway; nginx 1.22 reads the chunked body and keeps it",
        "nginx 1.27.1: ngx_http_upstream.c:5200-5208, 5217-5232",
        _named("hdr", "te-gzip-chunked te-dup-chunked te-chunked,chunked"),
        (("status", 200, 502), ("kept", True, False)), below=(1, 23)),
    Allowed(
        "chunked, then another coding",
        "nginx 1.22 takes `chunked, gzip` as chunked, fails on the body and closes; 1.27.1 answers 502 \"upstream "
        "sent unknown Transfer-Encoding\" (ngx_http_upstream.c:5217-5232), as the gateway",
        "nginx 1.27.1: ngx_http_upstream.c:5217-5232",
        ("hdr te-chunked-gzip",),
        (("status", "eof", 502), ("second", None, ANY)), below=(1, 23)),
    Allowed(
        "a repeated header nginx takes once",
        "nginx 1.22 relays every line (Content-Type: the last); 1.27.1 keeps the first and ignores the others "
        "(\"upstream sent duplicate header line ... ignored\": ngx_http_upstream.c:4678-4686, Last-Modified "
        "4768-4777, Expires 4951-4960), as the gateway",
        "nginx 1.27.1: ngx_http_upstream.c:4678-4686; README: \"of an upstream's repeated Status, Content-Type, "
        "Date, ETag, Server, Location, Refresh, Last-Modified or Expires only the first line goes on, as nginx 1.23+ "
        "ignores the others\"",
        _named("hdr", "ct-dup server-dup date-dup location-dup etag-dup lastmod-dup expires-dup refresh-dup "
                      "status-hdr-dup") + _named("hdr", "ct-dup server-dup date-dup", " HEAD"),
        (("headers", ANY, ANY),), below=(1, 23)),
]


@dataclass(frozen=True)
class Finding:
    """A difference from nginx 1.27.1 that is neither documented nor nginx 1.22's: left out of the differential test
    and pinned by `test`, an xfail(strict=True) test of what nginx 1.27.1 does (its fix makes that test pass: then
    drop the xfail and this entry)."""

    test: str
    cases: tuple[str, ...]
    aspects: tuple[str, ...]
    codecs: tuple[str, ...] = tuple(CODECS)

    def covers(self, d: Difference, codec: str) -> bool:
        return codec in self.codecs and d.case in self.cases and d.aspect in self.aspects


FINDINGS: list[Finding] = []


def _table(title: str, rows: list[Difference]) -> str:
    lines = [f"{title} ({len(rows)}):", f"  {'case':44} {'aspect':8} {'nginx':60} gateway"]
    for d in sorted(rows):
        lines.append(f"  {d.case[:44]:44} {d.aspect:8} {d.nginx[:60]:60} {d.gateway[:100]}")
    return "\n".join(lines)


# ---- fixtures and tests --------------------------------------------------------------------------------------------


async def _through_nginx(binary: str, workdir: Path) -> dict[str, Outcome]:
    """The whole corpus through nginx started for it, stopped after."""
    upstream = Upstream()
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        servers = "\n".join(f"        server 127.0.0.1:{upstream.port} max_fails=0;" for _ in range(TRIES))
        server = Nginx(binary, workdir, NGINX_CONF, up=str(upstream.port), servers=servers,
                       read_timeout=str(READ_TIMEOUT_S))
        try:
            results = await run_side(server.port, "nginx", upstream)
        finally:
            stop_process(server.proc)
        nursery.cancel_scope.cancel()
    return results


@pytest.fixture(scope="module")
def nginx_side(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Outcome], tuple[int, ...]]:
    """The whole corpus through nginx, once for the module (the codecs are the gateway's): what each case did, and
    nginx's version."""
    if NGINX is None:
        pytest.skip(NO_NGINX)
    return trio.run(_through_nginx, NGINX, tmp_path_factory.mktemp("nginx")), nginx_version(NGINX)


async def test_the_gateway_relays_upstream_answers_as_nginx_in_kongs_proxy_but_where_allowed(
        nursery, gateway, http_codec: str, nginx_side: tuple[dict[str, Outcome], tuple[int, ...]]) -> None:  # noqa: ANN001
    """Each case's outcome, the gateway's against nginx's configured as Kong 3.9.3's proxy: the differences are
    exactly ALLOWED's and those FINDINGS leave to their own tests."""
    upstream = Upstream()
    await nursery.start(upstream.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{upstream.port}",
                                               [{"paths": ["/"], "strip_path": False}],
                                               read_timeout=READ_TIMEOUT_S * 1000)]})
    ours = await run_side(port, http_codec, upstream)
    nginx, version = nginx_side
    seen = {d for d in differences(nginx, ours) if not any(f.covers(d, http_codec) for f in FINDINGS)}
    entries = [e for e in ALLOWED if e.applies(http_codec, version)]
    new = sorted(d for d in seen if not any(e.allows(d) for e in entries))
    gone = sorted(d for e in entries for d in e.missing(seen))
    report = [_table("differences no ALLOWED entry names", new)] if new else []
    report += [_table("ALLOWED differences that did not happen", gone)] if gone else []
    if report:
        pytest.fail(f"{len(CORPUS)} cases, codec {http_codec}:\n" + "\n".join(report), pytrace=False)


def test_the_allowed_cases_are_cases_of_the_corpus() -> None:
    """An entry naming a case the corpus no longer has would only ever fail as `did not happen`."""
    assert [(e.name, c) for e in ALLOWED for c in e.cases if c not in INDEX] == []


def test_the_findings_name_cases_of_the_corpus_and_their_tests() -> None:
    """A finding naming a case the corpus no longer has would leave a difference compared, and one naming no test
    would pin nothing."""
    assert [(f.test, c) for f in FINDINGS for c in f.cases if c not in INDEX] == []
    assert [f.test for f in FINDINGS if not callable(globals().get(f.test))] == []


# ---- findings: what nginx 1.27.1 does where the gateway does otherwise, undocumented (xfail until fixed) -------------


def _answered(codec: str, answer: bytes, method: bytes = b"GET") -> tuple[list[Any], bool]:
    """The events of a client codec given `answer` in one read (up to its END, or the error it raised), and whether
    it keeps the connection for another request."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, answer, method)
    return events, client.keep_alive


@pytest.mark.parametrize("codec", CODECS)
def test_an_http_0_x_status_line_is_a_502_as_one_nginx_cannot_read(codec: str) -> None:
    """nginx 1.27.1 reads no major version 0 (ngx_http_parse.c:1701-1704: the first digit 1 to 9) and relays
    `HTTP/0.9 200 OK` and all after it as an HTTP/0.9 body (ngx_http_proxy_module.c:1823-1847), which the README
    makes a 502 here ("a status line nginx cannot read ... whose bytes it relays as an HTTP/0.9 body, are a 502
    here"), in both codecs (they read it as a 200 of version 0.9 before)."""
    events, _ = _answered(codec, b"HTTP/0.9 200 OK\r\nContent-Length: 11\r\n\r\nhello world")
    assert isinstance(events[-1], ProtocolError) and events[-1].status == 502, events


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value", [b"\t11", b"11\t", b" \t11", b"11 \t", b"\t" + b"0" * 20 + b"11"])
def test_a_content_length_with_a_tab_is_a_502(codec: str, value: bytes) -> None:
    """nginx's header parser skips spaces alone before a value and ends it at a space (ngx_http_parse.c:972-1012): a
    tab is the value's, so ngx_atoof fails on `\\t11` and `11\\t` and nginx 1.27.1 answers 502 "upstream sent
    invalid Content-Length header" (ngx_http_upstream.c:4747-4754), its connection not kept; both codecs read 11
    (llhttp and h11 skip a tab as whitespace) and relayed the answer before."""
    events, kept = _answered(codec, b"HTTP/1.1 200 OK\r\nContent-Length:" + value + b"\r\n\r\nhello world")
    assert isinstance(events[-1], ProtocolError) and events[-1].status == 502 and not kept, events


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("before", [b"", b"HTTP/1.1 100 Continue\r\n\r\n"])
def test_a_content_length_with_a_tab_is_a_502_however_the_answer_is_cut(codec: str, before: bytes) -> None:
    """The tab is found in the head's bytes (llhttp gives the value without the whitespace before it) wherever the
    reads cut the head, after an interim answer too (ngx_http_upstream.c:4747-4754)."""
    answer = before + b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length:\t11\r\n\r\nhello world"
    for cut in range(1, len(answer)):
        client = codec_classes(codec)[1]()
        events = answer_events(client, answer[:cut])
        client.receive_data(answer[cut:])
        events += events_after(client)
        assert isinstance(events[-1], ProtocolError) and events[-1].status == 502, (cut, events)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value", [b"  11  ", b"011", b"0" * 30 + b"11"])
def test_a_content_length_in_spaces_or_with_leading_zeros_is_read(codec: str, value: bytes) -> None:
    """What ngx_atoof reads (ngx_string.c:1079-1103: digits, leading zeros like any other) after the spaces the
    header parser drops around a value (ngx_http_parse.c:972-1012); a tab in a body or in another header is no
    Content-Length's."""
    events, kept = _answered(codec, b"HTTP/1.1 200 OK\r\nX-A:\ta\t\r\nContent-Length:" + value
                             + b"\r\n\r\nhello\tworld")
    assert events[1:] == [b"hello\tworld", END] and kept, events


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value", [b"+11", b"0x10", b"-1", b"", b"1 1", b"11, 11", b"9223372036854775808"])
def test_a_content_length_ngx_atoof_refuses_is_a_502(codec: str, value: bytes) -> None:
    """ngx_atoof (ngx_string.c:1079-1103) takes digits alone, below 2**63: a sign, a hex prefix, nothing, a space or
    comma between digits, a value past off_t are nginx 1.27.1's 502 "upstream sent invalid Content-Length header"
    (ngx_http_upstream.c:4747-4754), the connection not kept, in both codecs."""
    events, kept = _answered(codec, b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nhello world")
    assert isinstance(events[-1], ProtocolError) and events[-1].status == 502 and not kept, events


def test_h11_refuses_an_answer_that_cannot_begin_a_status_line_at_once() -> None:
    """nginx reads an answer's first byte as the start of `HTTP/` or not (ngx_http_parse.c:1650-1658) and relays
    one that cannot begin a status line as an HTTP/0.9 body, without another try (ngx_http_proxy_module.c:1823-
    1847); both codecs refuse it at its first bytes, a 502 at once (README: "A response head that breaks HTTP
    is answered 502 at once, not retried"), where the h11 codec waited for a line end, and at the upstream's close
    took `hello world` for a head the close cut, which the gateway tried again: six tries of a GET."""
    events, _ = _answered("h11", b"hello world")
    assert events and isinstance(events[-1], ProtocolError) and not events[-1].cut, events


@pytest.mark.parametrize("codec", CODECS)
def test_an_upstream_connection_is_kept_after_proxy_connection_close(codec: str) -> None:
    """nginx reads an answer's Connection alone (ngx_http_upstream_process_connection, ngx_http_upstream.c:5167-
    5190) and relays Proxy-Connection as any header (README: "a response's `Proxy-Connection` ..., which nginx and
    Kong pass to the client"), the connection kept; llhttp takes `Proxy-Connection: close` for `Connection: close`,
    and the llhttp codec dropped the connection (the h11 codec kept it). The next answer is read on it."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 2\r\n\r\nok")
    assert events[1:] == [b"ok", END] and events[0].keep_alive and client.keep_alive
    client.start_next_cycle()
    assert answer_events(client, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")[1:] == [b"abc", END]
    assert client.keep_alive


@pytest.mark.parametrize("codec", CODECS)
def test_an_answer_delimited_by_the_close_still_ends_its_connection_after_proxy_connection(codec: str) -> None:
    """Proxy-Connection changes nothing else: an answer without a length is read to the upstream's close
    (ngx_http_upstream.c: u->keepalive only with a length), the connection not kept."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, b"HTTP/1.1 200 OK\r\nProxy-Connection: keep-alive\r\n\r\nok")
    client.receive_data(b"")
    events += events_after(client)
    assert events[1:] == [b"ok", END] and not client.keep_alive


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_an_upstream_connection_is_kept_after_a_head_answered_204_or_304_chunked(codec: str, status: bytes) -> None:
    """An answer to HEAD, a 204 and a 304 have no body whatever their framing headers say, and nginx 1.27.1 keeps
    their connection unless Connection: close (ngx_http_proxy_module.c:2006-2012, 2063-2069); the llhttp codec
    dropped it when such an answer to HEAD said `Transfer-Encoding: chunked` (llhttp ends it at its head, which the
    codec took for the end of a chunked body after it). The next answer is read on it."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, b"HTTP/1.1 " + status + b"\r\nTransfer-Encoding: chunked\r\n\r\n", b"HEAD")
    assert events[1:] == [END] and client.keep_alive
    client.start_next_cycle()
    assert answer_events(client, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")[1:] == [b"abc", END]


@pytest.mark.parametrize("codec", CODECS)
def test_a_chunked_body_after_a_head_answered_200_still_drops_its_connection(codec: str) -> None:
    """A 200 to HEAD that says chunked has a body nobody asked for when a last chunk follows its head: the bytes
    after an answer to HEAD keep the connection out of the pool (README: "After an answer to HEAD, any byte more
    keeps the upstream connection out of the pool")."""
    events, kept = _answered(codec, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"HEAD")
    assert events[1:] == [END] and not kept


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("trailer", [b"Content-Length: 5", b"X T: 1", b"X-T: a\x01b", b"Bad", b"X: a\r\n b",
                                     b"X: a\nY: b"])
def test_a_framing_field_in_an_upstreams_trailer_section_keeps_its_connection(codec: str, trailer: bytes) -> None:
    """nginx skips an answer's trailer lines whatever they hold (ngx_http_parse_chunked's sw_trailer and
    sw_trailer_header, ngx_http_parse.c:2311-2345) and keeps the connection; both codecs relayed the body whole but
    kept the connection out of the pool after a trailer line llhttp or h11 refuses. The next answer is read on it."""
    client = codec_classes(codec)[1]()
    events = answer_events(client, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n"
                           + trailer + b"\r\n\r\n")
    assert events[1:] == [b"hello world", END] and client.keep_alive
    client.start_next_cycle()
    assert answer_events(client, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")[1:] == [b"abc", END]
    assert client.keep_alive


@pytest.mark.parametrize("codec", CODECS)
def test_such_a_trailer_section_split_over_reads_keeps_its_connection(codec: str) -> None:
    """The same, wherever the reads cut the answer (the llhttp codec reads the rest of the section by its framing,
    from a read that may begin within one of its lines)."""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\nX T: 1\r\nY: 2\r\n\r\n"
    for cut in range(1, len(answer)):
        client = codec_classes(codec)[1]()
        events = answer_events(client, answer[:cut])
        client.receive_data(answer[cut:])
        events += events_after(client)
        assert b"".join(e for e in events if type(e) is bytes) == b"hello world" and events[-1] is END, (cut, events)
        assert client.keep_alive, cut


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rest", [b"X T: 1\r\n\r\nJUNK", b"X T: 1\n\n", b"\n"])
def test_a_trailer_section_with_bytes_after_it_or_a_bare_lf_end_drops_its_connection(codec: str, rest: bytes) -> None:
    """Bytes after the section are nobody's answer (README: "no byte of a broken upstream answer ever reaching
    another request"), and a section that ends at a bare LF, as nginx ends it (sw_trailer), ends where a parser
    that ends lines at CRLF alone reads on: the connection is not kept."""
    events, kept = _answered(codec, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n"
                             + rest)
    assert events[1:] == [b"hello world", END] and not kept
