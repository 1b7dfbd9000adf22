"""Kong's plugin unit specs, ported to the gateway's modules: the jwt parser (spec/03-plugins/16-jwt/
01-jwt_parser_spec.lua), basic-auth's password hash (spec/03-plugins/10-basic-auth/01-crypto_spec.lua),
response-transformer's JSON body (spec/03-plugins/15-response-transformer/02-body_transformer_spec.lua) and OTLP
span encoding (spec/03-plugins/37-opentelemetry/01-otlp_spec.lua, decoded with opentelemetry-proto).

Each test names the Kong case it ports. Kong's jwt_parser.encode is a test helper the gateway has no counterpart for:
`kong_encode` below does what it does (header and claims as JSON, base64url, signed by the named algorithm whatever
the header says), with PyJWT's algorithm objects. A token is checked as the jwt plugin checks it (Jwt.authenticate),
so it carries the key claim `iss` that the plugin needs and the parser spec leaves out."""

from __future__ import annotations

import base64
import functools
import json
import time
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.config import parse_config
from gateway.config.consumers import KongPasswordHash
from gateway.jwtlib import algorithms
from gateway.policies.basic_auth.handler import decode_basic
from gateway.policies.consumers import Directory, Identity, Rejection
from gateway.policies.jwt.handler import Jwt
from gateway.policies.jwt.schema import JwtConfig
from gateway.policies.jwt.token import Token, decode_token
from gateway.policies.response_transformer.handler import ResponseTransformer
from gateway.policies.response_transformer.schema import ResponseTransformerConfig
from gateway.telemetry import otlp
from gateway.telemetry.tracing import SpanRecord

# --- jwt: spec/03-plugins/16-jwt/01-jwt_parser_spec.lua --------------------------------------------------------------

SECRET = "secret"
ASYMMETRIC = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"]
# Kong's fixtures: a key of each name; the keys a token of each algorithm must not verify with (the spec's choice)
FIXTURE_OF = {"RS256": "rs256", "RS384": "rs384", "RS512": "rs512", "ES256": "es256", "ES384": "es384",
              "ES512": "es512", "PS256": "rs256", "PS384": "rs384", "PS512": "rs512"}
WRONG_KEY = {"RS256": "rs384", "RS384": "rs512", "RS512": "rs256", "ES256": "rs256", "ES384": "rs256",
             "ES512": "rs256", "PS256": "es256", "PS384": "es256", "PS512": "es256"}
LOOPS = 500  # as Kong loops for ES* and PS*: the signatures whose r or s starts with a zero byte


