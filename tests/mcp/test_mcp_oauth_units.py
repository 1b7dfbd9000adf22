"""The resource server's pieces without I/O: bearer parsing, token checks, the JWKS cache's schedule, the metadata
paths and challenges, and the ai-mcp-oauth2 config's refusals."""

from __future__ import annotations

import base64
import json
import time

import pytest
import yaml
from oauth_helpers import AS_URL, jwk, token

from gateway.config import ConfigError, parse_config
from gateway.mcp import bearer as b
from gateway.mcp.jwks import BACKOFF_S, REFETCH_MIN_S, JwksCache, parse_jwks
from gateway.runtime import compile_config

RESOURCE = "https://mcp.example.com/mcp"
RULES = b.TokenRules(RESOURCE, [AS_URL], 0)


def keyset(*kids: str):  # noqa: ANN201
    return parse_jwks(json.dumps({"keys": [jwk(k) for k in kids]}).encode())


@pytest.mark.parametrize(("value", "found"), [
    (b"Bearer abc.def.ghi", b"abc.def.ghi"), (b"bearer  abc", b"abc"), (b"BEARER a-b_c~+/==", b"a-b_c~+/=="),
    (b"Basic abc", None), (b"Bearer", None), (b"Bearer a b", None), (b"Bearer a\x00b", None), (None, None)])
def test_bearer_token_is_rfc_6750s_header_form(value, found):
    assert b.bearer_token(value) == found


def test_a_good_token_verifies_with_its_key():
    claims = b.verify(token(RESOURCE).encode(), keyset("k1"), RULES, time.time())
    assert claims["sub"] == "user-1"


def test_an_unknown_kid_is_reported_as_such_so_the_keys_can_be_refetched():
    with pytest.raises(b.TokenError) as e:
        b.verify(token(RESOURCE, kid="k9").encode(), keyset("k1"), RULES, time.time())
    assert e.value.description == b.UNKNOWN_KID


def test_a_token_without_kid_is_tried_against_every_key():
    import jwt

    claims = {"iss": AS_URL, "aud": RESOURCE, "exp": time.time() + 60}
    from oauth_helpers import signing_key
    tok = jwt.encode(claims, signing_key("k2"), algorithm="RS256")
    assert b.verify(tok.encode(), keyset("k1", "k2"), RULES, time.time())["iss"] == AS_URL


@pytest.mark.parametrize("aud", [RESOURCE, [RESOURCE, "other"], RESOURCE + "/"])
def test_the_audience_may_be_a_list_or_differ_by_a_trailing_slash(aud):
    b.verify(token(RESOURCE, aud=aud).encode(), keyset("k1"), RULES, time.time())


def test_the_issuer_must_be_an_authorization_server():
    rules = b.TokenRules(RESOURCE, ["https://as.example.com/"], 0)
    with pytest.raises(b.TokenError, match="not issued"):
        b.check_claims({"exp": time.time() + 9, "iss": "https://as.example.com.evil", "aud": RESOURCE}, rules, 0)
    b.check_claims({"exp": time.time() + 9, "iss": "https://as.example.com", "aud": RESOURCE}, rules, time.time())


def test_jwks_parsing_keeps_signing_keys_only():
    doc = {"keys": [jwk("sig"), jwk("enc", use="enc"), {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"},
                    {"kty": "RSA", "kid": "broken", "n": "x", "e": "AQAB"}, "junk", {**jwk("wrongalg"), "alg": "ES256"},
                    jwk("verify-only", key_ops=["encrypt"])]}
    keys = parse_jwks(json.dumps(doc).encode())
    assert [k.kid for k in keys.keys] == ["sig"]


def _part(value: object) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")


@pytest.mark.parametrize("alg", [["RS256"], {"RS256": True}])
def test_a_token_whose_alg_is_no_string_is_an_invalid_token(alg):
    """A JSON array or object as `alg` (unhashable) was a TypeError: 500 and a traceback for any client, where Kong's
    jwt parser says "invalid alg" (401)."""
    forged = _part({"alg": alg, "typ": "JWT", "kid": "k1"}) + b"." + _part({"iss": AS_URL, "aud": RESOURCE}) + b".c2ln"
    with pytest.raises(b.TokenError, match="not accepted"):
        b.verify(forged, keyset("k1"), RULES, 0)


@pytest.mark.parametrize("crv", [["P-256"], {"name": "P-256"}])
def test_a_key_whose_curve_is_no_string_is_skipped_and_the_others_kept(crv):
    """RFC 7517 section 5: a key out of range is ignored; it threw the whole document away (every token 503 at
    start-up, a rotated-in key never taken up)."""
    odd = {"kty": "EC", "crv": crv, "x": "AAAA", "y": "AAAA", "kid": "odd", "use": "sig"}
    assert [k.kid for k in parse_jwks(json.dumps({"keys": [odd, jwk("k1")]}).encode()).keys] == ["k1"]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"keys": 3}',
                                  b'{"keys": ' + b"[" * 30000 + b"]" * 30000 + b"}"])  # (Python's parser recursed)
