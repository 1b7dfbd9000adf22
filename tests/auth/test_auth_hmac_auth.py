"""Kong's hmac-auth through the in-process gateway: kong/plugins/hmac-auth's answers and what reaches the upstream.

Every signature here is made by the test itself (Python's hmac over a signing string written out in full), so a test
fails if the gateway builds the signing string differently from Kong. Docstrings name the `it(...)` of Kong's
spec/03-plugins/19-hmac-auth/03-access_spec.lua (or 01-schema_spec.lua) a test follows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from email.utils import formatdate
from typing import Any

import msgspec
import pytest
from auth_helpers import (
    call,
    consumer_id,
    http_codec,  # noqa: F401 - the fixture: one codec
    message,
    start,
    upstream,
)
from backends import Reply, parse_raw_response, raw_exchange

from gateway.config import ConfigError, parse_config
from gateway.policies.consumers import Directory
from gateway.policies.hmac_auth.handler import BODY_LIMIT
from gateway.policies.hmac_auth.schema import HmacAuthConfig
from gateway.runtime import compile_config

SECRET = "secret"
ANON_ID = "2a1f0c3e-5b7d-4e9a-8c6b-0d4e2f1a3b5c"
CONSUMERS = [
    {"username": "bob", "custom_id": "1234", "hmacauth_credentials": [{"username": "bob", "secret": SECRET}]},
    {"username": "alice", "keyauth_credentials": [{"key": "alice-key"}]},
    {"username": "no-body", "id": ANON_ID},
]
HASHES = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256, "hmac-sha384": hashlib.sha384,
          "hmac-sha512": hashlib.sha512}

UNAUTHORIZED = {"message": "Unauthorized"}
NO_DATE = {"message": "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC "
                      "Authentication"}
UNVERIFIED = {"message": "HMAC signature cannot be verified"}
MISMATCH = {"message": "HMAC signature does not match"}
EMPTY_BODY_DIGEST = "SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # sha256(b"") in base64


def now(offset: float = 0) -> str:
    """An RFC 1123 date, `offset` seconds from now."""
    return formatdate(time.time() + offset, usegmt=True)


def sign(signing_string: str, algorithm: str = "hmac-sha1", secret: str = SECRET) -> str:
    """The base64 HMAC of a signing string, as a client computes it."""
    mac = hmac.new(secret.encode(), signing_string.encode(), HASHES[algorithm])
    return base64.b64encode(mac.digest()).decode()


def hmac_header(signature: str, headers: str = "date request-line", username: str = "bob",
                algorithm: str = "hmac-sha1") -> str:
    return f'hmac username="{username}", algorithm="{algorithm}", headers="{headers}", signature="{signature}"'


def digest(body: bytes) -> str:
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


async def hmac_gateway(nursery, gateway, **config: Any) -> tuple[Any, int]:  # noqa: ANN001
    routes = [{"paths": ["/"], "plugins": [{"name": "hmac-auth", "config": config}]}]
    return await start(nursery, gateway, routes, consumers=CONSUMERS)


async def signed_get(port: int, target: str = "/request", extra: list[tuple[str, str]] | None = None,
                     **credentials: Any) -> Reply:
    """GET `target` with a fresh Date and Authorization signed over `date: <date>\\n<request line>`."""
    date = now()
    auth = hmac_header(sign(f"date: {date}\nGET {target} HTTP/1.1"), **credentials)
    return await call(port, target, [("date", date), ("authorization", auth), *(extra or [])])


def assert_401(reply: Reply, expected: dict[str, str], challenge: str = "hmac") -> None:
    assert (reply.status, message(reply)) == (401, expected)
    assert reply.header("www-authenticate") == challenge


# --- missing credentials and the realm ------------------------------------------------------------------------------


async def test_no_credentials_header_is_401_unauthorized_with_the_hmac_challenge(nursery, gateway):
    """should not be authorized when authorization header is missing"""
    _, port = await hmac_gateway(nursery, gateway)
    assert_401(await call(port, "/request", [("date", now())]), UNAUTHORIZED)


async def test_the_realm_is_in_the_challenge(nursery, gateway):
    """when realm is set / should not be authorized when the hmac credentials are missing"""
    _, port = await hmac_gateway(nursery, gateway, realm="test-realm")
    assert_401(await call(port, "/request", [("date", now())], method="POST"), UNAUTHORIZED,
               'hmac realm="test-realm"')


@pytest.mark.parametrize(("headers", "expected"), [
    (lambda: [("authorization", "asd")], NO_DATE),
    (lambda: [("date", now()), ("authorization", "asd")], UNVERIFIED),
    (lambda: [("date", now()), ("authorization", hmac_header(sign("nope")))], MISMATCH),
], ids=["no-date", "unparsable", "wrong-signature"])
async def test_every_401_carries_the_realm(nursery, gateway, headers, expected):
    _, port = await hmac_gateway(nursery, gateway, realm="test-realm")
    assert_401(await call(port, "/request", headers()), expected, 'hmac realm="test-realm"')


async def test_options_requests_are_authenticated_too(nursery, gateway):
    """hmac-auth has no run_on_preflight: an OPTIONS request needs credentials like any other."""
    _, port = await hmac_gateway(nursery, gateway)
    assert_401(await call(port, "/request", [("date", now())], method="OPTIONS"), UNAUTHORIZED)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nOPTIONS /request HTTP/1.1"))
    assert (await call(port, "/request", [("date", date), ("authorization", auth)], method="OPTIONS")).status == 200


async def test_an_empty_authorization_header_counts_as_present(nursery, gateway):
    """Kong's `if not (authorization or proxy_authorization)`: "" is truthy in Lua, so the date check comes next."""
    _, port = await hmac_gateway(nursery, gateway)
    assert_401(await call(port, "/request", [("authorization", "")]), NO_DATE)
    assert_401(await call(port, "/request", [("date", now()), ("authorization", "")]), UNVERIFIED)


# --- the date -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dates", [
    [],
    [("x-date", "wrong date")],
    [("date", "wrong date")],
    [("date", "Thu, 22 Jun 2017 17:15:21 GMT")],
    [("x-date", "Thu, 22 Jun 2017 17:15:21 GMT"), ("date", "wrong date")],
], ids=["none", "x-date-malformed", "date-malformed", "date-stale", "both-bad"])
async def test_without_a_valid_date_or_x_date_it_is_401(nursery, gateway, dates):
    """should not pass with GET with both date and x-date missing; should not pass with GET with x-date malformed"""
    _, port = await hmac_gateway(nursery, gateway)
    reply = await call(port, "/request", [*dates, ("authorization", hmac_header(sign("anything")))])
    assert_401(reply, NO_DATE)


