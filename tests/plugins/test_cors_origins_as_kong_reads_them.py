"""cors origins as Kong 3.9.3 reads them: kong/plugins/cors/handler.lua:33-55 (normalize_origin) takes the request's
Origin and each plain `origins` entry apart with LuaSocket 3.0-rc1's socket.url parse (the version
kong-3.9.3-0.rockspec:17 pins), whose authority runs from `//` to the first `/` (src/url.lua:143-146 at tag v3.0-rc1:
"^//([^/]*)", after the fragment went first, :135-138). A `?` is no end of it, as it is in later LuaSocket versions.
Unit tests of the compiled plugin: no process, no socket."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec

from gateway.policies.cors.handler import Cors, normalize_origin
from gateway.policies.cors.schema import CorsConfig

ACAO = b"access-control-allow-origin"


def _allow_origin(origins: list[str], origin: bytes) -> bytes | None:
    """The Access-Control-Allow-Origin a proxied response gets for a request with this Origin."""
    cors = Cors(msgspec.convert({"origins": origins}, CorsConfig))
    ex: Any = SimpleNamespace(request=SimpleNamespace(method=b"GET", headers=[(b"origin", origin)]), state=None)
    values = [v for n, v in cors.header_filter(ex, 200, []) if n == ACAO]
    return values[0] if values else None


def test_a_question_mark_after_the_host_is_part_of_the_origins_host():
    """url.lua:143-146: the authority is everything up to the first `/`, so `http://a.test?x`'s host is `a.test?x`
    (handler.lua:50-53 builds the domain of it). The gateway ended the host at the `?`."""
    origin = normalize_origin("http://a.test?x")
    assert (origin.domain, origin.host) == ("http://a.test?x", "a.test?x")


def test_a_question_mark_after_the_port_is_part_of_the_port():
    """url.lua:163: the port is what follows the authority's last `:`, `80?x` here, which is no "80" to drop
    (handler.lua:43-47). The gateway read port 80 and dropped it."""
    assert normalize_origin("http://a.test:80?x").domain == "http://a.test:80?x"


def test_a_fragment_still_ends_the_host():
    """url.lua:135-138: the fragment goes first, from the first `#`, so it never reaches the host."""
    origin = normalize_origin("http://a.test#x?y")
    assert (origin.domain, origin.host) == ("http://a.test", "a.test")


def test_an_origin_with_a_query_is_not_allowed_by_the_plain_entry_of_its_host():
    """handler.lua:135-161 compares the normalised request Origin with each plain entry's: `http://a.test?x`
    normalises to itself, no entry's domain, so Kong clears Access-Control-Allow-Origin (:165). The gateway sent
    `http://a.test`."""
    assert _allow_origin(["http://a.test", "http://b.test"], b"http://a.test?x") is None
    assert _allow_origin(["http://a.test", "http://b.test"], b"http://a.test") == b"http://a.test"


def test_an_origin_with_a_query_is_not_matched_by_a_host_regex_anchored_at_the_end():
    r"""handler.lua:112-123, 144-149: a regex entry without `:` is matched against the host alone, anchored with
    `$`; the host `a.x.test?y` does not end as `.*\.x\.test` does. The gateway matched the host `a.x.test`."""
    assert _allow_origin([r".*\.x\.test"], b"http://a.x.test?y") is None
    assert _allow_origin([r".*\.x\.test"], b"http://a.x.test") == b"http://a.x.test"
