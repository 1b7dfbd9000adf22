"""The session plugin compiled (gateway/policies/session): what a session cookie value says whatever the time (its
header, mac, ciphertext and decrypted data) is worked out once per value (lifecycle.Reading), a Cookie header's
lookups once per header, the identity once per data; a request that the session authenticated, when nothing is to
be saved or sent, costs header_filter nothing.

These tests hold the compiled plugin to the plugin as it was before, frozen below (RefSession, RefPolicy: every check
and the JSON per request): on generated configs and timelines of requests (clock moves, logouts by query and body,
cookies dropped, tampered, split over several cookies, carrying other audiences; another plugin authenticating
before header_filter), both must answer the same, send the same request and response headers, and leave the same
session behind. Session ids are drawn from the same seeded generator on both sides, so their cookies are equal
byte for byte."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
from collections.abc import Iterator
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugin_helpers import run_without_waiting

from gateway.http.codec import Headers, Request
from gateway.http.cookies import cookie_value
from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.pipeline.headers import set_consumer
from gateway.policies.consumers import Consumer, Directory, Identity, header_value, query_values
from gateway.policies.header_list import set_header
from gateway.policies.request_body import get_body
from gateway.policies.session import handler, seal
from gateway.policies.session.handler import SessionPolicy
from gateway.policies.session.lifecycle import (
    CLOSED,
    EXPIRE_FLAGS,
    HEADERS,
    MAX_TTL,
    NEW,
    OPEN,
    TOUCH_THRESHOLD,
    CookieLookup,
    Failed,
    Meta,
    Session,
    Settings,
    _AudienceMissing,
    _lua_array,
    _text,
    lua_number,
)
from gateway.policies.session.schema import SessionConfig

T0 = 1_800_000_000
SECRET = "a-long-random-session-secret-for-the-tests"
BODY_LIMIT = 1024 * 1024
READ_BODY_METHODS = frozenset({b"DELETE", b"PATCH", b"POST", b"PUT"})
IDENTITIES = 4096
_STATE = "session-plugin"

clock = handler.clock  # the reference's clock (the test sets it and handler.clock alike)


# ---- the frozen reference ------------------------------------------------------------------------------------------


class RefSession:
    """lifecycle.Session before it was compiled (every check and the JSON per request)."""

    __slots__ = ("settings", "cookie", "state", "data", "index", "meta", "remember_meta", "set_cookies")

    def __init__(self, settings: Settings, cookie: CookieLookup) -> None:
        self.settings = settings
        self.cookie = cookie
        self.state = NEW
        self.data: list[list[Any]] = [[{}, settings.audience]]  # one [data, audience, subject?] per audience
        self.index = 0
        self.meta: Meta | None = None
        self.remember_meta: Meta | None = None
        self.set_cookies: dict[str, str] = {}  # cookie name -> its Set-Cookie value (a later one replaces it)

    # -- the data of this audience

    def get_data(self) -> Any:
        return self.data[self.index][0]

    def set_data(self, data: Any) -> None:
        self.data[self.index][0] = data

    def set_subject(self, subject: str | None) -> None:
        entry = self.data[self.index]
        if len(entry) < 3:
            entry.append(subject)
        else:
            entry[2] = subject

    # -- resty-session's methods

    def open(self, now: int) -> str | None:
        """Open the request's session: None when it exists (state open), else why not (rules 1 to 3)."""
        try:
            self._open(now, False, False)
            return None
        except _AudienceMissing as e:
            return str(e)
        except Failed as e:
            err = str(e)
        if not self.settings.remember:
            return err
        try:
            self._open(now, True, False)
            self._save(now, True, None)
            self.state = NEW
            self.meta = None
            self._save(now, False, OPEN)
        except Failed:
            return err
        return None

    def save(self, now: int) -> str | None:
        """Save the session (a new cookie, and with `remember` a new remember cookie); None, or why it failed."""
        return self._save_both(now, None)

    def _save_both(self, now: int, state: str | None) -> str | None:
        """The session cookie (in `state`), then with `remember` the remember cookie; None, or why the first failed."""
        try:
            self._save(now, False, state)
        except Failed as e:
            return str(e)
        if self.settings.remember:
            self._remember_meta(now)
            try:
                self._save(now, True, None)
            except Failed:
                pass  # resty-session logs it and goes on: the session cookie is saved
        return None

    def refresh(self, now: int) -> str | None:
        """Rule 4 for an open session."""
        s = self.settings
        if s.rolling_timeout == 0 and s.idling_timeout == 0:
            return None
        meta = self.meta
        assert meta is not None
        rolling_elapsed = meta.timestamp - meta.creation_time - meta.rolling_offset
        if s.rolling_timeout > 0 and rolling_elapsed > math.ceil(s.rolling_timeout * 0.75):
            try:
                self._save(now, False, None)
            except Failed as e:
                return str(e)
            return None
        if s.idling_timeout > 0 and rolling_elapsed - meta.idling_offset > TOUCH_THRESHOLD:
            self.touch(now)
        return None

    def touch(self, now: int) -> None:
        """The same session with a new idling offset: a new header before the same ciphertext."""
        meta = self.meta
        assert meta is not None
        idling_offset = max(0, min(now - meta.creation_time - meta.rolling_offset, seal.MAX_IDLING_OFFSET))
        meta.header = seal.touched(self.settings.keys, meta.header, meta.sid, idling_offset)
        meta.idling_offset = idling_offset
        name = self.settings.cookie_name
        self.set_cookies[name] = (f"{name}={seal.b64url_encode(meta.header)}{meta.initial_chunk}"
                                  f"{self.settings.cookie_flags}")

    def logout(self, now: int) -> str | None:
        """Rule 5 for an open session; None, or why it failed."""
        if len(self.data) == 1:
            return self.destroy(now)
        del self.data[self.index]
        return self._save_both(now, CLOSED)

    def destroy(self, now: int) -> str | None:
        """Expire the session's cookies (and the remember cookie's, when the request has a valid one)."""
        err = self._expire(False)
        if err is not None:
            return err
        self.state = CLOSED
        if self.settings.remember and self._remember_meta(now):
            return self._expire(True)
        return None

    def property(self, name: str) -> str | None:
        """A Session-* header's value (request_headers / response_headers), None when it has none."""
        s = self.settings
        meta = self.meta
        if name == "id":
            return seal.b64url_encode(meta.sid) if meta is not None else None
        entry = self.data[self.index]
        if name == "audience":
            return _text(entry[1])
        if name == "subject":
            return _text(entry[2]) if len(entry) > 2 else None
        if meta is None:
            return None
        absolute = meta.timestamp - meta.creation_time
        rolling = absolute - meta.rolling_offset
        idling = rolling - meta.idling_offset
        if name == "timeout":
            left = [t - e for t, e in ((s.idling_timeout, idling), (s.rolling_timeout, rolling),
                                       (s.absolute_timeout, absolute)) if t > 0]
            return lua_number(min(left)) if left else None
        timeout, elapsed = {"idling-timeout": (s.idling_timeout, idling),
                            "rolling-timeout": (s.rolling_timeout, rolling),
                            "absolute-timeout": (s.absolute_timeout, absolute)}[name]
        return lua_number(timeout - elapsed) if timeout != 0 else None

    # -- the work

    def _remember_meta(self, now: int) -> bool:
        """Read the request's remember cookie's header (its creation time carries on into the next one)."""
        if self.remember_meta is not None:
            return True
        try:
            self._open(now, True, True)
        except Failed:
            return False
        return True

    def _open(self, now: int, remember: bool, meta_only: bool) -> None:
        s = self.settings
        name = s.remember_cookie_name if remember else s.cookie_name
        cookie = self.cookie(name)
        if cookie is None:
            raise Failed("missing session cookie")
        header = seal.Header.parse(cookie)
        if header is None:
            raise Failed("invalid session header")
        if header.flags & seal.FLAG_STORAGE:
            raise Failed("invalid session flags")
        absolute_elapsed = now - header.creation_time
        if absolute_elapsed > seal.MAX_ROLLING_OFFSET:
            raise Failed("session lifetime exceeded")
        absolute_timeout = s.remember_absolute_timeout if remember else s.absolute_timeout
        if absolute_timeout != 0 and absolute_elapsed > absolute_timeout:
            raise Failed("session absolute timeout exceeded")
        rolling_elapsed = absolute_elapsed - header.rolling_offset
        rolling_timeout = s.remember_rolling_timeout if remember else s.rolling_timeout
        if rolling_timeout != 0 and rolling_elapsed > rolling_timeout:
            raise Failed("session rolling timeout exceeded")
        if remember:
            if header.idling_offset != 0:
                raise Failed("invalid session idling offset")
        elif s.idling_timeout != 0 and rolling_elapsed - header.idling_offset > s.idling_timeout:
            raise Failed("session idling timeout exceeded")
        if not seal.authentic(s.keys, header):
            raise Failed("invalid session message authentication code")
        chunks = seal.cookie_chunks(len(name), header.data_size)
        if chunks is None:
            raise Failed("cookie size limit exceeded")
        if chunks == 1:
            initial = cookie[-header.data_size:]
            encoded = initial
        else:
            initial = cookie[seal.HEADER_ENCODED_SIZE:]
            parts = [initial]
            for i in range(2, chunks + 1):
                part = self.cookie(f"{name}{i}")
                if part is None:
                    raise Failed("missing session cookie chunk")
                parts.append(part)
            encoded = "".join(parts)
        if len(encoded) != header.data_size:
            raise Failed("invalid session payload")
        ciphertext = seal.b64url_decode(encoded)
        if ciphertext is None:
            raise Failed("unable to base64url decode session data")
        meta = Meta(now, header.flags, header.sid, header.creation_time, header.rolling_offset, header.data_size,
                    header.idling_offset, header.raw, initial)
        if remember:
            self.remember_meta = meta
        else:
            self.meta = meta
        if meta_only:
            return
        plaintext = seal.unseal(s.keys, header, ciphertext, remember)
        if plaintext is None:
            raise Failed("unable to decrypt session data")
        try:
            data = json.loads(plaintext)
        except ValueError:
            raise Failed("unable to json decode session data") from None
        if not isinstance(data, list) or not all(isinstance(e, list) and len(e) >= 2 for e in data):
            raise Failed("invalid session data")
        for i, entry in enumerate(data):
            if entry[1] == s.audience:
                self.state = OPEN
                self.data = data
                self.index = i
                return
        data.append(self.data[self.index])
        self.state = NEW
        self.data = data
        self.index = len(data) - 1
        raise _AudienceMissing("missing session audience")

    def _save(self, now: int, remember: bool, state: str | None) -> None:
        s = self.settings
        name = s.remember_cookie_name if remember else s.cookie_name
        meta = self.remember_meta if remember else self.meta
        flags = 0
        if meta is not None:
            creation_time = meta.creation_time
            rolling_offset = now - creation_time
            if rolling_offset > seal.MAX_ROLLING_OFFSET:
                raise Failed("session maximum rolling offset exceeded")
            flags |= meta.flags & seal.FLAG_FORGET
        else:
            creation_time, rolling_offset = now, 0
        if creation_time > seal.MAX_CREATION_TIME:
            raise Failed("session maximum creation time exceeded")
        plaintext = json.dumps([_lua_array(e) for e in self.data], separators=(",", ":")).encode()
        sid = os.urandom(seal.SID_SIZE)
        rolling_offset = max(0, rolling_offset)
        header, payload, flags = seal.seal(s.keys, flags, sid, creation_time, rolling_offset, plaintext, remember)
        data_size = len(payload)
        chunks = seal.cookie_chunks(len(name), data_size)
        if chunks is None:
            raise Failed("cookie size limit exceeded")
        extra = s.cookie_flags
        if remember:
            max_age = s.remember_rolling_timeout
            if max_age == 0 or max_age > MAX_TTL:
                max_age = MAX_TTL
            expires = formatdate(int(creation_time + max_age), usegmt=True)
            extra += f"; Expires={expires}; Max-Age={int(max_age)}"
        header_encoded = seal.b64url_encode(header)
        if chunks == 1:
            initial = payload
            self.set_cookies[name] = f"{name}={header_encoded}{payload}{extra}"
        else:
            first = seal.first_chunk_size(len(name))
            initial = payload[:first]
            self.set_cookies[name] = f"{name}={header_encoded}{initial}{extra}"
            step = seal.next_chunk_size(len(name))
            for i in range(2, chunks + 1):
                part = payload[first + (i - 2) * step:first + (i - 1) * step]
                self.set_cookies[f"{name}{i}"] = f"{name}{i}={part}{extra}"
        if meta is not None:
            old_chunks = seal.cookie_chunks(len(name), meta.data_size) or 1
            for i in range(chunks + 1, old_chunks + 1):
                self.set_cookies[f"{name}{i}"] = f"{name}{i}={s.cookie_flags}{EXPIRE_FLAGS}"
        saved = Meta(now, flags, sid, creation_time, rolling_offset, data_size, 0, header, initial)
        if remember:
            self.remember_meta = saved
        else:
            self.state = state or OPEN
            self.meta = saved

    def _expire(self, remember: bool) -> str | None:
        s = self.settings
        name = s.remember_cookie_name if remember else s.cookie_name
        meta = self.remember_meta if remember else self.meta
        chunks = 1
        if meta is not None and meta.data_size:
            counted = seal.cookie_chunks(len(name), meta.data_size)
            if counted is None:
                return "cookie size limit exceeded"
            chunks = counted
        for cookie in [name] + [f"{name}{i}" for i in range(2, chunks + 1)]:
            self.set_cookies[cookie] = f"{cookie}={s.cookie_flags}{EXPIRE_FLAGS}"
        return None