async def test_the_clock_skew_is_checked_before_the_credentials_are_parsed(nursery, gateway):
    """should not be authorized when date header is missing (Authorization: asd)"""
    _, port = await hmac_gateway(nursery, gateway)
    assert_401(await call(port, "/request", [("authorization", "asd")], method="POST"), NO_DATE)
    assert_401(await call(port, "/request", [("proxy-authorization", "asd")], method="POST"), NO_DATE)


@pytest.mark.parametrize(("offset", "status"), [(-45, 200), (45, 200), (-120, 401), (120, 401)])
async def test_a_date_may_be_off_by_at_most_clock_skew_seconds_either_way(nursery, gateway, offset, status):
    _, port = await hmac_gateway(nursery, gateway, clock_skew=60)
    date = now(offset)
    reply = await call(port, "/request", [("date", date), ("authorization", hmac_header(sign(
        f"date: {date}\nGET /request HTTP/1.1")))])
    assert reply.status == status
    if status == 401:
        assert message(reply) == NO_DATE


@pytest.mark.parametrize("form", ["rfc850", "asctime"])
async def test_the_other_http_date_forms_are_read(nursery, gateway, form):
    """ngx.parse_http_time reads RFC 850 and asctime dates too."""
    _, port = await hmac_gateway(nursery, gateway)
    t = time.gmtime()
    if form == "asctime":
        date = time.asctime(t)  # "Sun Nov  6 08:49:37 1994"
    else:
        weekday = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")[t.tm_wday]
        month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[t.tm_mon - 1]
        date = f"{weekday}, {t.tm_mday:02d}-{month}-{t.tm_year % 100:02d} {time.strftime('%H:%M:%S', t)} GMT"
    reply = await call(port, "/request", [("date", date), ("authorization", hmac_header(sign(
        f"date: {date}\nGET /request HTTP/1.1")))])
    assert reply.status == 200, (date, reply.body)


async def test_x_date_may_be_signed_instead_of_date(nursery, gateway):
    """should pass with GET with x-date header"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"x-date: {date}\ncontent-md5: md5\nGET /request HTTP/1.1"),
                       headers="x-date content-md5 request-line")
    reply = await call(port, "/request", [("x-date", date), ("authorization", auth), ("content-md5", "md5")])
    assert reply.status == 200


async def test_a_malformed_x_date_passes_when_date_is_valid(nursery, gateway):
    """should pass with GET with x-date malformed but date correct"""
    _, port = await hmac_gateway(nursery, gateway)
    auth = hmac_header(sign("content-md5: md5\nGET /request HTTP/1.1"), headers="content-md5 request-line")
    reply = await call(port, "/request", [("x-date", "wrong date"), ("date", now()), ("authorization", auth),
                                          ("content-md5", "md5")])
    assert reply.status == 200


async def test_a_signed_malformed_x_date_passes_when_date_is_valid(nursery, gateway):
    """should with x-date malformed and used for signature but skew test pass"""
    _, port = await hmac_gateway(nursery, gateway)
    auth = hmac_header(sign("x-date: wrong date\nGET /request HTTP/1.1"), headers="x-date request-line")
    reply = await call(port, "/request", [("x-date", "wrong date"), ("date", now()), ("authorization", auth)])
    assert reply.status == 200


async def test_a_signed_malformed_date_passes_when_x_date_is_valid(nursery, gateway):
    """should pass with date malformed and used for signature but skew test pass"""
    _, port = await hmac_gateway(nursery, gateway)
    auth = hmac_header(sign("date: wrong date\nGET /request HTTP/1.1"))
    reply = await call(port, "/request", [("x-date", now()), ("date", "wrong date"), ("authorization", auth)])
    assert reply.status == 200


# --- a valid request ------------------------------------------------------------------------------------------------


async def test_a_valid_signature_reaches_upstream_with_the_consumer_headers(nursery, gateway):
    """should pass the right headers to the upstream server; should pass with GET"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nGET /request HTTP/1.1"))
    seen = upstream(await call(port, "/request", [("date", date), ("authorization", auth)]))
    assert seen["x-consumer-username"] == "bob"
    assert seen["x-consumer-id"] == consumer_id("bob")
    assert seen["x-consumer-custom-id"] == "1234"
    assert seen["x-credential-identifier"] == "bob"  # the hmac username
    assert "x-anonymous-consumer" not in seen
    assert seen["authorization"] == auth  # forwarded unchanged
    assert seen[":path"] == "/request"


async def test_a_post_signed_over_date_only_passes(nursery, gateway):
    """should pass with POST"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}"), headers="date")
    reply = await call(port, "/request", [("date", date), ("authorization", auth)], method="POST", body=b"{}")
    assert upstream(reply)["authorization"] == auth


async def test_client_sent_consumer_headers_never_reach_upstream(nursery, gateway):
    """Kong sets or clears each consumer header, so a client cannot choose who it is."""
    _, port = await hmac_gateway(nursery, gateway)
    seen = upstream(await signed_get(port, extra=[("x-consumer-username", "admin"), ("x-anonymous-consumer", "true"),
                                                  ("x-credential-identifier", "admin")]))
    assert (seen["x-consumer-username"], seen["x-credential-identifier"]) == ("bob", "bob")
    assert "x-anonymous-consumer" not in seen


# --- algorithms -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"])
async def test_each_algorithm_verifies(nursery, gateway, algorithm):
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nGET /request HTTP/1.1", algorithm), algorithm=algorithm)
    reply = await call(port, "/request", [("date", date), ("authorization", auth)])
    assert upstream(reply)["x-credential-identifier"] == "bob"


async def test_an_algorithm_the_route_does_not_allow_is_401(nursery, gateway):
    """should not pass with hmac-sha512 (the route allows only hmac-sha1 and hmac-sha256)"""
    _, port = await hmac_gateway(nursery, gateway, algorithms=["hmac-sha1", "hmac-sha256"])
    date = now()
    for algorithm, status in (("hmac-sha256", 200), ("hmac-sha512", 401)):
        auth = hmac_header(sign(f"date: {date}\nGET /request HTTP/1.1", algorithm), algorithm=algorithm)
        reply = await call(port, "/request", [("date", date), ("authorization", auth)])
        assert reply.status == status
    assert_401(reply, UNVERIFIED)


@pytest.mark.parametrize("algorithm", ["hmac-sha", "HMAC-SHA256", "sha256", "hmac-md5"])
async def test_an_unknown_algorithm_is_401_cannot_be_verified(nursery, gateway, algorithm):
    """should not pass with GET with wrong algorithm (algorithm="hmac-sha")"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nGET /request HTTP/1.1", "hmac-sha256"), algorithm=algorithm)
    assert_401(await call(port, "/request", [("date", date), ("authorization", auth)]), UNVERIFIED)


