"""Seeded, bounded fuzzing of config loading: configs that load today (tests/kongconfig/real/LOADS.txt, configs/*.yaml
and two rich ones below) are mutated structurally (keys deleted, values retyped, names and ids duplicated, references
left dangling, unknown keys and Kong's unsupported ones added, plugin configs mistyped) and textually (truncated,
invalid UTF-8, tabs, duplicate keys, YAML tags, anchors, alias bombs, recursive aliases, deep nesting, NUL, JSON).

The rules checked are the README's ("Configuration", "Plugins") and gateway/config's docstrings:
- a file either loads or is refused with ConfigError, never another exception, in well under a second; every message
  is one line naming the file and a field path (or, for text that is not YAML at all, the file and a line:column);
  the same file gives the same messages twice;
- "Unknown keys anywhere are errors"; any plugin name not built, and any config key a plugin does not enforce, is
  refused; what Kong has and the gateway does not build is refused by name ("not supported"), and set to null it
  "configures nothing and passes";
- what loads is obeyed: a number written is the number loaded (not clamped or rounded), and what the gateway builds
  from a loaded config without running (the root's supervision specs, the SSE keep-alive wheel, a rate limit's bus
  message) can be built from it.

A fuzz case that only trips a bug already minimized at the end of this file is an xfail naming it; anything else
fails, with the mutation and the file to reproduce it. CFGFUZZ_CASES=N runs N cases (default below).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import signal
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
import yaml

from gateway.bus.protocol import AskLeases, encode
from gateway.config import Config, ConfigError, path_of
from gateway.config.kong_forms import UNSUPPORTED_FIELDS, UNSUPPORTED_SECTIONS
from gateway.config.schema import GatewaySettings
from gateway.node import tree
from gateway.node.root import load_validated
from gateway.pipeline.keepalive import StreamKeepAlives
from gateway.policies import REGISTRY
from gateway.policies.rate_limiting.schema import RateLimitingConfig
from gateway.ratelimit.messages import LeaseRequest
from gateway.ratelimit.spec import LimitSpec
from gateway.runtime import check_file

REPO = Path(__file__).resolve().parents[2]
REAL = Path(__file__).parent / "real"
MASTER_SEED = 20240611
CASES = int(os.environ.get("CFGFUZZ_CASES", "600"))
SLOW_S = 1.0  # a load taking more CPU seconds than this is a finding (a busy host's other work does not count)
HANG_S = 10.0  # a load still running after this is stopped (SIGALRM) and reported as a hang

# ---- seeds: configs that load today -----------------------------------------------------------------------------

RICH = """\
_format_version: "3.0"
gateway:
  listen: ["127.0.0.1:18080"]
  status_listen: null
  workers: 2
  drain_timeout: 5
  sse_keepalive: 15
  max_header_bytes: 32768
  trusted_ips: ["10.0.0.0/8"]
  real_ip_header: X-Forwarded-For
  real_ip_recursive: true
services:
  - name: api
    url: http://api-cluster:8080/base
    retries: 3
    connect_timeout: 2000
    routes:
      - name: api-route
        paths: ["/api", "~/v[0-9]+/items"]
        methods: [GET, POST]
        hosts: [api.example.com]
        headers: {x-tenant: [a, b]}
        strip_path: false
        plugins:
          - name: key-auth
            config: {key_names: [apikey], hide_credentials: true}
          - name: acl
            config: {allow: [admins]}
          - name: cors
            config: {origins: ["http://example.com"], methods: [GET, POST], max_age: 3600}
    plugins:
      - name: rate-limiting
        config: {minute: 600, hour: 10000, policy: local, limit_by: ip, error_code: 429}
      - name: request-size-limiting
        config: {allowed_payload_size: 10, size_unit: kilobytes}
      - name: circuit-breaker
        config: {error_threshold: 5, volume_threshold: 10, half_open_timeout: 30000}
      - name: request-transformer
        config: {add: {headers: ["x-a:1"]}, remove: {headers: [x-b]}}
      - name: response-transformer
        config: {add: {headers: ["x-c:2"]}}
  - name: other
    host: 127.0.0.1
    port: 9000
    protocol: http
    path: /
    routes:
      - name: other-route
        paths: [/other]
        plugins:
          - name: request-termination
            config: {status_code: 403, message: nope}
          - name: ip-restriction
            config: {allow: ["127.0.0.1", "10.0.0.0/8"], status: 403}
          - name: jwt
            config: {claims_to_verify: [exp], key_claim_name: iss, maximum_expiration: 3600}
          - name: basic-auth
            config: {hide_credentials: true}
          - name: bot-detection
            config: {deny: ["badbot"]}
routes:
  - name: top-route
    service: other
    paths: [/top]
    regex_priority: 5
upstreams:
  - name: api-cluster
    algorithm: round-robin
    slots: 100
    healthchecks:
      active:
        http_path: /health
        healthy: {interval: 5, successes: 2}
        unhealthy: {interval: 2, http_failures: 3}
      passive:
        unhealthy: {http_failures: 3}
    targets:
      - {target: "127.0.0.1:9001", weight: 100}
      - {target: "127.0.0.1:9002", weight: 50}
consumers:
  - username: alice
    custom_id: alice-1
    keyauth_credentials: [{key: alice-key}]
    basicauth_credentials: [{username: alice, password: pw}]
    jwt_secrets: [{key: alice-iss, secret: "0123456789abcdef0123456789abcdef", algorithm: HS256}]
    acls: [{group: admins}]
    plugins:
      - name: rate-limiting
        config: {second: 5, limit_by: consumer}
  - username: bob