class RefPolicy:
    """handler.SessionPolicy before it was compiled."""

    __slots__ = ("settings", "directory", "logout_methods", "logout_query_arg", "logout_post_arg",
                 "request_headers", "response_headers", "_identities")

    def __init__(self, config: SessionConfig, directory: Directory) -> None:
        self.settings = Settings(config)
        self.directory = directory
        self.logout_methods = frozenset(m.encode() for m in config.logout_methods)
        self.logout_query_arg = config.logout_query_arg
        self.logout_post_arg = config.logout_post_arg if config.read_body_for_logout else None
        self.request_headers = [(HEADERS[n].lower().encode(), n) for n in config.request_headers or ()]
        self.response_headers = [(HEADERS[n].lower().encode(), n) for n in config.response_headers or ()]
        self._identities: Memo[tuple[str, str | None, tuple[str, ...] | None], Identity] = Memo(IDENTITIES)

    def _session(self, ex: Exchange) -> RefSession:
        headers = ex.request.headers

        def cookie(name: str) -> str | None:
            value = cookie_value(headers, name.lower().encode("latin-1"))
            return value.decode("latin-1") if value is not None else None

        return RefSession(self.settings, cookie)

    async def access(self, ex: Exchange) -> bool:
        now = int(clock())
        session = self._session(ex)
        if session.open(now) is not None:
            if session.set_cookies:  # a remember cookie saved before the session cookie could not be
                _keep(ex, _RefRequest(session, False))
            return False
        if await self._is_logout(ex):
            session.logout(now)
            _keep(ex, _RefRequest(session, False))
            await ex.send_head(200, [(b"content-length", b"0")], b"", end=True)
            return True
        data = session.get_data()
        consumer_id, credential_id, groups = _item(data, 0), _item(data, 1), _item(data, 2)
        consumer = self.directory.consumers.get(consumer_id) if isinstance(consumer_id, str) else None
        if consumer is None:  # Kong destroys a session whose consumer is gone
            session.logout(now)
            _keep(ex, _RefRequest(session, False))
            return False
        session.refresh(now)
        if self.request_headers:
            headers = list(ex.request.headers)
            for hname, prop in self.request_headers:
                value = session.property(prop)
                if value is not None:
                    set_header(headers, hname, value.encode())
            ex.request.headers = headers
        _keep(ex, _RefRequest(session, True))
        set_consumer(ex, self._identity(consumer, credential_id, groups))  # kong.client.authenticate + its headers
        return False

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        state = ex.state.get(_STATE) if ex.state is not None else None
        session = state.session if state is not None else None
        cookies = dict(session.set_cookies) if session is not None else {}
        authenticated = session if state is not None and state.authenticated else None
        who = ex.consumer
        if who is not None and who.credential_id is not None and who.id is not None:
            data = authenticated.get_data() if authenticated is not None else None
            if _item(data, 0) != who.id or _item(data, 1) != who.credential_id:
                now = int(clock())
                fresh = authenticated
                if fresh is None:
                    fresh = self._session(ex)
                    fresh.open(now)
                groups = getattr(who, "authenticated_groups", None)
                fresh.set_data([who.id, who.credential_id, list(groups) if groups else None])
                fresh.set_subject(who.username if who.username is not None
                                  else who.custom_id if who.custom_id is not None else who.id)
                fresh.save(now)
                cookies.update(fresh.set_cookies)
                authenticated = fresh if fresh.state == OPEN else None
        for name, line in cookies.items():
            _merge_cookie(headers, name, line.encode("latin-1"))
        if authenticated is not None:
            for hname, prop in self.response_headers:
                value = authenticated.property(prop)
                if value is not None:
                    set_header(headers, hname, value.encode())
        return headers

    async def _is_logout(self, ex: Exchange) -> bool:
        """Kong's session.logout(conf): the method, then the query argument, then (read_body_for_logout) the body."""
        req = ex.request
        if req.method not in self.logout_methods:
            return False
        if query_values(req.target, self.logout_query_arg):
            return True
        name = self.logout_post_arg
        if name is None or req.method not in READ_BODY_METHODS:
            return False
        raw, whole = await ex.read_body(BODY_LIMIT)
        body = get_body(header_value(req.headers, b"content-type"), raw) if whole else None
        if body is None or not isinstance(body[1], dict) or name not in body[1]:
            return False
        return body[1][name] is not False  # Lua: anything but nil and false is true (JSON null is cjson.null)

    def _identity(self, consumer: Consumer, credential_id: Any, groups: Any) -> Identity:
        """The request's identity as Kong's session access sets it: the credential id as X-Credential-Identifier
        (none, and X-Anonymous-Consumer, without one), the stored groups as X-Authenticated-Groups."""
        credential = credential_id if isinstance(credential_id, str) and credential_id else None
        names = tuple(groups) if isinstance(groups, list) and groups and all(isinstance(g, str) for g in groups) \
            else None
        key = (consumer.id, credential, names)
        who = self._identities.get(key)
        if who is None:
            who = consumer.identity(credential, credential)
            if names is not None:
                who.upstream_headers.append((b"x-authenticated-groups", ", ".join(names).encode()))
            self._identities.keep(key, who)
        return who


