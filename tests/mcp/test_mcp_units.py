"""Sans-I/O parts of the MCP support: the session-id codec, the JSON-RPC peek and header check, the Origin policy,
the session key file, config validation, and the router's method/tool category."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading

import pytest
from mcp_helpers import TEST_KEY, mcp_config

from gateway.config import ConfigError
from gateway.mcp import jsonrpc, sessions
from gateway.mcp.keys import load_or_create_key_file, resolve_secret
from gateway.mcp.origin import OriginPolicy, check_entry
from gateway.mcp.sessions import MAX_ID, MAX_TARGET, MAX_UPSTREAM_ID, OPENED_CACHE, SessionCodec, valid_header_value
from gateway.mcp.sse import ends_event
from gateway.routing import NEEDS_MCP, Router, RouteSpec
from gateway.runtime import compile_config

K1 = ("k1", b"first-secret-0123456789")
K2 = ("k2", b"second-secret-0123456789")


# --- session ids ------------------------------------------------------------------------------------------------

def test_codec_round_trip_and_shape():
    codec = SessionCodec([K1])
    sid = codec.encode("127.0.0.1:9001", b"3f2a9c0d4e5b6a7f8091a2b3c4d5e6f7")
    assert sid.startswith(b"k1.")
    assert all(0x21 <= c <= 0x7E for c in sid) and b"=" not in sid  # visible ASCII, URL-safe, unpadded
    assert codec.decode(sid) == ("127.0.0.1:9001", b"3f2a9c0d4e5b6a7f8091a2b3c4d5e6f7", None)
    assert codec.decode(codec.encode("[::1]:80", b"")) == ("[::1]:80", b"", None)


def test_the_longest_upstream_id_with_the_longest_names_seals_within_max_id_and_opens():
    """A JWT is the spec's own example of a session id: up to MAX_UPSTREAM_ID bytes are sealed, and the sealed id
    stays under MAX_ID (and under a header line's 8 KiB), so it opens again (seen: 725 bytes got 404 before)."""
    codec = SessionCodec([("k" * 32, K1[1])])
    upstream_id = b"eyJhbGciOiJSUzI1NiJ9." + b"a" * (MAX_UPSTREAM_ID - 25) + b".sig"
    sid = codec.encode("t" * MAX_TARGET, upstream_id)
    assert len(sid) <= MAX_ID < 8192
    assert codec.decode(sid) == ("t" * MAX_TARGET, upstream_id, None)
    assert valid_header_value(upstream_id) and not valid_header_value(upstream_id + b"x")


def test_codec_rejects_every_single_byte_change():
    codec = SessionCodec([K1])
    sid = codec.encode("127.0.0.1:9001", b"abc")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for i in range(len(sid)):
        for c in alphabet[:8] + alphabet[-4:]:
            if c != sid[i]:
                forged = sid[:i] + bytes([c]) + sid[i + 1:]
                assert codec.decode(forged) is None, forged


@pytest.mark.parametrize("bad", [b"", b"k1", b"k1.", b"k1.!!!!", b"nokey.AAAA", b"k1.AAAAAAAAAAAAAAAAAAAAAAAA",
                                 b"k1." + b"A" * MAX_ID, "k1.é".encode()])
def test_codec_rejects_garbage(bad):
    assert SessionCodec([K1]).decode(bad) is None


def test_codec_rotation_first_signs_all_verify():
    old = SessionCodec([K1])
    rotated = SessionCodec([K2, K1])
    retired = SessionCodec([K2])
    sid_old = old.encode("t:1", b"u")
    assert rotated.decode(sid_old) == ("t:1", b"u", None)
    sid_new = rotated.encode("t:1", b"u")
    assert sid_new.startswith(b"k2.")
    assert retired.decode(sid_new) == ("t:1", b"u", None)
    assert retired.decode(sid_old) is None
    # same key id, different secret: refused
    assert SessionCodec([("k1", b"another-secret-01234567")]).decode(sid_old) is None


def test_an_id_verified_once_is_not_verified_again(monkeypatch):
    codec = SessionCodec([K1])
    sid = codec.encode("127.0.0.1:9001", b"abc")
    macs = []
    real = sessions._mac
    monkeypatch.setattr(sessions, "_mac", lambda *a: macs.append(a) or real(*a))
    assert codec.decode(sid) == codec.decode(sid) == ("127.0.0.1:9001", b"abc", None)
    assert len(macs) == 1


def test_forged_ids_are_verified_every_time_and_never_kept():
    codec = SessionCodec([K1])
    sid = codec.encode("127.0.0.1:9001", b"abc")
    forged = sid[:-1] + (b"A" if sid[-1:] != b"A" else b"B")
    for _ in range(3):
        assert codec.decode(forged) is None
    assert codec._opened == {}


def test_the_verified_ids_kept_are_bounded_and_the_oldest_leaves_first():
    codec = SessionCodec([K1])
    ids = [codec.encode("t:1", b"s%d" % i) for i in range(OPENED_CACHE + 1)]
    for sid in ids:
        codec.decode(sid)
    assert len(codec._opened) == OPENED_CACHE
    assert ids[0] not in codec._opened and ids[-1] in codec._opened
    assert codec.decode(ids[0]) == ("t:1", b"s0", None)  # verified again, still valid


# --- session subjects (a session bound to the caller that created it) ------------------------------------------

ALICE = b"consumer\x00alice-id"
MALLORY = b"consumer\x00mallory-id"


def test_an_id_sealed_for_a_caller_carries_a_subject_only_that_caller_matches():
    codec = SessionCodec([K1])
    sid = codec.encode("127.0.0.1:9001", b"up-a-1", ALICE)
    assert all(0x21 <= c <= 0x7E for c in sid) and b"=" not in sid
    target, upstream_id, subject = codec.decode(sid)
    assert (target, upstream_id, len(subject)) == ("127.0.0.1:9001", b"up-a-1", sessions.SUBJECT_BYTES)
    assert codec.same_subject(sid, subject, ALICE)
    assert not codec.same_subject(sid, subject, MALLORY)
    assert not codec.same_subject(sid, subject, b"")


def test_the_subject_is_keyed_not_a_plain_hash_of_the_identity():
    """A holder of the id could test guesses of a plain hash: the digest needs the key."""
    sid = SessionCodec([K1]).encode("t:1", b"u", ALICE)
    other = SessionCodec([("k1", b"another-secret-01234567")]).encode("t:1", b"u", ALICE)
    subject = SessionCodec([K1]).decode(sid)[2]
    assert subject not in (hashlib.sha256(ALICE).digest()[:16], hashlib.sha256(b"mcp-gw-subject\x00" + ALICE)
                           .digest()[:16])
    assert subject != SessionCodec([("k1", b"another-secret-01234567")]).decode(other)[2]


def test_an_id_sealed_before_subjects_still_opens_unbound():
    """Version 1 ids (sealed before this change, or for a session created without authentication) keep working:
    this one was sealed by the codec before it had subjects."""
    old = b"k1.AQ4xMjcuMC4wLjE6OTAwMXVwLWEtMWW78mQWFEvQp6QrfafKafw"
    assert SessionCodec([K1]).decode(old) == ("127.0.0.1:9001", b"up-a-1", None)
    assert SessionCodec([K1]).encode("127.0.0.1:9001", b"up-a-1") == old  # unbound ids are sealed as before


def test_an_id_opens_only_for_the_upstream_it_was_sealed_for():
    """Two Kong upstreams may list a target at one address (an ingress, each told apart by its host_header: Kong's
    kong/runloop/balancer/init.lua:396-397), each a server of its own; the MCP spec (2025-06-18 basic/transports,
    Session Management) scopes a session id to the server that issued it. The upstream's name is in the mac."""
    codec = SessionCodec([K1])
    sid = codec.encode("127.0.0.1:9001", b"up-a-1", upstream=b"tenant-a-up")
    assert codec.decode(sid, b"tenant-a-up") == ("127.0.0.1:9001", b"up-a-1", None)
    assert codec.decode(sid, b"tenant-b-up") is None
    assert codec.decode(sid) is None  # a service's own host:port (sessions.NO_UPSTREAM)
    direct = codec.encode("127.0.0.1:9001", b"up-a-1")
    assert codec.decode(direct, b"tenant-a-up") is None


def test_a_verified_id_in_the_cache_opens_only_for_its_upstream():
    """The cache of verified ids (OPENED_CACHE) keeps the upstream each was verified for: a hit for another
    upstream is refused, as the mac would refuse it."""
    codec = SessionCodec([K1])
    sid = codec.encode("127.0.0.1:9001", b"up-a-1", ALICE, b"tenant-a-up")
    opened = codec.decode(sid, b"tenant-a-up")  # now cached
    assert opened is not None and opened[:2] == ("127.0.0.1:9001", b"up-a-1")
    assert codec.decode(sid, b"tenant-b-up") is None
    assert codec.decode(sid, b"tenant-a-up") == opened  # (the refusal does not evict it)


def test_the_upstream_binding_keeps_ids_as_short_and_fails_ids_sealed_before_it():
    """The upstream is in the mac, not the id: ids are no longer, and an upstream's id sealed before the binding
    (this one, by the codec before it) gets the 404 of an unknown session; the client initialises a new one."""
    codec = SessionCodec([K1])
    old = b"k1.AQ4xMjcuMC4wLjE6OTAwMXVwLWEtMWW78mQWFEvQp6QrfafKafw"
    assert len(codec.encode("127.0.0.1:9001", b"up-a-1", upstream=b"mcp-cluster")) == len(old)
    assert codec.decode(old, b"mcp-cluster") is None


def test_a_bound_id_rejects_every_single_byte_change():
    codec = SessionCodec([K1])
    sid = codec.encode("127.0.0.1:9001", b"abc", ALICE)
    for i in range(len(sid)):
        forged = sid[:i] + (b"B" if sid[i:i + 1] != b"B" else b"C") + sid[i + 1:]
        assert codec.decode(forged) is None, forged


def test_a_bound_id_survives_rotation_matched_under_the_key_that_sealed_it():
    old = SessionCodec([K1])
    rotated = SessionCodec([K2, K1])
    sid_old = old.encode("t:1", b"u", ALICE)
    _, _, subject = rotated.decode(sid_old)
    assert rotated.same_subject(sid_old, subject, ALICE) and not rotated.same_subject(sid_old, subject, MALLORY)
    sid_new = rotated.encode("t:1", b"u", ALICE)
    assert sid_new.startswith(b"k2.")
    _, _, subject_new = rotated.decode(sid_new)
    assert subject_new != subject and rotated.same_subject(sid_new, subject_new, ALICE)
    assert SessionCodec([K2]).decode(sid_old) is None  # k1 retired


def test_the_longest_bound_id_seals_within_max_id():
    codec = SessionCodec([("k" * 32, K1[1])])
    sid = codec.encode("t" * MAX_TARGET, b"a" * MAX_UPSTREAM_ID, ALICE)
    assert len(sid) <= MAX_ID
    assert codec.decode(sid)[:2] == ("t" * MAX_TARGET, b"a" * MAX_UPSTREAM_ID)


@pytest.mark.parametrize("identity", [None, ALICE])
def test_a_target_past_255_bytes_seals_with_a_two_byte_length_and_opens(identity):
    """A named target's session is sealed as `name:port@address`; a DNS name may be 253 bytes (RFC 1035), so the
    target may pass what one length byte holds (an initialize got a 500 for a 245-byte name)."""
    codec = SessionCodec([K1])
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]) + ":65535@[2001:db8::1]:65535"
    assert len(name) > 255
    target, upstream_id, subject = codec.decode(codec.encode(name, b"sid", identity))
    assert (target, upstream_id, subject is None) == (name, b"sid", identity is None)
    assert codec.decode(codec.encode("127.0.0.1:9", b"sid", identity))[0] == "127.0.0.1:9"  # short: one byte