@functools.cache
def fixture(name: str) -> tuple[str, str]:
    """(private PEM, public PEM) of one of Kong's fixture keys (made once a run: RSA 2048, as Kong's PS* wants)."""
    private: Any
    if name.startswith("rs"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif name.startswith("es"):
        private = ec.generate_private_key({"es256": ec.SECP256R1, "es384": ec.SECP384R1,
                                           "es512": ec.SECP521R1}[name]())
    else:
        private = {"ed25519": ed25519.Ed25519PrivateKey, "ed448": ed448.Ed448PrivateKey}[name].generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private_pem, public_pem


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def kong_encode(claims: dict[str, Any], key: str, alg: str = "HS256", header: dict[str, Any] | None = None) -> bytes:
    """jwt_parser.encode: `header` (default {typ: JWT, alg}) and `claims` as JSON, base64url, signed with `alg`."""
    signing_input = b64url(json.dumps(header or {"typ": "JWT", "alg": alg}).encode()) + b"." + \
        b64url(json.dumps(claims).encode())
    return signing_input + b"." + b64url(algorithms()[alg].sign(signing_input, signing_key(alg, key)))


@functools.cache
def signing_key(alg: str, key: str) -> Any:
    """The key as `alg` signs with it (read once: loading an RSA private key checks it, some 30 ms)."""
    return algorithms()[alg].prepare_key(key)


def jwt_plugin(alg: str, key: str, claims_to_verify: list[str] | None = None) -> Jwt:
    """The jwt plugin with one consumer, whose secret `iss` names: `alg` with `key` (the secret, or a public PEM)."""
    secret: dict[str, Any] = {"key": "iss", "algorithm": alg}
    secret["secret" if alg.startswith("HS") else "rsa_public_key"] = key
    doc = {"consumers": [{"username": "c", "jwt_secrets": [secret]}]}
    directory = Directory(parse_config(json.dumps(doc), "kong.yml"))
    return Jwt(JwtConfig(claims_to_verify=claims_to_verify), directory)  # type: ignore[arg-type]


def checked(plugin: Jwt, token: bytes) -> Any:
    """"ok" when the plugin admits the token, else the body of its 401."""
    ex = SimpleNamespace(request=SimpleNamespace(headers=[(b"authorization", b"Bearer " + token)], target=b"/"))
    result = plugin.authenticate(ex)  # type: ignore[arg-type]
    if isinstance(result, Identity):
        return "ok"
    assert isinstance(result, Rejection) and result.status == 401 and result.body is not None
    return json.loads(result.body)


INVALID_SIGNATURE = {"message": "Invalid signature"}


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_jwt_a_token_encoded_with_an_hmac_algorithm_verifies_with_its_secret(alg):
    """Encoding: "should properly encode using HS256" (HS384, HS512)."""
    token = kong_encode({"sub": "1234567890", "name": "John Doe", "admin": True, "iss": "iss"}, SECRET, alg)
    assert checked(jwt_plugin(alg, SECRET), token) == "ok"


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_jwt_a_token_encoded_with_a_private_key_verifies_with_its_public_key(alg):
    """Encoding: "should properly encode using RS256" (RS384, RS512, ES256, ES384, ES512, PS256, PS384, PS512)."""
    private, public = fixture(FIXTURE_OF[alg])
    token = kong_encode({"sub": "5656565656", "name": "Jane Doe", "admin": True, "iss": "iss"}, private, alg)
    assert checked(jwt_plugin(alg, public), token) == "ok"


@pytest.mark.parametrize("curve", ["ed25519", "ed448"])
def test_jwt_an_eddsa_token_verifies_with_its_public_key_of_either_curve(curve):
    """Encoding: "should encode using EdDSA with Ed25519 key" and "... with Ed448 key"."""
    private, public = fixture(curve)
    token = kong_encode({"sub": "5656565656", "name": "Jane Doe", "admin": True, "iss": "iss"}, private, "EdDSA")
    assert checked(jwt_plugin("EdDSA", public), token) == "ok"


def test_jwt_an_unknown_alg_is_refused():
    """Decoding: "refuses invalid alg"."""
    token = kong_encode({"sub": "1234"}, SECRET, header={"typ": "JWT", "alg": "foo"})
    assert decode_token(token) == "invalid alg"


@pytest.mark.parametrize("header", [{"typ": "JWT", "alg": "RS256"}, {"typ": "jwt", "alg": "RS256"}, {"alg": "RS256"}],
                         ids=["typ", "lowercase-typ", "no-typ"])
def test_jwt_a_known_alg_decodes_whatever_typ_says_and_whatever_signed_it(header):
    """Decoding: "accepts a valid encoding request" ("... with lowercase TYP", "... with missing TYP"): the header
    names RS256, an HMAC signed it; decoding looks at neither typ nor the signature."""
    decoded = decode_token(kong_encode({"sub": "1234"}, SECRET, header=header))
    assert isinstance(decoded, Token)
    assert (decoded.header, decoded.claims) == (header, {"sub": "1234"})


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_jwt_an_hmac_signature_verifies_with_its_secret_and_no_other(alg):
    """verify signature: "using HS256" (HS384, HS512)."""
    token = kong_encode({"sub": "foo", "iss": "iss"}, SECRET, alg)
    assert checked(jwt_plugin(alg, SECRET), token) == "ok"
    assert checked(jwt_plugin(alg, "invalid"), token) == INVALID_SIGNATURE


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
def test_jwt_an_rsa_signature_verifies_with_its_public_key_and_not_another_rsa_key(alg):
    """verify signature: "using RS256" (RS384, RS512): false with another RSA key."""
    private, public = fixture(FIXTURE_OF[alg])
    token = kong_encode({"sub": "foo", "iss": "iss"}, private, alg)
    assert checked(jwt_plugin(alg, public), token) == "ok"
    assert checked(jwt_plugin(alg, fixture(WRONG_KEY[alg])[1]), token) == INVALID_SIGNATURE


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "PS256", "PS384", "PS512"])
def test_jwt_every_new_ecdsa_and_pss_signature_verifies_with_its_public_key(alg):
    """verify signature: "using ES256" (ES384, ES512, PS256, PS384, PS512), its loop: each signature is new (random)
    and verifies, whatever its bytes."""
    private, public = fixture(FIXTURE_OF[alg])
    plugin = jwt_plugin(alg, public)
    for i in range(LOOPS):
        assert checked(plugin, kong_encode({"sub": "foo", "iss": "iss", "i": i}, private, alg)) == "ok"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "PS256", "PS384", "PS512"])
