"""A session's life, sans-I/O: lua-resty-session 4.0's open / save / touch / refresh / logout / destroy with
Kong's settings, over a cookie lookup and a clock value passed in; what a response must carry comes out as
Set-Cookie lines (`set_cookies`).

The rules (times in whole seconds; a timeout of 0 is off):
1. A cookie is a session when its header is ours, its mac is right, and at `now`:
   now - created <= absolute_timeout; now - created - rolling_offset <= rolling_timeout;
   now - created - rolling_offset - idling_offset <= idling_timeout (the remember cookie: its own absolute and
   rolling timeouts, no idling). Then its data must decrypt, and hold an entry for the plugin's audience.
2. A cookie holds one entry per audience: [data, audience, subject]. One for another audience only is no session,
   but a session saved then keeps the others' entries (and the cookie's creation time).
3. With `remember`, a missing or expired session cookie is made again from a valid remember cookie (both are saved
   anew: the session with a new creation time).
4. refresh: past 3/4 of rolling_timeout since the last save, save (a new cookie: new id, the same creation time,
   rolling offset = now - created); else, more than TOUCH_THRESHOLD seconds idle, touch (the same ciphertext, a new
   idling offset in a new header).
5. logout: the only audience's session is destroyed (its cookies, and the remember cookie's, expired); with other
   audiences in the cookie, only this audience's entry leaves it.

A browser sends the same cookie until the session is saved anew, so what a value says whatever the time (its
header, mac, ciphertext and decrypted data: `Reading`) is worked out once per value; only rule 1's timeouts are
checked per request, and an opened session shares the remembered data until it changes it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from gateway.memo import Memo
from gateway.policies.session import seal
from gateway.policies.session.schema import SessionConfig

TOUCH_THRESHOLD = 60  # seconds idle before refresh re-sends the header (resty-session's default; Kong keeps it)
MAX_TTL = 34560000  # 400 days: the longest Max-Age of a remember cookie (RFC 6265bis)
READINGS = 1024  # cookie values whose reading (Reading) a plugin remembers, of each of its two cookies
EXPIRE_FLAGS = "; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0"
NEW, OPEN, CLOSED = "new", "open", "closed"

# Kong's request_headers / response_headers names -> the header
HEADERS = {"id": "Session-Id", "audience": "Session-Audience", "subject": "Session-Subject",
           "timeout": "Session-Timeout", "idling-timeout": "Session-Idling-Timeout",
           "rolling-timeout": "Session-Rolling-Timeout", "absolute-timeout": "Session-Absolute-Timeout"}

CookieLookup = Callable[[str], str | None]  # nginx's $cookie_NAME: a cookie's value in the request, or None


class Settings:
    """A plugin's session settings, made once per config load."""

    __slots__ = ("keys", "audience", "cookie_name", "remember_cookie_name", "cookie_flags", "idling_timeout",
                 "rolling_timeout", "absolute_timeout", "remember", "remember_rolling_timeout",
                 "remember_absolute_timeout", "request_headers", "response_headers", "save_after", "readings",
                 "remember_readings")

    def __init__(self, config: SessionConfig) -> None:
        self.keys = seal.Keys(config.secret or "")
        self.audience = config.audience
        self.cookie_name = config.cookie_name
        self.remember_cookie_name = config.remember_cookie_name
        self.cookie_flags = cookie_flags(config)
        self.idling_timeout = config.idling_timeout
        self.rolling_timeout = config.rolling_timeout
        self.absolute_timeout = config.absolute_timeout
        self.remember = config.remember
        self.remember_rolling_timeout = config.remember_rolling_timeout
        self.remember_absolute_timeout = config.remember_absolute_timeout
        self.request_headers = tuple(config.request_headers or ())
        self.response_headers = tuple(config.response_headers or ())
        self.save_after = math.ceil(config.rolling_timeout * 0.75)  # refresh's: seconds since the last save
        # The readings of the session and remember cookie values lately sent, by their value
        self.readings: Memo[str, Reading] = Memo(READINGS)
        self.remember_readings: Memo[str, Reading] = Memo(READINGS)


