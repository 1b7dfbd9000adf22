"""cors compiled at config load (gateway/policies/cors/handler.py): what configure_origin and configure_credentials
do to the response headers is worked out once per config, or once per Origin, as a Plan (names removed, headers
appended). These tests hold the compiled plugin to Kong's handler.lua call by call: `Reference` below makes each
kong.response.set_header / add_header / clear_header on the live header list, as the plugin did before it was
compiled, and both must leave the same headers (order included) for every config, Origin and upstream head."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.policies.cors.handler import Cors, apply_plan, normalize_origin
from gateway.policies.cors.schema import METHODS, CorsConfig
from gateway.policies.header_list import add_header, clear_header, get_header, set_header

_PLAIN = r"^[A-Za-z0-9.:/-]+$"


class Reference:
    """kong/plugins/cors/handler.lua, each header call made on the headers as it comes (no plan, no memo)."""

    def __init__(self, config: CorsConfig) -> None:
        import re

        self.conf = config
        self.plain = re.compile(_PLAIN)
        self.origins = config.origins or []

    def _vary(self, headers: list, in_filter: bool) -> None:
        (add_header if in_filter else set_header)(headers, b"vary", b"Origin")

    def configure_origin(self, headers: list, in_filter: bool, req_origin: bytes | None) -> bool:
        import re

        origins = self.origins
        if not origins or origins == ["*"]:
            set_header(headers, b"access-control-allow-origin", b"*")
            return True
        self._vary(headers, in_filter)
        if len(origins) == 1 and self.plain.match(origins[0]):
            set_header(headers, b"access-control-allow-origin", origins[0].encode())
            return False
        if req_origin:
            domains = []
            for entry in origins:
                if entry == "*":
                    set_header(headers, b"access-control-allow-origin", b"*")
                    return True
                if not self.plain.match(entry):
                    pattern = entry if entry.endswith("$") else entry + "$"
                    domains.append(("regex", pattern.removeprefix("^"), ":" not in entry))
                else:
                    domains.append(("plain", normalize_origin(entry).domain, ":" not in entry))
            req = normalize_origin(req_origin.decode("latin-1"))
            for kind, value, by_host in domains:
                if kind == "regex":
                    found = re.match(value, req.host if by_host else req.domain) is not None
                else:
                    found = req.domain == value
                if found:
                    set_header(headers, b"access-control-allow-origin", req.domain.encode("latin-1"))
                    return False
        clear_header(headers, b"access-control-allow-origin")
        return False

    def configure_credentials(self, headers: list, allow_all: bool, in_filter: bool, req_origin: bytes | None) -> None:
        if not self.conf.credentials:
            return
        if not allow_all:
            set_header(headers, b"access-control-allow-credentials", b"true")
            return
        if req_origin:
            self._vary(headers, in_filter)
            set_header(headers, b"access-control-allow-origin", req_origin)
            set_header(headers, b"access-control-allow-credentials", b"true")

    def header_filter(self, request_headers: list, headers: list) -> list:
        req_origin = get_header(request_headers, b"origin")
        if not req_origin and not self.conf.allow_origin_absent:
            return headers
        allow_all = self.configure_origin(headers, True, req_origin)
        self.configure_credentials(headers, allow_all, True, req_origin)
        if self.conf.exposed_headers:
            set_header(headers, b"access-control-expose-headers", ",".join(self.conf.exposed_headers).encode())
        return headers

    def preflight(self, request_headers: list) -> list:
        """The preflight's answer headers (the caller has checked it is one and preflight_continue is off)."""
        conf, out = self.conf, []
        req_origin = get_header(request_headers, b"origin")
        allow_all = self.configure_origin(out, False, req_origin)
        self.configure_credentials(out, allow_all, False, req_origin)
        if conf.headers:
            set_header(out, b"access-control-allow-headers", ",".join(conf.headers).encode())
        else:
            acrh = get_header(request_headers, b"access-control-request-headers")
            if acrh is not None:
                set_header(out, b"access-control-allow-headers", acrh)
            else:
                clear_header(out, b"access-control-allow-headers")
        methods = ",".join(conf.methods if conf.methods is not None else METHODS).encode()
        set_header(out, b"access-control-allow-methods", methods)
        if conf.max_age is not None:
            set_header(out, b"access-control-max-age", b"%.14g" % conf.max_age)
        if conf.private_network and get_header(request_headers, b"access-control-request-private-network") == b"true":
            set_header(out, b"access-control-allow-private-network", b"true")
        out.append((b"content-length", b"0"))
        return out