def test_jwt_an_ecdsa_or_pss_token_checked_with_a_key_of_another_family_is_an_invalid_signature(alg):
    """verify signature: "using ES256" (...), false with Kong's RS256 key for ES*, its ES256 key for PS*: OpenSSL
    reads the key, Kong's pkey:verify is false, so the plugin answers "Invalid signature" (not "Invalid
    key/secret", which is for a credential without a key)."""
    token = kong_encode({"sub": "foo", "iss": "iss"}, fixture(FIXTURE_OF[alg])[0], alg)
    assert checked(jwt_plugin(alg, fixture(WRONG_KEY[alg])[1]), token) == INVALID_SIGNATURE


def test_jwt_claims_to_verify_must_be_present():
    """verify registered claims: "requires claims passed as arguments"."""
    token = kong_encode({"sub": "foo", "iss": "iss"}, SECRET)
    assert checked(jwt_plugin("HS256", SECRET, ["exp", "nbf"]), token) == \
        {"exp": "must be a number", "nbf": "must be a number"}
    assert checked(jwt_plugin("HS256", SECRET, ["nbf"]), token) == {"nbf": "must be a number"}


def test_jwt_claims_to_verify_must_be_numbers():
    """verify registered claims: "checks the type of given registered claims"."""
    token = kong_encode({"exp": "bar", "nbf": "foo", "iss": "iss"}, SECRET)
    assert checked(jwt_plugin("HS256", SECRET, ["exp", "nbf"]), token) == \
        {"exp": "must be a number", "nbf": "must be a number"}


def test_jwt_an_exp_in_the_past_is_token_expired():
    """verify registered claims: "checks the exp claim"."""
    token = kong_encode({"exp": int(time.time()) - 10, "iss": "iss"}, SECRET)
    assert checked(jwt_plugin("HS256", SECRET, ["exp"]), token) == {"exp": "token expired"}


def test_jwt_an_nbf_in_the_future_is_token_not_valid_yet():
    """verify registered claims: "checks the nbf claim"."""
    token = kong_encode({"nbf": int(time.time()) + 10, "iss": "iss"}, SECRET)
    assert checked(jwt_plugin("HS256", SECRET, ["nbf"]), token) == {"nbf": "token not valid yet"}


# --- basic-auth: spec/03-plugins/10-basic-auth/01-crypto_spec.lua ----------------------------------------------------

# Kong's crypto.hash("id123", "pass123") and crypto.hash("id123") (= hash("id123", "")): the hex SHA-1 of the
# password followed by the consumer id, as written in a `kong config db_export` file (_transform: false)
HASH_PASS123_ID123 = "fc4f9b44781125d2ebd9c08e402d78501c59535b"
HASH_NO_PASSWORD_ID123 = "3e4f2f5a1a753783a2c859b649771428fc75d898"


def test_basic_auth_a_stored_hash_checks_the_password_salted_with_its_consumer_id():
    """"hashs a credential with consumer_id salt": 40 hex digits, the same for the same password and consumer, so
    the stored hash checks that password for that consumer only."""
    stored = KongPasswordHash(HASH_PASS123_ID123)
    assert len(HASH_PASS123_ID123) == 40
    assert stored.bound("id123").matches(b"pass123")
    assert not stored.bound("id124").matches(b"pass123")
    assert not stored.bound("id123").matches(b"pass12")


def test_basic_auth_the_hash_of_no_password_is_the_hash_of_the_empty_password():
    """"substitutes empty string for password equal to nil": a request's empty password (`user:`) matches it."""
    username, password = decode_basic(b"Basic " + base64.b64encode(b"user:"))  # type: ignore[misc]
    assert (username, password) == (b"user", b"")
    assert KongPasswordHash(HASH_NO_PASSWORD_ID123).bound("id123").matches(password)