# --- the credentials header -----------------------------------------------------------------------------------------

SIG = "c2lnbmF0dXJl"  # any base64: the header is refused before any signature is checked


@pytest.mark.parametrize("value", [
    "asd",
    "hmac username",
    "hmac :dXNlcm5hbWU6cGFzc3dvcmQ=",
    "hmac username=,algorithm,headers,dXNlcm5hbWU6cGFzc3dvcmQ=",
    f'hmac username="",  algorithm="hmac-sha1", headers="date request-line", signature="{SIG}"',
    f'hmac algorithm="hmac-sha1", headers="date request-line", signature="{SIG}"',
    'hmac username="bob", algorithm="hmac-sha1", headers="date request-line"',
    f'hmac username="bob",  algorithm="hmac-sha1",   wrong_header="date request-line", signature="{SIG}"',
    f'hmac username="bob",  algorithm="hmac-sha1",   headers="date request-line", wrong_signature="{SIG}"',
    f'hmac username="bob",  algorithm="hmac-sha1" headers="date request-line", signature="{SIG}"',
    f'hmac username="bob",  algorithm="hmac-sha1" headers="  date request-line",signature="{SIG}"',
    f'hmac username="bob", headers="date request-line", signature="{SIG}"',
    f'hmac username="bob" , algorithm="hmac-sha1", headers="date request-line", signature="{SIG}"',
    f'hmac username=bob, algorithm=hmac-sha1, headers=date, signature={SIG}',
    f'HMAC username="bob", algorithm="hmac-sha1", headers="date request-line", signature="{SIG}"',
    f'hmac signature="{SIG}", headers="date request-line", algorithm="hmac-sha1", username="bob"',
], ids=["asd", "only-the-username", "only-the-digest", "wrong-parameters", "username-blank", "username-missing",
        "signature-missing", "wrong-headers-field-name", "wrong-signature-field-name", "no-comma-after-algorithm",
        "no-comma-before-headers", "algorithm-missing", "space-before-comma", "unquoted", "upper-case-scheme",
        "other-order"])
async def test_a_malformed_credentials_header_is_401_cannot_be_verified(nursery, gateway, value):
    """should not be authorized when the HMAC signature is wrong; ... with signature is wrong in proxy-authorization;
    should not pass when passing only the digest; should not pass when passing wrong hmac parameters; should not be
    authorized when passing only the username; should not pass with GET with username blank / username missing /
    wrong hmac headers field name / wrong hmac signature field name / malformed hmac signature field / malformed hmac
    headers field"""
    _, port = await hmac_gateway(nursery, gateway)
    for header in ("authorization", "proxy-authorization"):
        assert_401(await call(port, "/request", [("date", now()), (header, value)], method="POST"), UNVERIFIED)


async def test_an_unknown_username_is_401_cannot_be_verified(nursery, gateway):
    """should not pass with GET with wrong username in signature (bobb)"""
    _, port = await hmac_gateway(nursery, gateway)
    assert_401(await signed_get(port, username="bobb"), UNVERIFIED)
    assert_401(await signed_get(port, username="Bob"), UNVERIFIED)  # usernames are case-sensitive


async def test_no_space_or_several_spaces_between_the_fields_pass(nursery, gateway):
    """should pass with GET with no space or space between hmac signatures fields"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    signature = sign(f"date: {date}\ncontent-md5: md5\nGET /request HTTP/1.1")
    auth = (f'hmac username="bob",algorithm="hmac-sha1",  headers="date content-md5 request-line",'
            f'signature="{signature}"')
    reply = await call(port, "/request", [("date", date), ("authorization", auth), ("content-md5", "md5")])
    assert reply.status == 200


@pytest.mark.parametrize("template", [
    'Hmac username="bob", algorithm="hmac-sha1", headers="date", signature="{}"',
    'hmacusername="bob", algorithm="hmac-sha1", headers="date", signature="{}"',
    '"hmac username="bob",algorithm="hmac-sha1",headers="date",signature="{}"',
    'Signature hmac username="bob", algorithm="hmac-sha1", headers="date", signature="{}" trailing',
], ids=["capital-scheme", "no-space-after-scheme", "stray-leading-quote", "junk-around"])
async def test_kongs_pattern_is_unanchored_and_lenient_about_the_scheme(nursery, gateway, template):
    """The spec's body-validation tests send `"hmac username=...` with a stray leading quote, and pass."""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = template.format(sign(f"date: {date}"))
    reply = await call(port, "/request", [("date", date), ("authorization", auth)])
    assert upstream(reply)["x-credential-identifier"] == "bob"


# --- the signature --------------------------------------------------------------------------------------------------