def cookie_flags(config: SessionConfig) -> str:
    """The attributes after every Set-Cookie's value, as resty-session writes them (SameSite=None forces Secure;
    a domain of localhost is left out)."""
    flags = ""
    if config.cookie_domain and config.cookie_domain != "localhost":
        flags += "; Domain=" + config.cookie_domain
    flags += f"; Path={config.cookie_path}; SameSite={config.cookie_same_site}"
    if config.cookie_secure or config.cookie_same_site == "None":
        flags += "; Secure"
    if config.cookie_http_only:
        flags += "; HttpOnly"
    return flags


class Meta:
    """What an opened or saved cookie says about its session."""

    __slots__ = ("timestamp", "flags", "sid", "creation_time", "rolling_offset", "data_size", "idling_offset",
                 "header", "initial_chunk")

    def __init__(self, timestamp: int, flags: int, sid: bytes, creation_time: int, rolling_offset: int,
                 data_size: int, idling_offset: int, header: bytes, initial_chunk: str) -> None:
        self.timestamp = timestamp
        self.flags = flags
        self.sid = sid
        self.creation_time = creation_time
        self.rolling_offset = rolling_offset
        self.data_size = data_size
        self.idling_offset = idling_offset
        self.header = header
        self.initial_chunk = initial_chunk  # the encoded ciphertext in the first cookie (a touch re-sends it)


class Failed(Exception):
    """Why a cookie is no session (or could not be saved): resty-session's message."""


class Session:
    """One request's session, as resty-session's session object (state new, open or closed)."""

    __slots__ = ("settings", "cookie", "state", "data", "contents", "index", "meta", "remember_meta", "set_cookies")

    def __init__(self, settings: Settings, cookie: CookieLookup) -> None:
        self.settings = settings
        self.cookie = cookie
        self.state = NEW
        self.data: list[list[Any]] = [[{}, settings.audience]]  # one [data, audience, subject?] per audience
        # The remembered reading whose entries `data` is, shared with other requests: copied before it changes
        self.contents: Contents | None = None
        self.index = 0
        self.meta: Meta | None = None
        self.remember_meta: Meta | None = None
        self.set_cookies: dict[str, str] = {}  # cookie name -> its Set-Cookie value (a later one replaces it)

    # -- the data of this audience

    def get_data(self) -> Any:
        return self.data[self.index][0]

    def set_data(self, data: Any) -> None:
        self._own()[self.index][0] = data

    def set_subject(self, subject: str | None) -> None:
        entry = self._own()[self.index]
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
        if s.rolling_timeout > 0 and rolling_elapsed > s.save_after:
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
        del self._own()[self.index]
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

    def _own(self) -> list[list[Any]]:
        """The data, copied first when it is shared (to change it)."""
        if self.contents is not None:
            self.data = [entry.copy() for entry in self.data]
            self.contents = None
        return self.data

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
        readings = s.remember_readings if remember else s.readings
        reading = readings.get(cookie)
        if reading is None:
            reading = readings.keep(cookie, Reading(s, name, cookie, remember))
        header = reading.header
        if header is None:
            raise Failed(reading.failure)
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
        if not remember and s.idling_timeout != 0 and rolling_elapsed - header.idling_offset > s.idling_timeout:
            raise Failed("session idling timeout exceeded")
        if reading.failure is not None:
            raise Failed(reading.failure)
        chunks = reading.chunks
        if chunks == 1:
            initial = reading.initial
            ciphertext = reading.ciphertext
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
            decoded = seal.b64url_decode(encoded)
            if decoded is None:
                raise Failed("unable to base64url decode session data")
            ciphertext = decoded
        meta = Meta(now, header.flags, header.sid, header.creation_time, header.rolling_offset, header.data_size,
                    header.idling_offset, header.raw, initial)
        if remember:
            self.remember_meta = meta
        else:
            self.meta = meta
        if meta_only:
            return
        if chunks == 1:
            contents = reading.contents
            if contents is None:
                contents = reading.contents = Contents(s, seal.decrypt(s.keys, header, ciphertext, remember))
        else:
            contents = Contents(s, seal.unseal(s.keys, header, ciphertext, remember))
        if contents.failure is not None:
            raise Failed(contents.failure)
        if contents.index >= 0:
            self.state = OPEN
            self.data = contents.entries
            self.contents = contents if chunks == 1 else None
            self.index = contents.index
            return
        data = [entry.copy() for entry in contents.entries]
        data.append(self._own()[self.index])
        self.state = NEW
        self.data = data
        self.contents = None
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


