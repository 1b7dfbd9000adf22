"""Kong's session plugin config (kong/plugins/session/schema.lua), with its deprecated shorthands.

Kong's string fields refuse "" (its schema's implicit len_min 1). The shorthands of Kong 2.x (cookie_lifetime,
cookie_idletime, cookie_renew, cookie_discard, cookie_samesite, cookie_httponly, cookie_persistent) are still
accepted and, as in Kong (they have no `deprecation`), win over the field they fill.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import msgspec

Text = Annotated[str, msgspec.Meta(min_length=1)]  # Kong's string: never empty
# What a Set-Cookie can carry as it is (Kong would write any bytes into the header): a cookie name is an RFC 6265
# token; a path or domain is visible ASCII without ";".
CookieName = Annotated[str, msgspec.Meta(pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")]
CookieAttribute = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x3a\x3c-\x7e]+\Z")]
Seconds = float  # Kong's `number`: any number, a fraction or negative included (Kong checks no range)
SameSite = Literal["Strict", "Lax", "None", "Default"]
SessionHeader = Literal["id", "audience", "subject", "timeout", "idling-timeout", "rolling-timeout",
                        "absolute-timeout"]
LogoutMethod = Literal["GET", "POST", "DELETE"]

SECONDS = ("idling_timeout", "rolling_timeout", "absolute_timeout", "stale_ttl", "remember_rolling_timeout",
           "remember_absolute_timeout")
NO_SECRET = ("secret: required by this gateway. Without one Kong makes a random secret per node; the gateway's "
             "worker processes each load the config, so a random one would differ between them and a session made "
             "by one worker would be refused by the others (and one derived from the config could be guessed). "
             "Set a long random string, the same on every gateway host that shares the sessions")
KONG_STORAGE = ("storage: kong keeps sessions in Kong's database, which this gateway does not have; use storage "
                "cookie (the session, encrypted, in the cookie itself)")


class SessionConfig(msgspec.Struct, forbid_unknown_fields=True):
    # null: nil, handed to lua-resty-session 4.0.5's new (session.lua:26-47), which reads it as its own default
    # (`configuration.x or DEFAULT_X`): Kong's but for cookie_same_site (Lax) and cookie_secure (none: off); the
    # logout settings are skipped when nil (session.lua:90-117) (gateway.config.decode)
    NULL_AS: ClassVar[dict[str, Any]] = {
        "storage": "cookie", "audience": "default", "idling_timeout": 900, "rolling_timeout": 3600,
        "absolute_timeout": 86400, "stale_ttl": 10, "cookie_name": "session", "cookie_path": "/",
        "cookie_same_site": "Lax", "cookie_http_only": True, "cookie_secure": False, "remember": False,
        "remember_cookie_name": "remember", "remember_rolling_timeout": 604800,
        "remember_absolute_timeout": 2592000, "read_body_for_logout": False, "logout_methods": [],
        "hash_subject": False, "store_metadata": False}

    secret: Text | None = None
    storage: Literal["cookie", "kong"] = "cookie"
    audience: Text = "default"
    idling_timeout: Seconds = 900
    rolling_timeout: Seconds = 3600
    absolute_timeout: Seconds = 86400
    stale_ttl: Seconds = 10  # only used with storage kong (how long a replaced session stays readable)
    cookie_name: CookieName = "session"
    cookie_path: CookieAttribute = "/"
    cookie_domain: CookieAttribute | None = None
    cookie_same_site: SameSite = "Strict"
    cookie_http_only: bool = True
    cookie_secure: bool = True
    remember: bool = False
    remember_cookie_name: CookieName = "remember"
    remember_rolling_timeout: Seconds = 604800
    remember_absolute_timeout: Seconds = 2592000
    response_headers: list[SessionHeader] | None = None
    request_headers: list[SessionHeader] | None = None
    read_body_for_logout: bool = False
    logout_methods: list[LogoutMethod] = msgspec.field(default_factory=lambda: ["POST", "DELETE"])
    logout_query_arg: Text = "session_logout"
    logout_post_arg: Text = "session_logout"
    hash_subject: bool = False  # only used with storage kong and store_metadata
    store_metadata: bool = False  # only used with storage kong
    # Kong 2.x's names (Kong's shorthand_fields)
    cookie_lifetime: Seconds | None = None  # -> rolling_timeout
    cookie_idletime: Seconds | None | msgspec.UnsetType = msgspec.UNSET  # -> idling_timeout (null: 0)
    cookie_renew: Seconds | None = None  # ignored by Kong 3.x ("cookie_renew option does not exists anymore")
    cookie_discard: Seconds | None = None  # -> stale_ttl
    cookie_samesite: str | None = None  # -> cookie_same_site ("off": Lax)
    cookie_httponly: bool | None = None  # -> cookie_http_only
    cookie_persistent: bool | None = None  # -> remember

    def __post_init__(self) -> None:
        self._apply_shorthands()
        if self.storage == "kong":
            raise ValueError(KONG_STORAGE)
        if self.secret is None:
            raise ValueError(NO_SECRET)
        for name in SECONDS:
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite number of seconds")
        # Kong's `set`s: a repeated element counts once
        if self.response_headers is not None:
            self.response_headers = list(dict.fromkeys(self.response_headers))
        if self.request_headers is not None:
            self.request_headers = list(dict.fromkeys(self.request_headers))
        self.logout_methods = list(dict.fromkeys(self.logout_methods))

    def _apply_shorthands(self) -> None:
        if self.cookie_lifetime is not None:
            self.rolling_timeout = self.cookie_lifetime
        if self.cookie_idletime is not msgspec.UNSET:
            self.idling_timeout = 0 if self.cookie_idletime is None else self.cookie_idletime
        if self.cookie_discard is not None:
            self.stale_ttl = self.cookie_discard
        if self.cookie_samesite is not None:
            same_site = "Lax" if self.cookie_samesite == "off" else self.cookie_samesite
            if same_site not in ("Strict", "Lax", "None", "Default"):
                raise ValueError(f"cookie_samesite: expected one of: Strict, Lax, None, Default (or off), got "
                                 f"{self.cookie_samesite!r}")
            self.cookie_same_site = same_site  # type: ignore[assignment]  # checked just above
        if self.cookie_httponly is not None:
            self.cookie_http_only = self.cookie_httponly
        if self.cookie_persistent is not None:
            self.remember = self.cookie_persistent
