"""Kong's session plugin (kong/plugins/session: access.lua, header_filter.lua, session.lua) with cookie storage.

access (priority 1900, before the authentication plugins):
- no valid session for the plugin's audience in the request's cookie: nothing (the request goes on);
- a logout request (its method in logout_methods, and logout_query_arg in the query, or with read_body_for_logout
  logout_post_arg in a POST or DELETE body): the session is destroyed (its cookies expired) and Kong's answer is
  200 with no body;
- the session's consumer no longer exists: the session is destroyed, the request goes on unauthenticated;
- otherwise the session authenticates the request as its consumer and credential (X-Consumer-*, X-Credential-
  Identifier; X-Authenticated-Groups when the session stored groups), so authentication plugins configured with
  `anonymous` pass it on (Kong's logical OR), and the session is refreshed (rolling / idling rules, see lifecycle).

header_filter: a request that another plugin authenticated with a credential and a consumer, without a session of
that same consumer and credential, gets a new session: a Set-Cookie (replacing an upstream cookie of the same
name). Session-* response headers (response_headers) go with a session that authenticated or was made.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.http.codec import Headers
from gateway.http.cookies import cookie_value
from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.pipeline.headers import set_consumer
from gateway.policies.consumers import Directory, Identity, header_value, query_values
from gateway.policies.header_list import set_header
from gateway.policies.request_body import get_body
from gateway.policies.session.lifecycle import HEADERS, OPEN, READINGS, Contents, Session, Settings
from gateway.policies.session.schema import SessionConfig

BODY_LIMIT = 1024 * 1024  # bytes of a body searched for logout_post_arg; a larger one holds none
READ_BODY_METHODS = frozenset({b"DELETE", b"PATCH", b"POST", b"PUT"})  # Kong's: the methods whose body it reads
COOKIE_HEADERS = 1024  # (Cookie header, cookie name) lookups remembered per plugin instance and worker
IDENTITIES = 4096  # (consumer, credential, groups) identities remembered per plugin instance and worker
_STATE = "session-plugin"  # Exchange.state key: the request's _Request
_UNREAD: Any = object()  # a lookup not remembered

clock = time.time  # the wall clock (tests replace it)


class _Request:
    """What access leaves for header_filter: the request's session, whether it authenticated the request, and the
    identity it gave while the session's data is still what named it (header_filter then need not compare them)."""

    __slots__ = ("session", "authenticated", "identity")

    def __init__(self, session: Session, identity: Identity | None) -> None:
        self.session = session
        self.authenticated = identity is not None
        self.identity = identity