plugins:
  - name: prometheus
    config: {status_code_metrics: true}
  - name: correlation-id
    config: {header_name: X-Req-Id, generator: uuid}
  - name: http-log
    service: api
    config: {http_endpoint: "http://127.0.0.1:9999/log", timeout: 1000}
  - name: file-log
    service: other
    config: {path: /tmp/cfgfuzz-never-written.log}
  - name: opentelemetry
    route: top-route
    config: {traces_endpoint: "http://127.0.0.1:4318/v1/traces", sampling_rate: 0.5}
"""

MCP = """\
_format_version: "3.0"
gateway:
  mcp:
    origin:
      allow: ["http://localhost:*"]
      upstream: rewrite
services:
  - name: mcp
    url: http://127.0.0.1:9001
    routes:
      - name: mcp-route
        paths: ["/mcp"]
        strip_path: false
        mcp: true
        mcp_methods: [tools/call]
        mcp_tools: [ok]
        plugins:
          - name: ai-mcp-oauth2
            config:
              resource: "http://gw.example/mcp"
              authorization_servers: ["http://127.0.0.1:9999"]
              jwks_endpoint: "http://127.0.0.1:9999/jwks"
              timeout: 1000
          - name: ai-mcp-proxy
            config:
              mode: passthrough-listener
              tools: [{name: xbad, acl: {allow: []}}]
          - name: rate-limiting
            config: {day: 1000, limit_by: mcp-tool}
"""


def _seeds() -> list[tuple[str, str]]:
    loads = sorted(line for line in (REAL / "LOADS.txt").read_text().splitlines()
                   if line and not line.startswith("#") and "burst" not in line)  # burst.yml alone takes 1.5 s
    sample = random.Random(MASTER_SEED).sample(loads, 30)
    seeds = [("rich", RICH), ("mcp", MCP)]
    seeds += [(f"configs/{n}", (REPO / "configs" / n).read_text()) for n in ("kong.yml", "demo.yaml", "discovery.yaml")]
    seeds += [(name, (REAL / name).read_text()) for name in sample]
    return seeds


SEEDS = _seeds()
SEED_DOCS = {name: yaml.safe_load(text) for name, text in SEEDS}

# ---- mutations ----------------------------------------------------------------------------------------------------

Path_ = tuple[Any, ...]
FREE_MAPS = {"headers", "query", "meta", "resource_attributes", "custom_fields_by_lua"}  # user keys, not fields
UNKNOWN_PLUGINS = ["oauth2", "mtls-auth", "my-custom-plugin", "Rate-Limiting", "rate_limiting", "key-auth ", "",
                   "grpc-web", "acme", "aws-lambda", "ratelimiting"]
UNKNOWN_KEYS = ["zz_unknown", "Name", "servce", "Paths", "ünï", "x-extra", "1", 1, "enabled_", "__proto__", "Config"]
NUMBERS = [0, -1, -5, 1, 7, 2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64, 10**20, 0.5, 1e308, 5e-324,
           float("inf"), float("-inf"), float("nan")]


def _value(rng: random.Random) -> Any:
    return rng.choice([
        "", "x", "ghost", 0, 1, -1, 7, 2**31, 2**63, 2**64 + 1, 10**30, -10**30, 1.5, -0.5, 1e-4,
        float("nan"), float("inf"), float("-inf"), True, False, None, [], {}, [1, "a"], ["x"], {"k": "v"},
        {"a": {"b": [1]}}, "a" * rng.choice([1000, 20_000]), "ü日本🙂\u202e", "  ", "line\nbreak", "tab\tx",
        "-1", "1e3", "0x10", "/", "~(", "http://", "*", "\x00", "yes", "null", "http://[::1", "http://h:99999",
        "10.0.0.0/99", "::1/200", "999.1.1.1", "%", "\\", "${x}", "env:CFGFUZZ_NOT_SET", "[::1]:0", "h:65536",
    ])


HOSTILE_REGEXES = ["(", "[", "\\", "a**", "(?P<x>a)(?P<x>b)", "a{4294967296}", "(" * 1000 + ")" * 1000, "x" * 10_000,
                   "(a+)+$", "[a-"]


def _differs(a: Any, b: Any) -> bool:
    return type(a) is not type(b) or (a != b and not (isinstance(a, float) and math.isnan(a)))


def key_str(path: Path_) -> str:
    """('services', 0, 'routes', 1) -> 'services[0].routes[1]', the loader's notation."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _walk(node: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in list(node.items()):
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, i))


def _entity_section(path: Path_) -> str | None:
    """The section an entity at `path` belongs to: services[0].routes[1] -> routes."""
    if len(path) >= 2 and isinstance(path[-1], int) and isinstance(path[-2], str):
        return path[-2]
    return None


def _plugins(nodes: list[tuple[Path_, Any]]) -> list[tuple[Path_, dict[str, Any]]]:
    return [(p, n) for p, n in nodes if _entity_section(p) == "plugins" and isinstance(n, dict)
            and n.get("name") in REGISTRY]


@dataclass
class Mutation:
    op: str
    path: Path_ = ()
    value: Any = None
    expect: str = ""  # "refused": must not load; "loads": must load; "": either
    numeric: bool = False  # a number was written at `path`: if it loads, the same number must be loaded
    notes: dict[str, Any] = field(default_factory=dict)


