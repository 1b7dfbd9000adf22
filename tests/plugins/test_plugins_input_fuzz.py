"""Bounded fuzzing of what the session, proxy-cache, response-ratelimiting and ldap-auth plugins parse from the wire
(cookies, Cache-Control and query strings, X-Kong-Limit, an LDAP server's answers): any input ends in a value or the
plugin's own refusal, never an exception; a session cookie changed anywhere never opens."""

from __future__ import annotations

import contextlib
import random

import h11
import msgspec
import pytest
import trio
from backends import raw_exchange
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugin_helpers import call, http_codec  # noqa: F401 - the fixture: one codec

from gateway.policies.base import LuaError
from gateway.policies.ldap_auth.protocol import LdapResult, ProtocolError, ResponseDecoder, ResponseTooLong
from gateway.policies.proxy_cache import cache_key
from gateway.policies.proxy_cache.entry import decode
from gateway.policies.proxy_cache.rules import Rules, parse_directives, resource_ttl
from gateway.policies.proxy_cache.schema import ProxyCacheConfig
from gateway.policies.response_ratelimiting.usage import parse_increments
from gateway.policies.session import seal
from gateway.policies.session.lifecycle import Session, Settings
from gateway.policies.session.schema import SessionConfig

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
header_bytes = st.binary(max_size=200) | st.lists(st.sampled_from(
    [b"max-age", b"=", b"60", b",", b" ", b"no-store", b"s-maxage", b"\"", b"-1", b"1e400", b"private", b"\t",
     b"min-fresh", b"max-stale", b"only-if-cached", b"nan", b"0x10"]), max_size=20).map(b"".join)
NOW = 1_800_000_000
SESSION = Settings(msgspec.convert({"secret": "fuzz-secret"}, SessionConfig))
RULES = Rules(msgspec.convert({"strategy": "memory", "cache_control": True}, ProxyCacheConfig))


def sealed_cookie() -> str:
    session = Session(SESSION, lambda name: None)
    session.open(NOW)
    session.set_data(["consumer", "credential", None])
    assert session.save(NOW) is None
    return session.set_cookies["session"].split(";", 1)[0].split("=", 1)[1]


GOOD = sealed_cookie()


def opened(cookie: str, remember: str | None = None) -> str | None:
    jar = {"session": cookie, "remember": remember}
    return Session(SESSION, jar.get).open(NOW + 1)


# ---- session -------------------------------------------------------------------------------------------------------


def test_the_fuzzed_cookie_opens_unchanged():
    assert opened(GOOD) is None


@FUZZ
@given(cookie=st.text(max_size=400), remember=st.one_of(st.none(), st.text(max_size=200)))
def test_any_session_cookie_is_opened_or_refused_with_a_reason(cookie, remember):
    result = opened(cookie, remember)
    assert result is None or isinstance(result, str)


@FUZZ
@given(position=st.integers(0, len(GOOD) - 1), replacement=st.sampled_from("ABCXYZabcxyz0189-_"))
def test_a_session_cookie_changed_anywhere_never_opens(position, replacement):
    changed = GOOD[:position] + replacement + GOOD[position + 1:]
    if decoded(changed) != decoded(GOOD):  # (the last character of a base64 run may carry unused bits only)
        assert opened(changed) is not None


def decoded(cookie: str) -> tuple[bytes | None, bytes | None]:
    """The header's and the ciphertext's bytes (the header is the first 110 characters)."""
    size = seal.HEADER_ENCODED_SIZE
    return seal.b64url_decode(cookie[:size]), seal.b64url_decode(cookie[size:])


# ---- proxy-cache ---------------------------------------------------------------------------------------------------


@FUZZ
@given(value=header_bytes, expires=st.one_of(st.none(), header_bytes))
def test_any_cache_control_and_expires_give_a_ttl_or_kongs_lua_error(value, expires):
    try:  # (Kong's Lua fails on a nameless first directive, or a max-age that is no number: LuaError, nothing else)
        directives = parse_directives(value)
        assert isinstance(resource_ttl(directives, expires, NOW), int | float)
    except LuaError:
        pass


@FUZZ
@given(status=st.integers(100, 599), headers=st.lists(st.tuples(
    st.sampled_from([b"cache-control", b"content-type", b"expires", b"vary", b"set-cookie"]), header_bytes),
    max_size=6))
def test_any_response_is_judged_cacheable_or_not_or_fails_as_kongs_lua(status, headers):
    try:
        assert RULES.cacheable_response(status, headers, NOW) in (True, False)
        RULES.response_ttl(headers, NOW)
    except LuaError:
        pass


@FUZZ
@given(query=st.binary(max_size=300))
def test_any_query_string_makes_a_cache_key(query):
    key = cache_key.build_cache_key(None, None, b"GET", b"GET /p HTTP/1.1", cache_key.uri_args(query), {}, None,
                                    None)
    assert len(key) == 64 and int(key, 16) >= 0


@FUZZ
@given(raw=st.binary(max_size=300))
def test_any_stored_bytes_decode_to_an_entry_or_none(raw):
    entry = decode(raw)
    assert entry is None or entry.status >= 0


# ---- response-ratelimiting -----------------------------------------------------------------------------------------


@FUZZ
@given(value=st.binary(max_size=200) | st.lists(st.sampled_from(
    [b"video", b"image", b"=", b",", b" ", b"1", b"-2", b"0x1f", b"1e3", b"nan", b"inf", b"1.5"]), max_size=16
).map(b"".join))
def test_any_x_kong_limit_gives_whole_increments_of_configured_names(value):
    increments = parse_increments(value, {b"video": "video", b"image": "image"})
    assert set(increments) <= {"video", "image"}
    assert all(isinstance(n, int) and abs(n) <= 2**53 for n in increments.values())


