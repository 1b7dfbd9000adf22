"""kong.conf's nginx_http_charset (Kong's UTF-8: nginx's `charset UTF-8;` in the http block), as nginx's charset
filter and header filter leave a response's Content-Type (ngx_http_charset_filter_module.c with source_charset off,
ngx_http_header_filter_module.c): `; charset=UTF-8` added to a type of charset_types that names no charset, after
the plugins' header filters, on proxied answers and the gateway's own alike, but not on a 301 or 302. The outcomes
of the values here were checked against nginx 1.22 proxying with `charset UTF-8;`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio
from backends import ScriptedBackend, request, service

from gateway.config import ConfigError, parse_config
from gateway.http.kong_headers import KongHeaders, charset_type

TIMEOUT = 10
UTF8 = b"; charset=UTF-8"


@pytest.fixture
def http_codec() -> str:
    """One codec: the Content-Type is above HTTP framing."""
    return "llhttp"


# --- the rewrite ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ctype", "expected"), [
    (b"text/plain", b"text/plain; charset=UTF-8"),
    (b"Text/Plain", b"Text/Plain; charset=UTF-8"),  # compared lower-cased, written as it came
    (b"text/html", b"text/html; charset=UTF-8"),
    (b"text/xml", b"text/xml; charset=UTF-8"),
    (b"text/vnd.wap.wml", b"text/vnd.wap.wml; charset=UTF-8"),
    (b"application/javascript", b"application/javascript; charset=UTF-8"),
    (b"application/rss+xml", b"application/rss+xml; charset=UTF-8"),
    (b"text/plain; format=flowed", None),  # an upstream's type is then the whole value: not among charset_types
    (b"text/plain;charset=latin1", None),  # a charset of its own
    (b"text/plain; charset=UTF-8", None),  # (a proxy-cache hit's stored value never gets two)
    (b"text/plain; charset=", None),
    (b"text/plain;", None),
    (b"application/json", None),
    (b"text/css", None),
    (b"", None),
    (None, None),  # no Content-Type
])
def test_only_a_bare_type_of_charset_types_gets_the_charset(ctype, expected):
    assert charset_type(UTF8, ctype) == expected


def _ex(status: int = 200, tries: list[object] | None = None) -> SimpleNamespace:
    return SimpleNamespace(request_id=b"rid", tries=tries, started=0.0, state=None, status=status, phases=None)


@pytest.mark.parametrize("setting", [["server_tokens", "latency_tokens", "X-Kong-Request-Id"], "Via", "off"])
@pytest.mark.parametrize("proxied", [True, False], ids=["proxied", "own"])
def test_every_kind_of_answer_gets_it_whatever_headers_says(setting, proxied):
    kong = KongHeaders.from_setting(setting)
    tries = [SimpleNamespace(started=0.001, head_at=0.002)] if proxied else None
    headers = [(b"content-type", b"text/html"), (b"content-length", b"2")]
    kong.add(_ex(tries=tries), headers, 200)
    assert (b"content-type", b"text/html; charset=UTF-8") in headers


@pytest.mark.parametrize(("status", "expected"), [(301, b"text/html"), (302, b"text/html"),
                                                  (303, b"text/html; charset=UTF-8"),
                                                  (307, b"text/html; charset=UTF-8")])
def test_a_301_or_302_gets_none(status, expected):
    """ngx_http_set_charset: no charset on a 301 or 302 (the status after the plugins' header filters)."""
    headers = [(b"content-type", b"text/html")]
    KongHeaders.from_setting("off").add(_ex(status), headers, 200)
    assert headers == [(b"content-type", expected)]


def test_off_and_another_charset():
    headers = [(b"content-type", b"text/plain")]
    KongHeaders.from_setting("off", "off").add(_ex(), headers, 200)
    assert headers == [(b"content-type", b"text/plain")]
    KongHeaders.from_setting("off", "ISO-8859-1").add(_ex(), headers, 200)
    assert headers == [(b"content-type", b"text/plain; charset=ISO-8859-1")]


def test_the_last_content_type_is_the_one_rewritten():
    """Of two lines (only a plugin's append makes them: of an upstream's the first alone is relayed), the last, the
    one the other checks read."""
    headers = [(b"content-type", b"application/json"), (b"x-a", b"1"), (b"content-type", b"text/plain")]
    KongHeaders.from_setting("off").add(_ex(), headers, 200)
    assert headers == [(b"content-type", b"application/json"), (b"x-a", b"1"),
                       (b"content-type", b"text/plain; charset=UTF-8")]


# --- the setting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("{}", "UTF-8"),  # Kong's default
    ("{nginx_http_charset: off}", "off"),  # YAML's false
    ("{nginx_http_charset: 'off'}", "off"),
    ("{charset: false}", "off"),
    ("{nginx_http_charset: ISO-8859-1}", "ISO-8859-1"),
    ("{charset: koi8-r}", "koi8-r"),
])
def test_the_setting_and_its_kong_conf_name(text, expected):
    assert parse_config(f"gateway: {text}\n").gateway.charset == expected


