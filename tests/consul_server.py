"""A small fake Consul agent (Trio + h11) speaking the parts of Consul's HTTP API the gateway uses, as documented:

- PUT /v1/agent/service/register           register (or replace) a service instance, with Check / Checks
- PUT /v1/agent/service/deregister/<id>    remove it (404 for an unknown id)
- GET /v1/agent/service/<id>, GET /v1/agent/services
- PUT /v1/agent/check/pass|warn|fail/<id>, PUT /v1/agent/check/update/<id>   TTL checks
- GET /v1/health/service/<service>?passing&tag=&dc=&index=&wait=   with blocking queries and X-Consul-Index
- GET /v1/catalog/service/<service>, GET /v1/status/leader

One node ("fake-node", 127.0.0.1) with a passing serfHealth check, as a one-agent dev cluster has. HTTP and TCP
checks are run by the fake at their Interval (HTTP 2xx passing, 429 warning, else critical; TCP connect passing),
TTL checks start critical and move with the check endpoints. Every write gets the next raft index; a health query's
X-Consul-Index is the highest index touching that service, and a blocking query (index > 0) returns when it moves
past the requested index or after `wait` (default 5m, at most 10m) plus up to wait/16 of jitter, as Consul does.

    consul = FakeConsul()
    port = await nursery.start(consul.serve)          # 127.0.0.1, a free port
    await consul.stop()                               # connections (blocking queries) are cut; state is kept
    await nursery.start(consul.serve, port)           # "the agent is back", same port
"""

from __future__ import annotations

import json
import random
import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0


def go_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _ci(d: dict[str, Any], name: str, default: Any = None) -> Any:
    """Consul decodes request bodies case-insensitively (ID / id / Id)."""
    for k, v in d.items():
        if k.lower() == name.lower():
            return v
    return default