async def test_a_wrong_signature_is_401_does_not_match(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    for signature in (sign(f"date: {date}\nGET /request HTTP/1.1", secret="not-the-secret"),
                      sign(f"date: {date}\nGET /other HTTP/1.1"),
                      sign(f"date: {date}\nGET /request HTTP/1.1", "hmac-sha256")):  # another algorithm's MAC
        reply = await call(port, "/request", [("date", date), ("authorization", hmac_header(signature))])
        assert_401(reply, MISMATCH)


async def test_a_signature_that_is_not_base64_is_401_does_not_match(nursery, gateway):
    """should not be authorized when the HMAC signature is not properly base64 encoded"""
    _, port = await hmac_gateway(nursery, gateway)
    auth = 'hmac username="bob",algorithm="hmac-sha1",headers="date",signature="not really a base64 encoded value!!!"'
    assert_401(await call(port, "/request", [("date", now()), ("authorization", auth)], method="POST"), MISMATCH)


async def test_a_url_safe_base64_signature_does_not_match(nursery, gateway):
    """ngx.decode_base64 reads the standard alphabet only."""
    _, port = await hmac_gateway(nursery, gateway)
    for n in range(100):  # a date whose signature has a "+" or "/" in it
        date = now(-n)
        signature = sign(f"date: {date}", "hmac-sha512")
        if "+" in signature or "/" in signature:
            break
    else:
        pytest.fail("no signature with a + or / in it")
    url_safe = signature.replace("+", "-").replace("/", "_")
    auth = hmac_header(url_safe, headers="date", algorithm="hmac-sha512")
    assert_401(await call(port, "/request", [("date", date), ("authorization", auth)]), MISMATCH)


async def test_a_signature_without_its_padding_still_matches(nursery, gateway):
    """ngx.decode_base64 does not need the "=" padding."""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    signature = sign(f"date: {date}")  # 20 bytes: 28 characters, the last one "="
    assert signature.endswith("=")
    auth = hmac_header(signature.rstrip("="), headers="date")
    assert (await call(port, "/request", [("date", date), ("authorization", auth)])).status == 200


async def test_a_signature_spelled_otherwise_in_base64_matches_as_nginx_decodes_it(nursery, gateway):
    """ngx.decode_base64 ignores what follows the first "=" and the bits past the last byte."""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    signature = sign(f"date: {date}")  # 20 bytes: the 27th character carries 2 bits the decoder drops
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(signature[26])
    other_bits = signature[:26] + alphabet[last ^ 0b11] + "="
    assert base64.b64decode(other_bits) == base64.b64decode(signature) and other_bits != signature
    for spelling in (other_bits, signature + "trailing text"):
        auth = hmac_header(spelling, headers="date")
        assert (await call(port, "/request", [("date", date), ("authorization", auth)])).status == 200, spelling


# --- request-line and @request-target -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "/request?name=foo",
    "/request?name=foo%20bar",
    "/request?name=foo&name=bar",
    "/",
    "/request/some%20value/?name=foo&name=bar",
], ids=["query", "encoded-query", "repeated-query", "no-uri", "encoded-path"])
async def test_the_request_line_signs_the_target_exactly_as_sent(nursery, gateway, target):
    """should pass with GET with request-line having query param / having encoded query param / having multiple same
    query param / having no uri / having encoded path param"""
    _, port = await hmac_gateway(nursery, gateway)
    reply = await signed_get(port, target)
    assert upstream(reply)[":path"] == target


async def test_a_question_mark_with_no_query_is_signed(nursery, gateway):
    """Kong signs ngx.var.request_uri, which keeps the "?"; upstream gets /request? too (handler.lua access.after
    keeps an empty query's "?", which nginx's $is_args would drop)."""
    _, port = await hmac_gateway(nursery, gateway)
    assert upstream(await signed_get(port, "/request?"))[":path"] == "/request?"