def mutate_tree(doc: dict[str, Any], rng: random.Random) -> Mutation | None:  # noqa: C901 - one branch per operator
    nodes = list(_walk(doc))
    op = rng.choice(["delete", "retype", "retype", "unknown_key", "dup", "dangle", "plugin_field", "plugin_name",
                     "plugin_unknown_config", "plugin_numeric", "numeric", "gateway_numeric", "id", "consumer_plugin",
                     "kong_unsupported", "kong_unsupported_null", "regex"])
    if op == "delete":
        cands = [(p, n) for p, n in nodes if isinstance(n, dict) and n]
        p, n = rng.choice(cands)
        k = rng.choice(list(n))
        del n[k]
        return Mutation(op, (*p, k))
    if op == "retype":
        p, n = rng.choice([(p, n) for p, n in nodes if p])
        v = _value(rng)
        for _ in range(5):
            if _differs(v, n):
                break
            v = _value(rng)
        _set(doc, p, v)
        return Mutation(op, p, v, numeric=_is_number(v))
    if op == "numeric":
        cands = [(p, n) for p, n in nodes if p and _is_number(n)]
        if not cands:
            return None
        p, n = rng.choice(cands)
        v = rng.choice([*NUMBERS, n + 1, n * 1000, n + 0.5])
        _set(doc, p, v)
        return Mutation(op, p, v, numeric=True)
    if op == "gateway_numeric":
        if not isinstance(doc.get("gateway", {}), dict):
            return None
        k = rng.choice(GATEWAY_NUMBERS)
        v = rng.choice(NUMBERS)
        doc.setdefault("gateway", {})[k] = v
        return Mutation(op, ("gateway", k), v, numeric=True)
    if op == "regex":  # the fields the gateway compiles as regexes (route paths "~", header values "~*", cors, bots)
        v = rng.choice(HOSTILE_REGEXES)
        spots = [((*p, i), "~" + v) for p, n in nodes if p[-1:] == ("paths",) and isinstance(n, list)
                 for i in range(len(n))]
        spots += [((*p, 0), "~*" + v) for p, n in nodes if len(p) >= 2 and p[-2] == "headers"
                  and _entity_section(p[:-2]) == "routes" and isinstance(n, list) and n]
        spots += [((*p, "config", f), [v]) for p, n in _plugins(nodes) if isinstance(n.get("config", {}), dict)
                  for f in {"cors": ["origins"], "bot-detection": ["allow", "deny"]}.get(n["name"], [])]
        if not spots:
            return None
        p, value = rng.choice(spots)
        _set(doc, p, value)
        return Mutation(op, p, value)
    if op == "unknown_key":
        p, n = rng.choice([(p, n) for p, n in nodes if isinstance(n, dict)])
        k = rng.choice(UNKNOWN_KEYS)
        if k in n:
            return None
        n[k] = rng.choice([1, "v", None, [], {"a": 1}, True])
        inside_free_map = bool(p) and p[-1] in FREE_MAPS or any(x in ("_ignore", "_comment") for x in p)
        return Mutation(op, (*p, k), n[k], expect="" if inside_free_map else "refused")
    if op == "dup":
        cands = [(p, n) for p, n in nodes if isinstance(n, list) and n and isinstance(n[0], dict)]
        if not cands:
            return None
        p, n = rng.choice(cands)
        n.append(copy.deepcopy(rng.choice(n)))
        return Mutation(op, p)
    if op == "dangle":
        cands = [(p, n) for p, n in nodes if isinstance(n, dict) and _entity_section(p) in
                 ("routes", "plugins", "targets", "keyauth_credentials", "basicauth_credentials", "acls", "jwt_secrets")
                 and len(p) == 2]
        if not cands:
            return None
        p, n = rng.choice(cands)
        k = {"routes": "service", "targets": "upstream"}.get(p[0]) or rng.choice(
            ["service", "route", "consumer"] if p[0] == "plugins" else ["consumer"])
        ghost = str(uuid.UUID(int=rng.getrandbits(128)))
        n[k] = rng.choice(["ghost", ghost, {"id": ghost}, {"name": "ghost"} if k != "consumer" else {"username": "x"}])
        return Mutation(op, (*p, k), n[k], expect="refused")
    if op in ("plugin_field", "plugin_name", "plugin_unknown_config", "plugin_numeric"):
        cands = _plugins(nodes)
        if not cands:
            return None
        p, n = rng.choice(cands)
        if op == "plugin_name":
            n["name"] = rng.choice(UNKNOWN_PLUGINS)
            if rng.random() < 0.3:
                n["enabled"] = False  # a disabled plugin is still checked
            return Mutation(op, (*p, "name"), n["name"], expect="refused")
        cfg = n.setdefault("config", {})
        if not isinstance(cfg, dict):
            return None
        if op == "plugin_unknown_config":
            k = rng.choice(["key_in_bodyy", "zz_unknown", "Minute", "redis_timeoutt"])
            cfg[k] = rng.choice([1, "x", True])
            if rng.random() < 0.3:
                n["enabled"] = False
            return Mutation(op, (*p, "config", k), cfg[k], expect="refused")
        schema = REGISTRY[n["name"]].schema
        if op == "plugin_numeric":
            fields = numeric_fields(schema)
            if not fields:
                return None
            f = rng.choice(fields)
            cfg[f] = rng.choice(NUMBERS)
        else:
            f = rng.choice([f.encode_name for f in msgspec.structs.fields(schema)])
            cfg[f] = _value(rng)
        return Mutation(op, (*p, "config", f), cfg[f])
    if op == "id":
        cands = [(p, n) for p, n in nodes if isinstance(n, dict) and _entity_section(p)]
        if not cands:
            return None
        p, n = rng.choice(cands)
        ids = [x["id"] for _, x in nodes if isinstance(x, dict) and isinstance(x.get("id"), str)]
        n["id"] = rng.choice([*ids, "not-a-uuid", "", str(uuid.UUID(int=0)), 12345])
        return Mutation(op, (*p, "id"), n["id"])
    if op == "consumer_plugin":
        if not isinstance(doc.get("plugins", []), list):
            return None
        plugins = doc.setdefault("plugins", [])
        plugins.append({"name": rng.choice(["rate-limiting", "request-termination", "prometheus"]),
                        "consumer": rng.choice(["ghost-consumer", {"username": "ghost-consumer"}]), "config": {}})
        return Mutation(op, ("plugins", len(plugins) - 1, "consumer"), expect="refused")
    # kong_unsupported(_null): what Kong has and the gateway does not build
    null = op == "kong_unsupported_null"
    value = rng.choice([["x"], "x", True, 1, [{"name": "x"}]])
    entities = [(p, n) for p, n in nodes if isinstance(n, dict) and _entity_section(p) in UNSUPPORTED_FIELDS]
    if entities and rng.random() < 0.7:
        p, n = rng.choice(entities)
        k = rng.choice(sorted(UNSUPPORTED_FIELDS[_entity_section(p)]))  # type: ignore[index]
        if k in n:
            return None
        n[k] = rng.choice([None, [], {}]) if null else value
        return Mutation(op, (*p, k), n[k], expect="loads" if null else "refused", notes={"why": "not supported"})
    k = rng.choice(sorted(UNSUPPORTED_SECTIONS))
    if k in doc:
        return None
    doc[k] = rng.choice([None, [], {}]) if null else [{"name": "x"}]
    return Mutation(op, (k,), doc[k], expect="loads" if null else "refused", notes={"why": "not supported"})