def test_a_cached_bound_id_is_matched_against_the_caller_every_time(monkeypatch):
    """The id's opening is remembered, and each caller's digest (made once per key), but never the verdict."""
    codec = SessionCodec([K1])
    sid = codec.encode("127.0.0.1:9001", b"abc", ALICE)
    digests = []
    real = sessions._subject
    monkeypatch.setattr(sessions, "_subject", lambda *a: digests.append(a) or real(*a))
    for who in (MALLORY, ALICE, MALLORY, ALICE):
        _, _, subject = codec.decode(sid)
        assert codec.same_subject(sid, subject, who) == (who == ALICE)
    assert len(codec._opened) == 1 and [a[1] for a in digests] == [MALLORY]  # ALICE's was made by encode


def test_the_digests_kept_are_bounded():
    codec = SessionCodec([K1])
    for i in range(OPENED_CACHE + 1):
        codec.encode("t:1", b"u", b"consumer\x00%d" % i)
    assert len(codec._subjects) == OPENED_CACHE


def test_codec_validates_keys():
    with pytest.raises(ValueError, match="at least 16"):
        SessionCodec([("k1", b"short")])
    with pytest.raises(ValueError, match="used twice"):
        SessionCodec([K1, K1])
    with pytest.raises(ValueError, match="key id"):
        SessionCodec([("bad id", b"0123456789abcdef")])
    with pytest.raises(ValueError):
        SessionCodec([])