@pytest.mark.parametrize(("target", "signed"), [
    ("/request?name=foo", "/request"),
    ("/request/?name=foo", "/request/"),
    ("/request/some%20value/?name=foo", "/request/some value/?name=foo"),
    ("/request?name=foo%20bar", "/request?name=foo bar"),
    ("/request?", "/request"),
], ids=["query-left-out", "query-left-out-slash", "path-decoded", "query-decoded", "empty-query-left-out"])
async def test_a_request_line_signed_over_another_target_does_not_match(nursery, gateway, target, signed):
    """should fail with GET with request-line having query param but signed without query param"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nGET {signed} HTTP/1.1"))
    assert_401(await call(port, target, [("date", date), ("authorization", auth)]), MISMATCH)


async def test_the_request_line_has_the_method_as_received(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    for method, signed, status in (("POST", "POST", 200), ("PUT", "put", 401), ("DELETE", "GET", 401)):
        auth = hmac_header(sign(f"date: {date}\n{signed} /request HTTP/1.1"))
        reply = await call(port, "/request", [("date", date), ("authorization", auth)], method=method)
        assert reply.status == status, method


async def test_an_http_1_0_request_signs_http_1_0(nursery, gateway):
    """should encode http-1 requests as http/1.0"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()

    async def http_1_0(signed_version: str) -> tuple[int, dict[str, str], Any]:
        auth = hmac_header(sign(f"date: {date}\nGET /request HTTP/{signed_version}"))
        raw = f"GET /request HTTP/1.0\r\nHost: gateway.test\r\nDate: {date}\r\nAuthorization: {auth}\r\n\r\n"
        data, _ = await raw_exchange(port, raw.encode())
        status, headers, body = parse_raw_response(data)
        return status, headers, json.loads(body)

    status, _, seen = await http_1_0("1.0")
    assert status == 200
    assert ["x-credential-identifier", "bob"] in seen["headers"]
    status, headers, body = await http_1_0("1.1")
    assert (status, body["message"], headers["www-authenticate"]) == (401, MISMATCH["message"], "hmac")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_request_target_signs_the_lower_case_method_and_target_without_version(nursery, gateway, method):
    """should pass with GET with @request-target"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\n@request-target: {method.lower()} /request?a=b%20c"),
                       headers="date @request-target")
    reply = await call(port, "/request?a=b%20c", [("date", date), ("authorization", auth)], method=method)
    assert upstream(reply)["x-credential-identifier"] == "bob"
    wrong = hmac_header(sign(f"date: {date}\n@request-target: {method} /request?a=b%20c"),
                        headers="date @request-target")
    assert_401(await call(port, "/request?a=b%20c", [("date", date), ("authorization", wrong)], method=method),
               MISMATCH)


@pytest.mark.parametrize(("headers", "signature"), [
    ("date @request-target", "eBDY0oRfbAEbAw1Qb5bQ9qKFuX7OdrJ1AOoaU9Rwci8="),
    ("date request-line", "ujWCGHeec9Xd6UD2zlyxiNMCiXnDOWeVFMu5VeRUxtw="),
])
async def test_known_answer_vectors(nursery, gateway, headers, signature):
    """Secret "secret", HMAC-SHA256, Date: Thu, 22 Jun 2017 17:15:21 GMT, GET /requests (the docs' example; the
    @request-target signature is the one Kong's code makes, not the docs' one)."""
    _, port = await hmac_gateway(nursery, gateway, clock_skew=1e10)
    auth = hmac_header(signature, headers=headers, algorithm="hmac-sha256")
    reply = await call(port, "/requests", [("date", "Thu, 22 Jun 2017 17:15:21 GMT"), ("authorization", auth)])
    assert upstream(reply)["x-credential-identifier"] == "bob"


async def test_a_real_request_line_header_is_signed_as_a_header(nursery, gateway):
    """The pseudo-headers apply only when the request has no header of that name."""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nrequest-line: custom"))
    reply = await call(port, "/request", [("date", date), ("authorization", auth), ("request-line", "custom")])
    assert reply.status == 200


# --- the signed headers ---------------------------------------------------------------------------------------------


async def test_a_header_name_is_signed_as_the_client_spelled_it(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    for signed, status in ((f"Date: {date}\nGET /request HTTP/1.1", 200),
                           (f"date: {date}\nGET /request HTTP/1.1", 401)):
        auth = hmac_header(sign(signed), headers="Date request-line")
        reply = await call(port, "/request", [("date", date), ("authorization", auth)])
        assert reply.status == status, signed


async def test_a_listed_header_missing_from_the_request_signs_as_its_name_and_a_colon(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    for signed, status in ((f"date: {date}\nx-missing:\nGET /request HTTP/1.1", 200),
                           (f"date: {date}\nx-missing: \nGET /request HTTP/1.1", 401),
                           (f"date: {date}\nGET /request HTTP/1.1", 401)):
        auth = hmac_header(sign(signed), headers="date x-missing request-line")
        reply = await call(port, "/request", [("date", date), ("authorization", auth)])
        assert reply.status == status, signed


async def test_a_header_with_an_empty_value_signs_as_its_name_a_colon_and_a_space(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nx-empty: "), headers="date x-empty")
    reply = await call(port, "/request", [("date", date), ("authorization", auth), ("x-empty", "")])
    assert reply.status == 200


async def test_a_repeated_header_signs_its_first_value(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    for signed, status in (("x-custom: first", 200), ("x-custom: first, second", 401), ("x-custom: second", 401)):
        auth = hmac_header(sign(f"date: {date}\n{signed}"), headers="date x-custom")
        reply = await call(port, "/request", [("date", date), ("authorization", auth), ("x-custom", "first"),
                                              ("x-custom", "second")])
        assert reply.status == status, signed


async def test_an_underscore_in_a_listed_name_finds_the_hyphenated_header(nursery, gateway):
    """kong.request.get_header("x_custom") reads X-Custom (ngx's header lookup)."""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nx_custom: v"), headers="date x_custom")
    reply = await call(port, "/request", [("date", date), ("authorization", auth), ("x-custom", "v")])
    assert reply.status == 200


async def test_the_headers_list_is_split_on_single_spaces(nursery, gateway):
    """A double space lists an empty name, which signs as ":"."""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\n:\nGET /request HTTP/1.1"), headers="date  request-line")
    assert (await call(port, "/request", [("date", date), ("authorization", auth)])).status == 200


# --- enforce_headers ------------------------------------------------------------------------------------------------


async def test_an_enforced_header_left_out_of_the_signature_is_401_cannot_be_verified(nursery, gateway):
    """should fail with GET when enforced header request-line missing"""
    _, port = await hmac_gateway(nursery, gateway, enforce_headers=["date", "request-line"])
    date = now()
    auth = hmac_header(sign(f"date: {date}"), headers="date")
    assert_401(await call(port, "/request", [("date", date), ("authorization", auth)]), UNVERIFIED)


async def test_enforced_headers_in_the_signature_pass(nursery, gateway):
    """should pass with GET with request-line (route with enforce_headers date, request-line)"""
    _, port = await hmac_gateway(nursery, gateway, enforce_headers=["date", "request-line"])
    assert (await signed_get(port)).status == 200


async def test_enforced_names_are_compared_exactly(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway, enforce_headers=["date"])
    date = now()
    auth = hmac_header(sign(f"Date: {date}\nGET /request HTTP/1.1"), headers="Date request-line")
    assert_401(await call(port, "/request", [("date", date), ("authorization", auth)]), UNVERIFIED)


async def test_an_enforced_header_need_only_be_listed_not_sent(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway, enforce_headers=["x-signed"])
    date = now()
    auth = hmac_header(sign(f"date: {date}\nx-signed:"), headers="date x-signed")
    assert (await call(port, "/request", [("date", date), ("authorization", auth)])).status == 200


# --- Proxy-Authorization and hide_credentials -----------------------------------------------------------------------


async def test_proxy_authorization_alone_authenticates(nursery, gateway):
    """should pass with GET and proxy-authorization"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}"), headers="date")
    reply = await call(port, "/request", [("date", date), ("proxy-authorization", auth)])
    assert upstream(reply)["x-credential-identifier"] == "bob"


async def test_a_valid_authorization_passes_with_an_unparsable_proxy_authorization(nursery, gateway):
    """should pass with GET and valid authorization and wrong proxy-authorization"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}"), headers="date")
    reply = await call(port, "/request", [("date", date), ("proxy-authorization", "hmac username"),
                                          ("authorization", auth)], method="POST")
    assert upstream(reply)["authorization"] == auth


async def test_a_valid_proxy_authorization_passes_with_an_invalid_authorization(nursery, gateway):
    """should pass with GET and invalid authorization and valid proxy-authorization; should pass with GET with
    content-md5 header"""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\ncontent-md5: md5"), headers="date content-md5")
    reply = await call(port, "/request", [("date", date), ("proxy-authorization", auth), ("authorization", "hello"),
                                          ("content-md5", "md5")], method="POST")
    assert upstream(reply)["authorization"] == "hello"


async def test_a_proxy_authorization_that_parses_wins_even_when_wrong(nursery, gateway):
    """Authorization is read only when Proxy-Authorization does not parse."""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    good = hmac_header(sign(f"date: {date}"), headers="date")
    reply = await call(port, "/request", [("date", date), ("proxy-authorization", hmac_header(sign("x"), "date")),
                                          ("authorization", good)])
    assert_401(reply, MISMATCH)


async def test_without_hide_credentials_authorization_and_proxy_authorization_are_forwarded(nursery, gateway):
    """As Kong (nginx) forwards them."""
    _, port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}"), headers="date")
    seen = upstream(await call(port, "/request", [("date", date), ("authorization", auth),
                                                  ("proxy-authorization", "hmac username")]))
    assert seen["authorization"] == auth
    assert seen["proxy-authorization"] == "hmac username"


