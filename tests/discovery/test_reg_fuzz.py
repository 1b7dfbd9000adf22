"""Seeded, bounded fuzz of self-registration (run_registration) against hostile etcd and Consul registries.

Each case starts a fake registry on 127.0.0.1 (raw Trio sockets, as in test_disc_fuzz.py, whose HTTP helpers and
transport-level mutations it reuses) that keeps real state: etcd leases with deadlines, keys attached to them, the
Consul agent's services. The gateway registers through run_registration on a config built by parse_config. Then
the registry answers 1-3 of the registration's calls (etcd: lease grant, keep-alive, revoke, put, get; Consul:
register, the agent's service read) with mutations: wrong JSON shapes, lease ids and TTLs that are not numbers,
are zero, negative, huge or someone else's, errors in a 200, 4xx/5xx, truncated, oversized or broken bodies,
stalls, closes, answers sent after the change was applied. Some cases first make the registry lose the
registration (an etcd restore, a Consul agent restarted without state) so the mutations reach the registering
calls; some start the gateway against the hostile registry. Then it heals. The rules (README "Self-registration",
registration.py's docstrings):

- no exception escapes run_registration: it retries with backoff, and only cancellation ends it;
- nothing hangs past the configured timeouts: after each mutation the gateway's next request comes within
  RETRY_BOUND, and stopping takes no longer than the deregistration's timeout;
- every log line is one line, bounded, without a traceback; an answer that must be refused is logged;
- the gateway sends only what a well-formed answer gave it: every put carries a lease the registry granted, every
  keep-alive and revoke names one; it registers again only after the registry said the registration was gone;
- after healing, the registry holds a correct registration (the key with our value on a live lease of ttl_s; the
  agent's service with our payload) within CONVERGE, and still does later (kept alive);
- on stop it deregisters when the registry lets it (the key or service is gone), and a failing deregistration is
  one logged line, not a hang.

The registry's clock is Trio's MockClock (autojumping when every task waits): lease TTLs, keep-alive periods,
stalls and timeouts are virtual, so a case costs milliseconds of wall time. The master seed is fixed and each case
derives its generator from (kind, index): a failure reproduces by its test id (test_reg_etcd_fuzz[17]).
REGFUZZ_CASES=N runs N cases of each kind (default: one case opening with each mutation). What the fuzz found is
minimized at the end of the file.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from test_disc_fuzz import (
    MAX_BODY,
    LoopbackServer,
    Request,
    http,
    one_line_problems,
    read_request,
    send,
    send_then_stall,
    wire_mutations,
)

import gateway.discovery.http as disc_http
from gateway.config import parse_config
from gateway.discovery.etcd import EtcdClient, EtcdError
from gateway.discovery.http import TransportError
from gateway.discovery.registration import Registration, resolve_registration, run_registration

MASTER_SEED = 20261206
TIMEOUT_S = 0.5  # registration.timeout_s
RETRY = (0.05, 0.4)  # retry_initial_s, retry_max_s
TTL_S = 3  # etcd lease: kept alive every ttl/3 = 1 s
REFRESH_S = 1.0  # consul: the agent's service is read every refresh_s
PERIOD = 1.0  # the longest idle wait between two requests of a registered gateway (keep-alive / refresh)
RETRY_BOUND = 2 * TIMEOUT_S + max(RETRY[1], PERIOD) + 0.1  # (a failed put waits for its answer, then a revoke's)
CONVERGE = 3.0  # from healing to a correct registration
STOP_BOUND = TIMEOUT_S + 0.1  # deregistering on stop
CASE_BUDGET = 40.0  # virtual seconds, the whole case
POLL = 0.1  # how often a case looks at the registry (each look is a jump of the virtual clock)
GW_LISTEN = "127.0.0.1:18080"
GW_STATUS = "127.0.0.1:18100"
REG_ID = "gw-fz-1"
REG_KEY = f"/gateway/upstreams/mcp-gateway/{REG_ID}"
NEVER_GRANTED = 7777  # a lease id hostile answers offer; the registry never grants it

# ---- the fake registries ------------------------------------------------------------------------------------------

Act = Callable[["Registry", trio.SocketStream, Request], Awaitable[None]]


@dataclass
class Mutation:
    name: str
    where: str  # etcd: grant | keepalive | revoke | put | get; consul: register | read | deregister
    act: Act
    refuse: bool = True  # the gateway must take the answer as a failure (and log it)
    gone: bool = False  # a well-formed answer saying the registration is gone: registering again is right


REGISTERING = {"grant", "put", "revoke", "register"}  # reached only when (re)registering


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def etcd_error(status: int, message: str, code: int) -> bytes:
    return http(status, json.dumps({"error": message, "message": message, "code": code}).encode())


LEASE_NOT_FOUND = etcd_error(404, "etcdserver: requested lease not found", 5)  # what etcd 3.5 answers


class Registry(LoopbackServer):
    """An etcd (leases, keys) or a Consul agent (services) answering the registration's calls; a plan of mutations
    answers the requests it names, in order, and what every request carried is checked as it arrives."""

    def __init__(self, kind: str, reg: Registration, rng: random.Random) -> None:
        self.kind = kind
        self.reg = reg
        self.rng = rng
        self.leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, deadline)
        self.granted: set[int] = set()
        self.kv: dict[bytes, tuple[bytes, int]] = {}  # key -> (value, lease)
        self.revision = 5
        self.services: dict[str, Any] = {}
        self.plan: list[Mutation] = []
        self.planned = 0
        self.served: list[tuple[float, str]] = []
        self.after_plan = trio.Event()
        self.requests: list[tuple[float, str]] = []
        self.registrations = 0  # grants / register PUTs
        self.lost = False  # the registry lost the registration or said it was gone: registering again is right
        self.forgetful = False  # lose the registration whenever the next mutation answers a registering call
        self.problems: list[str] = []
        self.port = 0

    # -- state ----------------------------------------------------------------------------------------------------

    def now(self) -> float:
        return trio.current_time()

    def expire(self) -> None:
        for lease, (_, deadline) in list(self.leases.items()):
            if deadline <= self.now():
                if self.kv.get(self.reg.key.encode(), (b"", 0))[1] == lease:
                    self.lost = True  # the gateway's key expired with its lease
                self.drop_lease(lease)

    def drop_lease(self, lease: int) -> None:
        del self.leases[lease]
        for key in [k for k, (_, le) in self.kv.items() if le == lease]:
            del self.kv[key]

    def forget(self) -> None:
        """The registry lost everything (a restore from an old snapshot, an agent restarted without state)."""
        self.leases.clear()
        self.kv.clear()
        self.services.clear()
        self.lost = True

    def registered(self) -> str:
        """'' when the registry holds a correct registration, else what is wrong."""
        if self.kind == "consul":
            got = self.services.get(self.reg.id)
            want = self.reg.consul_payload()
            return "" if got == want else f"the agent has {str(got)[:300]} for {self.reg.id}, not {want}"
        self.expire()
        key = self.reg.key.encode()
        if key not in self.kv:
            return f"no key {self.reg.key}"
        value, lease = self.kv[key]
        if json.loads(value) != json.loads(self.reg.etcd_value()):
            return f"the key holds {value[:200]!r}"
        if lease not in self.leases or self.leases[lease][0] != TTL_S:
            return f"the key is on lease {lease}, which is not a live lease of {TTL_S} s"
        return ""

    def lease_deadline(self) -> float:
        """When the lease holding the key runs out (it is renewed by each keep-alive)."""
        return self.leases[self.kv[self.reg.key.encode()][1]][1]

    def deregistered(self) -> bool:
        self.expire()
        return self.reg.id not in self.services and self.reg.key.encode() not in self.kv

    # -- good answers ---------------------------------------------------------------------------------------------

    def header(self) -> dict[str, str]:
        return {"cluster_id": "1", "member_id": "2", "revision": str(self.revision), "raft_term": "2"}

    def lease_of(self, req: Request, field_: str = "ID") -> int:
        try:
            lease = int(json.loads(req.body)[field_])
        except (ValueError, KeyError, TypeError):
            self.problems.append(f"{req.path} without a lease id: {req.body[:100]!r}")
            return -1
        if lease not in self.granted:
            self.problems.append(f"{req.path} names lease {lease}, which this registry never granted")
        return lease

    def good(self, req: Request, where: str) -> bytes:
        """Apply the request to the state and return etcd's or Consul's answer."""
        self.expire()
        if where == "grant":
            ttl = int(json.loads(req.body)["TTL"])
            if ttl != TTL_S:
                self.problems.append(f"a lease of {ttl} s asked for, not ttl_s {TTL_S}")
            lease = self.rng.randrange(1 << 40, 1 << 63)
            self.granted.add(lease)
            self.leases[lease] = (ttl, self.now() + ttl)
            return http(200, json.dumps({"header": self.header(), "ID": str(lease), "TTL": str(ttl)}).encode())
        if where == "keepalive":
            lease = self.lease_of(req)
            result: dict[str, Any] = {"header": self.header(), "ID": str(lease)}
            if lease in self.leases:
                ttl = self.leases[lease][0]
                self.leases[lease] = (ttl, self.now() + ttl)
                result["TTL"] = str(ttl)
            return http(200, json.dumps({"result": result}).encode() + b"\n")
        if where == "revoke":
            lease = self.lease_of(req)
            if lease not in self.leases:
                return LEASE_NOT_FOUND
            self.drop_lease(lease)
            self.revision += 1
            return http(200, json.dumps({"header": self.header()}).encode())
        if where == "put":
            doc = json.loads(req.body)
            key, value = base64.b64decode(doc["key"]), base64.b64decode(doc.get("value", ""))
            if key != self.reg.key.encode() or json.loads(value) != json.loads(self.reg.etcd_value()):
                self.problems.append(f"a put of {key!r} = {value[:200]!r}")
            lease = self.lease_of(req, "lease") if "lease" in doc else 0
            if not lease:
                self.problems.append("a put without a lease: the key would outlive the gateway")
            elif lease not in self.leases:
                return LEASE_NOT_FOUND
            self.kv[key] = (value, lease)
            self.revision += 1
            return http(200, json.dumps({"header": self.header()}).encode())
        if where == "get":
            key = base64.b64decode(json.loads(req.body)["key"])
            doc: dict[str, Any] = {"header": self.header()}
            if key in self.kv:
                value, lease = self.kv[key]
                doc["kvs"] = [{"key": b64(key), "create_revision": "3", "mod_revision": str(self.revision),
                               "version": "1", "value": b64(value), "lease": str(lease)}]
                doc["count"] = "1"
            return http(200, json.dumps(doc).encode())
        if where == "delete":
            key = base64.b64decode(json.loads(req.body)["key"])
            deleted = self.kv.pop(key, None) is not None
            return http(200, json.dumps({"header": self.header(), **({"deleted": "1"} if deleted else {})}).encode())
        if where == "register":
            body = json.loads(req.body)
            if body != self.reg.consul_payload():
                self.problems.append(f"registered {str(body)[:300]}")
            self.services[body["ID"]] = body
            return http(200, b"")
        if where == "deregister":
            sid = req.path.rsplit("/", 1)[1]
            if self.services.pop(sid, None) is None:
                return http(404, f'Unknown service ID "{sid}". Ensure that the service ID is passed'.encode())
            return http(200, b"")
        if where == "read":
            svc = self.services.get(self.reg.id)
            if svc is None:
                return http(404, f"unknown service ID: {self.reg.id}".encode())
            doc = {"ID": svc["ID"], "Service": svc["Name"], "Tags": svc["Tags"], "Meta": svc["Meta"],
                   "Port": svc["Port"], "Address": svc["Address"], "Weights": svc["Weights"],
                   "EnableTagOverride": False, "ContentHash": "4f1c6d", "Datacenter": "dc1"}
            return http(200, json.dumps(doc).encode(), [("X-Consul-ContentHash", "4f1c6d")])
        return http(404, b"404 page not found\n")

    # -- serving --------------------------------------------------------------------------------------------------

    def where(self, req: Request) -> str:
        etcd = {"/v3/lease/grant": "grant", "/v3/lease/keepalive": "keepalive", "/v3/lease/revoke": "revoke",
                "/v3/kv/put": "put", "/v3/kv/range": "get", "/v3/kv/deleterange": "delete"}
        if self.kind == "etcd":
            return etcd.get(req.path, "other")
        if req.method == "PUT" and req.path == "/v1/agent/service/register":
            return "register"
        if req.method == "PUT" and req.path == f"/v1/agent/service/deregister/{self.reg.id}":
            return "deregister"
        if req.method == "GET" and req.path == f"/v1/agent/service/{self.reg.id}":
            return "read"
        return "other"

    def begin(self, plan: list[Mutation]) -> None:
        self.plan = list(plan)
        self.planned += len(plan)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                req = await read_request(stream)
                if req is None:
                    return
                where = self.where(req)
                if where == "other":
                    self.problems.append(f"an unexpected request {req.method} {req.path}")
                self.requests.append((self.now(), where))
                if self.forgetful and self.plan and self.plan[0].where in REGISTERING and where in (
                        "keepalive", "get", "read"):  # (the gateway checks its registration: it is gone)
                    self.forget()
                if where in ("grant", "register"):
                    self.registrations += 1
                if self.planned and not self.plan and len(self.served) == self.planned:
                    self.after_plan.set()
                if self.plan and self.plan[0].where == where:
                    mutation = self.plan.pop(0)
                    self.served.append((self.now(), mutation.name))
                    if mutation.gone:
                        self.lost = True
                    await mutation.act(self, stream, req)
                else:
                    await stream.send_all(self.good(req, where))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


# ---- mutations ----------------------------------------------------------------------------------------------------


def applied(then: Act) -> Act:
    """The registry applies the request, then answers with `then` (a lost or broken answer to a done change)."""
    async def act(reg: Registry, stream: trio.SocketStream, req: Request) -> None:
        reg.good(req, reg.where(req))
        await then(reg, stream, req)
    return act


def answer(make: Callable[[Registry, Request], bytes]) -> Act:
    async def act(reg: Registry, stream: trio.SocketStream, req: Request) -> None:
        await stream.send_all(make(reg, req))
    return act


def json_200(make: Callable[[Registry, Request], Any], framing: str = "cl") -> Act:
    """A 200 whose body is `make`'s value as JSON, or its bytes as they are."""
    def body(reg: Registry, req: Request) -> bytes:
        doc = make(reg, req)
        return http(200, doc if isinstance(doc, bytes) else json.dumps(doc).encode(), framing=framing,
                    rng=reg.rng)
    return answer(body)


