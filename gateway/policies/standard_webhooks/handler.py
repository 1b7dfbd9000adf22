"""Kong's standard-webhooks (3.8): a webhook is let through only when it carries `webhook-id`, `webhook-timestamp`
and `webhook-signature`, its timestamp is no older than `tolerance_second`, it has a body, and the signature is
`v1,` + base64(HMAC-SHA256(secret_v1, "<id>.<timestamp>.<body>")). Anything else is answered 400 (Kong's "Bad
request"), whatever failed, as Kong answers.

As in Kong's handler: the secret is the HMAC key as written (not base64-decoded); the signature header must equal
the expected one (one signature, no list); a timestamp in the future passes; the timestamp is read as Lua's
tonumber reads it (0 when it is not a number, which fails the age check) and signed as Lua writes that number back.
Not LuaJIT's "inf" and "nan" (its tonumber reads them, and now - inf is never past the tolerance: a webhook signed with
one could be replayed for ever); they are no number here.
The body is read whole, up to BODY_LIMIT (Kong reads it from its 8 KiB buffer; a larger body is "missing" there).
"""

from __future__ import annotations

import hmac
import math
import time
from base64 import b64encode
from hashlib import sha256

from gateway.http.server import Exchange
from gateway.policies.cjson import lua_string as lua_string  # re-exported: response-ratelimiting imports it here
from gateway.policies.luanumber import tonumber
from gateway.policies.standard_webhooks.schema import StandardWebhooksConfig
from gateway.routing.router import MAX_REQ_HEADERS

BODY_LIMIT = 1024 * 1024  # bytes; a longer body is refused as a missing one


def lua_number(text: bytes) -> float | None:
    """Lua's tonumber of a header value, or None; None for an infinite or NaN one too (the README: Kong lets those
    pass the age check for ever, a signed webhook replayable without end)."""
    if text.isdigit() and len(text) < 16:  # what clients send: seconds since the epoch
        return float(text)
    number = tonumber(text.decode("latin-1"))
    return number if number is not None and math.isfinite(number) else None


def signature(keyed: hmac.HMAC, webhook_id: bytes, timestamp: bytes, body: bytes) -> bytes:
    """The webhook-signature value Kong expects: `v1,` and the base64 of the HMAC-SHA256 (`keyed`: an HMAC of the
    secret over nothing yet, copied: its key schedule is done once)."""
    mac = keyed.copy()
    mac.update(webhook_id + b"." + timestamp + b"." + body)
    return b"v1," + b64encode(mac.digest())


class StandardWebhooks:
    name = "standard-webhooks"
    priority = 760  # Kong's

    def __init__(self, config: StandardWebhooksConfig) -> None:
        self.keyed = hmac.new(config.secret_v1.encode(), digestmod=sha256)
        self.tolerance = config.tolerance_second

    async def access(self, ex: Exchange) -> bool:
        webhook_id = given = timestamp = None
        headers = ex.request.headers
        if len(headers) > MAX_REQ_HEADERS:
            headers = headers[:MAX_REQ_HEADERS]  # kong.request.get_headers(): the first 100 lines only
        for name, value in headers:  # the first of each, as Kong's getHeader takes
            if name[:8] == b"webhook-":
                if name == b"webhook-id":
                    webhook_id = value if webhook_id is None else webhook_id
                elif name == b"webhook-signature":
                    given = value if given is None else given
                elif name == b"webhook-timestamp":
                    timestamp = value if timestamp is None else timestamp
        if webhook_id is None or given is None or timestamp is None:
            await ex.respond_error(400)
            return True
        ts = lua_number(timestamp)
        if ts is None:
            ts = 0.0
        if time.time() - ts > self.tolerance:
            await ex.respond_error(400)
            return True
        body, whole = await ex.read_body(BODY_LIMIT)
        if not body or not whole:
            await ex.respond_error(400)
            return True
        if not hmac.compare_digest(given, signature(self.keyed, webhook_id, lua_string(ts), body)):
            await ex.respond_error(400)
            return True
        return False