class SessionPolicy:
    name = "session"
    priority = 1900  # Kong's

    __slots__ = ("settings", "directory", "logout_methods", "logout_query_arg", "logout_post_arg",
                 "request_headers", "response_headers", "_identities", "_cookies", "_data_identities")

    def __init__(self, config: SessionConfig, directory: Directory) -> None:
        self.settings = Settings(config)
        self.directory = directory
        self.logout_methods = frozenset(m.encode() for m in config.logout_methods)
        self.logout_query_arg = config.logout_query_arg
        self.logout_post_arg = config.logout_post_arg if config.read_body_for_logout else None
        self.request_headers = [(HEADERS[n].lower().encode(), n) for n in config.request_headers or ()]
        self.response_headers = [(HEADERS[n].lower().encode(), n) for n in config.response_headers or ()]
        self._identities: Memo[tuple[str, str | None, tuple[str, ...] | None], Identity] = Memo(IDENTITIES)
        # A Cookie header's value of a cookie name, by the header's bytes and the name: a browser sends the same
        # header until a cookie changes, so it is parsed once, not per request.
        self._cookies: Memo[tuple[bytes, str], str | None] = Memo(COOKIE_HEADERS)
        # The identity of a remembered cookie's data (Session.contents), or None when its consumer is gone
        self._data_identities: Memo[Contents | None, Identity | None] = Memo(READINGS)

    def _session(self, ex: Exchange) -> Session:
        headers = ex.request.headers
        cookies = self._cookies

        def cookie(name: str) -> str | None:
            """nginx's $cookie_NAME (consumers.cookie_value), one Cookie header at a time."""
            for hname, line in headers:
                if hname == b"cookie":
                    key = (line, name)
                    value = cookies.get(key, _UNREAD)
                    if value is _UNREAD:
                        found = cookie_value([(hname, line)], name.lower().encode("latin-1"))
                        value = cookies.keep(key, found.decode("latin-1") if found is not None else None)
                    if value is not None:
                        return value
            return None

        return Session(self.settings, cookie)

    async def access(self, ex: Exchange) -> bool:
        now = int(clock())
        session = self._session(ex)
        if session.open(now) is not None:
            if session.set_cookies:  # a remember cookie saved before the session cookie could not be
                _keep(ex, _Request(session, None))
            return False
        req = ex.request
        # Kong's session.logout(conf): the method, then the query argument, then (read_body_for_logout) the body
        if req.method in self.logout_methods and (_in_query(req.target, self.logout_query_arg)
                                                  or await self._logout_in_body(ex)):
            session.logout(now)
            _keep(ex, _Request(session, None))
            await ex.send_head(200, [(b"content-length", b"0")], b"", end=True)
            return True
        who = self._data_identities.get(session.contents, _UNREAD)  # (None, the session's own data, is never kept)
        if who is _UNREAD:
            who = self._identity(session.get_data())
            if session.contents is not None:
                self._data_identities.keep(session.contents, who)
        if who is None:  # Kong destroys a session whose consumer is gone
            session.logout(now)
            _keep(ex, _Request(session, None))
            return False
        session.refresh(now)
        if self.request_headers:
            headers = list(ex.request.headers)
            for hname, prop in self.request_headers:
                value = session.property(prop)
                if value is not None:
                    set_header(headers, hname, value.encode())
            ex.request.headers = headers
        _keep(ex, _Request(session, who))
        set_consumer(ex, who)  # (its X-Authenticated-Groups is in its upstream headers already: _identity)
        return False

    def header_filter(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        state = ex.state.get(_STATE) if ex.state is not None else None
        if state is None:
            cookies: dict[str, str] = {}
            authenticated = None
        else:
            cookies = state.session.set_cookies
            authenticated = state.session if state.authenticated else None
        who = ex.consumer
        if who is not None and who.credential_id is not None and who.id is not None \
                and (state is None or who is not state.identity):
            data = authenticated.get_data() if authenticated is not None else None
            if _item(data, 0) != who.id or _item(data, 1) != who.credential_id:
                now = int(clock())
                if state is not None:
                    state.identity = None  # the session's data changes: a later header_filter compares it again
                fresh = authenticated
                if fresh is None:
                    fresh = self._session(ex)
                    fresh.open(now)
                groups = getattr(who, "authenticated_groups", None)
                fresh.set_data([who.id, who.credential_id, list(groups) if groups else None])
                fresh.set_subject(who.username if who.username is not None
                                  else who.custom_id if who.custom_id is not None else who.id)
                fresh.save(now)
                cookies = {**cookies, **fresh.set_cookies}
                authenticated = fresh if fresh.state == OPEN else None
        for name, line in cookies.items():
            _merge_cookie(headers, name, line.encode("latin-1"))
        if authenticated is not None:
            for hname, prop in self.response_headers:
                value = authenticated.property(prop)
                if value is not None:
                    set_header(headers, hname, value.encode())
        return headers

    async def _logout_in_body(self, ex: Exchange) -> bool:
        """With read_body_for_logout, whether logout_post_arg is in the body (a POST, PUT, PATCH or DELETE)."""
        req = ex.request
        name = self.logout_post_arg
        if name is None or req.method not in READ_BODY_METHODS:
            return False
        raw, whole = await ex.read_body(BODY_LIMIT)
        body = get_body(header_value(req.headers, b"content-type"), raw) if whole else None
        if body is None or not isinstance(body[1], dict) or name not in body[1]:
            return False
        return body[1][name] is not False  # Lua: anything but nil and false is true (JSON null is cjson.null)

    def _identity(self, data: Any) -> Identity | None:
        """The request's identity as Kong's session access sets it from the session's data (consumer id,
        credential id, groups): None when that consumer does not exist; the credential id as
        X-Credential-Identifier (none, and X-Anonymous-Consumer, without one), the stored groups as
        X-Authenticated-Groups."""
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            return None
        consumer = self.directory.consumers.get(data[0])
        if consumer is None:
            return None
        credential_id = data[1] if len(data) > 1 else None
        groups = data[2] if len(data) > 2 else None
        credential = credential_id if isinstance(credential_id, str) and credential_id else None
        names = tuple(groups) if isinstance(groups, list) and groups and all(isinstance(g, str) for g in groups) \
            else None
        key = (consumer.id, credential, names)
        who = self._identities.get(key)
        if who is None:
            who = consumer.identity(credential, credential)
            if names is not None:
                who.upstream_headers.append((b"x-authenticated-groups", ", ".join(names).encode()))
                who.authenticated_groups = names
            self._identities.keep(key, who)
        return who


def _keep(ex: Exchange, state: _Request) -> None:
    if ex.state is None:
        ex.state = {_STATE: state}
    else:
        ex.state[_STATE] = state


def _in_query(target: bytes, name: str) -> bool:
    """Whether query argument `name` is in the target (query_values, for a target that has a query)."""
    return b"?" in target and bool(query_values(target, name))


def _item(data: Any, i: int) -> Any:
    """data[i + 1] of a Lua table: None when data is no array or is shorter."""
    return data[i] if isinstance(data, list) and len(data) > i else None


def _merge_cookie(headers: Headers, name: str, line: bytes) -> None:
    """resty-session's merge_cookies: the Set-Cookie of that name replaced, or one more."""
    prefix = name.encode("latin-1") + b"="
    for i, (hname, value) in enumerate(headers):
        if hname == b"set-cookie" and value.startswith(prefix):
            headers[i] = (b"set-cookie", line)
            return
    headers.append((b"set-cookie", line))