# --- response-transformer: spec/03-plugins/15-response-transformer/02-body_transformer_spec.lua -----------------------


def transformer(**config: Any) -> ResponseTransformer:
    return ResponseTransformer(msgspec.convert(config, ResponseTransformerConfig))


def transformed(rt: ResponseTransformer, body: bytes) -> bytes:
    """body_transformer.transform_json_body(conf, body), through the plugin's body filter."""
    return rt.body_filter(None, 200, [(b"content-type", b"application/json")], body)  # type: ignore[arg-type]


ADD = transformer(add={"json": ["p1:v1", "p3:value:3", 'p4:"v1"', "p5:-1", "p6:false", "p7:true"],
                       "json_types": ["string", "string", "string", "number", "boolean", "boolean"]})
ADDED = {"p1": "v1", "p3": "value:3", "p4": '"v1"', "p5": -1, "p6": False, "p7": True}


def test_response_transformer_add_sets_absent_keys_with_their_json_types():
    """add: "parameter" (also "add value in double quotes": the same case)."""
    assert json.loads(transformed(ADD, b'{"p2":"v1"}')) == {**ADDED, "p2": "v1"}


@pytest.mark.parametrize("value", [-1, False], ids=["number", "boolean"])
def test_response_transformer_add_keeps_a_present_number_or_boolean(value):
    """add: "number", "boolean"."""
    body = json.dumps({"p2": value}).encode()
    assert json.loads(transformed(ADD, body)) == {**ADDED, "p2": value}


def test_response_transformer_add_preserves_empty_arrays():
    """add: "preserves empty arrays" (an empty array is written back as [], not {})."""
    body = transformed(ADD, b'{"p2":"v1", "a":[]}')
    assert json.loads(body) == {**ADDED, "p2": "v1", "a": []}
    assert b'"a":[]' in body


APPEND = transformer(append={"json": ["p1:v1", 'p3:"v1"', "p4:-1", "p5:false", "p6:true"],
                             "json_types": ["string", "string", "number", "boolean", "boolean"]})
APPENDED = {"p1": ["v1"], "p3": ['"v1"'], "p4": [-1], "p5": [False], "p6": [True]}


def test_response_transformer_append_makes_a_list_of_an_absent_key():
    """append: "new key:value if key does not exists"."""
    assert json.loads(transformed(APPEND, b'{"p2":"v1"}')) == {**APPENDED, "p2": "v1"}


@pytest.mark.parametrize(("body", "changed"), [
    (b'{"p1":"v2"}', {"p1": ["v2", "v1"]}),
    (b'{"p3":"v2"}', {"p3": ["v2", '"v1"']}),
    (b'{"p4":"v2"}', {"p4": ["v2", -1]}),
    (b'{"p5":"v5", "p6":"v6"}', {"p5": ["v5", False], "p6": ["v6", True]}),
], ids=["value", "double-quotes", "number", "boolean"])
def test_response_transformer_append_makes_a_list_of_a_present_string_and_the_value(body, changed):
    """append: "value if key exists", "value in double quotes", "number", "boolean"."""
    assert json.loads(transformed(APPEND, body)) == {**APPENDED, **changed}


def test_response_transformer_append_preserves_empty_arrays():
    """append: "preserves empty arrays"."""
    body = transformed(APPEND, b'{"p2":"v1", "a":[]}')
    assert json.loads(body) == {**APPENDED, "p2": "v1", "a": []}
    assert b'"a":[]' in body


REMOVE = transformer(remove={"json": ["p1", "p2"]})


def test_response_transformer_remove_leaves_an_empty_object():
    """remove: "parameter" (the body is exactly {})."""
    assert transformed(REMOVE, b'{"p1" : "v1", "p2" : "v1"}') == b"{}"


def test_response_transformer_remove_preserves_empty_arrays():
    """remove: "preserves empty arrays"."""
    assert transformed(REMOVE, b'{"p1" : "v1", "p2" : "v1", "a": []}') == b'{"a":[]}'