def numeric_fields(typ: Any) -> list[str]:
    """The fields of a Struct whose type is a number (or an optional one)."""
    out = []
    for f in mi.type_info(typ).fields:  # type: ignore[attr-defined]
        types = f.type.types if isinstance(f.type, mi.UnionType) else (f.type,)
        if any(isinstance(t, mi.IntType | mi.FloatType) for t in types):
            out.append(f.encode_name)
    return out


GATEWAY_NUMBERS = numeric_fields(GatewaySettings)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _set(doc: Any, path: Path_, value: Any) -> None:
    for p in path[:-1]:
        doc = doc[p]
    doc[path[-1]] = value


BOMB = "".join(f"b{i}: &b{i} [" + ",".join([f"*b{i - 1}"] * 8 if i else ["lol"] * 8) + "]\n" for i in range(6))
IGNORED_BOMB = "_ignore:\n" + "".join(f"- &i{i} [" + ",".join([f"*i{i - 1}"] * 8 if i else ["lol"] * 8) + "]\n"
                                      for i in range(6))
TAGS = ["!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!python/object:object {}",
        "!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2001-12-14", "!custom x", "!!float 1", "!!int '12'",
        "!!omap [{a: 1}]", "!!str 5", "2001-12-14", "!!python/tuple [1, 2]", "!!null ''", "!!bool yes",
        "2024-02-30", "2001-13-45 25:00:00", "!!int x", "!!float x", "!!timestamp 2001-13-45", "!!int 1e999"]