ORIGIN_LISTS: list[list[str] | None] = [
    None, [], ["*"], ["http://bench.test"], ["bench.test"], ["http://a.test", "https://b.test:8443"],
    ["http://a.test", "*"], ["*", r".*\.x\.test"], [r".*\.x\.test"], [r"^https?://[a-z]+\.y\.test$", "http://a.test:80"],
    ["http://a.test", r"(.*[.])?z\.test", "https://[::1]:443"], ["HTTP://A.test"], ["a.test", "b.test"],
]
REQUEST_ORIGINS: list[bytes | None] = [
    None, b"", b"http://bench.test", b"http://a.test", b"http://a.test:80", b"https://b.test:8443", b"https://b.test",
    b"http://q.x.test", b"https://w.y.test", b"http://c.z.test", b"https://[::1]", b"bench.test", b"a.test",
    b"http://evil.test", b"HTTP://A.test", b"http://user@a.test/path?q#f", b"http://a.test\x01x", b"null",
]
UPSTREAM_HEADS: list[list[tuple[bytes, bytes]]] = [
    [(b"content-type", b"application/json"), (b"content-length", b"2")],
    [(b"access-control-allow-origin", b"*"), (b"vary", b"Accept-Encoding"), (b"content-length", b"0")],
    [(b"access-control-allow-credentials", b"false"), (b"access-control-expose-headers", b"x-up"),
     (b"access-control-allow-origin", b"http://up.test"), (b"access-control-allow-origin", b"again")],
    [],
]
CONFIGS = [dict(origins=origins, credentials=credentials, exposed_headers=exposed, allow_origin_absent=absent)
           for origins in ORIGIN_LISTS for credentials in (False, True)
           for exposed in (None, ["X-Bench"], ["x-a", "x-b"]) for absent in (True, False)]


def config_of(**fields: Any) -> CorsConfig:
    return msgspec.convert({k: v for k, v in fields.items() if v is not None or k == "methods"}, CorsConfig)


def exchange(method: bytes, request_headers: list, state: dict | None = None) -> Any:
    return SimpleNamespace(request=SimpleNamespace(method=method, headers=request_headers), state=state)


@pytest.mark.parametrize("fields", CONFIGS, ids=repr)
def test_every_response_gets_the_headers_kongs_calls_leave(fields):
    cors, reference = Cors(config_of(**fields)), Reference(config_of(**fields))
    for origin in REQUEST_ORIGINS:
        request_headers = [(b"host", b"gw")] + ([(b"origin", origin)] if origin is not None else [])
        for upstream in UPSTREAM_HEADS:
            for _ in range(2):  # the second time from the memo
                got = cors.header_filter(exchange(b"GET", request_headers), 200, list(upstream))
                assert got == reference.header_filter(request_headers, list(upstream)), (origin, upstream)


@pytest.mark.parametrize("fields", CONFIGS[::2], ids=repr)
async def test_every_preflight_is_answered_with_the_headers_kongs_calls_set(fields):
    extra = [dict(headers=None, methods=None, max_age=None, private_network=False),
             dict(headers=["x-a", "x-b"], methods=["GET", "POST"], max_age=1.5, private_network=True)]
    for more in extra:
        config = config_of(**fields, **more)
        cors, reference = Cors(config), Reference(config)
        for origin in REQUEST_ORIGINS:
            if not origin:
                continue
            for asked in ([], [(b"access-control-request-headers", b"x-custom, content-type"),
                               (b"access-control-request-private-network", b"true")],
                          [(b"access-control-request-headers", b"x-a\x01b"),
                           (b"access-control-request-private-network", b"TRUE")]):
                request_headers = [(b"origin", origin), (b"access-control-request-method", b"POST")] + asked
                sent: list = []
                ex = exchange(b"OPTIONS", request_headers)

                async def send_head(status, headers, body=b"", end=False, sent=sent):
                    sent.append((status, headers, end))

                ex.send_head = send_head
                assert await cors.access(ex) is True
                assert sent == [(200, reference.preflight(request_headers), True)], (origin, asked)
                assert ex.state == {"cors:preflight": True}


async def test_a_request_that_is_no_preflight_is_left_to_the_proxy_and_its_response_filtered():
    cors = Cors(config_of(origins=["http://a.test"]))
    for method, headers in [(b"GET", [(b"origin", b"http://a.test"), (b"access-control-request-method", b"GET")]),
                            (b"OPTIONS", [(b"access-control-request-method", b"GET")]),
                            (b"OPTIONS", [(b"origin", b""), (b"access-control-request-method", b"GET")]),
                            (b"OPTIONS", [(b"origin", b"http://a.test")])]:
        ex = exchange(method, headers)
        assert await cors.access(ex) is False
        assert ex.state is None


async def test_preflight_continue_marks_the_request_so_its_proxied_answer_gets_nothing():
    cors = Cors(config_of(preflight_continue=True))
    ex = exchange(b"OPTIONS", [(b"origin", b"http://a.test"), (b"access-control-request-method", b"GET")])
    assert await cors.access(ex) is False
    upstream = [(b"access-control-allow-origin", b"up")]
    assert cors.header_filter(ex, 200, upstream) == [(b"access-control-allow-origin", b"up")]