async def test_hide_credentials_removes_the_authorization_it_used(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway, hide_credentials=True)
    seen = upstream(await signed_get(port))
    assert "authorization" not in seen
    assert seen["x-consumer-username"] == "bob"


async def test_hide_credentials_keeps_authorization_when_proxy_authorization_was_used(nursery, gateway):
    """access.lua: when Proxy-Authorization parses only it is cleared; Authorization goes upstream unchanged."""
    _, port = await hmac_gateway(nursery, gateway, hide_credentials=True)
    date = now()
    auth = hmac_header(sign(f"date: {date}"), headers="date")
    seen = upstream(await call(port, "/request", [("date", date), ("proxy-authorization", auth),
                                                  ("authorization", "Basic Ym9iOmtvbmc=")]))
    assert seen["authorization"] == "Basic Ym9iOmtvbmc="
    assert "proxy-authorization" not in seen


async def test_hide_credentials_removes_authorization_before_it_is_checked(nursery, gateway):
    """access.lua clears Authorization before validating it: with anonymous, a failed one is not forwarded either."""
    _, port = await hmac_gateway(nursery, gateway, hide_credentials=True, anonymous="no-body")
    for value in ("asd", hmac_header(sign("wrong"))):
        seen = upstream(await call(port, "/request", [("date", now()), ("authorization", value)]))
        assert seen["x-anonymous-consumer"] == "true"
        assert "authorization" not in seen


async def test_a_hidden_authorization_cannot_be_signed(nursery, gateway):
    """Kong clears the header from the request itself, so create_hash reads it as missing: "authorization:"."""
    _, port = await hmac_gateway(nursery, gateway, hide_credentials=True)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nauthorization:"), headers="date authorization")
    assert (await call(port, "/request", [("date", date), ("authorization", auth)])).status == 200


# --- validate_request_body ------------------------------------------------------------------------------------------

BODY = b'{"a":"apple","b":"ball"}'


async def body_post(port: int, body: bytes, digest_value: str | None, signed: str = "date digest") -> Reply:
    date = now()
    lines = {"date": f"date: {date}", "digest": "digest:" if digest_value is None else f"digest: {digest_value}"}
    auth = hmac_header(sign("\n".join(lines[name] for name in signed.split())), headers=signed)
    headers = [("date", date), ("authorization", auth)]
    if digest_value is not None:
        headers.append(("digest", digest_value))
    return await call(port, "/request", headers, method="POST", body=body)


async def test_a_body_with_its_digest_passes_and_reaches_upstream_intact(nursery, gateway):
    """should pass with POST when body validation enabled and digest header present"""
    _, port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    reply = await body_post(port, BODY, digest(BODY))
    assert upstream(reply)["x-credential-identifier"] == "bob"
    assert reply.json()["body"] == BODY.decode()


async def test_the_digest_need_not_be_signed(nursery, gateway):
    """should pass with POST when body validation enabled but digest header not used"""
    _, port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    assert (await body_post(port, BODY, digest(BODY), signed="date")).status == 200