@pytest.mark.parametrize(("text", "message"), [
    ("{charset: ''}", "gateway: charset (kong.conf's nginx_http_charset): expected a charset name (such as UTF-8) or "
                      "off, got ''"),
    ("{nginx_http_charset: 'UTF-8\\r\\nX-A: b'}", "gateway: charset (kong.conf's nginx_http_charset): expected a "
                                                 "charset name (such as UTF-8) or off, got 'UTF-8\\r\\nX-A: b'"),
    ("{charset: true}", "gateway.charset: "),
    ("{charset: off, nginx_http_charset: off}", "gateway.nginx_http_charset and gateway.charset: set one of them"),
])
def test_a_value_that_is_no_charset_name_is_refused(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(f"gateway: {text}\n")
    assert message in str(err.value)


# --- end to end -----------------------------------------------------------------------------------------------------


def _answer(status: int, ctype: bytes) -> list[bytes]:
    return [b"HTTP/1.1 %d X\r\nContent-Type: %b\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nhello"
            % (status, ctype)]


async def _proxied(nursery, gateway, answer: list[bytes], plugins: list[dict] | None = None, **settings) -> int:
    backend = ScriptedBackend(answer)
    await nursery.start(backend.serve)
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": plugins or []}, **settings)


async def _content_type(port: int) -> str | None:
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    return reply.header("content-type")


@pytest.mark.parametrize(("status", "sent", "expected"), [
    (200, b"text/plain", "text/plain; charset=UTF-8"),
    (200, b"text/plain; charset=utf-8", "text/plain; charset=utf-8"),
    (200, b"application/json", "application/json"),
    (302, b"text/html", "text/html"),
])
async def test_a_proxied_answer(nursery, gateway, status, sent, expected):
    assert await _content_type(await _proxied(nursery, gateway, _answer(status, sent))) == expected


async def test_off_leaves_it(nursery, gateway):
    port = await _proxied(nursery, gateway, _answer(200, b"text/plain"), nginx_http_charset="off")
    assert await _content_type(port) == "text/plain"


async def test_a_plugins_content_type_gets_it(nursery, gateway):
    """The charset filter runs after the plugins' header filters: a type response-transformer sets gets it."""
    rt = {"name": "response-transformer", "config": {"replace": {"headers": ["Content-Type:text/html"]}}}
    port = await _proxied(nursery, gateway, _answer(200, b"application/json"), [rt])
    assert await _content_type(port) == "text/html; charset=UTF-8"


async def test_a_plugins_answer_gets_it(nursery, gateway):
    """kong.response.exit with request-termination's content_type."""
    term = {"name": "request-termination", "config": {"status_code": 200, "body": "no", "content_type": "text/plain"}}
    port = await _proxied(nursery, gateway, _answer(200, b"text/plain"), [term])
    assert await _content_type(port) == "text/plain; charset=UTF-8"


async def test_a_proxy_cache_hit_gets_it_once(nursery, gateway):
    """proxy-cache stores the upstream's value (its header filter runs before nginx's charset filter) and its hit
    goes through the filter too."""
    cache = {"name": "proxy-cache", "config": {"strategy": "memory", "content_type": ["text/plain"]}}
    port = await _proxied(nursery, gateway, _answer(200, b"text/plain"), [cache])
    for cache_status in ("Miss", "Hit"):
        with trio.fail_after(TIMEOUT):
            reply = await request(port, "GET", "/x")
        assert (reply.header("x-cache-status"), reply.header("content-type")) == \
            (cache_status, "text/plain; charset=UTF-8")