def test_the_bench_config_is_one_plan_of_constants_for_every_origin():
    cors = Cors(config_of(origins=["http://bench.test"], credentials=True, exposed_headers=["X-Bench"]))
    assert cors.fixed_plan is cors.absent_plan
    assert cors.fixed_plan == (frozenset({b"access-control-allow-origin", b"access-control-allow-credentials",
                                          b"access-control-expose-headers"}),
                               [(b"vary", b"Origin"), (b"access-control-allow-origin", b"http://bench.test"),
                                (b"access-control-allow-credentials", b"true"),
                                (b"access-control-expose-headers", b"X-Bench")])


@pytest.mark.parametrize(("fields", "fixed"), [
    ({}, True), ({"origins": ["*"]}, True), ({"origins": ["http://a.test"], "credentials": True}, True),
    ({"credentials": True}, False), ({"origins": ["http://a.test", "http://b.test"]}, False),
    ({"origins": [r".*\.a\.test"]}, False)])
def test_a_plan_is_fixed_at_load_only_when_the_config_looks_at_no_origin(fields, fixed):
    assert (Cors(config_of(**fields)).fixed_plan is not None) == fixed


def test_a_plan_is_kept_per_origin_and_reused():
    cors = Cors(config_of(origins=["http://a.test", r".*\.b\.test"]))
    ex = exchange(b"GET", [(b"origin", b"http://x.b.test")])
    cors.header_filter(ex, 200, [])
    plan = cors._plans[b"http://x.b.test"]
    assert cors.header_filter(ex, 200, []) == [(b"vary", b"Origin"), (b"access-control-allow-origin", b"http://x.b.test")]
    assert cors._plans[b"http://x.b.test"] is plan and len(cors._plans) == 1


def test_apply_plan_changes_the_list_in_place_and_keeps_the_plan_unchanged():
    plan = (frozenset({b"a"}), [(b"a", b"1"), (b"v", b"x")])
    headers = [(b"a", b"0"), (b"b", b"2"), (b"A", b"kept")]
    same = apply_plan(headers, plan)
    assert same is headers and headers == [(b"b", b"2"), (b"A", b"kept"), (b"a", b"1"), (b"v", b"x")]
    untouched = [(b"b", b"2")]
    assert apply_plan(untouched, plan) == [(b"b", b"2"), (b"a", b"1"), (b"v", b"x")]
    assert plan == (frozenset({b"a"}), [(b"a", b"1"), (b"v", b"x")])


def test_an_origin_reflected_or_a_configured_value_is_escaped_as_ngx_header_sets_it():
    cors = Cors(config_of(credentials=True, exposed_headers=["x-a\nb"]))
    got = cors.header_filter(exchange(b"GET", [(b"origin", b"http://a.test\x7f")]), 200, [])
    assert (b"access-control-allow-origin", b"http://a.test%7F") in got
    assert (b"access-control-expose-headers", b"x-a%0Ab") in got


FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
origin_text = st.lists(st.sampled_from(["http", "https", "HTTP", "://", ":", "//", "a", "b", ".test", "x.", "80",
                                        "443", "8443", "@", "/", "?", "[", "]", "::1", "*", "\x01", "é"]),
                       max_size=8).map("".join)
entry = st.sampled_from(["*", "http://a.test", "https://b.test:443", "a.test", r".*\.test", r"^http://[ab]\.test$",
                         "http://a.test:80", "b.test:8443", r"[ab]\.test"])
header_name = st.sampled_from([b"access-control-allow-origin", b"access-control-allow-credentials",
                               b"access-control-expose-headers", b"vary", b"content-length", b"x-other"])


@FUZZ
@given(origins=st.none() | st.lists(entry, max_size=4), credentials=st.booleans(), absent=st.booleans(),
       exposed=st.none() | st.lists(st.sampled_from(["X-A", "x-b"]), max_size=2),
       origin=st.none() | origin_text.map(lambda t: t.encode("utf-8")),
       upstream=st.lists(st.tuples(header_name, st.sampled_from([b"1", b"*", b"Origin"])), max_size=5))
def test_any_config_origin_and_upstream_head_end_as_kongs_calls_leave_them(origins, credentials, absent, exposed,
                                                                          origin, upstream):
    fields = dict(origins=origins, credentials=credentials, allow_origin_absent=absent, exposed_headers=exposed)
    cors, reference = Cors(config_of(**fields)), Reference(config_of(**fields))
    request_headers = [(b"origin", origin)] if origin is not None else []
    expected = reference.header_filter(request_headers, list(upstream))
    assert cors.header_filter(exchange(b"POST", request_headers), 200, list(upstream)) == expected
    assert cors.header_filter(exchange(b"POST", request_headers), 200, list(upstream)) == expected  # memo
