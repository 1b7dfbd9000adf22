"""Kong's acl: the consumer's groups (its `acls`) against an allow or a deny list; it needs an authenticated
consumer, so it runs after the authentication policies (priority 950).

No consumer: 401 "Unauthorized"; a credential that names no consumer (ldap-auth's) and brings no groups: 403, whatever
the list. A consumer outside `allow` (or inside `deny`): 403 "You cannot consume this service"; with an allow list, a
consumer with no groups at all gets 403 when it came with a credential and 401 when it is the anonymous consumer.
Admitted: `X-Consumer-Groups: a, b` upstream (empty for a consumer without groups) unless `hide_groups_header`.
Kong's "authenticated groups" (here: those a session stored) decide instead of the consumer's own when the request
has no credential, or with `always_use_authenticated_groups`; admitted by them, the upstream gets them as
X-Authenticated-Groups (which the session sets), not X-Consumer-Groups.
"""

from __future__ import annotations

from gateway.http.server import Exchange
from gateway.pipeline.headers import set_consumer
from gateway.policies.acl.schema import AclConfig
from gateway.policies.consumers import Rejection

FORBIDDEN = Rejection(403, "You cannot consume this service")
UNAUTHORIZED = Rejection(401, "Unauthorized")


class Acl:
    name = "acl"
    priority = 950  # Kong's
    __slots__ = ("deny", "groups", "hide", "always_authenticated", "_decided")

    def __init__(self, config: AclConfig) -> None:
        self.deny = bool(config.deny)
        self.groups = frozenset((config.deny if self.deny else config.allow) or ())
        self.hide = config.hide_groups_header
        self.always_authenticated = config.always_use_authenticated_groups
        # A configured consumer's groups -> admitted, as Kong caches by the groups table kong.cache holds for a
        # consumer (kong/plugins/acl/handler.lua:116-122): bounded by the config. Groups a token brings (alone or
        # added to its consumer's) are decided each time, as Kong decides authenticated_groups (:76, :90).
        self._decided: dict[tuple[str, ...], bool] = {}

    async def access(self, ex: Exchange) -> bool:
        who = ex.consumer
        if who is None:
            await UNAUTHORIZED.send(ex)
            return True
        authenticated = who.authenticated_groups
        if authenticated is not None and (who.credential_id is None or self.always_authenticated):
            if (not self.groups.isdisjoint(authenticated)) == self.deny:  # (the session sent them upstream)
                await FORBIDDEN.send(ex)
                return True
            return False
        groups = who.groups
        if not groups and (not self.deny or who.id is None):
            await (UNAUTHORIZED if who.credential_id is None else FORBIDDEN).send(ex)
            return True
        admitted = self._decided.get(groups)
        if admitted is None:
            admitted = (not self.groups.isdisjoint(groups)) != self.deny
            consumer = who.consumer
            if consumer is not None and groups is consumer.groups:  # only a configured consumer's own: see _decided
                self._decided[groups] = admitted
        if not admitted:
            await FORBIDDEN.send(ex)
            return True
        if not self.hide:  # an empty X-Consumer-Groups for none (Kong's concat of no groups; 18-acl spec)
            set_consumer(ex, who.with_groups_header())
        return False