class Reading:
    """What one cookie value says whatever the time and the other cookies, worked out once per value (a browser
    sends the same value until the session is saved anew): its header, the first of rule 1's checks that does not
    depend on `now` to fail (`failure`; with no header, the header's own), and for a value in one cookie its
    ciphertext and (once opened) its `contents`. Session._open makes the checks that depend on `now` in between."""

    __slots__ = ("header", "failure", "chunks", "initial", "ciphertext", "contents")

    def __init__(self, s: Settings, name: str, cookie: str, remember: bool) -> None:
        self.chunks = 0
        self.initial = ""
        self.ciphertext = b""
        self.contents: Contents | None = None
        self.header = seal.Header.parse(cookie)
        self.failure = self._check(s, name, cookie, remember)

    def _check(self, s: Settings, name: str, cookie: str, remember: bool) -> str | None:
        header = self.header
        if header is None:
            return "invalid session header"
        if header.flags & seal.FLAG_STORAGE:
            self.header = None
            return "invalid session flags"
        if remember and header.idling_offset != 0:
            return "invalid session idling offset"
        if not seal.authentic(s.keys, header):
            return "invalid session message authentication code"
        chunks = seal.cookie_chunks(len(name), header.data_size)
        if chunks is None:
            return "cookie size limit exceeded"
        self.chunks = chunks
        if chunks > 1:
            return None  # the rest is in the request's other cookies
        self.initial = cookie[-header.data_size:]
        if len(self.initial) != header.data_size:
            return "invalid session payload"
        ciphertext = seal.b64url_decode(self.initial)
        if ciphertext is None:
            return "unable to base64url decode session data"
        self.ciphertext = ciphertext
        return None


class Contents:
    """A session cookie's decrypted data: its entries (rule 2) and the index of the plugin's audience's (-1: none),
    or why it is no session data (`failure`)."""

    __slots__ = ("failure", "entries", "index")

    def __init__(self, s: Settings, plaintext: bytes | None) -> None:
        self.failure: str | None = None
        self.entries: list[list[Any]] = []
        self.index = -1
        if plaintext is None:
            self.failure = "unable to decrypt session data"
            return
        try:
            data = json.loads(plaintext)
        except ValueError:
            self.failure = "unable to json decode session data"
            return
        if not isinstance(data, list) or not all(isinstance(e, list) and len(e) >= 2 for e in data):
            self.failure = "invalid session data"
            return
        self.entries = data
        for i, entry in enumerate(data):
            if entry[1] == s.audience:
                self.index = i
                return


class _AudienceMissing(Failed):
    """The cookie is valid but holds nothing for this audience (rule 2): no remember fallback."""


def _lua_array(entry: list[Any]) -> list[Any]:
    """A Lua sequence as cjson writes it: trailing nils are not part of it."""
    end = len(entry)
    while end and entry[end - 1] is None:
        end -= 1
    return [_lua_array(v) if isinstance(v, list) else v for v in entry[:end]]


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return lua_number(value) if isinstance(value, (int, float)) else str(value)


def lua_number(value: float) -> str:
    """A number as Lua's tostring writes it (an integral value without ".0"; %.14g otherwise)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return f"{value:.14g}"