class _RefRequest:
    __slots__ = ("session", "authenticated")

    def __init__(self, session: RefSession, authenticated: bool) -> None:
        self.session = session
        self.authenticated = authenticated


def _keep(ex: Exchange, state: _RefRequest) -> None:
    if ex.state is None:
        ex.state = {_STATE: state}
    else:
        ex.state[_STATE] = state


def _item(data: Any, i: int) -> Any:
    return data[i] if isinstance(data, list) and len(data) > i else None


def _merge_cookie(headers: list[tuple[bytes, bytes]], name: str, line: bytes) -> None:
    prefix = name.encode("latin-1") + b"="
    for i, (hname, value) in enumerate(headers):
        if hname == b"set-cookie" and value.startswith(prefix):
            headers[i] = (b"set-cookie", line)
            return
    headers.append((b"set-cookie", line))


# ---- the differential run -----------------------------------------------------------------------------------------

ALICE = Consumer("8c5f3a52-0d0e-4b8e-9f3e-2c1f4a6b7d01", "alice", None)
BOB = Consumer("0b7e9a41-5c2d-4e6f-8a1b-3d4c5e6f7a02", None, "bob-custom")
GONE = "1d2c3b4a-0000-4000-8000-000000000003"  # a consumer id not in the directory
CREDENTIAL = "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"
DIRECTORY = SimpleNamespace(consumers={ALICE.id: ALICE, BOB.id: BOB})
BIG = [f"group-{random.Random(i).getrandbits(64):016x}" for i in range(300)]  # a session split over cookies
DATA = [  # what earlier requests may have stored as a session's data
    [ALICE.id, CREDENTIAL, None], [ALICE.id, "", None], [ALICE.id, CREDENTIAL, ["admins", "ops"]],
    [ALICE.id, CREDENTIAL, ["admins", 1]], [BOB.id, "bob-credential"], [BOB.id], [GONE, CREDENTIAL], [],
    {"1": ALICE.id}, "text", [ALICE.id, CREDENTIAL, BIG], [ALICE.id, 7, []],
]
WHO = {  # what another plugin (key-auth, ldap-auth) may have put on the request before header_filter
    "none": None,
    "anonymous": BOB.anonymous,
    "alice": ALICE.credential_identity(CREDENTIAL, CREDENTIAL),
    "bob": BOB.credential_identity("bob-credential", "bob-credential"),
    "ldap": SimpleNamespace(id=ALICE.id, credential_id="ldap-credential", username="alice", custom_id=None,
                            authenticated_groups=["admins", "ops"]),
    "big": SimpleNamespace(id=ALICE.id, credential_id="ldap-credential", username=None, custom_id=None,
                           authenticated_groups=BIG),
}
SESSION_HEADERS = list(HEADERS)