# ---- ldap-auth -----------------------------------------------------------------------------------------------------


@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_any_bytes_from_an_ldap_server_give_results_or_a_protocol_error(chunks):
    decoder = ResponseDecoder()
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            while (result := decoder.next_result()) is not None:
                assert isinstance(result, LdapResult)
    except (ProtocolError, ResponseTooLong):
        pass


@pytest.mark.parametrize("prefix", [b"\x30\x84\xff\xff\xff\xff", b"\x30\x89" + b"\xff" * 9])
def test_an_ldap_answer_claiming_an_absurd_length_is_refused_not_awaited(prefix):
    """Kong would wait for the bytes (a server error when they do not come); the gateway refuses at once what it
    would never buffer (over MAX_RESPONSE_BYTES): the same 500, without the wait."""
    decoder = ResponseDecoder()
    with pytest.raises(ResponseTooLong):
        decoder.receive_data(prefix)
        decoder.next_result()


def test_an_ldap_answer_with_the_indefinite_length_byte_waits_for_128_bytes_as_kong_reads_it():
    """kong/plugins/ldap-auth/asn1.lua: only a first length byte over 128 is the long form, so 0x80 is 128 bytes."""
    decoder = ResponseDecoder()
    decoder.receive_data(b"\x30\x80")
    assert decoder.next_result() is None


# ---- hostile requests and answers through the real gateway ---------------------------------------------------------


class MirrorBackend:
    """An upstream that answers with the X-Kong-Limit, Cache-Control and Expires the request asks for (in its
    x-limit, x-cc and x-expires headers): the hostile answers come from the test's own inputs."""

    def __init__(self) -> None:
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        with contextlib.suppress(h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    asked = dict(event.headers)
                    headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
                    headers += [(name, asked[ask]) for ask, name in MIRRORED if ask in asked]
                    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) +
                                          conn.send(h11.Data(data=b"{}")) + conn.send(h11.EndOfMessage()))
                elif isinstance(event, h11.EndOfMessage):
                    conn.start_next_cycle()
                else:
                    return


MIRRORED = ((b"x-limit", b"x-kong-limit"), (b"x-cc", b"cache-control"), (b"x-expires", b"expires"))
ALLOWED = {200, 400, 401, 403, 404, 429, 504}  # never a 500 or a 502: each plugin answers what it is given
# but where Kong's proxy-cache fails in Lua (a Cache-Control it cannot read): its 500 in access, no answer (0) from
# its header filter
KONG_FAILS = {(b"/cache", 500), (b"/cache", 0)}


async def test_hostile_cookies_cache_control_and_limits_get_no_500_of_their_own(nursery, gateway):
    backend = MirrorBackend()
    await nursery.start(backend.serve)
    routes = [
        {"paths": ["/session"], "plugins": [{"name": "key-auth", "config": {"anonymous": "anon"}},
                                            {"name": "session", "config": {"secret": "fuzz-secret"}}]},
        {"paths": ["/cache"], "plugins": [{"name": "proxy-cache",
                                           "config": {"strategy": "memory", "cache_control": True}}]},
        {"paths": ["/limit"], "plugins": [{"name": "response-ratelimiting",
                                           "config": {"limits": {"video": {"second": 5}, "image": {"minute": 9}},
                                                      "block_on_first_violation": True}}]}]
    port = await gateway({"services": [{"name": "svc", "url": f"http://127.0.0.1:{backend.port}", "routes": routes}],
                          "consumers": [{"username": "anon"},
                                        {"username": "u", "keyauth_credentials": [{"key": "k"}]}]})
    rng = random.Random(19)
    seen: set[tuple[bytes, int]] = set()
    pieces = [b"max-age=", b"60", b"-1", b"1e400", b",", b" ", b"no-store", b"only-if-cached", b"min-fresh=",
              b"max-stale", b'"', b"=", b"video", b"image", b"0x10", b"nan", b"session=", GOOD.encode()[:40], b";",
              b"video=3", b"image=4"]
    parts = [b"video=3", b" image = 4 ", b"video", b"=", b"video==1", b"image=-7", b"video=1e2", b"video=0x1",
             b"image=nan", b"other=5", b"", b"video=9007199254740993"]
    for n in range(120):
        junk = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        limit = b",".join(rng.choice(parts) for _ in range(rng.randrange(1, 4)))
        for path in (b"/session", b"/cache", b"/limit"):
            head = (b"GET %b?n=%d&apikey=%b HTTP/1.1\r\nhost: t\r\ncookie: session=%b\r\ncache-control: %b\r\n"
                    b"x-limit: %b\r\nx-cc: %b\r\nx-expires: %b\r\nconnection: close\r\n\r\n"
                    % (path, n, b"k" if rng.random() < 0.3 else b"x", junk, junk, limit, junk, junk))
            data, _ = await raw_exchange(port, head)
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
            assert status in ALLOWED or (path, status) in KONG_FAILS, (path, junk, data[:300])
            seen.add((path, status))
    # the inputs reach the plugins' answers: limits refused and cache-only requests unanswered, not only passed
    assert {(b"/limit", 429), (b"/cache", 504), (b"/session", 200), (b"/limit", 200)} <= seen
    with trio.fail_after(10):
        good = await call(port, "/session?apikey=k")
    assert good.status == 200 and good.header("set-cookie") is not None