async def test_a_chunked_body_is_digested_whole(nursery, gateway):
    """(Under Kong's default 8k client_body_buffer_size: a longer body would be on disk there, and refused.)"""
    _, port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    date = now()
    auth = hmac_header(sign(f"date: {date}"), headers="date")
    pieces = [b"x" * 3000, b"y" * 3000, b"z"]
    reply = await call(port, "/request", [("date", date), ("authorization", auth),
                                          ("digest", digest(b"".join(pieces)))], method="POST", body=pieces)
    assert reply.status == 200
    assert reply.json()["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


@pytest.mark.parametrize(("body", "digest_value"), [
    (BODY, None),
    (b"abc", digest(BODY)),
    (BODY, digest(BODY) + "spoofed"),
    (BODY, digest(BODY).replace("SHA-256", "sha-256")),
    (BODY, digest(BODY).rstrip("=")),
    (BODY, f"{digest(BODY)}, SHA-512=x"),
    (BODY, EMPTY_BODY_DIGEST),
], ids=["digest-missing", "body-tampered", "digest-tampered", "lower-case-algorithm", "unpadded", "several-digests",
        "empty-body-digest"])
async def test_a_body_that_does_not_match_its_digest_is_401_does_not_match(nursery, gateway, body, digest_value):
    """should return 401 when body validation enabled and no digest header is present; should not pass with POST
    when body validation enabled and digest header missing / postBody is tampered / digest header is tampered"""
    _, port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    assert_401(await body_post(port, body, digest_value), MISMATCH)


async def test_no_body_needs_no_digest(nursery, gateway):
    """should return 200 when body validation enabled and no body and no digest header is present; should pass with
    GET when body validation enabled"""
    _, port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    assert (await signed_get(port)).status == 200
    assert (await body_post(port, b"", None, signed="date")).status == 200


async def test_no_body_with_the_empty_body_digest_passes(nursery, gateway):
    """should return 200 when body validation enabled and no body and an digest header is present"""
    _, port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    assert digest(b"") == EMPTY_BODY_DIGEST
    date = now()
    auth = hmac_header(sign(f"date: {date}\ndigest: {EMPTY_BODY_DIGEST}"), headers="date digest")
    reply = await call(port, "/request", [("date", date), ("digest", EMPTY_BODY_DIGEST), ("authorization", auth)])
    assert reply.status == 200


async def test_the_signature_is_checked_before_the_body(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    date = now()
    reply = await call(port, "/request", [("date", date), ("authorization", hmac_header(sign("x"), "date")),
                                          ("digest", digest(BODY))], method="POST", body=BODY)
    assert_401(reply, MISMATCH)
    reply = await call(port, "/request", [("date", date), ("authorization", "asd"), ("digest", "nope")],
                       method="POST", body=BODY)
    assert_401(reply, UNVERIFIED)


async def test_a_body_too_long_to_digest_is_401_does_not_match(nursery, gateway):
    """Kong's get_raw_body fails once nginx buffered the body to a file: more than BODY_LIMIT bytes left to read after
    those that came with the head (at most the rest of its 1k header buffer: ngx_http_request_body.c preread)."""
    _, port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    body = b"a" * (BODY_LIMIT + 1 + 1024)
    assert_401(await body_post(port, body, digest(body), signed="date"), MISMATCH)


async def test_without_validate_request_body_the_digest_is_not_looked_at(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway)
    assert (await body_post(port, BODY, "SHA-256=nope", signed="date")).status == 200


# --- anonymous ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("anonymous", ["no-body", ANON_ID], ids=["username", "id"])
@pytest.mark.parametrize("failure", [
    lambda: [],
    lambda: [("authorization", hmac_header(sign("x")))],
    lambda: [("date", now()), ("authorization", "asd")],
    lambda: [("date", now()), ("authorization", hmac_header(sign("x")))],
], ids=["no-credentials", "no-date", "unparsable", "wrong-signature"])
async def test_a_failed_authentication_with_anonymous_passes_as_the_anonymous_consumer(nursery, gateway, anonymous,
                                                                                      failure):
    """should pass with invalid credentials and anonymous; should pass with invalid credentials and username in
    anonymous"""
    _, port = await hmac_gateway(nursery, gateway, anonymous=anonymous)
    seen = upstream(await call(port, "/request", failure()))
    assert seen["x-anonymous-consumer"] == "true"
    assert (seen["x-consumer-username"], seen["x-consumer-id"]) == ("no-body", ANON_ID)
    assert "x-credential-identifier" not in seen


@pytest.mark.parametrize("anonymous", ["no-body", ANON_ID], ids=["username", "id"])
async def test_valid_credentials_with_anonymous_are_the_real_consumer(nursery, gateway, anonymous):
    """should pass with valid credentials and anonymous"""
    _, port = await hmac_gateway(nursery, gateway, anonymous=anonymous)
    date = now()
    auth = hmac_header(sign(f"date: {date}"), headers="date")
    seen = upstream(await call(port, "/request", [("date", date), ("authorization", auth)]))
    assert (seen["x-consumer-username"], seen["x-credential-identifier"]) == ("bob", "bob")
    assert seen["authorization"] == auth
    assert "x-anonymous-consumer" not in seen


async def test_a_body_that_fails_its_digest_with_anonymous_passes_as_the_anonymous_consumer(nursery, gateway):
    _, port = await hmac_gateway(nursery, gateway, anonymous="no-body", validate_request_body=True)
    reply = await body_post(port, b"tampered", digest(BODY))
    seen = upstream(reply)
    assert (seen["x-consumer-username"], seen["x-anonymous-consumer"]) == ("no-body", "true")
    assert reply.json()["body"] == "tampered"


# --- with key-auth on the same route --------------------------------------------------------------------------------


async def key_and_hmac_gateway(nursery, gateway, anonymous: str | None = None) -> int:  # noqa: ANN001
    config = {"anonymous": anonymous} if anonymous else {}
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth", "config": config},
                                           {"name": "hmac-auth", "config": config}]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    return port


def hmac_credentials() -> list[tuple[str, str]]:
    date = now()
    return [("date", date), ("authorization", hmac_header(sign(f"date: {date}"), headers="date"))]


async def test_logical_and_passes_with_both_credentials_as_the_hmac_consumer(nursery, gateway):
    """logical AND / passes with all credentials provided (hmac-auth runs last, so its consumer is the one set)"""
    port = await key_and_hmac_gateway(nursery, gateway)
    seen = upstream(await call(port, "/request", [("apikey", "alice-key"), *hmac_credentials()]))
    assert (seen["x-consumer-username"], seen["x-credential-identifier"]) == ("bob", "bob")


async def test_the_request_line_is_signed_as_sent_when_key_auth_hid_a_query_key(nursery, gateway):
    """kong.request.get_path_with_query() is $request_uri: key-auth's hide_credentials changes what goes upstream,
    not what the client signed."""
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth", "config": {"hide_credentials": True}},
                                           {"name": "hmac-auth"}]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nGET /request?apikey=alice-key&a=1 HTTP/1.1"))
    seen = upstream(await call(port, "/request?apikey=alice-key&a=1", [("date", date), ("authorization", auth)]))
    assert seen[":path"] == "/request?a=1"
    assert seen["x-credential-identifier"] == "bob"


async def test_logical_and_with_only_the_hmac_credentials_is_key_auths_401(nursery, gateway):
    """logical AND / fails 401, with only the second credential provided"""
    port = await key_and_hmac_gateway(nursery, gateway)
    assert_401(await call(port, "/request", hmac_credentials()), {"message": "No API key found in request"}, "Key")


async def test_logical_and_with_only_the_api_key_is_hmac_auths_401(nursery, gateway):
    """logical AND / fails 401, with only the first credential provided"""
    port = await key_and_hmac_gateway(nursery, gateway)
    assert_401(await call(port, "/request", [("apikey", "alice-key")]), UNAUTHORIZED, "hmac")


async def test_logical_and_with_no_credentials_is_key_auths_401(nursery, gateway):
    """logical AND / fails 401, with no credential provided"""
    port = await key_and_hmac_gateway(nursery, gateway)
    assert_401(await call(port, "/request"), {"message": "No API key found in request"}, "Key")


@pytest.mark.parametrize(("key", "signed", "expected"), [
    (True, True, "alice"),
    (True, False, "alice"),
    (False, True, "bob"),
    (False, False, "no-body"),
], ids=["both", "key-only", "hmac-only", "none"])
async def test_logical_or_takes_the_first_that_authenticates(nursery, gateway, key, signed, expected):
    """logical OR / passes with all credentials provided / only the first / only the second / no credential: a
    consumer key-auth authenticated makes hmac-auth step aside; key-auth's anonymous consumer does not"""
    port = await key_and_hmac_gateway(nursery, gateway, anonymous="no-body")
    headers = ([("apikey", "alice-key")] if key else []) + (hmac_credentials() if signed else [])
    seen = upstream(await call(port, "/request", headers))
    assert seen["x-consumer-username"] == expected
    assert ("x-anonymous-consumer" in seen) == (expected == "no-body")


# --- configuration --------------------------------------------------------------------------------------------------

SERVICE = "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(SERVICE + text, "t.yml"), "t.yml")
    return [m.removeprefix("t.yml: ") for m in info.value.messages]


def load(text: str) -> Any:
    config = parse_config(SERVICE + text, "t.yml")
    compile_config(config, "t.yml")
    return config