@contextlib.contextmanager
def _world(now: int, seed: int) -> Iterator[None]:
    """The clock at `now`, session ids from a generator seeded with `seed`, few PBKDF2 rounds (fast remember)."""
    global clock
    saved = (handler.clock, clock, os.urandom, seal.REMEMBER_ROUNDS)
    ids = random.Random(seed)
    handler.clock = clock = lambda: now + 0.5
    os.urandom = ids.randbytes
    seal.REMEMBER_ROUNDS = 7
    try:
        yield
    finally:
        handler.clock, clock, os.urandom, seal.REMEMBER_ROUNDS = saved


class FakeExchange:
    """What the plugin reads and calls on an Exchange."""

    def __init__(self, method: bytes, target: bytes, headers: Headers, body: bytes) -> None:
        self.request = Request(method, target, headers, b"1.1", True)
        self.state: dict[str, Any] | None = None
        self.consumer: Any = None
        self.body = body
        self.sent: list[Any] = []

    async def read_body(self, limit: int) -> tuple[bytes, bool]:
        return self.body, len(self.body) <= limit

    async def send_head(self, status: int, headers: Headers, body: bytes = b"", end: bool = False) -> None:
        self.sent.append((status, headers, body, end))


def _who(who: Any) -> Any:
    if who is None:
        return None
    return (who.id, who.credential_id, getattr(who, "upstream_headers", None), getattr(who, "anonymous", None))


