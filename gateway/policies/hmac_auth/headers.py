"""kong.request.get_header as hmac-auth calls it (kong/tools/http.lua get_header), over a request's headers read
in one pass: the names it asks for are prepared once (`HeaderName`), the lines grouped once per request
(`RequestHeaders`). The answers are gateway.policies.header_list.request_header's, which reads the whole list for
each name: nginx's $http_<name> joins every line whose name matches it, any case, "-" and "_" alike (`x_date` is an
X-Date), and a joined value holding ", " is looked up again in get_headers()' table."""

from __future__ import annotations

from bisect import bisect_left

from gateway.http.codec import Headers
from gateway.policies.header_list import KNOWN_VARIABLES
from gateway.routing.router import MAX_REQ_HEADERS  # lua_max_req_headers, the lines get_headers() reads


class HeaderName:
    """A name get_header is called with: the lines its $http_ variable joins (`key`: lower case, "_" as "-"; only
    lines spelled exactly so for nginx's own Host, User-Agent, Referer, Via, X-Forwarded-For and Cookie), their
    separator, and the names get_headers()' table is read with (as given, then lua-resty-core's metatable: lower
    case, then that with "_" as "-")."""

    __slots__ = ("key", "exact", "sep", "table")

    def __init__(self, name: bytes) -> None:
        key = name.lower().replace(b"_", b"-")
        known = KNOWN_VARIABLES.get(key)
        self.key = key
        self.exact = known is not None
        self.sep = known if known is not None else b", "
        lowered = name.lower()
        self.table = tuple(dict.fromkeys((name, lowered, key) if b"_" in name else (name, lowered)))


class RequestHeaders:
    """One request's header lines grouped by the name their $http_ variable has (indices into the list, in order),
    so that each get_header is a dict lookup."""

    __slots__ = ("headers", "groups", "cleared")

    def __init__(self, headers: Headers) -> None:
        self.headers = headers
        self.cleared: list[int] = []  # lines clear_header took out (ascending): later lines move up in get_headers()
        groups: dict[bytes, list[int]] = {}
        for at, (name, _) in enumerate(headers):
            key = name.replace(b"_", b"-")  # (names come lower-cased)
            group = groups.get(key)
            if group is None:
                groups[key] = [at]
            else:
                group.append(at)
        self.groups = groups

    def get(self, name: HeaderName) -> bytes | None:
        """kong.request.get_header(name): the joined value when it holds no ", ", else get_headers()[name]'s first
        value (among the first MAX_REQ_HEADERS lines)."""
        group = self.groups.get(name.key)
        if group is None:
            return None
        headers = self.headers
        lines = [at for at in group if headers[at][0] == name.key] if name.exact else group
        if not lines:
            return None
        value = headers[lines[0]][1] if len(lines) == 1 else name.sep.join([headers[at][1] for at in lines])
        if b", " not in value:
            return value
        cleared = self.cleared
        for spelling in name.table:
            for at in group:
                if at - bisect_left(cleared, at) >= MAX_REQ_HEADERS:  # (its place among the lines left)
                    break
                if headers[at][0] == spelling:
                    return headers[at][1]
        return None

    def forget(self, name: bytes) -> None:
        """After kong.service.request.clear_header(name) (a lower-case name): its lines are no longer read. One
        spelled with "_" for "-" stays, as ngx.req.clear_header matches the name only."""
        key = name.replace(b"_", b"-")
        group = self.groups.get(key)
        if group is None:
            return
        kept = [at for at in group if self.headers[at][0] != name]
        self.cleared = sorted(self.cleared + [at for at in group if self.headers[at][0] == name])
        if kept:
            self.groups[key] = kept
        else:
            del self.groups[key]
