"""How jwt and hmac-auth find a request header whose name is spelled with "_" for "-", as Kong finds it (Kong runs
nginx with underscores_in_headers on), and how much body hmac-auth's validate_request_body reads (Kong's
get_raw_body: what nginx keeps in memory)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import formatdate

from auth_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    jwt_secret,
    make_token,
    message,
    start,
    upstream,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policies.header_list import request_header
from gateway.policies.hmac_auth.headers import HeaderName, RequestHeaders

HMAC_CONSUMERS = [{"username": "bob", "hmacauth_credentials": [{"username": "bob", "secret": "secret"}]}]
MISMATCH = {"message": "HMAC signature does not match"}


def now() -> str:
    return formatdate(time.time(), usegmt=True)


def sign(signing_string: str) -> str:
    return base64.b64encode(hmac.new(b"secret", signing_string.encode(), hashlib.sha1).digest()).decode()


def hmac_header(signature: str, headers: str) -> str:
    return f'hmac username="bob", algorithm="hmac-sha1", headers="{headers}", signature="{signature}"'


def digest(body: bytes) -> str:
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


async def jwt_gateway(nursery, gateway, header_names: list[str]) -> int:  # noqa: ANN001
    routes = [{"paths": ["/"], "plugins": [{"name": "jwt", "config": {"header_names": header_names}}]}]
    _, port = await start(nursery, gateway, routes, consumers=[{"username": "jo", "jwt_secrets": [jwt_secret("jo")]}])
    return port


async def hmac_gateway(nursery, gateway, **config) -> int:  # noqa: ANN001,ANN003
    routes = [{"paths": ["/"], "plugins": [{"name": "hmac-auth", "config": config}]}]
    _, port = await start(nursery, gateway, routes, consumers=HMAC_CONSUMERS)
    return port


# --- jwt: header_names ----------------------------------------------------------------------------------------------


async def test_jwt_header_name_with_an_underscore_reads_the_header_spelled_so(nursery, gateway):
    """kong/plugins/jwt/handler.lua:55-57 `local request_headers = kong.request.get_headers()` ... `local
    token_header = request_headers[v]`: get_headers()' table is keyed by the lower-cased names as sent, so
    header_names ["x_token"] finds a line `x_token`."""
    port = await jwt_gateway(nursery, gateway, ["x_token"])
    reply = await call(port, headers=[("x_token", f"Bearer {make_token('jo')}")])
    assert upstream(reply)["x-consumer-username"] == "jo"


async def test_jwt_header_name_with_an_underscore_falls_back_to_the_hyphenated_header(nursery, gateway):
    """kong/plugins/jwt/handler.lua:57: a miss in get_headers()' table is looked up again by its metatable's
    __index, lower-cased with "_" as "-" (lua-resty-core's ngx.req.get_headers): "x_token" finds `x-token`."""
    port = await jwt_gateway(nursery, gateway, ["x_token"])
    reply = await call(port, headers=[("x-token", f"Bearer {make_token('jo')}")])
    assert upstream(reply)["x-consumer-username"] == "jo"


async def test_jwt_header_name_with_an_underscore_ignores_the_hyphenated_header_when_both_are_sent(nursery, gateway):
    """kong/plugins/jwt/handler.lua:57: the normalized name is tried only on a miss, so with a line `x_token` the
    `x-token` line is not read (its token is not a second one: no "Multiple tokens provided")."""
    port = await jwt_gateway(nursery, gateway, ["x_token"])
    reply = await call(port, headers=[("x_token", f"Bearer {make_token('jo')}"), ("x-token", "Bearer not.a.token")])
    assert upstream(reply)["x-consumer-username"] == "jo"


# --- hmac-auth: kong.request.get_header -----------------------------------------------------------------------------


async def test_hmac_x_date_sent_with_an_underscore_is_the_x_date(nursery, gateway):
    """kong/plugins/hmac-auth/access.lua:203 `local date = kong_request.get_header(date_header_name)`: get_header
    reads ngx.var["http_x_date"] (kong/tools/http.lua:561), which nginx's ngx_http_variable_unknown_header
    (src/http/ngx_http_variables.c) matches to a line `x_date` as well as `x-date`; a value without ", " (an asctime
    date) is the answer."""
    port = await hmac_gateway(nursery, gateway)
    date = time.asctime(time.gmtime())
    auth = hmac_header(sign(f"x-date: {date}"), "x-date")
    reply = await call(port, headers=[("x_date", date), ("authorization", auth)])
    assert upstream(reply)["x-consumer-username"] == "bob"


async def test_hmac_signed_header_sent_with_an_underscore_is_in_the_signing_string(nursery, gateway):
    """kong/plugins/hmac-auth/access.lua:137 `local header_value = kong.request.get_header(header)`: a line
    `x_custom` answers for a signed `x-custom` (ngx.var["http_x_custom"]), so its value is signed (access.lua:157): a
    signature made without the header does not verify a request that carries `x_custom`."""
    port = await hmac_gateway(nursery, gateway)
    date = now()
    auth = hmac_header(sign(f"date: {date}\nx-custom:"), "date x-custom")
    reply = await call(port, headers=[("date", date), ("x_custom", "injected"), ("authorization", auth)])
    assert (reply.status, message(reply)) == (401, MISMATCH)


async def test_hmac_proxy_authorization_spelled_with_an_underscore_is_read_without_a_comma_space(nursery, gateway):
    """kong/plugins/hmac-auth/access.lua:285 `kong_request.get_header(PROXY_AUTHORIZATION)`: ngx.var
    ["http_proxy_authorization"] matches a line `proxy_authorization`, and a value without ", " is the answer
    (kong/tools/http.lua:561-563); Kong's pattern needs no space after a field's comma."""
    port = await hmac_gateway(nursery, gateway)
    date = now()
    credentials = hmac_header(sign(f"date: {date}"), "date").replace(", ", ",")
    reply = await call(port, headers=[("date", date), ("proxy_authorization", credentials)])
    assert upstream(reply)["x-consumer-username"] == "bob"


async def test_hmac_proxy_authorization_spelled_with_an_underscore_is_not_read_with_a_comma_space(nursery, gateway):
    """kong/tools/http.lua:561-570: a value holding ", " is read again as get_headers()["proxy-authorization"], and
    that table holds the line under `proxy_authorization` (its __index only ever looks for the hyphenated name): no
    credentials, 401 "Unauthorized" (kong/plugins/hmac-auth/access.lua:289-291)."""
    port = await hmac_gateway(nursery, gateway)
    date = now()
    reply = await call(port, headers=[("date", date), ("proxy_authorization", hmac_header(sign(f"date: {date}"),
                                                                                          "date"))])
    assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})