def _left(ex: FakeExchange) -> Any:
    """The session a request leaves behind for header_filter."""
    state = (ex.state or {}).get(_STATE)
    if state is None:
        return None
    s = state.session
    meta = [(m.timestamp, m.flags, m.sid, m.creation_time, m.rolling_offset, m.data_size, m.idling_offset,
             m.header, m.initial_chunk) if m is not None else None for m in (s.meta, s.remember_meta)]
    return state.authenticated, s.state, copy.deepcopy(s.data), s.index, dict(s.set_cookies), meta


def _step(policy: Any, step: dict[str, Any], jar: dict[str, str], now: int) -> tuple[Any, ...]:
    """One request through access, another plugin, and header_filter (once or twice): all that comes out."""
    cookie = "; ".join(f"{name}={value}" for name, value in jar.items())
    headers = [(b"host", b"example.test"), (b"cookie", cookie.encode("latin-1"))] if jar else [(b"host", b"t")]
    if step["second_cookie_header"]:
        headers.append((b"cookie", step["second_cookie_header"].encode()))
    if step["body"]:
        headers.append((b"content-type", step["body"][0]))
    ex = FakeExchange(step["method"], step["target"], headers, step["body"][1] if step["body"] else b"")
    with _world(now, step["seed"]):
        answered = run_without_waiting(policy.access(ex))
        request_headers = list(ex.request.headers)
        after_access = _who(ex.consumer)
        if step["who"] != "keep" and (ex.consumer is None or step["override"]):
            ex.consumer = WHO[step["who"]]
        left = _left(ex)
        responses = []
        for _ in range(step["filters"]):
            upstream = [(b"content-type", b"text/plain"), (b"set-cookie", b"other=1")]
            if step["upstream_cookie"]:
                upstream.append((b"set-cookie", b"%b=upstream; Path=/" % step["upstream_cookie"].encode()))
            responses.append(policy.header_filter(ex, 200, upstream))
    return answered, ex.sent, request_headers, after_access, left, responses, _left(ex)