# --- JSON-RPC peek ----------------------------------------------------------------------------------------------

CALL = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "whoami", "arguments": {"x": [1, {"y": "}"}]},
                   "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}


@pytest.mark.parametrize("complete", [True, False])
def test_peek_whole_and_prefix_agree(complete):
    info = jsonrpc.peek(json.dumps(CALL).encode(), complete)
    assert (info.method, info.name, info.tool, info.version, info.id, info.batch) == (
        "tools/call", "whoami", "whoami", "2026-07-28", 3, False)


def test_peek_prefix_finds_what_comes_before_the_cut():
    body = json.dumps({"jsonrpc": "2.0", "id": "a", "method": "tools/call",
                       "params": {"name": "big", "arguments": {"blob": "x" * 100_000, "s": "\\\"}{"}}}).encode()
    info = jsonrpc.peek(body[:65536], False)
    assert (info.method, info.name, info.id) == ("tools/call", "big", "a")
    late = json.dumps({"params": {"arguments": {"blob": "y" * 100_000}, "name": "late"}, "method": "tools/call"})
    info = jsonrpc.peek(late.encode()[:65536], False)
    assert info.method is None and info.name is None  # beyond the bytes read: unknown, never guessed
    cut_in_name = b'{"method":"tools/call","params":{"name":"who'
    info = jsonrpc.peek(cut_in_name, False)
    assert info.method == "tools/call" and info.name is None