RENAME = transformer(rename={"json": ["p1:k1", "p2:k2", "p3:k3", "p4:k4", "p5:k5"]})


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"p1" : "v1", "p2" : "v2"}', {"k1": "v1", "k2": "v2"}),
    (b'{"p3" : -1}', {"k3": -1}),
    (b'{"p4" : false, "p5" : true}', {"k4": False, "k5": True}),
], ids=["parameter", "number", "boolean"])
def test_response_transformer_rename_moves_present_values_to_their_new_keys(body, expected):
    """rename: "parameter", "number", "boolean"."""
    assert json.loads(transformed(RENAME, body)) == expected


def test_response_transformer_rename_preserves_empty_arrays():
    """rename: "preserves empty arrays" (a renamed [] stays [])."""
    body = transformed(RENAME, b'{"p1" : "v1", "p2" : "v2", "p3": []}')
    assert json.loads(body) == {"k1": "v1", "k2": "v2", "k3": []}
    assert b'"k3":[]' in body


REPLACE = transformer(replace={"json": ["p1:v2", 'p2:"v2"', "p3:-1", "p4:false", "p5:true"],
                               "json_types": ["string", "string", "number", "boolean", "boolean"]})


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"p1" : "v1", "p2" : "v1"}', {"p1": "v2", "p2": '"v2"'}),
    (b'{"p1" : "v1"}', {"p1": "v2"}),
    (b'{"p2" : "v1"}', {"p2": '"v2"'}),
    (b'{"p3" : "v1"}', {"p3": -1}),
    (b'{"p4" : "v4", "p5" : "v5"}', {"p4": False, "p5": True}),
], ids=["parameter", "absent-not-added", "double-quoted", "number", "boolean"])
def test_response_transformer_replace_changes_only_present_keys(body, expected):
    """replace: "parameter if it exists", "does not add value to parameter if parameter does not exists", "double
    quoted value", "number", "boolean"."""
    assert json.loads(transformed(REPLACE, body)) == expected


def test_response_transformer_replace_preserves_empty_arrays():
    """replace: "preserves empty arrays"."""
    body = transformed(REPLACE, b'{"p1" : "v1", "p2" : "v1", "a": []}')
    assert json.loads(body) == {"p1": "v2", "p2": '"v2"', "a": []}
    assert b'"a":[]' in body


ALL = transformer(remove={"json": ["p1"]}, rename={"json": ["p4:p2"]}, replace={"json": ["p2:v2"]},
                  add={"json": ["p3:v1"]}, append={"json": ["p3:v2"]})


def test_response_transformer_remove_rename_replace_add_append_apply_in_that_order():
    """remove, rename, replace, add, append: "combination" (the renamed key is replaced, the added one appended to)."""
    assert json.loads(transformed(ALL, b'{"p1" : "v1", "p4" : "v1"}')) == {"p2": "v2", "p3": ["v1", "v2"]}


def test_response_transformer_all_changes_preserve_empty_arrays():
    """remove, rename, replace, add, append: "preserves empty array"."""
    body = transformed(ALL, b'{"p1" : "v1", "p4" : "v1", "a" : []}')
    assert json.loads(body) == {"p2": "v2", "p3": ["v1", "v2"], "a": []}
    assert b'"a":[]' in body


def test_response_transformer_without_json_changes_never_touches_the_body():
    """leave body alone: "body remains unaltered if no transforms have been set" (only header changes: the plugin
    has no body phase, so the body goes out byte for byte, whitespace and all)."""
    rt = transformer(remove={"headers": ["h1", "h2", "h3"]})
    assert not hasattr(rt, "body_filter") and not hasattr(rt, "wants_body")


def test_response_transformer_a_body_that_is_not_json_goes_out_unchanged():
    """handle unexpected body type: "gracefully fails transforming invalid json body" (no error, no new body)."""
    rt = transformer(remove={"json": ["foo"]})
    assert transformed(rt, b"not a json value") == b"not a json value"


# --- opentelemetry: spec/03-plugins/37-opentelemetry/01-otlp_spec.lua ------------------------------------------------

TRACE_ID = int.from_bytes(bytes(range(1, 17)), "big")
SPAN_ID, PARENT_ID = 0x0102030405060708, 0x1112131415161718
START_NS = 1_700_000_000_000_000_000


def decoded(record: SpanRecord) -> Span:
    """The span as otlp encodes it, read back by opentelemetry-proto (Kong's pb.decode)."""
    span = Span()
    span.ParseFromString(otlp.span_message(record))
    return span