def _take(jar: dict[str, str], responses: list[Headers]) -> None:
    """A browser's cookie jar after the response (an expired cookie leaves it)."""
    for name, line in (responses[-1] if responses else []):
        if name == b"set-cookie":
            text = line.decode("latin-1")
            key, _, value = text.split(";", 1)[0].partition("=")
            if "Max-Age=0" in text:
                jar.pop(key, None)
            else:
                jar[key] = value


def _seeded(config: SessionConfig, data: Any, now: int, seed: int) -> dict[str, str]:
    """The cookies of a session saved earlier with `data`."""
    with _world(now, seed):
        session = Session(Settings(config), lambda name: None)
        session.open(now)
        session.set_data(data)
        session.set_subject("alice")
        session.save(now)
    return {name: line.split(";", 1)[0].split("=", 1)[1] for name, line in session.set_cookies.items()}


CONFIGS = st.fixed_dictionaries({
    "idling_timeout": st.sampled_from([0, 60, 900, 90.5]),
    "rolling_timeout": st.sampled_from([0, 100, 3600]),
    "absolute_timeout": st.sampled_from([0, 1000, 86400]),
    "remember": st.booleans(),
    "remember_rolling_timeout": st.sampled_from([0, 500, 604800]),
    "remember_absolute_timeout": st.sampled_from([0, 3000, 2592000]),
    "request_headers": st.none() | st.lists(st.sampled_from(SESSION_HEADERS), max_size=4),
    "response_headers": st.none() | st.lists(st.sampled_from(SESSION_HEADERS), max_size=4),
    "read_body_for_logout": st.booleans(),
    "logout_methods": st.sampled_from([["POST", "DELETE"], ["GET"], ["GET", "POST", "DELETE"]]),
    "cookie_name": st.sampled_from(["session", "Sess"]),
})
STEPS = st.fixed_dictionaries({
    "advance": st.sampled_from([0, 0, 1, 30, 59, 61, 62, 75, 76, 91, 100, 500, 901, 2000, 2701, 3601, 90000,
                                700000]),
    "plugin": st.sampled_from([0, 0, 1]),
    "method": st.sampled_from([b"GET", b"POST", b"DELETE", b"PUT"]),
    "target": st.sampled_from([b"/", b"/", b"/?session_logout=true", b"/?a=1&session_logout", b"/?session_logout=",
                               b"/?x=session_logout", b"/?"]),
    "body": st.none() | st.sampled_from([
        (b"application/x-www-form-urlencoded", b"session_logout=1"), (b"application/json", b'{"session_logout":false}'),
        (b"application/json", b'{"session_logout":null}'), (b"application/json", b"[1]"), (b"text/plain", b"x")]),
    "jar": st.sampled_from(["keep"] * 8 + ["drop session", "drop remember", "tamper", "seed", "clear"]),
    "tamper_at": st.integers(0, 400),
    "seed_data": st.integers(0, len(DATA) - 1),
    "seed_audience": st.sampled_from(["default", "other"]),
    "second_cookie_header": st.sampled_from([None, None, "x=1", "SESSION=bogus"]),
    "who": st.sampled_from(["keep", "keep", "keep", "alice", "alice", "none", "anonymous", "bob", "ldap", "big"]),
    "override": st.booleans(),
    "upstream_cookie": st.sampled_from([None, None, "session", "Sess", "remember"]),
    "filters": st.sampled_from([1, 1, 1, 2]),
    "seed": st.integers(0, 2**32),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONFIGS, st.sampled_from(["default", "other"]), st.lists(STEPS, min_size=1, max_size=10))
def test_the_compiled_plugin_answers_as_the_reference_on_every_timeline(config: dict[str, Any], audience: str,
                                                                         steps: list[dict[str, Any]]) -> None:
    configs = [msgspec.convert({"secret": SECRET, **config}, SessionConfig),
               msgspec.convert({"secret": SECRET, **config, "audience": audience}, SessionConfig)]
    compiled = [SessionPolicy(c, DIRECTORY) for c in configs]
    reference = [RefPolicy(c, DIRECTORY) for c in configs]
    jar: dict[str, str] = {}
    now = T0
    for step in steps:
        now += step["advance"]
        action = step["jar"]
        if action == "clear":
            jar.clear()
        elif action.startswith("drop"):
            jar.pop(configs[0].cookie_name if action == "drop session" else configs[0].remember_cookie_name, None)
        elif action == "tamper" and jar:
            name = sorted(jar)[step["tamper_at"] % len(jar)]
            value = jar[name]
            if value:
                i = step["tamper_at"] % len(value)
                jar[name] = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1:]
        elif action == "seed":
            seeded = msgspec.convert({"secret": SECRET, **config, "audience": step["seed_audience"]}, SessionConfig)
            jar = {k: v for k, v in jar.items() if not k.startswith(configs[0].cookie_name)}
            jar.update(_seeded(seeded, DATA[step["seed_data"]], now - step["advance"], step["seed"]))
        new = _step(compiled[step["plugin"]], step, jar, now)
        old = _step(reference[step["plugin"]], step, jar, now)
        assert new == old, step
        _take(jar, new[5])