def with_extra(response: bytes, extra: dict[str, Any]) -> bytes:
    """A good answer (a JSON object) with fields etcd or Consul may add one day; any other answer as it is (a 404 when
    the gateway reads before its registration was applied: seed 42420301)."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if status != 200:
        return response
    return http(status, json.dumps({**json.loads(body), **extra}).encode())


def lease_in(req: Request) -> str:
    try:
        return str(json.loads(req.body)["ID"])
    except (ValueError, KeyError, TypeError):
        return "1"


def status_body(status: int) -> bytes:
    return json.dumps({"error": f"etcdserver: boom {status}\nline two", "code": 14,
                       "message": f"etcdserver: boom {status}\nline two " + "y" * 3000}).encode()


def long_bad_header() -> bytes:
    return b"HTTP/1.1 200 OK\r\nX-" + b"\x01" * 8000 + b"\r\nContent-Length: 2\r\n\r\n{}"


def etcd_mutations(rng: random.Random) -> list[Mutation]:
    hdr = {"cluster_id": "1", "member_id": "2", "revision": "9", "raft_term": "2"}
    out: list[Mutation] = []

    def shapes(where: str, items: list[tuple[str, Any]], framing: bool = True) -> None:
        for name, doc in items:
            fr = rng.choice(["cl", "chunked", "close"]) if framing else "cl"
            out.append(Mutation(f"{where}_{name}", where, json_200(lambda r, q, d=doc: d, fr)))

    bodies: list[tuple[str, Any]] = [
        ("list_body", [{"header": hdr}]), ("number_body", b"42"), ("string_body", b'"ok"'), ("null_body", b"null"),
        ("empty_body", b""), ("empty_object", {}), ("nesting_object", b'{"a": ' * 50_000 + b"1" + b"}" * 50_000),
        ("non_utf8_text", b'{"header": {"revision": "\xff\xfe"}}'),
    ]
    # lease grant: the id and the TTL must both be int64 strings, the id >= 1, the TTL >= 1
    good = {"header": hdr, "ID": str(NEVER_GRANTED), "TTL": str(TTL_S)}
    grants: list[tuple[str, Any]] = [(f"id_{n}", {**good, "ID": v}) for n, v in [
        ("text", "abc"), ("float", 1.5), ("float_text", "1.5"), ("zero", "0"), ("negative", "-5"),
        ("huge", "9" * 5000), ("over_int64", str(2**63)), ("null", None), ("list", [1]), ("object", {"a": 1}),
        ("bool", True), ("empty", ""), ("superscript", "\u00b2")]]
    grants += [(f"ttl_{n}", {**good, "TTL": v}) for n, v in [
        ("text", "abc"), ("zero", "0"), ("negative", "-1"), ("huge", "9" * 30), ("null", None), ("float", 2.5)]]
    grants += [
        ("id_missing", {"header": hdr, "TTL": str(TTL_S)}), ("ttl_missing", {"header": hdr, "ID": str(NEVER_GRANTED)}),
        ("id_nan", b'{"header": {"revision": "9"}, "ID": NaN, "TTL": "3"}'),
        ("id_inf", b'{"header": {"revision": "9"}, "ID": -Infinity, "TTL": "3"}'),
        ("header_missing", {"ID": str(NEVER_GRANTED), "TTL": str(TTL_S)}), ("header_list", {**good, "header": [1]}),
        ("error_in_200", {**good, "error": "etcdserver: too many requests\nretry"}),
        ("truncated", json.dumps(good).encode()[:-4]),
    ]
    shapes("grant", bodies + grants)
    out += [Mutation("grant_applied_500", "grant", applied(send(http(500, status_body(500))))),
            Mutation("grant_applied_stall", "grant", applied(send_then_stall(b"", seconds=3 * TIMEOUT_S))),
            Mutation("grant_applied_close", "grant", applied(send(b""))),
            Mutation("grant_benign_extra_fields", "grant", refuse=False,
                     act=answer(lambda r, q: with_extra(r.good(q, "grant"), {"x": [1, {"y": None}]})))]

    # keep-alive: one {"result": {...}} for the lease asked about
    def ka(result: Any) -> Callable[[Registry, Request], Any]:
        return lambda r, q: {"result": result(q) if callable(result) else result}

    def res(**kw: Any) -> Callable[[Request], Any]:
        return lambda q: {"header": hdr, "ID": lease_in(q), "TTL": str(TTL_S), **kw}

    for name, make in [
        ("result_list", ka([])), ("result_string", ka("x")), ("result_null", ka(None)), ("result_number", ka(5)),
        ("ttl_text", ka(res(TTL="abc"))), ("ttl_huge", ka(res(TTL="9" * 5000))), ("ttl_float", ka(res(TTL=1.5))),
        ("ttl_list", ka(res(TTL=[3]))), ("ttl_over_int64", ka(res(TTL=str(2**63)))),
        ("id_other", ka(res(ID=str(NEVER_GRANTED)))), ("id_text", ka(res(ID="abc"))),
        ("id_missing", ka(lambda q: {"header": hdr, "TTL": str(TTL_S)})),
        ("header_missing", ka(lambda q: {"ID": lease_in(q), "TTL": str(TTL_S)})),
        ("result_empty", ka({})),
        ("ttl_nan", lambda r, q: b'{"result": {"header": {}, "ID": "' + lease_in(q).encode() + b'", "TTL": NaN}}'),
        ("two_results", lambda r, q: json.dumps({"result": res()(q)}).encode() * 2),
        ("error_in_200", lambda r, q: {"error": "etcdserver: no leader\nreally", "code": 14}),
    ] + [(n, lambda r, q, b=b: b) for n, b in bodies]:
        out.append(Mutation(f"keepalive_{name}", "keepalive", json_200(make)))
    out += [
        Mutation("keepalive_says_expired", "keepalive", json_200(ka(lambda q: {"header": hdr, "ID": lease_in(q)})),
                 refuse=False, gone=True),
        Mutation("keepalive_ttl_negative", "keepalive", json_200(ka(res(TTL="-1"))), refuse=False, gone=True),
        Mutation("keepalive_benign_extra", "keepalive", json_200(ka(res(grpc="x", more=[1, None])), "chunked"),
                 refuse=False),
        Mutation("keepalive_benign_ttl_number", "keepalive", json_200(ka(lambda q: {
            "header": hdr, "ID": int(lease_in(q)), "TTL": TTL_S})), refuse=False),
    ]

    # put (reached when registering): the answer must be an object with a header
    shapes("put", bodies + [("header_list", {"header": []}), ("header_revision_text", {"header": {"revision": "x"}}),
                            ("header_null", {"header": None}), ("error_in_200", {"header": hdr, "error": "x\ny"})])
    out += [Mutation("put_applied_500", "put", applied(send(http(500, status_body(500))))),
            Mutation("put_applied_garbage", "put", applied(send(http(200, b'{"header": [')))),
            Mutation("put_applied_stall", "put", applied(send_then_stall(b"", seconds=3 * TIMEOUT_S))),
            Mutation("put_applied_close", "put", applied(send(b""))),
            Mutation("put_lease_not_found", "put", send(LEASE_NOT_FOUND)),
            Mutation("put_403", "put", send(etcd_error(403, "etcdserver: permission denied", 7)))]

    # get: the key asked for, once, in valid base64, or nothing
    key = b64(REG_KEY)
    kv = {"key": key, "value": b64(b'{"target": "127.0.0.1:18080"}'), "mod_revision": "4"}
    shapes("get", bodies + [(n, {"header": hdr, **d}) for n, d in [
        ("kvs_object", {"kvs": {"a": kv}}), ("kvs_string", {"kvs": "x"}), ("kvs_null", {"kvs": None}),
        ("kv_number", {"kvs": [5]}), ("kv_list", {"kvs": [[key]]}),
        ("kv_value_bad_b64", {"kvs": [{**kv, "value": "%%%"}]}),
        ("kv_key_bad_b64", {"kvs": [{**kv, "key": "!!"}]}), ("kv_key_missing", {"kvs": [{"value": kv["value"]}]}),
        ("kv_key_other", {"kvs": [{**kv, "key": b64("/gateway/upstreams/mcp-gateway/someone-else")}]}),
        ("kv_key_longer", {"kvs": [{**kv, "key": b64(REG_KEY + "x")}]}),
        ("two_kvs", {"kvs": [kv, kv]}), ("kv_mod_revision_text", {"kvs": [{**kv, "mod_revision": "abc"}]}),
        ("revision_huge", {"header": {"revision": "9" * 5000}}),
    ]] + [("header_missing", {"kvs": [kv]}), ("error_in_200", {"header": hdr, "kvs": [kv], "error": "e"})])
    out += [Mutation("get_says_absent", "get", json_200(lambda r, q: {"header": hdr}), refuse=False, gone=True),
            Mutation("get_benign_extra", "get", refuse=False,
                     act=answer(lambda r, q: with_extra(r.good(q, "get"), {"more": {"a": [1]}})))]

    # revoke (registering again, or cleaning up after a failed put)
    shapes("revoke", [("header_list", {"header": []}), ("empty_body", b""), ("list_body", [1])], framing=False)
    out += [Mutation("revoke_500", "revoke", send(http(500, status_body(500)))),
            Mutation("revoke_applied_stall", "revoke", applied(send_then_stall(b"", seconds=3 * TIMEOUT_S))),
            Mutation("revoke_close", "revoke", send(b"")),
            Mutation("revoke_not_found", "revoke", send(LEASE_NOT_FOUND), refuse=False)]

    # the transport breaks: for each call, every breakage test_disc_fuzz.py knows, plus a long bad header line
    for where, body in [("grant", json.dumps(good).encode()), ("keepalive", b'{"result": {"ID": "1", "TTL": "3"}}'),
                        ("get", json.dumps({"header": hdr}).encode())]:
        out += [Mutation(f"{where}_{n}", where, a) for n, a in wire_mutations(rng, body, status_body, [])]
        out.append(Mutation(f"{where}_long_bad_header", where, send(long_bad_header())))
    return out


def consul_mutations(rng: random.Random) -> list[Mutation]:
    out: list[Mutation] = []
    svc = {"ID": REG_ID, "Service": "mcp-gateway", "Port": 18080, "Address": "127.0.0.1"}
    for name, body in [("null_body", b"null"), ("list_body", json.dumps([svc]).encode()), ("string_body", b'"ok"'),
                       ("number_body", b"5"), ("empty_body", b""), ("truncated", json.dumps(svc).encode()[:-3]),
                       ("other_id", json.dumps({**svc, "ID": "someone-else"}).encode()),
                       ("no_id", json.dumps({k: v for k, v in svc.items() if k != "ID"}).encode()),
                       ("id_number", json.dumps({**svc, "ID": 5}).encode()), ("not_json", b"<html>ok</html>"),
                       ("nesting_object", b'{"a": ' * 50_000 + b"1" + b"}" * 50_000),
                       ("non_utf8_id", b'{"ID": "\xff\xfe"}')]:
        out.append(Mutation(f"read_{name}", "read", send(http(200, body, framing=rng.choice(["cl", "chunked"]),
                                                              rng=rng))))
    out += [Mutation(f"read_status_{s}_two_lines", "read", send(http(s, f"boom {s}\r\nsecond line".encode())))
            for s in (400, 403, 429)]
    out += [Mutation("read_says_unknown", "read", send(http(404, f"unknown service ID: {REG_ID}".encode())),
                     refuse=False, gone=True),
            Mutation("read_benign_extra", "read", refuse=False,
                     act=answer(lambda r, q: with_extra(r.good(q, "read"), {"Proxy": {"x": [1]}})))]
    out += [Mutation(f"register_refused_{s}", "register", send(http(s, f"Invalid check\r\n{'z' * 3000}".encode())))
            for s in (400, 403, 429, 500)]
    out += [Mutation("register_applied_500", "register", applied(send(http(500, b"rpc error: EOF")))),
            Mutation("register_applied_stall", "register", applied(send_then_stall(b"", seconds=3 * TIMEOUT_S))),
            Mutation("register_applied_close", "register", applied(send(b""))),
            Mutation("register_benign_body", "register", refuse=False, act=applied(send(http(200, b"garbage\n"))))]
    for where, body in [("register", b"{}"), ("read", json.dumps(svc).encode())]:
        out += [Mutation(f"{where}_{n}", where, a, refuse=n != "status_404" or where != "read",
                         gone=n == "status_404" and where == "read")  # (the agent does not know the service)
                for n, a in wire_mutations(rng, body, lambda s: b"rpc error", [])
                if not (where == "register" and n in ("non_utf8", "nesting"))]  # (a 200 register is done)
        out.append(Mutation(f"{where}_long_bad_header", where, send(long_bad_header())))
    return out


def stop_mutations(kind: str) -> list[Mutation]:
    """Answers to the deregistration on stop: it fails, logged in one line, and the stop is not held up."""
    where = "revoke" if kind == "etcd" else "deregister"
    return [Mutation(f"stop_{where}_500", where, send(http(500, status_body(500)))),
            Mutation(f"stop_{where}_stall", where, send_then_stall(b"", seconds=3 * TIMEOUT_S)),
            Mutation(f"stop_{where}_applied_stall", where, applied(send_then_stall(b"", seconds=3 * TIMEOUT_S))),
            Mutation(f"stop_{where}_close", where, send(b"")),
            Mutation(f"stop_{where}_403", where, send(http(403, b"Permission denied\r\nsecond")))]


@functools.cache
def menu(kind: str) -> list[Mutation]:
    """Every mutation of a kind, built once (from a fixed seed; a case's own generator picks its plan)."""
    rng = random.Random(f"{MASTER_SEED}:{kind}:menu")
    return etcd_mutations(rng) if kind == "etcd" else consul_mutations(rng)


# ---- the case -----------------------------------------------------------------------------------------------------


def registration_config(kind: str, port: int) -> Any:
    block: dict[str, Any] = {"backend": kind, "address": f"127.0.0.1:{port}", "id": REG_ID, "timeout_s": TIMEOUT_S,
                             "retry_initial_s": RETRY[0], "retry_max_s": RETRY[1], "tags": ["mcp", "fz"],
                             "meta": {"zone": "a"}}
    block.update({"ttl_s": TTL_S} if kind == "etcd" else {"refresh_s": REFRESH_S})
    doc = {"gateway": {"listen": GW_LISTEN, "status_listen": GW_STATUS, "registration": block}}
    return parse_config(json.dumps(doc), "<reg fuzz config>").gateway


@dataclass
class Case:
    kind: str
    index: int
    plan: list[Mutation]
    forget: bool  # the registry loses the registration before each registering mutation, so the call is made
    cold: bool  # the plan begins before the gateway starts
    stop: Mutation | None

    def __str__(self) -> str:
        return (f"{self.kind} case {self.index} (seed {MASTER_SEED}:{self.kind}:{self.index}): plan "
                f"{[m.name for m in self.plan]}, forget={self.forget}, cold={self.cold}, "
                f"stop={self.stop.name if self.stop else None}")


def make_case(kind: str, index: int) -> Case:
    rng = random.Random(f"{MASTER_SEED}:{kind}:{index}")
    items = menu(kind)
    plan = [items[index % len(items)]] + [rng.choice(items) for _ in range(rng.choice([0, 0, 1, 2]))]
    registering = any(m.where in REGISTERING for m in plan)
    cold = registering and all(m.where in ("grant", "put", "register") for m in plan) and rng.random() < 0.3
    stop = rng.choice(stop_mutations(kind)) if rng.random() < 0.25 else None
    return Case(kind, index, plan, forget=registering, cold=cold, stop=stop)


async def run_case(kind: str, index: int, caplog: pytest.LogCaptureFixture) -> None:
    case = make_case(kind, index)
    gw = registration_config(kind, 1)  # (the registry's port, once it listens)
    phase = "start"
    problems: list[str] = []
    registry: Registry | None = None
    first_mark = len(caplog.records)
    mark = first_mark
    try:
        with trio.fail_after(CASE_BUDGET):
            async with trio.open_nursery() as nursery:
                rng = random.Random(f"{MASTER_SEED}:{kind}:{index}:registry")
                registry = Registry(kind, resolve_registration(gw.registration, gw), rng)
                port = await nursery.start(registry.serve)
                gw = registration_config(kind, port)
                registry.reg = resolve_registration(gw.registration, gw)
                if case.cold:
                    registry.lost = True  # (nothing was registered: the first registration is no "again")
                    registry.forgetful = case.forget
                    registry.begin(case.plan)
                    mark = len(caplog.records)
                ended: list[str] = []
                async with trio.open_nursery() as reg_nursery:
                    async def registration(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
                        try:
                            await run_registration(gw.registration, gw, task_status=task_status)
                            ended.append("run_registration returned")
                        except trio.Cancelled:
                            raise
                        except BaseException as e:
                            ended.append(f"run_registration raised {e!r}")
                            raise

                    with trio.fail_after(4 * TIMEOUT_S + 0.1):
                        link = await reg_nursery.start(registration)
                    if not case.cold:
                        phase = "registering"
                        with trio.fail_after(CONVERGE):
                            while registry.registered():
                                await trio.sleep(POLL)
                        mark = len(caplog.records)
                        await trio.sleep(0.3)
                        registry.forgetful = case.forget
                        registry.registrations = 0
                        registry.begin(case.plan)
                    phase = "serving the mutations"
                    bound = RETRY_BOUND * (len(case.plan) + 1) + (TTL_S if kind == "etcd" else REFRESH_S)
                    with trio.fail_after(bound):
                        await registry.after_plan.wait()
                    phase = "converging after healing"
                    healed = trio.current_time()
                    with trio.fail_after(CONVERGE):
                        while registry.registered() or not link.ok or not link.details()["registered"]:
                            await trio.sleep(POLL)
                    converged = trio.current_time()
                    phase = "staying registered"
                    await trio.sleep(PERIOD + 0.3)  # one keep-alive / refresh
                    if why := registry.registered():
                        problems.append(f"registered {converged - healed:.2f}s after healing, but not "
                                        f"{PERIOD + 0.3}s later: {why}")
                    elif kind == "etcd" and registry.lease_deadline() < converged + TTL_S + 0.5:
                        problems.append("the lease was not kept alive after healing")
                    phase = "stopping"
                    if case.stop is not None:
                        registry.begin([case.stop])
                    stopping = trio.current_time()
                    reg_nursery.cancel_scope.cancel()
                stopped = trio.current_time() - stopping
                if ended:
                    problems.append(ended[0])
                if stopped > STOP_BOUND:
                    problems.append(f"stopping took {stopped:.2f}s")
                if case.stop is None and not registry.deregistered():
                    problems.append("not deregistered on stop (the registry let it)")
                nursery.cancel_scope.cancel()
    except BaseException as e:  # noqa: BLE001 - reported with the case, then failed
        problems.append(f"while {phase}: {e!r}")
    assert registry is not None
    records = caplog.records[first_mark:]
    problems += one_line_problems(records)
    problems += registry.problems
    if any(m.refuse for m in case.plan) and not any(
            r.levelno >= logging.WARNING and r.name.startswith("gateway.discovery") for r in caplog.records[mark:]):
        problems.append("an answer that must be refused was not logged (taken as good?)")
    if registry.registrations and not registry.lost:
        problems.append(f"registered again ({registry.registrations}x) though the registry never said the "
                        f"registration was gone")
    if case.stop is not None and not any("could not deregister" in r.getMessage() for r in records):
        problems.append("a failed deregistration was not logged")
    times = [t for t, _ in registry.requests]
    for t, name in registry.served[:-1] if case.stop else registry.served:
        later = [u - t for u in times if u > t]
        if not later or later[0] > RETRY_BOUND:
            problems.append(f"after {name}, the next request came {later[0] if later else None} s later")
    if len(records) > 12 + 6 * len(case.plan):
        problems.append(f"{len(records)} log lines")
    if problems:
        served = [n for _, n in registry.served]
        log = "\n    ".join(r.getMessage()[:300] for r in records)
        pytest.fail(f"{case}\n  served {served}, requests {[w for _, w in registry.requests][-12:]}\n  "
                    + "\n  ".join(problems) + f"\n  log:\n    {log}", pytrace=False)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time: TTLs, keep-alive periods, stalls and timeouts cost nothing; the clock jumps when every task
    waits (the fake registry answers on loopback at once, so waiting on it is never mistaken for idleness for long)."""
    return trio.testing.MockClock(autojump_threshold=0.002)


@pytest.fixture
def reg_env(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(disc_http, "MAX_BODY", MAX_BODY)
    caplog.set_level(logging.INFO)
    return caplog


ETCD_CASES = int(os.environ.get("REGFUZZ_CASES", len(menu("etcd"))))
CONSUL_CASES = int(os.environ.get("REGFUZZ_CASES", len(menu("consul"))))


@pytest.mark.parametrize("index", range(ETCD_CASES))
async def test_reg_etcd_fuzz(index: int, reg_env: pytest.LogCaptureFixture, clock: trio.testing.MockClock) -> None:
    await run_case("etcd", index, reg_env)


@pytest.mark.parametrize("index", range(CONSUL_CASES))
async def test_reg_consul_fuzz(index: int, reg_env: pytest.LogCaptureFixture, clock: trio.testing.MockClock) -> None:
    await run_case("consul", index, reg_env)


def test_the_fuzz_reaches_every_mutation() -> None:
    for kind, cases in (("etcd", ETCD_CASES), ("consul", CONSUL_CASES)):
        names = [m.name for m in menu(kind)]
        assert len(set(names)) == len(names), "mutation names are unique"
        assert cases >= len(names) or "REGFUZZ_CASES" in os.environ
        assert all(m.where in {"grant", "keepalive", "revoke", "put", "get", "register", "read"} for m in menu(kind))


# ---- what the fuzz found, minimized (each failed before the fix in gateway/discovery) ------------------------------


async def answering(raw: bytes, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A peer answering every request with `raw`."""
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            if await read_request(stream) is not None:
                await stream.send_all(raw)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


H = '"header": {"revision": "9"}'


@pytest.mark.parametrize(("call", "body"), [
    ("keepalive", b'{"result": []}'),  # AttributeError out of run_registration
    ("keepalive", b'{"result": {' + H.encode() + b', "ID": "5", "TTL": "' + b"9" * 5000 + b'"}}'),  # ValueError
    ("keepalive", b'{"result": {' + H.encode() + b', "ID": "5", "TTL": NaN}}'),  # ValueError
    ("keepalive", b'{"result": {' + H.encode() + b', "ID": "6", "TTL": "3"}}'),  # another lease's TTL, taken as ours
    ("grant", b'{' + H.encode() + b', "ID": {}, "TTL": "3"}'),  # TypeError
    ("grant", b'{' + H.encode() + b', "ID": "0", "TTL": "3"}'),  # lease 0: the key was put without a lease
    ("grant", b'{' + H.encode() + b', "ID": "7", "TTL": "abc"}'),  # lease 7 from a malformed answer
    ("get", b'{' + H.encode() + b', "kvs": {"a": 1}}'),  # KeyError
    ("get", b'{' + H.encode() + b', "kvs": [{"key": "L2sv", "value": "%%%"}]}'),  # read as b"" (registered)
    ("get", b""),  # an empty 200 was "the key is gone": registering again
    ("put", b'{"header": []}'),  # AttributeError
    ("put", b""),  # an empty 200 was a done put
])
async def test_etcd_registration_answers_refused(call: str, body: bytes, nursery: trio.Nursery) -> None:
    port = await nursery.start(answering, http(200, body))
    client = EtcdClient([f"127.0.0.1:{port}"], 1.0)
    calls = {"keepalive": lambda: client.lease_keepalive(5), "grant": lambda: client.lease_grant(3),
             "get": lambda: client.get("/k/"), "put": lambda: client.put("/k/", b"v", 5)}
    with pytest.raises(TransportError, match="malformed answer|non-JSON"):
        await calls[call]()


async def test_etcd_lease_not_found_is_etcds_answer(nursery: trio.Nursery) -> None:
    """etcd answers a revoke of an expired lease with a 404 (gRPC NotFound): that was a TransportError, so a gateway
    whose lease had expired retried `revoke old lease` forever and never registered again."""
    port = await nursery.start(answering, LEASE_NOT_FOUND)
    with pytest.raises(EtcdError, match="requested lease not found"):
        await EtcdClient([f"127.0.0.1:{port}"], 1.0).lease_revoke(5)
    port = await nursery.start(answering, http(404, b"404 page not found\n"))
    with pytest.raises(TransportError):  # a path etcd does not serve: still "not etcd" (another endpoint, later)
        await EtcdClient([f"127.0.0.1:{port}"], 1.0).lease_revoke(5)


async def run_scenario(kind: str, plan: list[Mutation], *, cold: bool, then: Callable[[Registry], Awaitable[None]],
                       stop: Mutation | None = None) -> Registry:
    async with trio.open_nursery() as nursery:
        gw = registration_config(kind, 1)
        registry = Registry(kind, resolve_registration(gw.registration, gw), random.Random(1))
        port = await nursery.start(registry.serve)
        gw = registration_config(kind, port)
        registry.reg = resolve_registration(gw.registration, gw)
        if cold:
            registry.begin(plan)
        async with trio.open_nursery() as reg_nursery:
            await reg_nursery.start(run_registration, gw.registration, gw)
            if not cold:
                while registry.registered():
                    await trio.sleep(0.05)
                registry.begin(plan)
            await then(registry)
            if stop is not None:
                registry.begin([stop])
            reg_nursery.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return registry


async def test_etcd_registers_again_after_its_lease_expired(clock: trio.testing.MockClock) -> None:
    async def expire(registry: Registry) -> None:
        registry.forget()  # (as the lease running out does: its key goes with it)
        with trio.fail_after(CONVERGE):
            while registry.registered():
                await trio.sleep(0.05)

    await run_scenario("etcd", [], cold=False, then=expire)


@pytest.mark.parametrize("answer_", ["register_applied_500", "register_applied_stall", "register_applied_close"])
async def test_consul_stop_after_an_unanswered_registration_deregisters(
        answer_: str, clock: trio.testing.MockClock) -> None:
    """The agent applied the registration but its answer was lost; the gateway stops before it learns: the service
    stayed in the agent (and, with check: "", passing) after the gateway was gone."""
    mutation = next(m for m in consul_mutations(random.Random(0)) if m.name == answer_)

    async def wait(registry: Registry) -> None:
        while not registry.services:
            await trio.sleep(0.01)
        await trio.sleep(TIMEOUT_S)

    registry = await run_scenario("consul", [mutation] * 100, cold=True, then=wait)
    assert registry.deregistered()


async def test_a_deregistration_that_times_out_is_logged(clock: trio.testing.MockClock,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    stall = next(m for m in stop_mutations("consul") if m.name == "stop_deregister_stall")

    async def nothing(registry: Registry) -> None:
        pass

    await run_scenario("consul", [], cold=False, then=nothing, stop=stall)  # (the stop was silent)
    assert [r.getMessage() for r in caplog.records if "could not deregister" in r.getMessage()] == [
        f"registration: could not deregister {REG_ID}: no answer within {TIMEOUT_S:g}s"]


@pytest.mark.parametrize("status", [400, 403, 429])
async def test_consul_read_refused_is_not_gone(status: int, clock: trio.testing.MockClock,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """An ACL-denied or rate-limited read of the agent's service was "no longer registered": registering again."""
    caplog.set_level(logging.INFO)
    refused = Mutation("read_refused", "read", send(http(status, b"Permission denied")))

    async def serve(registry: Registry) -> None:
        registry.registrations = 0
        while registry.plan:
            await trio.sleep(0.05)
        await trio.sleep(PERIOD)
        assert registry.registrations == 0

    await run_scenario("consul", [refused] * 3, cold=False, then=serve)
    assert not any("no longer registered" in r.getMessage() for r in caplog.records)


async def test_a_bad_header_line_is_quoted_short(nursery: trio.Nursery) -> None:
    """h11 quotes the offending line (up to 16 KiB) in its error: it went into the log line whole."""
    port = await nursery.start(answering, long_bad_header())
    with pytest.raises(TransportError) as info:
        await disc_http.request(disc_http.Endpoint("127.0.0.1", port), "GET", "/", timeout=1.0)
    assert len(str(info.value)) < 400