# --- hmac-auth: validate_request_body -------------------------------------------------------------------------------


async def body_post(port: int, body: bytes | list[bytes]) -> tuple[int, object]:
    """A POST of `body` (a list: chunked) whose signed Digest is the body's."""
    whole = body if isinstance(body, bytes) else b"".join(body)
    date = now()
    auth = hmac_header(sign(f"date: {date}\ndigest: {digest(whole)}"), "date digest")
    reply = await call(port, "/", method="POST", body=body,  # type: ignore[arg-type]
                       headers=[("date", date), ("digest", digest(whole)), ("authorization", auth)])
    return reply.status, message(reply) if reply.status != 200 else upstream(reply)["x-consumer-username"]


async def test_hmac_body_digest_past_kongs_body_buffer_fails(nursery, gateway):
    """kong/plugins/hmac-auth/access.lua:223-226 `local body, err = kong_request.get_raw_body()` ... `return false`:
    get_raw_body() without a size (kong/pdk/request.lua:726-727) fails for a body nginx wrote to a file, one past
    client_body_buffer_size (kong/templates/kong_defaults.lua:117, 8k)."""
    port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    assert await body_post(port, b"x" * 64 * 1024) == (401, MISMATCH)


async def test_hmac_body_digest_of_a_9_kib_body_with_a_content_length_is_checked(nursery, gateway):
    """nginx's ngx_http_read_client_request_body (src/http/ngx_http_request_body.c) sizes its one buffer to a body
    with a Content-Length when what is left to read is under client_body_buffer_size and a quarter: such a body
    stays in memory, and get_raw_body() reads it."""
    port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    assert await body_post(port, b"x" * 9 * 1024) == (200, "bob")


async def test_hmac_body_digest_of_a_9_kib_chunked_body_fails(nursery, gateway):
    """ngx_http_read_client_request_body: a chunked body gets a client_body_buffer_size (8k) buffer; a longer one is
    written to a file, where get_raw_body() does not read it (kong/pdk/request.lua:726-727)."""
    port = await hmac_gateway(nursery, gateway, validate_request_body=True)
    assert await body_post(port, [b"x" * 1024] * 9) == (401, MISMATCH)


# --- hmac-auth's one-pass lookup ------------------------------------------------------------------------------------

NAMES = [b"x-date", b"x_date", b"date", b"X-Date", b"X_Date", b"user-agent", b"user_agent", b"cookie", b"host",
         b"authorization", b"proxy-authorization", b"proxy_authorization"]
VALUES = [b"v", b"", b"a, b", b"Sun, 06 Nov 1994 08:49:37 GMT", b"a,b"]
header_lists = st.lists(st.tuples(st.sampled_from([n for n in NAMES if n == n.lower()]), st.sampled_from(VALUES)),
                        max_size=6).flatmap(lambda lines: st.tuples(st.just(lines), st.integers(0, 100)))


@settings(max_examples=300, deadline=None, database=None)
@given(drawn=header_lists, name=st.sampled_from(NAMES), cleared=st.sampled_from([None, *NAMES[-3:]]))
def test_hmac_reads_each_header_as_kong_request_get_header_does(drawn, name, cleared):
    """kong/tools/http.lua:551-571 get_header, as gateway.policies.header_list.request_header reads it line by line
    (before and after kong.service.request.clear_header): RequestHeaders answers the same from one pass, with lines
    pushed past get_headers()' first 100 by `padding` unrelated ones before them."""
    lines, padding = drawn
    headers = [(b"x-pad-%d" % i, b"p") for i in range(padding)] + lines
    view = RequestHeaders(headers)
    if cleared is not None:
        view.forget(cleared)
        headers = [hv for hv in headers if hv[0] != cleared]
    assert view.get(HeaderName(name)) == request_header(headers, name)
