"""The response phases as units: header filters in chain order, body filters only on whole bodies (Content-Length
then follows), nothing for a chain without response phases, never a buffered event stream."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec

from gateway.pipeline.phases import Exit, ResponsePhases
from gateway.policies.response_transformer.handler import ResponseTransformer
from gateway.policies.response_transformer.schema import ResponseTransformerConfig


class Tag:
    priority = 1

    def __init__(self, name: str) -> None:
        self.name = name

    def header_filter(self, ex, status, headers):  # noqa: ANN001,ANN201
        headers.append((b"x-order", self.name.encode()))
        return headers


class Upper:
    name = "upper"
    priority = 1

    def wants_body(self, ex, status, headers):  # noqa: ANN001,ANN201
        return True

    def body_filter(self, ex, status, headers, body):  # noqa: ANN001,ANN201
        return body.upper() + b"!"


class AccessOnly:
    name = "access"
    priority = 1

    async def access(self, ex):  # noqa: ANN001,ANN201
        return False


def exchange(method: bytes = b"GET") -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(method=method), state=None, tries=None)  # (the gateway's own answer)


def test_a_chain_without_response_phases_has_none():
    assert ResponsePhases.of([AccessOnly()]) is None


def test_header_filters_run_in_chain_order():
    phases = ResponsePhases.of([Tag("a"), AccessOnly(), Tag("b")])
    _, headers, _, _ = phases.filter(exchange(), 200, [], b"", False)
    assert headers == [(b"x-order", b"a"), (b"x-order", b"b")]


def test_headers_set_in_access_go_in_before_the_header_filters_in_place_of_the_upstreams():
    """kong.response.set_header in access (proxy-cache's X-Cache-Key): the header filters see it, and it replaces a
    header of that name the upstream sent."""
    from gateway.http.server import Exchange

    seen = []

    class Look:
        name, priority = "look", 1

        def header_filter(self, ex, status, headers):  # noqa: ANN001,ANN202
            seen.append(list(headers))
            return headers

    ex = exchange()
    Exchange.set_response_header(ex, b"x-cache-key", b"k")  # type: ignore[arg-type]
    _, headers, _, _ = ResponsePhases.of([Look()]).filter(ex, 200, [(b"x-cache-key", b"upstream's"), (b"a", b"1")],
                                                        b"", False)
    assert seen == [[(b"a", b"1"), (b"x-cache-key", b"k")]] and headers == seen[0]


def test_a_body_filter_sees_only_a_whole_body_and_the_length_follows():
    phases = ResponsePhases.of([Upper()])
    head = [(b"content-length", b"3")]
    assert phases.filter(exchange(), 200, list(head), b"abc", False) == (200, head, b"abc", False)
    assert phases.filter(exchange(), 200, list(head), b"abc", True) == (200, [(b"content-length", b"4")], b"ABC!", True)
    assert phases.filter(exchange(b"HEAD"), 200, list(head), b"", True) == (200, head, b"", True)


class Answer:
    """Answers 429 in the response's place, as response-ratelimiting's header filter does."""

    name = "answer"
    priority = 1

    def header_filter(self, ex, status, headers):  # noqa: ANN001,ANN201
        headers.append((b"x-answered", b"1"))
        raise Exit(429, headers)


def test_a_header_filter_exit_answers_its_status_without_a_body_and_ends_the_response():
    phases = ResponsePhases.of([Answer()])
    head = [(b"content-type", b"application/json"), (b"content-length", b"3")]
    assert phases.filter(exchange(), 200, list(head), b"abc", False) == (
        429, [(b"content-type", b"application/json"), (b"x-answered", b"1"), (b"content-length", b"0")], b"", True)


class Seen:
    """Records the status and headers its header filter is given."""

    name = "seen"
    priority = 1

    def __init__(self) -> None:
        self.seen: list[tuple[int, list]] = []

    def header_filter(self, ex, status, headers):  # noqa: ANN001,ANN201
        self.seen.append((status, list(headers)))
        headers.append((b"x-seen", b"1"))
        return headers


def test_the_header_filters_after_an_exit_run_on_its_status_and_headers():
    """kong/pdk/response.lua:805-807: kong.response.exit in header_filter ends with ngx.exit(ngx.OK), which there
    returns (lua-nginx-module ngx_http_lua_ffi_exit: NGX_DONE for a header filter; lua-resty-core exit.lua: `if rc ==
    FFI_DONE then return end`), so kong/init.lua:457-480 goes on with the next plugins' header_filter, which see
    the 429 (ngx.status) and the exit's Content-Length: 0, and may change its head."""
    after = Seen()
    phases = ResponsePhases.of([Tag("a"), Answer(), after])
    status, headers, body, end = phases.filter(exchange(), 200, [(b"content-length", b"3")], b"abc", True)
    assert after.seen == [(429, [(b"x-order", b"a"), (b"x-answered", b"1"), (b"content-length", b"0")])]
    assert (status, body, end) == (429, b"", True)
    assert headers == [(b"x-order", b"a"), (b"x-answered", b"1"), (b"content-length", b"0"), (b"x-seen", b"1")]


def test_a_header_filter_exit_skips_the_body_filters():
    """Kong's exit without a body in header_filter (kong/plugins/response-ratelimiting/header_filter.lua:96
    `kong.response.exit(429)`): the answer has no body to filter."""
    phases = ResponsePhases.of([Answer(), Upper()])
    assert phases.filter(exchange(), 200, [], b"abc", True)[2:] == (b"", True)


def test_a_header_filter_after_an_exit_may_exit_in_turn():
    """kong/pdk/response.lua send: in header_filter the head is not sent yet (no "headers have already been sent"
    error), so a later plugin's kong.response.exit sets its own status over the first's."""

    class Teapot:
        name, priority = "teapot", 1

        def header_filter(self, ex, status, headers):  # noqa: ANN001,ANN202
            raise Exit(418, headers)

    after = Seen()
    status, headers, _, _ = ResponsePhases.of([Answer(), Teapot(), after]).filter(exchange(), 200, [], b"", True)
    assert status == 418 and after.seen[0][0] == 418
    assert headers == [(b"x-answered", b"1"), (b"content-length", b"0"), (b"x-seen", b"1")]


def test_an_event_stream_is_never_buffered():
    phases = ResponsePhases.of([Upper()])
    assert phases.buffers(exchange(), 200, [(b"content-type", b"application/json")])
    assert not phases.buffers(exchange(), 200, [(b"content-type", b"text/event-stream; charset=utf-8")])
    assert not phases.buffers(exchange(b"HEAD"), 200, [(b"content-type", b"application/json")])


class Store:
    """Keeps the bodies it is given, as proxy-cache stores them: it reads a body, never changes it."""

    name = "store"
    priority = 1

    def __init__(self) -> None:
        self.stored: list[bytes] = []

    def wants_body(self, ex, status, headers):  # noqa: ANN001,ANN201
        return True

    def body_filter(self, ex, status, headers, body):  # noqa: ANN001,ANN201
        self.stored.append(body)
        return body


def _too_large() -> SimpleNamespace:
    """The exchange of a proxied GET /big whose body passed the limit (what refuses_unfiltered logs of it)."""
    return SimpleNamespace(request=SimpleNamespace(method=b"GET", target=b"/big"))


def test_a_body_too_large_to_read_whole_is_refused_when_a_filter_must_change_it():
    """Kong's response-transformer transforms a JSON body whatever its size (kong/plugins/response-transformer/
    handler.lua:34-41 reads it whole by kong.response.get_raw_body): one past the limit the gateway reads whole is
    answered 502 (by the forwarder) rather than passed on with the keys the config removes."""
    config = msgspec.convert({"remove": {"json": ["secret"]}}, ResponseTransformerConfig)
    phases = ResponsePhases.of([ResponseTransformer(config)])
    assert phases.refuses_unfiltered(_too_large(), 200, [(b"content-type", b"application/json")])
    assert not phases.refuses_unfiltered(_too_large(), 200, [(b"content-type", b"text/plain")])  # (not its body)


def test_a_body_too_large_to_read_whole_streams_on_when_the_filters_only_read_it():
    """A filter without `changes_body` (proxy-cache, which stores what it reads) does not need the body changed:
    past the limit it streams on as it came, the filter skipped (nothing stored)."""
    phases = ResponsePhases.of([Store()])
    assert not phases.refuses_unfiltered(_too_large(), 200, [(b"content-type", b"application/json")])


def test_a_log_step_is_marked_by_a_boolean_entries_not_by_any_attribute_of_that_name():
    """cors once kept its origin rules in `entries`; taken for a logger, it broke every log plugin after it."""
    from gateway.runtime import is_logger

    assert is_logger(SimpleNamespace(entries=True)) and is_logger(SimpleNamespace(entries=False))
    assert not is_logger(SimpleNamespace(entries=[("rule", "", True)]))
    assert not is_logger(SimpleNamespace())