def test_peek_batches_and_non_json():
    assert jsonrpc.peek(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', True).batch
    assert jsonrpc.peek(b'  [{"jsonrpc":"2.0","id":1,"meth', False).batch
    for body in (b"", b"not json", b'{"method": }', b'"string"', b"{"):
        info = jsonrpc.peek(body, True)
        assert info.method is None and not info.batch, body
    odd = jsonrpc.peek(b'{"method":"tools/call","params":["positional"],"id":"x"}', True)
    assert (odd.method, odd.name, odd.id) == ("tools/call", None, "x")
    uri = jsonrpc.peek(b'{"method":"resources/read","params":{"uri":"file:///x","name":"n"}}', True)
    assert uri.name == "file:///x" and uri.tool is None


@pytest.mark.parametrize("rpc_id", [b"[1]", b'{"a":1}', b"true", b"false", b"[" * 30000 + b"]" * 30000,
                                    b'{"a":' * 30000 + b"1" + b"}" * 30000, b'2,"id":[]'],
                         ids=["array", "object", "true", "false", "deep-array", "deep-object", "repeated"])
@pytest.mark.parametrize("complete", [True, False])
def test_an_id_json_rpc_forbids_makes_an_invalid_request(rpc_id, complete):
    """JSON-RPC ids are strings, numbers or null; any other is an Invalid Request, never decoded (an id nested
    30,000 deep made Python's parser raise RecursionError out of the peek: a 500)."""
    body = b'{"jsonrpc":"2.0","id":' + rpc_id + b',"method":"tools/call","params":{"name":"whoami"}}'
    for info in (jsonrpc.peek(body, complete), jsonrpc._scan(body, complete)):
        assert info is jsonrpc.BAD_ID and not info.valid and info.method is None
        assert jsonrpc.header_mismatch(info, b"tools/call", b"whoami", None) is not None


@pytest.mark.parametrize(("rpc_id", "expected"), [(b'"a"', "a"), (b"7", 7), (b"1.5", 1.5), (b"null", None),
                                                  (b'[],"id":2', 2)])
def test_string_number_and_null_ids_are_read(rpc_id, expected):
    body = b'{"jsonrpc":"2.0","id":' + rpc_id + b',"method":"tools/list"}'
    for info in (jsonrpc.peek(body, True), jsonrpc._scan(body, True)):
        assert (info.valid, info.method, info.id) == (True, "tools/list", expected)


@pytest.mark.parametrize("body", [
    b'{"method":"ping","method":"tools/call","params":{"name":"a","name":"b"}}',
    b'{"method":"tools/call","params":{"name":"a"},"params":{}}',
    b'{"method":"tools/call","params":{"name":"a"},"method":5}',
    b'{"method":"tools/call","params":{"name":"a","name":7},"id":1,"id":"x"}'])
def test_the_scanner_keeps_the_last_of_repeated_members_as_json_parsers_do(body):
    """msgspec, and the `mcp` SDK's parser, keep the last of a repeated member; so does the scanner, which reads what
    msgspec refuses (NaN in a body): a first `name` followed by another is never the one routed or counted."""
    whole, scanned = jsonrpc.peek(body, True), jsonrpc._scan(body, True)
    assert (scanned.method, scanned.name, scanned.id) == (whole.method, whole.name, whole.id)


def test_a_body_msgspec_refuses_is_read_as_pythons_parser_reads_it_for_counting():
    """What rate limiting counts in a body msgspec will not decode: NaN / Infinity / 1e400 (the SDK's parser reads
    them), a batch's objects beside elements that are not (a server runs those), a lone surrogate spelt out (so it can
    be a key); nothing for a batch of more than MAX_BATCH or what no parser reads (the caller refuses those)."""
    call = b'{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"%s","arguments":{"n":%s}}}'
    for number in (b"NaN", b"-Infinity", b"1e400"):
        [m], batch = jsonrpc.read_leniently(call % (b"1", b"search", number))
        assert (m.method, m.name, m.id, m.has_id, batch) == ("tools/call", "search", 1, True, False)
    messages, batch = jsonrpc.read_leniently(b"[" + call % (b"1", b"a", b"1") + b',1,"x",' + call % (b"2", b"b", b"NaN")
                                             + b"]")
    assert batch and [(m.name, m.id) for m in messages] == [("a", 1), ("b", 2)]
    [m], _ = jsonrpc.read_leniently(call % (b'"\\udfff"', b"\\ud800", b"0"))
    assert (m.name, m.id) == ("\\xed\\xa0\\x80", "\\xed\\xbf\\xbf")
    m.name.encode()
    assert jsonrpc.read_leniently(b"[" + b",".join([b'{"id":1}'] * (jsonrpc.MAX_BATCH + 1)) + b"]") is None
    assert jsonrpc.read_leniently(b'{"method":"tools/call",}') is None
    assert jsonrpc.read_leniently(b"5") == ([], False)


@pytest.mark.parametrize(("body", "json_like"), [
    (b'{"a":1}', True), (b' \r\n\t[1]', True), (b"\xef\xbb\xbf{", True), ('{"a":1}'.encode("utf-16"), True),
    ('{"a":1}'.encode("utf-16-be"), True), (b"{broken", True), (b"", False), (b"a=1&b=2", False),
    (b"--boundary\r\n", False), (b'"s"', False)])
def test_what_begins_as_json(body, json_like):
    """Rate limiting by tool refuses a body it cannot read only when it begins as JSON (a server might read a call in
    it); a form or a file is not a call, and passes uncounted."""
    assert jsonrpc.looks_like_json(body) is json_like


def test_header_check():
    info = jsonrpc.peek(json.dumps(CALL).encode(), True)
    ok = jsonrpc.header_mismatch
    assert ok(info, b"tools/call", b"whoami", b"2026-07-28") is None
    assert ok(info, b"tools/call", b"=?base64?d2hvYW1p?=", None) is None
    assert ok(info, b"tools/list", None, None) is not None
    assert ok(info, b"tools/call", b"other", None) is not None
    assert ok(info, b"tools/call", None, None) is not None  # Mcp-Name is required for a name-bearing method
    assert ok(info, b"tools/call", b"whoami", b"2025-11-25") is not None
    assert ok(info, b"tools/call", b"=?base64?not-base64?=", None) is not None
    assert ok(info, None, b"whoami", None) is None  # Mcp-Name alone, agreeing
    listing = jsonrpc.peek(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', True)
    assert ok(listing, b"tools/list", None, None) is None
    assert ok(listing, b"tools/list", b"x", None) is not None  # Mcp-Name on a method that names nothing, where a
    # route on method or tool could take the request
    assert ok(listing, b"tools/list", b"x", None, routed=False) is None  # elsewhere ignored, as by the server
    assert ok(jsonrpc.BATCH, b"tools/list", None, None) is not None
    assert ok(jsonrpc.NOT_JSON, b"tools/list", None, None) is not None
    assert jsonrpc.decode_header_value(b"=?base64?w6k=?=") == "é"


def test_error_body():
    assert json.loads(jsonrpc.error_body(-32020, "m", 5)) == {"jsonrpc": "2.0", "id": 5,
                                                              "error": {"code": -32020, "message": "m"}}


# --- Origin -----------------------------------------------------------------------------------------------------

def test_origin_policy():
    policy = OriginPolicy(["https://app.example.com", "http://localhost:*", "null"], "rewrite")
    assert policy.allowed(None)
    assert policy.allowed(b"https://app.example.com")
    assert policy.allowed(b"HTTPS://App.Example.com")
    assert policy.allowed(b"http://localhost")
    assert policy.allowed(b"http://localhost:5173")
    assert policy.allowed(b"null")
    assert not policy.allowed(b"http://localhost.evil.com:80")
    assert not policy.allowed(b"https://app.example.com.evil.com")
    assert not policy.allowed(b"http://app.example.com")
    assert OriginPolicy([], "pass").allowed(b"https://anything")
    assert OriginPolicy(["*"], "strip").allowed(b"https://anything")
    assert check_entry("https://app.example.com:8443") is None
    assert check_entry("http://[::1]:*") is None
    assert check_entry("app.example.com") is not None
    assert check_entry("https://a.example.com/path") is not None


# --- keys -------------------------------------------------------------------------------------------------------

def test_key_file_is_created_once_with_0600(tmp_path):
    path = str(tmp_path / "run" / "mcp-session.key")
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(load_or_create_key_file(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(results) == 8 and len(set(results)) == 1  # racing creators all end up with the same key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key_file(path) == results[0]
    assert not [p for p in os.listdir(tmp_path / "run") if p.endswith(".tmp")]


def test_resolve_secret(monkeypatch):
    monkeypatch.setenv("GW_TEST_MCP_KEY", "from-the-environment-123")
    assert resolve_secret("env:GW_TEST_MCP_KEY") == b"from-the-environment-123"
    assert resolve_secret("a-literal-secret-of-length") == b"a-literal-secret-of-length"
    with pytest.raises(ValueError, match="not set"):
        resolve_secret("env:GW_TEST_MCP_KEY_MISSING")
    with pytest.raises(ValueError, match="at least 16"):
        resolve_secret("short")


# --- config -----------------------------------------------------------------------------------------------------

def compile_doc(doc: dict, **mcp) -> None:  # noqa: ANN003
    from conftest import build_config

    compile_config(build_config(doc, "h11", mcp=mcp), "<test>")


def test_config_accepts_mcp_settings(monkeypatch):
    monkeypatch.setenv("GW_TEST_MCP_KEY", "from-the-environment-123")
    compile_doc(mcp_config([9001], route={"mcp_methods": ["tools/call"], "mcp_tools": ["x"]}),
                session_keys=[{"id": "new", "secret": "env:GW_TEST_MCP_KEY"}, {"id": "old", "secret": TEST_KEY[1]}],
                origin={"allow": ["https://app.example.com", "*"], "upstream": "strip"}, peek_bytes=8192)


@pytest.mark.parametrize(("mcp", "message"), [
    ({"session_keys": [{"id": "k1", "secret": "short"}]}, "gateway.mcp.session_keys[0].secret: the secret must be"),
    ({"session_keys": [{"id": "k1", "secret": "env:GW_TEST_NOPE"}]}, "environment variable GW_TEST_NOPE is not set"),
    ({"session_keys": [{"id": "k1", "secret": TEST_KEY[1]}, {"id": "k1", "secret": TEST_KEY[1]}]}, "used twice"),
    ({"origin": {"upstream": "rewrite"}}, "gateway.mcp.origin.upstream is rewrite"),
    ({"origin": {"allow": ["example.com"]}}, "gateway.mcp.origin.allow[0]: expected"),
])
def test_config_errors_name_the_field(mcp, message):
    with pytest.raises(ConfigError) as err:
        compile_doc(mcp_config([9001]), **mcp)
    assert message in "\n".join(err.value.messages)


@pytest.mark.parametrize(("mcp", "path"), [
    ({"session_keys": [{"id": "bad id!", "secret": TEST_KEY[1]}]}, "gateway.mcp.session_keys[0].id"),
    ({"origin": {"upstream": "maybe"}}, "gateway.mcp.origin.upstream"),
    ({"peek_bytes": 10}, "gateway.mcp.peek_bytes"),
    ({"sesion_keys": []}, "gateway.mcp.sesion_keys"),
])
def test_schema_errors_name_the_field(mcp, path):
    with pytest.raises(ConfigError) as err:
        compile_doc(mcp_config([9001]), **mcp)
    assert path in "\n".join(err.value.messages)


# --- router -----------------------------------------------------------------------------------------------------

def test_router_method_and_tool_category():
    router = Router([
        RouteSpec("default", paths=["/mcp"]),
        RouteSpec("calls", paths=["/mcp"], mcp_methods=["tools/call"]),
        RouteSpec("special", paths=["/mcp"], mcp_tools=["special"]),
        RouteSpec("other-path", paths=["/other"]),
    ])
    assert router.match(b"POST", b"/other", None, []).payload == "other-path"  # no MCP route could match: no look
    assert router.match(b"POST", b"/mcp", None, []) is NEEDS_MCP

    def route(method, tool=None) -> str:  # noqa: ANN001
        return router.match(b"POST", b"/mcp", None, [], (method, tool)).payload

    assert route("tools/call", "special") == "special"  # the tool category outranks the method category
    assert route("tools/call", "whoami") == "calls"
    assert route("tools/list") == "default"
    assert route(None) == "default"
    only_methods = Router([RouteSpec("m", paths=["/mcp"], mcp_methods=["prompts/get"])])
    assert only_methods.match(b"POST", b"/mcp", None, [], ("tools/call", None)) is None


def test_demo_config_is_valid_and_mcp():
    from mcp_helpers import ROOT

    from gateway.config import load_config

    runtime = compile_config(load_config(ROOT / "configs" / "demo.yaml"))
    routes = [c.spec.payload for c in runtime.router._candidates]
    assert routes and all(r.mcp is not None for r in routes)
    assert runtime.mcp.origin.upstream == "rewrite"


# --- Host policy ---------------------------------------------------------------------------------------------------


def test_a_wildcard_domain_with_a_port_admits_its_subdomains_on_that_port_only():
    """As the SDK's transport_security allows a host:port entry only on its port (an entry the config accepts is
    applied as written: `*.example.com:8443` admitted any port)."""
    from gateway.mcp.hosts import HostPolicy

    policy = HostPolicy(["*.example.com:8443"])
    assert policy.allowed(b"a.example.com:8443") and policy.allowed(b"A.b.Example.com:8443")
    assert not policy.allowed(b"a.example.com:9999") and not policy.allowed(b"a.example.com")
    assert not policy.allowed(b"example.com:8443") and not policy.allowed(b"evil.test:8443")
    assert HostPolicy(["*.example.com:*"]).allowed(b"a.example.com:9999")


def test_a_star_with_a_port_admits_any_host_on_that_port():
    """`*:8443` was kept as the literal host "*:8443", which no Host matches."""
    from gateway.mcp.hosts import HostPolicy

    policy = HostPolicy(["*:8443"])
    assert policy.allowed(b"mcp.example.com:8443") and policy.allowed(b"[::1]:8443")
    assert not policy.allowed(b"mcp.example.com:8444") and not policy.allowed(b"mcp.example.com")
    assert HostPolicy(["*:*"]).allowed(b"anything")


def test_an_origin_entry_with_a_wildcard_host_is_refused_at_load():
    """No browser sends `https://*.example.com` as its Origin: the entry matched nothing, so it is refused."""
    assert check_entry("https://*.example.com") is not None
    assert check_entry("https://app.example.com:*") is None


def test_a_host_verdict_is_remembered_and_the_memory_is_bounded():
    from gateway.mcp.hosts import VERDICTS_KEPT, HostPolicy

    policy = HostPolicy(["localhost", "*.example.com"])
    for _ in range(2):
        assert policy.allowed(b"localhost:8000") and policy.allowed(b"api.example.com")
        assert not policy.allowed(b"evil.test:8000") and not policy.allowed(None)
    for i in range(VERDICTS_KEPT + 1):
        assert not policy.allowed(b"h%d.test" % i)
    assert len(policy._verdicts) <= VERDICTS_KEPT
    assert policy.allowed(b"LOCALHOST")  # judged again after the memory started over
    assert not policy.allowed(b"h" * 301) and b"h" * 301 not in policy._verdicts  # long values are not kept


@pytest.mark.parametrize(("tail", "between"), [
    (b"", False), (b"a", False), (b"a\n", False), (b"a\r\n", False), (b"a\r", False),
    (b"a\n\n", True), (b"\r\n\r\n", True), (b"a\r\r", True), (b"\n\r\n", True), (b"a\r\n\n", True),
    (b"a\n\r", True),  # (a CR that a LF may follow: a blank line either way)
    (b"\r\n\ra", False), (b"\n\n:", False),
])
def test_a_stream_is_between_events_when_its_last_bytes_are_a_blank_line_of_any_line_ending(tail, between):
    assert ends_event(tail) is between