def test_credentials_load_nested_under_a_consumer_and_top_level():
    config = load("consumers: [{username: bob, hmacauth_credentials: [{username: nested, secret: s1}]}]\n"
                  "hmacauth_credentials: [{consumer: bob, username: top, secret: s2}]")
    directory = Directory(config)
    assert {name: (secret, who.username, who.credential_id is not None)
            for name, (secret, who) in directory.hmac.items()} == {"nested": ("s1", "bob", True),
                                                                    "top": ("s2", "bob", True)}
    assert {c.consumer for c in config.hmacauth_credentials} == {consumer_id("bob")}


@pytest.mark.parametrize(("text", "expected"), [
    ("consumers: [{username: a, hmacauth_credentials: [{username: u, secret: s}]}, "
     "{username: b, hmacauth_credentials: [{username: u, secret: t}]}]",
     "consumers[1].hmacauth_credentials[0].username: 'u' is already used by consumers[0].hmacauth_credentials[0]"),
    ("consumers: [{username: a, hmacauth_credentials: [{username: u, secret: s}]}]\n"
     "hmacauth_credentials: [{consumer: a, username: u, secret: t}]",
     "consumers[0].hmacauth_credentials[0].username: 'u' is already used by hmacauth_credentials[0]"),
    ("consumers: [{username: a, hmacauth_credentials: [{username: u, secret: ''}]}]",
     "consumers[0].hmacauth_credentials[0].secret: must not be empty"),
    ("consumers: [{username: a, hmacauth_credentials: [{username: '', secret: s}]}]",
     "consumers[0].hmacauth_credentials[0].username: must not be empty"),
    ("consumers: [{username: a, hmacauth_credentials: [{secret: s}]}]",
     "consumers[0].hmacauth_credentials[0].username: required field is missing"),
    ("consumers: [{username: a, hmacauth_credentials: [{username: u, secret: 123}]}]",
     "consumers[0].hmacauth_credentials[0].secret: expected a string (the value is not shown: it is a secret)"),
    ("hmacauth_credentials: [{username: u, secret: s}]",
     "hmacauth_credentials[0].consumer: name the consumer (its id or username), or nest the credential under it"),
    ("hmacauth_credentials: [{consumer: ghost, username: u, secret: s}]",
     "hmacauth_credentials[0].consumer: no consumer with id or username 'ghost'"),
], ids=["username-twice", "username-twice-nested-and-top-level", "empty-secret", "empty-username",
        "no-username", "secret-not-a-string", "no-consumer", "unknown-consumer"])
def test_credential_errors_name_the_field(text, expected):
    assert expected in errors(text)


def test_an_absent_secret_is_a_random_32_character_alphanumeric_one_never_shown():
    """02-api_spec: [SUCCESS] should create a hmac-auth credential with a random secret"""
    config = load("consumers: [{username: bob, hmacauth_credentials: [{username: u1}, {username: u2}]}]")
    secrets = [c.secret.value for c in config.hmacauth_credentials]
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", s) for s in secrets), secrets
    assert secrets[0] != secrets[1]
    assert not any(s in repr(config) for s in secrets)
    assert not any(s in repr(c) for c in config.hmacauth_credentials for s in secrets)


def test_an_empty_config_takes_kongs_defaults():
    """01-schema_spec: accepts empty config"""
    config = msgspec.convert({}, HmacAuthConfig)
    assert (config.hide_credentials, config.clock_skew, config.anonymous, config.validate_request_body,
            config.enforce_headers, config.realm) == (False, 300, None, False, [], None)
    assert config.algorithms == ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"]
    load("plugins: [{name: hmac-auth}]")


@pytest.mark.parametrize("skew", ["10", "0.5", "1.0e+10"])
def test_a_positive_clock_skew_is_accepted(skew):
    """01-schema_spec: accepts correct clock skew"""
    load(f"plugins: [{{name: hmac-auth, config: {{clock_skew: {skew}}}}}]")


@pytest.mark.parametrize("skew", ["0", "-1"])
def test_a_clock_skew_that_is_not_positive_is_refused(skew):
    """01-schema_spec: errors with negative clock skew"""
    assert errors(f"plugins: [{{name: hmac-auth, config: {{clock_skew: {skew}}}}}]") == [
        f"plugins[0].config.clock_skew: expected number > 0, got {skew}"]


def test_an_unknown_algorithm_is_refused_listing_the_four():
    """01-schema_spec: errors with wrong algorithm"""
    assert errors("plugins: [{name: hmac-auth, config: {algorithms: [sha1024]}}]") == [
        'plugins[0].config.algorithms[0]: expected one of "hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512", '
        'got "sha1024"']


def test_hmac_auth_cannot_be_configured_on_a_consumer():
    """schema.lua: consumer = typedefs.no_consumer"""
    assert errors("consumers: [{username: bob, plugins: [{name: hmac-auth}]}]") == [
        "consumers[0].plugins[0].consumer: the hmac-auth plugin cannot be configured for a consumer (as in Kong, it "
        "applies to whoever the request is)"]


def test_an_anonymous_consumer_that_does_not_exist_is_refused():
    """errors when anonymous user doesn't exist (Kong answers 500 at request time; here the config is refused)"""
    assert errors("consumers: [{username: bob}]\nplugins: [{name: hmac-auth, config: {anonymous: ghost}}]") == [
        "plugins[0].config.anonymous: no consumer with id or username 'ghost' (Kong answers every request it would "
        "admit anonymously with 500)"]


def test_a_realm_with_control_characters_is_refused():
    """The realm goes into WWW-Authenticate unescaped: no header injection through it."""
    assert errors('plugins: [{name: hmac-auth, config: {realm: "a\\r\\nX-Injected: 1"}}]') == [
        'plugins[0].config.realm: expected non-empty text without control characters, got "a\\r\\nX-Injected: 1"']


@pytest.mark.parametrize(("field", "value", "message"), [
    ("realm", "''", 'plugins[0].config.realm: length must be at least 1'),
    ("enforce_headers", "['']", 'plugins[0].config.enforce_headers[0]: length must be at least 1'),
])
def test_empty_text_is_refused_as_kong_refuses_it(field, value, message):
    """Kong's schema strings are at least one character long."""
    assert errors(f"plugins: [{{name: hmac-auth, config: {{{field}: {value}}}}}]") == [message]