def test_a_session_that_needs_nothing_costs_header_filter_nothing() -> None:
    """The bench's case: the session authenticated the request, nothing to save, no Session-* headers."""
    config = msgspec.convert({"secret": SECRET, "idling_timeout": 0, "rolling_timeout": 0}, SessionConfig)
    jar = _seeded(config, [ALICE.id, CREDENTIAL, None], T0, 1)
    policy = SessionPolicy(config, DIRECTORY)
    step = {"method": b"GET", "target": b"/", "body": None, "second_cookie_header": None, "who": "keep",
            "override": False, "upstream_cookie": None, "filters": 1, "seed": 2}
    answered, sent, _, who, left, responses, _ = _step(policy, step, jar, T0 + 5)
    assert (answered, sent, who[:2]) == (False, [], (ALICE.id, CREDENTIAL))
    assert left[:2] == (True, OPEN) and left[4] == {}
    assert responses == [[(b"content-type", b"text/plain"), (b"set-cookie", b"other=1")]]


def test_a_cookie_value_is_read_once_and_its_data_shared_until_changed() -> None:
    """The second request with the same cookie reuses the first one's reading; changing the session's data (a
    new login) copies it, so the remembered reading keeps the cookie's data."""
    config = msgspec.convert({"secret": SECRET}, SessionConfig)
    s = Settings(config)
    jar = _seeded(config, [ALICE.id, CREDENTIAL, None], T0, 1)
    first, second = Session(s, jar.get), Session(s, jar.get)
    assert first.open(T0 + 1) is None and second.open(T0 + 2) is None
    assert len(s.readings) == 1 and first.data is second.data
    second.set_data([BOB.id, "bob-credential", None])
    assert first.get_data() == [ALICE.id, CREDENTIAL]
    third = Session(s, jar.get)
    assert third.open(T0 + 3) is None and third.get_data() == [ALICE.id, CREDENTIAL]