class FakeConsul:
    def __init__(self, node: str = "fake-node", node_address: str = "127.0.0.1") -> None:
        self.node = node
        self.node_address = node_address
        self.index = 10
        self.services: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.service_index: dict[str, int] = {}  # service name -> last index that touched it
        self.changed = trio.Event()
        self.port = 0
        self.requests: list[tuple[str, str]] = []  # (method, target) as received
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    # ---- state ----------------------------------------------------------------------------------------------------

    def _bump(self, service: str) -> int:
        self.index += 1
        self.service_index[service] = self.index
        self.changed.set()
        self.changed = trio.Event()
        return self.index

    def register(self, body: dict[str, Any]) -> None:
        name = _ci(body, "Name")
        if not isinstance(name, str) or not name:
            raise ValueError("Missing service name")
        sid = _ci(body, "ID") or name
        old = self.services.get(sid)
        if old is not None and old["Service"] != name:
            self._drop(sid)
        port = _ci(body, "Port", 0)
        if not isinstance(port, int):
            raise ValueError("Port must be a number")
        weights = _ci(body, "Weights") or {}
        idx = self._bump(name)
        self.services[sid] = {
            "ID": sid, "Service": name, "Tags": list(_ci(body, "Tags") or []), "Address": _ci(body, "Address") or "",
            "Meta": dict(_ci(body, "Meta") or {}), "Port": port,
            "Weights": {"Passing": _ci(weights, "Passing", 1), "Warning": _ci(weights, "Warning", 1)},
            "EnableTagOverride": False, "CreateIndex": old["CreateIndex"] if old else idx, "ModifyIndex": idx,
        }
        for cid in [c for c, chk in self.checks.items() if chk["ServiceID"] == sid]:
            del self.checks[cid]
        defs = []
        if _ci(body, "Check"):
            defs.append((f"service:{sid}", _ci(body, "Check")))
        for i, chk in enumerate(_ci(body, "Checks") or [], start=1):
            defs.append((f"service:{sid}:{i}", chk))
        for default_id, chk in defs:
            cid = _ci(chk, "CheckID") or _ci(chk, "ID") or default_id
            kind = "http" if _ci(chk, "HTTP") else "tcp" if _ci(chk, "TCP") else "ttl" if _ci(chk, "TTL") else ""
            if not kind:
                raise ValueError("Invalid check: one of HTTP, TCP or TTL is required")
            self.checks[cid] = {
                "Node": self.node, "CheckID": cid, "Name": _ci(chk, "Name") or f"Service '{name}' check",
                "Status": _ci(chk, "Status") or "critical", "Notes": _ci(chk, "Notes") or "", "Output": "",
                "ServiceID": sid, "ServiceName": name, "ServiceTags": list(_ci(body, "Tags") or []), "Type": kind,
                "Interval": _ci(chk, "Interval") or "", "Timeout": _ci(chk, "Timeout") or "",
                "HTTP": _ci(chk, "HTTP") or "", "TCP": _ci(chk, "TCP") or "", "TTL": _ci(chk, "TTL") or "",
                "CreateIndex": idx, "ModifyIndex": idx,
            }

    def _drop(self, sid: str) -> str:
        svc = self.services.pop(sid)
        for cid in [c for c, chk in self.checks.items() if chk["ServiceID"] == sid]:
            del self.checks[cid]
        self._bump(svc["Service"])
        return svc["Service"]

    def deregister(self, sid: str) -> bool:
        if sid not in self.services:
            return False
        self._drop(sid)
        return True

    def set_check(self, cid: str, status: str, output: str = "") -> None:
        chk = self.checks[cid]
        if chk["Status"] == status and chk["Output"] == output:
            return  # Consul does not bump the index for a no-op update
        chk["Status"], chk["Output"] = status, output
        chk["ModifyIndex"] = self._bump(chk["ServiceName"])

    def health_entries(self, name: str, *, passing: bool = False, tag: str | None = None) -> list[dict[str, Any]]:
        out = []
        node_check = {"Node": self.node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
                      "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "",
                      "ServiceTags": [], "Type": "", "CreateIndex": 1, "ModifyIndex": 1}
        for sid, svc in sorted(self.services.items()):
            if svc["Service"] != name or (tag is not None and tag not in svc["Tags"]):
                continue
            checks = [node_check] + [dict(c) for c in self.checks.values() if c["ServiceID"] == sid]
            if passing and any(c["Status"] != "passing" for c in checks):
                continue
            node = {"ID": "00000000-0000-0000-0000-000000000001", "Node": self.node, "Address": self.node_address,
                    "Datacenter": "dc1", "TaggedAddresses": {"lan": self.node_address, "wan": self.node_address},
                    "Meta": {}, "CreateIndex": 1, "ModifyIndex": 1}
            out.append({"Node": node, "Service": dict(svc), "Checks": checks})
        return out

    def index_for(self, name: str) -> int:
        return self.service_index.get(name, self.index)

    # ---- serving --------------------------------------------------------------------------------------------------

    async def serve(self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._run_checks, nursery)
                    task_status.started(self.port)
                    await trio.serve_listeners(self._on_conn, listeners, handler_nursery=nursery)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            self._stopped.set()

    async def stop(self) -> None:
        """Stop listening and cut every connection (like a killed agent); the registry state is kept."""
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()
            self._scope = None

    async def _on_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req, body = await self._read_request(stream, conn)
                if req is None:
                    return
                status, headers, payload = await self._dispatch(req.method.decode(), req.target.decode(), body)
                data = conn.send(h11.Response(status_code=status, headers=headers + [
                    ("Content-Length", str(len(payload)))]))
                data += conn.send(h11.Data(data=payload)) if payload else b""
                data += conn.send(h11.EndOfMessage())
                await stream.send_all(data)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _read_request(self, stream: trio.SocketStream, conn: h11.Connection) -> tuple[Any, bytes]:
        req = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                req = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return req, body
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _dispatch(self, method: str, target: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        self.requests.append((method, target))
        url = urlsplit(target)
        path = url.path
        query = parse_qs(url.query, keep_blank_values=True)
        jsonh = [("Content-Type", "application/json")]
        textp = [("Content-Type", "text/plain; charset=utf-8")]

        def need(m: str) -> tuple[int, list[tuple[str, str]], bytes] | None:
            return None if method == m else (405, textp, f"method {method} not allowed".encode())

        try:
            if path == "/v1/agent/service/register":
                if (err := need("PUT")) is not None:
                    return err
                try:
                    self.register(json.loads(body or b"{}"))
                except (ValueError, TypeError, AttributeError) as e:
                    return 400, textp, f"Request decode failed: {e}".encode()
                return 200, [], b""
            if path.startswith("/v1/agent/service/deregister/"):
                if (err := need("PUT")) is not None:
                    return err
                sid = unquote(path.rsplit("/", 1)[1])
                if not self.deregister(sid):
                    return 404, textp, f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the ' \
                                       f"service name.".encode()
                return 200, [], b""
            if path == "/v1/agent/services":
                return 200, jsonh, json.dumps(self.services).encode()
            if path.startswith("/v1/agent/service/"):
                sid = unquote(path.rsplit("/", 1)[1])
                if sid not in self.services:
                    return 404, textp, f"unknown service ID: {sid}".encode()
                return 200, jsonh + [("X-Consul-ContentHash", "0")], json.dumps(self.services[sid]).encode()
            m = re.match(r"^/v1/agent/check/(pass|warn|fail|update)/(.+)$", path)
            if m:
                if (err := need("PUT")) is not None:
                    return err
                cid = unquote(m.group(2))
                if cid not in self.checks:
                    return 404, textp, f'Unknown check ID "{cid}"'.encode()
                if m.group(1) == "update":
                    doc = json.loads(body or b"{}")
                    status, output = _ci(doc, "Status", "passing"), _ci(doc, "Output", "")
                else:
                    status = {"pass": "passing", "warn": "warning", "fail": "critical"}[m.group(1)]
                    output = query.get("note", [""])[0]
                self.set_check(cid, status, output)
                return 200, [], b""
            if path.startswith("/v1/health/service/") or path.startswith("/v1/catalog/service/"):
                if (err := need("GET")) is not None:
                    return err
                return await self._health(path, query, catalog=path.startswith("/v1/catalog/"))
            if path == "/v1/status/leader":
                return 200, jsonh, b'"127.0.0.1:8300"'
            return 404, textp, b"404 page not found"
        except ValueError as e:
            return 400, textp, str(e).encode()

    async def _health(self, path: str, query: dict[str, list[str]], *, catalog: bool
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        name = unquote(path.rsplit("/", 1)[1])
        index = int(query.get("index", ["0"])[0] or 0)
        if index > 0:
            wait = go_duration(query["wait"][0]) if "wait" in query else DEFAULT_WAIT
            wait = min(wait, MAX_WAIT)
            wait += random.random() * wait / 16
            with trio.move_on_after(wait):
                while self.index_for(name) <= index:
                    await self.changed.wait()
        tag = query.get("tag", [None])[0]
        entries = self.health_entries(name, passing="passing" in query and not catalog, tag=tag)
        if catalog:
            body: Any = [{"Node": e["Node"]["Node"], "Address": e["Node"]["Address"],
                          "ServiceID": e["Service"]["ID"], "ServiceName": e["Service"]["Service"],
                          "ServiceAddress": e["Service"]["Address"], "ServicePort": e["Service"]["Port"],
                          "ServiceTags": e["Service"]["Tags"], "ServiceWeights": e["Service"]["Weights"]}
                         for e in entries]
        else:
            body = entries
        headers = [("Content-Type", "application/json"), ("X-Consul-Index", str(self.index_for(name))),
                   ("X-Consul-Knownleader", "true"), ("X-Consul-Lastcontact", "0")]
        return 200, headers, json.dumps(body).encode()

    # ---- the agent's own checks -------------------------------------------------------------------------------------

    async def _run_checks(self, nursery: trio.Nursery) -> None:
        due: dict[str, float] = {}
        running: set[str] = set()

        async def one(cid: str, chk: dict[str, Any]) -> None:
            try:
                await self._check_once(cid, chk)
            finally:
                running.discard(cid)

        while True:
            now = trio.current_time()
            for cid, chk in list(self.checks.items()):
                if chk["Type"] in ("http", "tcp") and due.get(cid, 0) <= now and cid not in running:
                    due[cid] = now + (go_duration(chk["Interval"]) if chk["Interval"] else 10.0)
                    running.add(cid)
                    nursery.start_soon(one, cid, chk)
            await trio.sleep(0.02)

    async def _check_once(self, cid: str, chk: dict[str, Any]) -> None:
        timeout = go_duration(chk["Timeout"]) if chk["Timeout"] else 10.0
        status, output = "critical", ""
        with trio.move_on_after(timeout) as scope:
            try:
                if chk["Type"] == "tcp":
                    host, _, port = chk["TCP"].rpartition(":")
                    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
                    await stream.aclose()
                    status, output = "passing", f"TCP connect {chk['TCP']}: Success"
                else:
                    code = await _http_get_status(chk["HTTP"])
                    status = "passing" if 200 <= code < 300 else "warning" if code == 429 else "critical"
                    output = f"HTTP GET {chk['HTTP']}: {code}"
            except (OSError, ValueError, h11.ProtocolError, trio.BrokenResourceError) as e:
                output = f"check failed: {e}"
        if scope.cancelled_caught:
            output = "check timed out"
        if cid in self.checks:
            self.set_check(cid, status, output)


async def _http_get_status(url: str) -> int:
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=[
            ("Host", parts.netloc), ("User-Agent", "Consul Health Check"), ("Connection", "close")])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                return event.status_code
            elif isinstance(event, h11.ConnectionClosed):
                raise ValueError("connection closed before a response")
