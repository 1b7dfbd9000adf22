"""Kong AI Gateway's ai-mcp-proxy plugin config, in `mode: passthrough-listener` (the gateway in front of MCP servers,
governing them per tool). Kong's other modes turn REST APIs into MCP tools, which this gateway does not do: they are
refused, as are the keys that only they use (a tool's method/path/parameters, `server`), unless null: Kong stores
every unset key as null, so its export of a passthrough-listener plugin holds `server: null`."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from gateway.config.decode import not_built

Subjects = list[Annotated[str, msgspec.Meta(min_length=1)]]

_PASSTHROUGH = "mode passthrough-listener (in front of existing MCP servers, governing them per tool)"
# Kong's modes the gateway does not build: what each does (developer.konghq.com ai-mcp-proxy, "Modes")
_MODES = {"conversion-listener": "it turns the route's REST API into MCP tools and serves them as an MCP server",
          "conversion-only": "it turns the route's REST API into MCP tools for listener plugins",
          "listener": "it serves as one MCP server the tools of conversion-only plugins (by server.tag)"}
_SERVER = ("used only by modes conversion-listener and listener (Kong as the MCP server), which the gateway does not "
           "build; remove it (in passthrough-listener mode the MCP server is the service)")
_CONVERSION = ("used only by modes conversion-only and conversion-listener (a tool made of a REST API), which the "
               "gateway does not build; remove it (in passthrough-listener mode a tool is the server's, named by name)")
# A tool's keys that describe the REST API it is made of (Kong's tools[].method, path, ...)
_TOOL_KEYS = dict.fromkeys(("method", "path", "host", "scheme", "headers", "query", "parameters", "request_body",
                            "responses", "annotations"), _CONVERSION)


def mode_refusal(mode: str) -> str | None:
    """Why the gateway refuses `mode` (None: passthrough-listener, which it builds)."""
    if mode == "passthrough-listener":
        return None
    if mode in _MODES:
        return (f"mode: {mode!r} is not supported: {_MODES[mode]}, which the gateway does not build; it builds "
                f"{_PASSTHROUGH}")
    return (f"mode: {mode!r} is not supported: the gateway builds {_PASSTHROUGH}; Kong's other modes, "
            f"{', '.join(sorted(_MODES))}, are not built")


class Acl(msgspec.Struct, forbid_unknown_fields=True):
    """Who may use a tool: `deny` wins over `allow`; no `allow` list lets everyone not denied in."""

    allow: Subjects | None = None
    deny: Subjects | None = None


class Tool(msgspec.Struct, forbid_unknown_fields=True):
    """A tool of the upstream MCP servers, by its exact name, with its access control."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    description: str | None = None  # Kong requires it for every tool; in passthrough mode it only documents
    acl: Acl | None = None


class DefaultAcl(msgspec.Struct, forbid_unknown_fields=True):
    scope: Literal["tools"] = "tools"
    allow: Subjects | None = None
    deny: Subjects | None = None


class Logging(msgspec.Struct, forbid_unknown_fields=True):
    log_audits: bool = False  # an audit line per tools/call (gateway.mcp.audit, to gateway.mcp.audit_log)
    log_payloads: bool = False
    log_statistics: bool = False

    def __post_init__(self) -> None:
        for name in ("log_payloads", "log_statistics"):
            if getattr(self, name):
                raise ValueError(f"logging.{name}: not supported (the gateway writes one audit line per tools/call "
                                 "with logging.log_audits, to gateway.mcp.audit_log, without payloads)")


class AiMcpProxyConfig(msgspec.Struct, forbid_unknown_fields=True):
    # Kong stores an unset tools, default_acl or logging as null, which its plugin reads as none
    NULL_AS: ClassVar[dict[str, Any]] = {"tools": [], "default_acl": [], "logging": {}}

    mode: str
    tools: list[Tool] = []
    default_acl: list[DefaultAcl] = []
    include_consumer_groups: bool = False
    consumer_identifier: Literal["username", "consumer_id", "custom_id"] = "username"
    acl_attribute_type: Literal["consumer", "oauth_access_token"] = "consumer"
    access_token_claim_field: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    max_request_body_size: Annotated[int, msgspec.Meta(ge=0)] = 1 << 20
    logging: Logging = msgspec.field(default_factory=Logging)

    def __post_init__(self) -> None:
        refusal = mode_refusal(self.mode)
        if refusal is not None:
            raise ValueError(refusal)
        if self.max_request_body_size == 0:
            raise ValueError("max_request_body_size: 0 (unlimited) is not supported: the gateway reads each MCP "
                             "body whole to judge it; give a size in bytes (default 1048576)")
        names = [t.name for t in self.tools]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"tools: the tool {name!r} is listed twice")
        if len(self.default_acl) > 1:
            raise ValueError("default_acl: one entry for scope tools (the only scope of passthrough-listener mode)")
        if self.acl_attribute_type == "oauth_access_token":
            if self.access_token_claim_field is None:
                raise ValueError("access_token_claim_field: required when acl_attribute_type is oauth_access_token")
            if self.include_consumer_groups:
                raise ValueError("include_consumer_groups: consumer groups are subjects only with acl_attribute_type "
                                 "consumer")
        elif self.access_token_claim_field is not None:
            raise ValueError("access_token_claim_field: only with acl_attribute_type oauth_access_token")

    @classmethod
    def not_built(cls, config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """`config` without the keys of the modes the gateway does not build, and why each that configures something
        is refused (before decoding: in Kong's other modes a tool has other keys). A mode it does not build is
        reported alone: nothing else in such a config would apply."""
        mode = config.get("mode")
        refusal = mode_refusal(mode) if isinstance(mode, str) else None
        if refusal is not None:
            return {}, [refusal]
        config, refused = not_built(config, {"server": _SERVER})
        tools = config.get("tools")
        if not isinstance(tools, list) or not any(isinstance(t, dict) and t.keys() & _TOOL_KEYS for t in tools):
            return config, refused
        kept = []
        for i, tool in enumerate(tools):
            if isinstance(tool, dict):
                tool, wrong = not_built(tool, _TOOL_KEYS)
                refused += [f"tools[{i}].{message}" for message in wrong]
            kept.append(tool)
        return {**config, "tools": kept}, refused
