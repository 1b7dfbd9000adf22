"""Per-tool access control (sans-I/O): which subjects may use which MCP tool, as ai-mcp-proxy's ACLs say.

A tool's own `acl` decides for it; a tool without one falls under the default ACL; with neither, the tool is open.
Within a rule, `deny` wins over `allow`; a rule without an `allow` list admits every subject it does not deny, one
with an `allow` list (even empty) admits only subjects in it. Subjects are strings: a consumer's username (or id,
or custom_id), its group names, or the values of an access-token claim. A caller with no subjects at all (no
consumer) passes only rules that have no `allow` list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class Rule:
    """One allow/deny pair."""

    __slots__ = ("allow", "deny")

    def __init__(self, allow: Iterable[str] | None, deny: Iterable[str] | None) -> None:
        self.allow = frozenset(allow) if allow is not None else None
        self.deny = frozenset(deny or ())

    def permits(self, subjects: frozenset[str]) -> bool:
        if not self.deny.isdisjoint(subjects):
            return False
        return self.allow is None or not self.allow.isdisjoint(subjects)


class ToolAcl:
    """The rules of one plugin instance: per tool, and the default."""

    __slots__ = ("tools", "default")

    def __init__(self, tools: dict[str, Rule], default: Rule | None) -> None:
        self.tools = tools
        self.default = default

    def rule(self, tool: str) -> Rule | None:
        return self.tools.get(tool, self.default)

    def allowed(self, tool: str, subjects: frozenset[str]) -> bool:
        rule = self.tools.get(tool, self.default)
        return rule is None or rule.permits(subjects)

    @property
    def open(self) -> bool:
        """True when no rule restricts anything (every tool is allowed to everyone)."""
        return self.default is None and not self.tools


def claim_path(field: str) -> tuple[str, ...]:
    """Kong's access_token_claim_field: a claim name, or a jq object path (".user.email")."""
    return tuple(part for part in field.removeprefix(".").split(".") if part)


SPACE_SEPARATED = frozenset({"scope", "scp"})  # RFC 9068 / RFC 8693: scopes are one space-separated string


def claim_subjects(value: object, path: Sequence[str]) -> frozenset[str]:
    """The subjects a claim value gives: a string (split on spaces for `scope` / `scp`), or a list's strings."""
    if isinstance(value, str):
        return frozenset(value.split()) if path and path[-1] in SPACE_SEPARATED else frozenset((value,))
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()