def test_a_document_that_is_not_a_jwks_is_an_error(body):
    with pytest.raises(ValueError):
        parse_jwks(body)


def test_the_cache_is_due_at_once_then_every_ttl():
    cache = JwksCache(ttl=600)
    assert cache.due_at() < 0
    cache.attempt(100.0)
    cache.loaded(keyset("k1"), 100.0)
    assert cache.due_at() == 700.0


def test_failures_back_off_but_never_past_the_ttl_when_keys_are_held():
    cache = JwksCache(ttl=20)
    cache.attempt(0.0)
    cache.failed()
    assert cache.due_at() == BACKOFF_S[0]  # no keys yet: retry soon
    for _ in range(10):
        cache.failed()
    assert cache.due_at() == BACKOFF_S[-1]
    cache.loaded(keyset("k1"), 100.0)
    cache.attempt(200.0)
    for _ in range(10):
        cache.failed()
    assert cache.due_at() == 220.0  # with keys held, a failing refresh retries every ttl at least


def test_an_unknown_kid_may_refetch_once_per_interval():
    cache = JwksCache(ttl=600)
    cache.attempt(10.0)
    assert not cache.may_refetch(10.0 + REFETCH_MIN_S / 2)
    assert cache.may_refetch(10.0 + REFETCH_MIN_S)


@pytest.mark.parametrize(("resource", "endpoint", "url", "paths"), [
    ("https://h/mcp", None, "https://h/.well-known/oauth-protected-resource/mcp",
     ["/.well-known/oauth-protected-resource/mcp", "/mcp/.well-known/oauth-protected-resource"]),
    ("https://h:8443/", None, "https://h:8443/.well-known/oauth-protected-resource",
     ["/.well-known/oauth-protected-resource"]),
    # RFC 9728 3.1: a path's final slash is kept; the form without it (the TypeScript SDK's) and Kong's beside it
    ("https://h/mcp/", None, "https://h/.well-known/oauth-protected-resource/mcp/",
     ["/.well-known/oauth-protected-resource/mcp/", "/.well-known/oauth-protected-resource/mcp",
      "/mcp/.well-known/oauth-protected-resource"]),
    ("https://h/mcp", "/meta", "https://h/meta", ["/meta"]),
    ("https://h/mcp", "https://other/x/meta", "https://other/x/meta", ["/x/meta"]),
])
def test_metadata_paths(resource, endpoint, url, paths):
    assert b.metadata_paths(resource, endpoint) == (url, paths)


def test_a_challenge_quotes_and_cleans_its_parameters():
    value = b.challenge("https://h/m", "invalid_token", 'bad "x"\r\n', "a b")
    assert value == ('Bearer resource_metadata="https://h/m", error="invalid_token", '
                     'error_description="bad ?x???", scope="a b"')


def compile_doc(config: dict) -> None:
    doc = {"_format_version": "3.0", "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [
        {"name": "r", "paths": ["/mcp"]}]}],
        "plugins": [{"name": "ai-mcp-oauth2", "config": config}]}
    compile_config(parse_config(yaml.safe_dump(doc), "t.yml"), "t.yml")


BASE = {"resource": RESOURCE, "authorization_servers": [AS_URL], "jwks_endpoint": "http://127.0.0.1:9/jwks"}


@pytest.mark.parametrize(("change", "message"), [
    ({"jwks_endpoint": None}, "config.jwks_endpoint: required"),
    ({"resource": "mcp.example.com/mcp"}, "config.resource: expected an absolute"),
    ({"resource": RESOURCE + "#x"}, "config.resource: a resource URI has no fragment"),
    ({"authorization_servers": []}, "authorization_servers"),
    ({"metadata_endpoint": "meta"}, "config.metadata_endpoint: expected a path"),
    ({"introspection_endpoint": "https://as/introspect"}, "config.introspection_endpoint is not supported"),
    ({"scopes_supported": ["a b"]}, "config.scopes_supported[0]"),
    ({"claim_to_header": [{"claim": "sub", "header": "X-Sub"}],
      "upstream_headers": [{"header": "X-Sub", "path": ["sub"]}]}, "set only one of them"),
])
def test_config_errors_name_the_field(change, message):
    config = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        compile_doc(config)
    assert message in str(e.value), str(e.value)