def mutate_text(name: str, text: str, rng: random.Random) -> tuple[Mutation, bytes] | None:
    op = rng.choice(["truncate", "bad_utf8", "tabs", "dup_line", "tag", "merge", "bomb", "bomb_used", "recursive",
                     "deep", "bom", "nul", "newlines", "json", "json_broken", "multidoc", "long_line", "control"])
    lines = text.splitlines()
    mutation = Mutation(op)
    if op == "truncate":
        text = text[: rng.randrange(len(text))]
    elif op == "bad_utf8":
        i = rng.randrange(len(text))
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80"])
        return mutation, text[:i].encode() + bad + text[i:].encode()
    elif op == "tabs":
        i = rng.randrange(len(lines))
        lines[i] = re.sub(r"^ +", lambda m: "\t" * max(1, len(m.group(0)) // 2), lines[i]) \
            if lines[i].startswith(" ") else "\t" + lines[i]
        text = "\n".join(lines)
    elif op == "dup_line":  # a line twice: a mapping with a duplicate key, or a list with an extra item
        i = rng.choice([i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")])
        lines.insert(i, lines[i])
        text = "\n".join(lines) + "\n"
    elif op == "tag":
        scalars = [i for i, line in enumerate(lines) if re.match(r"^\s*(- )?[A-Za-z_]+:\s+[^\s#&*!|>\[{]", line)]
        if not scalars:
            return None
        i = rng.choice(scalars)
        mutation.value = rng.choice(TAGS)
        lines[i] = re.sub(r":\s+\S.*$", ": " + mutation.value, lines[i])
        text = "\n".join(lines) + "\n"
    elif op == "merge":  # an anchor on a top-level mapping, merged into another: valid YAML, Kong's format or not
        text = text + "\n_ignore:\n- &base {retries: 3, connect_timeout: 1000}\n- {<<: *base, x: 1}\n"
    elif op == "bomb":  # 8^6 = 262,144 leaves, 7 small nodes in the text
        text = text + "\n" + BOMB
    elif op == "bomb_used":
        where = rng.choice(["services: [{name: s, url: 'http://h', tags: *i5}]",
                            "plugins: [{name: ip-restriction, config: {allow: *i5}}]",
                            "plugins: [{name: prometheus, config: {per_consumer: *i5}}]",
                            "services: *i5", "gateway: {listen: *i5}", "consumers: [{username: a, acls: *i5}]",
                            "plugins: [{name: ai-mcp-proxy, config: {mode: passthrough-listener, tools: *i5}}]",
                            "plugins: [{name: nosuch, config: {allow: *i5}}]",
                            "upstreams: [{name: u, healthchecks: {check: {expect_status: *i5}}}]"])
        text = IGNORED_BOMB + where + "\n"
    elif op == "recursive":
        text = rng.choice(["services: &a [*a]\n", "_ignore: &a [*a]\n",
                           "services: [&s {name: s, url: 'http://h', tags: *s}]\n",
                           "plugins: [&p {name: prometheus, config: {x: *p}}]\n",
                           "plugins: [{name: http-log, config: &c {http_endpoint: 'http://h', headers: *c}}]\n",
                           "services: [{name: s, url: 'http://h', routes: [&r {paths: [/], plugins: [*r]}]}]\n"])
    elif op == "deep":
        n = rng.choice([20, 100, 300, 1000])
        text = rng.choice(["services: " + "[" * n + "]" * n + "\n",
                           "plugins:\n- name: prometheus\n  config: " + "{a: " * n + "1" + "}" * n + "\n",
                           "_ignore: " + "[" * n + "]" * n + "\n"])
        mutation.notes["depth"] = n
    elif op == "bom":
        text = "\ufeff" + text
    elif op == "nul":
        i = rng.randrange(len(text))
        text = text[:i] + "\x00" + text[i:]
    elif op == "control":
        i = rng.randrange(len(text))
        text = text[:i] + rng.choice(["\x01", "\x1b", "\x7f", "\ufffe", "\x85", "\u2028"]) + text[i:]
    elif op == "newlines":
        text = text.replace("\n", rng.choice(["\r\n", "\r"]))
    elif op in ("json", "json_broken"):
        text = json.dumps(SEED_DOCS[name], indent=rng.choice([None, 2]))
        if op == "json_broken":
            text = rng.choice([text[:-1] + ",}", text + "}", text.replace(":", "", 1), text[: len(text) // 2]])
    elif op == "multidoc":
        text = text + "\n---\n" + text
    elif op == "long_line":
        text = text + "\n_comment: " + "x" * 50_000 + "\n"
    return mutation, text.encode("utf-8", "surrogatepass")


@dataclass
class Case:
    index: int
    seed: str
    mutation: Mutation
    data: bytes
    text_op: bool


def make_case(index: int) -> Case:
    """Case `index` alone (its own Random), so any failing case is reproduced by its number."""
    rng = random.Random(f"{MASTER_SEED}:{index}")
    while True:
        name, text = SEEDS[rng.randrange(5)] if rng.random() < 0.4 else rng.choice(SEEDS)
        if rng.random() < 0.65:
            doc = copy.deepcopy(SEED_DOCS[name])
            mutation = mutate_tree(doc, rng)
            if mutation is None:
                continue
            dumped = yaml.safe_dump(doc, sort_keys=False, allow_unicode=rng.random() < 0.5, width=1 << 30)
            return Case(index, name, mutation, dumped.encode("utf-8", "surrogatepass"), False)
        made = mutate_text(name, text, rng)
        if made is not None:
            return Case(index, name, made[0], made[1], True)


# ---- the checks ---------------------------------------------------------------------------------------------------


class Hang(Exception):
    pass


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(*_: Any) -> None:
        raise Hang(f"still loading after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load(path: Path) -> tuple[str, Any, float]:
    """('ok', Config) | ('refused', messages) | ('raised', 'Type: message'), and the CPU seconds it took (this
    process's: a blow-up is computation; what other processes on a busy host take from it is not; a load blocked
    without computing is the deadline's hang)."""
    start = time.process_time()
    try:
        with deadline(HANG_S):
            result: tuple[str, Any] = ("ok", check_file(str(path)).config)
    except ConfigError as e:
        result = ("refused", list(e.messages))
    except Exception as e:  # noqa: BLE001 - any other type is the finding
        result = ("raised", raised(e))
    return result[0], result[1], time.process_time() - start


def raised(e: BaseException) -> str:
    """'Type: message [gateway/file.py:function]', naming the deepest frame of the gateway's own code."""
    ours = [f for f in traceback.extract_tb(e.__traceback__) if f"{os.sep}gateway{os.sep}" in f.filename]
    where = f" [gateway/{ours[-1].filename.rsplit(f'{os.sep}gateway{os.sep}', 1)[1]}:{ours[-1].name}]" if ours else ""
    return f"{type(e).__name__}: {str(e)[:300]}{where}"


_SEGMENT = r"[^\s:.\[\]]+(?:\[(?:\d+|\.\.\.)\])*"
_FIELD = rf"{_SEGMENT}(?:\.{_SEGMENT})*"
_FIELD_MESSAGE = re.compile(rf"{_FIELD}(?: and {_FIELD})?(?:: \S| is |\.| must )")
_DOCUMENT_MESSAGE = re.compile(r"(?:not UTF-8 text: |the document must be a mapping|YAML (?:syntax )?error: "
                               r"|the file holds no YAML document)")
_CONTRADICTION = re.compile(r": expected (.+), got \1$")


def message_problems(path: Path, messages: list[str]) -> list[str]:
    problems = []
    if not messages:
        problems.append("ConfigError without messages")
    for m in messages:
        if "\n" in m or "\r" in m:
            problems.append(f"multi-line message: {m[:300]!r}")
            continue
        rest = m.removeprefix(f"{path}: ")
        located = re.match(re.escape(str(path)) + r":\d+:\d+: (YAML (?:syntax )?error: .*)", m)
        if located:
            rest = located.group(1)
        elif rest == m:
            problems.append(f"message without the file name: {m[:300]!r}")
            continue
        if not (_FIELD_MESSAGE.match(rest) or _DOCUMENT_MESSAGE.match(rest)):
            problems.append(f"message without a field path: {m[:300]!r}")
        elif _CONTRADICTION.search(rest):
            problems.append(f"self-contradicting message: {m[:300]!r}")
    return problems


class _DuplicateKeys(yaml.SafeLoader):
    """safe_load with dates left as text (as the gateway reads them), noting mapping keys given twice in one mapping
    (YAML 1.2: keys are unique)."""

    yaml_implicit_resolvers = {first: [(tag, pattern) for tag, pattern in resolvers if not tag.endswith(":timestamp")]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    duplicates: list[str]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    self.duplicates.append(repr(key))
                seen.add(key)
            except TypeError:  # unhashable: the loader refuses it anyway
                pass
        return super().construct_mapping(node, deep)


def duplicate_keys(data: bytes) -> list[str]:
    loader = _DuplicateKeys(data.decode("utf-8"))
    loader.duplicates = []
    try:
        loader.get_single_data()
    finally:
        loader.dispose()
    return loader.duplicates


_ENTITY_LISTS = ("services", "routes", "upstreams", "targets", "plugins", "consumers", "jwt_secrets",
                 "keyauth_credentials", "basicauth_credentials", "acls", "certificates", "snis", "ca_certificates")
_MISSING = object()


def loaded_value(config: Config, path: Path_) -> Any:
    """What the loaded config holds at a source path (entities are found by their `_path`); _MISSING when the path
    leads into something kept raw (a plugin's config, _ignore, tags) or nowhere."""
    index: dict[str, Any] = {"gateway": config.gateway}
    for section in _ENTITY_LISTS:
        for obj in getattr(config, section):
            index[path_of(obj)] = obj
    for cut in range(len(path), 0, -1):
        obj = index.get(key_str(path[:cut]))
        if obj is not None:
            break
    else:
        return _MISSING
    for key in path[cut:]:
        if isinstance(obj, msgspec.Struct):
            if key in ("config", "tags", "_ignore") or not isinstance(key, str):
                return _MISSING
            names = {f.encode_name: f.name for f in msgspec.structs.fields(obj)}
            if key not in names:
                return _MISSING
            obj = getattr(obj, names[key])
        elif isinstance(obj, dict | list):
            try:
                obj = obj[key]
            except (KeyError, IndexError, TypeError):
                return _MISSING
        else:
            return _MISSING
    return obj


def obeyable(config: Config) -> list[str]:
    """What the gateway builds from a loaded config without running it, built here: the root's supervision specs
    (gateway start and reload), the SSE keep-alive wheel (every worker), each rate limit's bus message."""
    problems = []
    try:
        worker = tree.worker_spec("config.gen1.yaml", 1, 0, 1, [], config)
        tree.workers_supervisor(1, [worker], config)
        tree.keeper_spec("config.gen1.yaml", 1, config)
    except Exception as e:  # noqa: BLE001
        problems.append(f"the root cannot build its supervision specs: {raised(e)}")
    try:
        client = SimpleNamespace(extra_body=lambda data: data)  # a response open to SSE comments
        StreamKeepAlives(config.gateway.sse_keepalive).open(client)  # type: ignore[arg-type]
    except Exception as e:  # noqa: BLE001
        problems.append(f"an SSE stream cannot open with gateway.sse_keepalive: {raised(e)}")
    for plugin in config.plugins:
        if plugin.name == "rate-limiting" and plugin.enabled:
            spec = LimitSpec.from_plugin(msgspec.convert(plugin.config, RateLimitingConfig))
            try:
                encode(AskLeases(requests=[LeaseRequest("k", spec, "w", 1)]))
            except Exception as e:  # noqa: BLE001
                problems.append(f"{path_of(plugin)}: its limit cannot go on the bus: {raised(e)}")
    return problems


def check_case(case: Case, tmp_path: Path) -> list[str]:
    path = tmp_path / f"case{case.index}.yaml"
    path.write_bytes(case.data)
    m = case.mutation
    status, result, seconds = load(path)
    problems = []
    if seconds > SLOW_S:
        problems.append(f"slow: {seconds:.2f} s" + (f", then raised {result}" if status == "raised" else ""))
    if status == "raised":
        problems.append(f"check_file raised {result}")
    elif status == "refused":
        problems += message_problems(path, result)
        again = load(path)
        if again[:2] != (status, result):
            problems.append(f"nondeterministic: {result} then {again[1]}")
        if m.expect == "loads":
            problems.append(f"{key_str(m.path)} set to {m.value!r} must configure nothing and pass: {result[:3]}")
        why = m.notes.get("why")
        if why and m.expect == "refused" and not any(key_str(m.path) in x and why in x for x in result):
            problems.append(f"{key_str(m.path)}: no message says it is {why}: {result[:5]}")
    else:
        if m.expect == "refused":
            problems.append(f"loads, but {key_str(m.path)} = {m.value!r} ({m.op}) must be refused")
        if m.numeric:
            got = loaded_value(result, m.path)
            if got is not _MISSING and not (_is_number(got) and (got == m.value or got == float(m.value))):
                problems.append(f"{key_str(m.path)}: {m.value!r} written, {got!r} loaded")
        problems += obeyable(result)
        if case.text_op:
            duplicates = duplicate_keys(case.data)
            if duplicates:
                problems.append(f"loads with duplicate keys {', '.join(duplicates)}: all but the last silently dropped")
    if case.text_op and status != "raised":  # gateway start and reload read the file themselves (load_validated)
        try:
            load_validated(str(path))
            start, error = "ok", ""
        except ConfigError:
            start, error = "refused", ""
        except Exception as e:  # noqa: BLE001
            start, error = "raised", raised(e)
        if start != status:
            problems.append(f"gateway start/reload (load_validated) {start} {error}, check-config {status}")
    return problems


# Problems known and not yet fixed, as (pattern, reason): a fuzz case whose every problem matches one is an xfail that
# names it; a problem matching none fails the case. The fuzz's first run found ten, all fixed (the specifications at
# the end of this file).
KNOWN: list[tuple[str, str]] = []


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every case's file (named by its index): tmp_path per case would double the run time."""
    return tmp_path_factory.mktemp("cfgfuzz")


@pytest.mark.parametrize("index", range(CASES))
def test_mutated_config_loads_or_is_refused_clearly(index: int, workdir: Path):
    case = make_case(index)
    problems = check_case(case, workdir)
    if not problems:
        return
    m = case.mutation
    where = f"case {index} (make_case({index})): seed {case.seed}, {m.op} at {key_str(m.path) or '-'}" + \
        (f" = {m.value!r}"[:120] if m.value is not None else "")
    known = {reason for p in problems for pattern, reason in KNOWN if re.search(pattern, p)}
    if all(any(re.search(pattern, p) for pattern, _ in KNOWN) for p in problems):
        pytest.xfail(f"{where}: known: {'; '.join(sorted(known))}")
    pytest.fail(f"{where}\n" + "\n".join(problems), pytrace=False)


def test_every_seed_loads_and_is_obeyable(tmp_path: Path):
    """The fuzzer's premise: each seed loads today, and passes the checks a mutation is held to."""
    for name, text in SEEDS:
        case = Case(-1, name, Mutation("none"), text.encode(), True)
        assert check_case(case, tmp_path) == [], name
        assert load(tmp_path / "case-1.yaml")[0] == "ok", name


# ---- the findings of the fuzz's first run, minimized: what a person sees now -------------------------------------


def refused(data: bytes, tmp_path: Path) -> list[str]:
    """The messages check-config gives for `data`, without the file name; the file must also pass every check of
    the fuzzer (one line each, a field path, gateway start/reload's loader agreeing)."""
    assert problems_of(data, tmp_path) == []
    status, messages, _ = load(tmp_path / "case0.yaml")
    assert status == "refused", messages
    return [m.removeprefix(str(tmp_path / "case0.yaml")) for m in messages]


def problems_of(data: bytes, tmp_path: Path, mutation: Mutation | None = None) -> list[str]:
    """Every check of the fuzzer, on one file, through check-config and gateway start/reload's loader."""
    return check_case(Case(0, "minimized", mutation or Mutation("minimized"), data, True), tmp_path)


SERVICE = "services: [{name: s, url: 'http://h', routes: [{paths: [/]}]}]\n"
ROUTE = "services: [{name: s, url: 'http://h', routes: [{%s}]}]\n"


def test_deep_yaml_nesting_is_refused_with_its_place(tmp_path: Path):
    """PyYAML's composer recurses once per level: 1000 levels overflowed the stack (a traceback, not a message)."""
    assert refused(("services: " + "[" * 1000 + "]" * 1000 + "\n").encode(), tmp_path) == [
        ":1:74: YAML error: nested more than 64 levels deep"]


def test_nesting_a_config_needs_loads(tmp_path: Path):
    nested = "{a: " * 50 + "1" + "}" * 50
    assert problems_of(f"plugins: [{{name: http-log, config: {{http_endpoint: 'http://h', headers: {{}}, "
                       f"custom_fields_by_lua: {{}}}}, _ignore: [{nested}]}}]\n".encode(), tmp_path) == []


@pytest.mark.parametrize("number", [".inf", "-.inf", ".nan", "1.0e+999"])
def test_numbers_that_are_not_finite_are_refused_anywhere(number: str, tmp_path: Path):
    """.inf in a rate limit or cors max_age crashed check-config; in gateway.drain_timeout or sse_keepalive it loaded
    and crashed the start or every SSE stream."""
    shown = {".inf": ".inf", "1.0e+999": ".inf", "-.inf": "-.inf", ".nan": ".nan"}[number]
    for doc, where in ((f"plugins: [{{name: rate-limiting, config: {{minute: {number}}}}}]",
                        "plugins[0].config.minute"),
                       (f"plugins: [{{name: cors, config: {{max_age: {number}}}}}]", "plugins[0].config.max_age"),
                       (f"gateway: {{drain_timeout: {number}}}", "gateway.drain_timeout"),
                       (f"gateway: {{sse_keepalive: {number}}}", "gateway.sse_keepalive")):
        assert refused(f"{doc}\n".encode(), tmp_path) == [f": {where}: expected a finite number, got {shown}"]


def test_durations_are_whole_milliseconds_up_to_kongs_longest_timeout(tmp_path: Path):
    """5e-324 s made the keep-alive wheel's tick 0 (every SSE stream divided by it); 1e306 s overflowed the root's
    drain timeout in ms."""
    bounds = "expected number >= 0.001 and <= 2147483.646"
    assert refused(b"gateway: {sse_keepalive: 5.0e-324, drain_timeout: 1.0e+306}\n", tmp_path) == [
        f": gateway.sse_keepalive: {bounds}, got 5e-324", f": gateway.drain_timeout: {bounds}, got 1e+306"]
    assert problems_of(b"gateway: {sse_keepalive: 0.001, drain_timeout: 2147483.646}\n", tmp_path) == []


def test_a_rate_limit_is_at_most_what_a_double_counts_exactly(tmp_path: Path):
    """A limit of 2**64 loaded, and then no lease request carrying it could be sent to the state keeper."""
    assert refused(b"plugins: [{name: rate-limiting, config: {minute: 18446744073709551616}}]\n", tmp_path) == [
        ": plugins[0].config.minute: expected number > 0 and <= 9007199254740992, got 18446744073709551616"]
    assert problems_of(b"plugins: [{name: rate-limiting, config: {minute: 9007199254740992}}]\n", tmp_path) == []


@pytest.mark.parametrize(("doc", "field"), [
    (ROUTE % "paths: ['~a{4294967296}']", "services[0].routes[0].paths[0]"),
    (ROUTE % "paths: ['~%s']" % ("(" * 1000 + ")" * 1000), "services[0].routes[0].paths[0]"),
    (ROUTE % "headers: {x-a: ['~*(']}", "services[0].routes[0].headers.x-a[0]"),
    ("plugins: [{name: cors, config: {origins: ['a{4294967296}']}}]", "plugins[0].config.origins[0]"),
    ("plugins: [{name: bot-detection, config: {deny: ['a{4294967296}']}}]", "plugins[0].config.deny[0]"),
])
def test_a_regex_that_does_not_compile_is_refused_at_its_field(doc: str, field: str, tmp_path: Path):
    """re.compile raises OverflowError and RecursionError besides re.error; header regexes were not checked."""
    (message,) = refused(f"{doc}\n".encode(), tmp_path)
    assert message.startswith(f": {field}: ") and "regex" in message, message


def test_start_and_reload_refuse_a_file_that_is_not_utf8_as_check_config_does(tmp_path: Path):
    assert refused(b'_comment: "\xff"\n', tmp_path) == [": not UTF-8 text: invalid start byte at byte 11"]


def test_a_key_given_twice_is_refused(tmp_path: Path):
    """The last of two equal keys won: a second `plugins:` dropped the key-auth of the first, unenforced."""
    data = (SERVICE + "plugins: [{name: key-auth, config: {key_names: [apikey]}}]\nplugins: []\n").encode()
    assert refused(data, tmp_path) == [":3:1: YAML error: the key \"plugins\" is given twice in one mapping (first at "
                                       "line 2, column 1); YAML keys are unique: keep one"]


def test_a_merge_key_may_be_overridden(tmp_path: Path):
    data = b"_ignore: [&base {retries: 3}]\nservices: [{<<: *base, retries: 4, name: s, url: 'http://h'}]\n"
    assert problems_of(data, tmp_path) == []
    assert load(tmp_path / "case0.yaml")[1].services[0].retries == 4


def test_a_character_yaml_does_not_allow_is_one_line_with_its_place(tmp_path: Path):
    assert refused(b"_comment: x\x00\n", tmp_path) == [
        ":1:12: YAML syntax error: the character U+0000, which YAML does not allow in a document"]


def test_a_value_with_a_newline_is_quoted_on_one_line(tmp_path: Path):
    assert refused((ROUTE % 'paths: ["a\\nb"]').encode(), tmp_path) == [
        ': services[0].routes[0].paths[0]: a path starts with "/" (prefix) or "~" (regex), got "a\\nb"']


def test_a_key_that_is_not_a_string_is_named(tmp_path: Path):
    assert refused(b"plugins: [{name: prometheus, config: {1: true}}]\n", tmp_path) == [
        ": plugins[0].config: a key must be a string, got 1 (quote it)"]


@pytest.mark.parametrize(("value", "kind"), [("0", "0"), ("false", "false"), ("[]", "a list"), ("''", '""')])
def test_a_gateway_block_that_is_not_a_mapping_is_refused(value: str, kind: str, tmp_path: Path):
    """Any falsy value loaded the defaults; only null configures nothing."""
    mutation = Mutation("minimized", ("gateway",), value, expect="refused")
    assert problems_of(f"gateway: {value}\n".encode(), tmp_path, mutation) == []
    assert load(tmp_path / "case0.yaml")[1] == [f"{tmp_path / 'case0.yaml'}: gateway: expected a mapping, got {kind}"]


def test_a_yaml_set_is_refused_for_it_has_no_order(tmp_path: Path):
    """A !!set loaded in hash order: PYTHONHASHSEED changed the order and the messages' indices from run to run."""
    assert refused((ROUTE % "paths: !!set {/a, b, c}").encode(), tmp_path) == [
        ":1:56: YAML error: a !!set has no order; write a list"]


def test_an_unquoted_date_is_text_as_in_kong(tmp_path: Path):
    """PyYAML's YAML 1.1 made `2024-01-01` a date (refused where text is expected) and `2024-02-30` a ValueError."""
    data = b"services: [{name: 2024-01-01, url: 'http://h', tags: [2024-02-30]}]\n"
    assert problems_of(data, tmp_path) == []
    service = load(tmp_path / "case0.yaml")[1].services[0]
    assert (service.name, service.tags) == ("2024-01-01", ["2024-02-30"])


@pytest.mark.parametrize(("value", "message"), [
    ("!!int x", ':1:11: YAML error: cannot read "x" as int: invalid literal for int() with base 10: \'x\''),
    ("!!timestamp 2001-13-45", ':1:11: YAML error: cannot read "2001-13-45" as timestamp: month must be in 1..12'),
])
def test_a_scalar_its_tag_cannot_read_is_refused_with_its_place(value: str, message: str, tmp_path: Path):
    assert refused(f"_comment: {value}\n".encode(), tmp_path) == [message]