def attributes(span: Span) -> dict[str, AnyValue]:
    return {kv.key: kv.value for kv in span.attributes}


def test_otlp_a_full_span_decodes_to_what_was_encoded():
    """"encode/decode pb (traces)", the "full-span": ids, name, times, and its attributes as string, bool and double
    values."""
    record = SpanRecord(TRACE_ID, SPAN_ID, PARENT_ID, "full-span", 0, START_NS, START_NS + 1000,
                        [("foo", "bar"), ("test", True), ("version", 0.1)])
    span = decoded(record)
    assert (span.trace_id, span.span_id, span.parent_span_id) == (
        TRACE_ID.to_bytes(16, "big"), SPAN_ID.to_bytes(8, "big"), PARENT_ID.to_bytes(8, "big"))
    assert (span.name, span.start_time_unix_nano, span.end_time_unix_nano) == ("full-span", START_NS, START_NS + 1000)
    values = attributes(span)
    assert (values["foo"].string_value, values["test"].bool_value, values["version"].double_value) == \
        ("bar", True, 0.1)


def test_otlp_attributes_of_every_type_decode_with_their_kinds_and_statuses():
    """"encode/decode pb (traces)", the tracer's spans (here 200, Kong's 10,000): kind i % 6, status i % 3; a string,
    an int (a double: Lua has one number type), a bool, a double, an array and a map."""
    n = 200
    for i in range(1, n + 1):
        record = SpanRecord(TRACE_ID, SPAN_ID + i, PARENT_ID, str(i), i % 6, START_NS, START_NS + i, [
            ("str", f"tag-{i}"), ("int", i), ("bool", i % 2 == 0), ("double", i / (n * 1000)),
            ("array", ["one", "two", "three"]), ("map", {"key1": "value1", "key2": "value2"})], i % 3)
        span = decoded(record)
        assert (span.name, span.kind, span.status.code) == (str(i), i % 6, i % 3)
        values = attributes(span)
        assert {key: value.WhichOneof("value") for key, value in values.items()} == {
            "str": "string_value", "int": "double_value", "bool": "bool_value", "double": "double_value",
            "array": "array_value", "map": "kvlist_value"}
        assert (values["str"].string_value, values["int"].double_value, values["bool"].bool_value,
                values["double"].double_value) == (f"tag-{i}", i, i % 2 == 0, i / (n * 1000))
        assert [v.string_value for v in values["array"].array_value.values] == ["one", "two", "three"]
        assert {kv.key: kv.value.string_value for kv in values["map"].kvlist_value.values} == \
            {"key1": "value1", "key2": "value2"}


def test_otlp_a_nested_value_is_typed_as_transform_value_types_it():
    """transform_value (kong/observability/otlp/init.lua) on nested values: an array's items have no key (a number
    in it is a double), a map's entries keep theirs (a nested http.status_code is an int)."""
    record = SpanRecord(TRACE_ID, SPAN_ID, 0, "s", 0, START_NS, START_NS,
                        [("a", [200, True, ["x"]]), ("m", {"http.status_code": 200, "inner": {"k": "v"}})])
    values = attributes(decoded(record))
    array = values["a"].array_value.values
    assert (array[0].double_value, array[1].bool_value, array[2].array_value.values[0].string_value) == \
        (200.0, True, "x")
    entries = {kv.key: kv.value for kv in values["m"].kvlist_value.values}
    assert entries["http.status_code"].WhichOneof("value") == "int_value"
    assert entries["http.status_code"].int_value == 200
    assert entries["inner"].kvlist_value.values[0].value.string_value == "v"


def test_otlp_short_ids_are_padded_with_leading_zero_bytes():
    """"check lengths of trace_id and span_id": a 15-byte trace id and a 7-byte parent id are written as 16 and 8
    bytes, a zero byte first."""
    trace = bytes(range(1, 16))
    parent = bytes(range(1, 8))
    record = SpanRecord(int.from_bytes(trace, "big"), SPAN_ID, int.from_bytes(parent, "big"), "s", 0, START_NS,
                        START_NS, [])
    span = decoded(record)
    assert (span.trace_id, span.parent_span_id) == (b"\0" + trace, b"\0" + parent)

