"""Several gateway hosts (issue 16), on loopback: two supervised gateways of 2 workers each, with their own run
directories and ports, behind Debian's HAProxy in TCP mode with send-proxy-v2 (README "Several hosts": the hosts'
listeners flagged proxy_protocol, HAProxy in trusted_ips, real_ip_header proxy_protocol), sharing one redis-server
(rate-limiting policy redis), discovering their MCP servers in etcd and registering themselves there, with one MCP
session key.

Measured: a limit L per minute under load from 4 clients on new connections (so HAProxy alternates the hosts), a
demand of 3 L, admits 0.95 L .. 1.01 L; Redis killed under load fails no request and each host admits at most
its share, and Redis restarted (empty) gets every host's claim back within a second; MCP SDK sessions whose every
request opens a new connection (landing on either host) stay on the server that created them; a client's own address
reaches the upstream through HAProxy and either host. host-2's status listener has proxy_protocol too: its /metrics
is read after a PROXY protocol header.
Everything is started once for the module and stopped by pid.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
from backends import Client, EchoBackend, free_port, stop_process, wait_port
from etcd_server import EtcdProcess, find_etcd
from loadgen import LOAD_ID, load_body, verdict
from redis_server import RedisProcess, find_redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "mcp"))
from mcp_helpers import sdk_client, whoami  # noqa: E402 - tests/mcp is not a package

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
SESSION_KEY = {"id": "k1", "secret": "multi-host-secret-0123456789abcdef"}
EXACT_LIMIT = 300  # per minute
OUTAGE_LIMIT = 200  # per minute


def host_config(port: int, status_port: int, name: str, etcd: str, redis_port: int, backend: int, echo: int) -> dict:
    """One host's config: only `listen`, `status_listen` and the registration id differ between hosts. HAProxy
    (127.0.0.1) sends each connection's client in a PROXY protocol header."""
    redis = {"host": "127.0.0.1", "port": redis_port, "timeout": 300}
    return {
        "_format_version": "3.0",
        "gateway": {"listen": f"127.0.0.1:{port} proxy_protocol", "trusted_ips": ["127.0.0.1"],
                    "real_ip_header": "proxy_protocol", "status_listen": f"127.0.0.1:{status_port}", "drain_timeout": 2,
                    "mcp": {"session_keys": [SESSION_KEY]},
                    "registration": {"backend": "etcd", "address": etcd, "service": "mcp-gateway", "id": name,
                                     "ttl_s": 5}},
        "upstreams": [{"name": "mcp-cluster", "discovery": {"type": "etcd", "endpoints": [etcd],
                                                            "prefix": "/gateway/upstreams/mcp/"}},
                      {"name": "plain", "targets": [{"target": f"127.0.0.1:{backend}"}]}],
        "services": [{"name": "mcp", "url": "http://mcp-cluster", "read_timeout": 10000,
                      "routes": [{"name": "mcp", "paths": ["/mcp"], "strip_path": False, "mcp": True}]},
                     {"name": "plain", "url": "http://plain",
                      "routes": [{"name": "exact", "paths": ["/exact"], "strip_path": False},
                                 {"name": "outage", "paths": ["/outage"], "strip_path": False}]},
                     {"name": "echo", "url": f"http://127.0.0.1:{echo}",
                      "routes": [{"name": "echo", "paths": ["/echo"]}]}],
        "plugins": [
            {"name": "rate-limiting", "route": "exact",
             "config": {"minute": EXACT_LIMIT, "limit_by": "header", "header_name": "x-run", "policy": "redis",
                        "redis": redis}},
            {"name": "rate-limiting", "route": "outage",
             "config": {"minute": OUTAGE_LIMIT, "limit_by": "header", "header_name": "x-run", "policy": "redis",
                        "redis": redis, "fault_tolerant": True}},
        ],
    }


class Host:
    def __init__(self, workdir: Path, doc: dict) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.doc = doc
        self.port = int(doc["gateway"]["listen"].split()[0].rsplit(":", 1)[1])
        self.status_port = int(doc["gateway"]["status_listen"].split()[0].rsplit(":", 1)[1])
        self.config = workdir / "gateway.yaml"
        self.config.write_text(json.dumps(doc, indent=1))
        self.root = 0

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=self.dir, env=ENV, capture_output=True,
                              text=True, timeout=timeout)

    def start(self) -> None:
        out = self.cli("start", "--config", str(self.config), "--workers", "2")
        assert out.returncode == 0, out.stdout + out.stderr + self.log()[-3000:]
        self.root = int((self.dir / "run" / "gateway.pid").read_text())

    def stop(self) -> None:
        if self.root and _alive(self.root):
            os.kill(self.root, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(self.root) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(self.root):
                os.kill(self.root, signal.SIGKILL)

    def metrics(self) -> str:
        if not self.doc["gateway"]["status_listen"].endswith(" proxy_protocol"):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/metrics", timeout=5) as resp:
                return resp.read().decode()
        with socket.create_connection(("127.0.0.1", self.status_port), timeout=5) as sock:
            sock.sendall(b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 %d\r\nGET /metrics HTTP/1.0\r\n\r\n" % self.status_port)
            answer = b"".join(iter(partial(sock.recv, 65536), b""))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), answer[:500]
        return body.decode()

    def log(self) -> str:
        path = self.dir / "run" / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _alive(pid: int) -> bool:
    """Running: not gone, and not a zombie (a daemonised root is reaped by pid 1, which may take seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def etcd_put(endpoint: str, key: str, value: str) -> None:
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                       "value": base64.b64encode(value.encode()).decode()}).encode()
    urllib.request.urlopen(f"http://{endpoint}/v3/kv/put", body, timeout=5).read()


def etcd_keys(endpoint: str, prefix: str) -> list[str]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                       "range_end": base64.b64encode(end.encode()).decode()}).encode()
    doc = json.loads(urllib.request.urlopen(f"http://{endpoint}/v3/kv/range", body, timeout=5).read())
    return [base64.b64decode(kv["key"]).decode() for kv in doc.get("kvs", [])]


def haproxy_config(port: int, hosts: list[Host]) -> str:
    servers = "\n".join(f"  server h{i} 127.0.0.1:{h.port} send-proxy-v2" for i, h in enumerate(hosts, 1))
    return f"""global
  maxconn 4000
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend gateways
  bind 127.0.0.1:{port}
  default_backend hosts
backend hosts
  balance roundrobin
{servers}
"""


class Deployment:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: list[subprocess.Popen] = []
        self.hosts: list[Host] = []
        self.redis: RedisProcess | None = None
        self.etcd: EtcdProcess | None = None
        self.port = 0
        self.echo_port = free_port()  # a test's EchoBackend: what the upstream receives
        self.mcp_ports: dict[str, int] = {}

    def start(self) -> None:
        redis_bin, why = find_redis()
        if redis_bin is None:
            pytest.skip(why)
        etcd_bin, why = find_etcd()
        if etcd_bin is None:
            pytest.skip(why)
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            pytest.skip("haproxy is not installed (scripts/setup installs Debian's haproxy)")
        (self.dir / "redis").mkdir()
        (self.dir / "etcd").mkdir()
        # The servers' imports take seconds: they start first and are waited for last, while the rest starts.
        backend = free_port()
        self.procs.append(subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo_backend.py"), "--port",
                                            str(backend), "--name", "plain"], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        for name in ("s1", "s2"):
            port = self.mcp_ports[name] = free_port()
            self.procs.append(subprocess.Popen([sys.executable, str(ROOT / "scripts" / "mcp_demo_server.py"),
                                                "--port", str(port), "--name", name], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        self.redis = RedisProcess(redis_bin, self.dir / "redis")
        self.redis.start()
        self.etcd = EtcdProcess(etcd_bin, self.dir / "etcd")
        self.etcd.start()
        for name, port in self.mcp_ports.items():
            etcd_put(self.etcd.endpoint, f"/gateway/upstreams/mcp/{name}", json.dumps({"target": f"127.0.0.1:{port}"}))
        for i in (1, 2):
            doc = host_config(free_port(), free_port(), f"host-{i}", self.etcd.endpoint, self.redis.port, backend,
                              self.echo_port)
            if i == 2:  # a status listener that reads a PROXY protocol header first (Kong's status_listen takes it)
                doc["gateway"]["status_listen"] += " proxy_protocol"
            self.hosts.append(Host(self.dir / f"host-{i}", doc))
        starts = [threading.Thread(target=host.start) for host in self.hosts]  # in parallel: each takes seconds
        for thread in starts:
            thread.start()
        self.port = free_port()
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(haproxy_config(self.port, self.hosts))
        self.procs.append(subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        for port in (backend, *self.mcp_ports.values()):
            wait_port(port, timeout=60)  # (their start shares the CPU with the hosts')
        for thread in starts:
            thread.join(90)
        for host in self.hosts:
            assert host.root, f"{host.dir.name} did not start: {host.log()[-2000:]}"
        wait_port(self.port, timeout=10)

    def stop(self) -> None:
        stops = [threading.Thread(target=host.stop) for host in self.hosts]
        for thread in stops:
            thread.start()
        for thread in stops:
            thread.join(30)
        rest = [partial(stop_process, proc) for proc in self.procs]
        rest += [server.stop for server in (self.redis, self.etcd) if server is not None]
        stops = [threading.Thread(target=stop) for stop in rest]  # in parallel: each waits for its process
        for thread in stops:
            thread.start()
        for thread in stops:
            thread.join(30)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory):
    dep = Deployment(tmp_path_factory.mktemp("multihost"))
    try:
        dep.start()
        yield dep
    finally:
        dep.stop()


# ---- load ----------------------------------------------------------------------------------------------------------


async def one_post(port: int, path: str, run: str) -> int | str:
    """One POST on a new connection (HAProxy picks the host per connection): its status, or for a 200 that is not
    this request's answer, whole, how it is not (tests/loadgen.py's verdict); 0 if the exchange failed."""
    load_id = f"{run}-{next(_POSTS)}"
    body = load_body(load_id, 300, 256)
    conn = h11.Connection(h11.CLIENT)
    try:
        with trio.fail_after(5):
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                fields = [("host", f"127.0.0.1:{port}"), ("content-type", "application/json"),
                          ("content-length", str(len(body))), ("connection", "close"), ("x-run", run),
                          (LOAD_ID, load_id)]
                await stream.send_all(conn.send(h11.Request(method="POST", target=path, headers=fields)) +
                                      conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                status, headers, data = 0, [], bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status, headers = event.status_code, list(event.headers)
                    elif isinstance(event, h11.Data):
                        data += event.data
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        if status == 200:
                            return verdict(load_id, body, status, headers, bytes(data)) or 200
                        return status
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError):
        return 0


_POSTS = itertools.count()


async def load(port: int, path: str, run: str, seconds: float, statuses: Counter, clients: int = 4,
               most: int | None = None) -> None:
    """`clients` sending one request after another for `seconds`, or until `most` requests were sent."""
    deadline = trio.current_time() + seconds

    async def client() -> None:
        while trio.current_time() < deadline and (most is None or sum(statuses.values()) < most):
            statuses[await one_post(port, path, run)] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)


async def within_one_minute(seconds: float) -> None:
    """Wait for the next minute if fewer than `seconds` are left of this one (a window must hold the whole test)."""
    left = 60 - time.time() % 60
    if left < seconds:
        await trio.sleep(left + 0.05)


def window_claims(dep: Deployment, run: str) -> dict[str, int]:
    """The hosts' claims on the current minute window of identifier `run`'s counter, read from Redis (its key is
    `gateway:rl:<route id>:<service id>|<identifier>|minute|<start>`, Kong's counter: README, Several hosts)."""
    start = int(time.time() // 60) * 60
    keys = _words(dep.redis.command("KEYS", f"gateway:rl:*|{run}|minute|{start}"))
    if len(keys) != 1:
        return {}
    words = _words(dep.redis.command("HGETALL", keys[0]))
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


def _words(reply: bytes) -> list[str]:
    """The strings of a RESP array reply."""
    return [w for w in reply.decode().split("\r\n") if w and w[0] not in "*$%"]




# ---- tests ---------------------------------------------------------------------------------------------------------


async def test_two_hosts_of_two_workers_admit_a_minute_limit_within_one_percent(deployment):
    await within_one_minute(6)
    run = uuid.uuid4().hex[:8]
    statuses: Counter = Counter()
    with trio.fail_after(20):
        await load(deployment.port, "/exact", run, 3.0, statuses, most=3 * EXACT_LIMIT)
    admitted = statuses[200]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0, "the demand did not exceed the limit"
    assert 0.95 * EXACT_LIMIT <= admitted <= 1.01 * EXACT_LIMIT, (admitted, statuses)
    claims = window_claims(deployment, run)
    assert len(claims) == 2 and all(claims.values()), claims  # both hosts took blocks from Redis
    assert sum(claims.values()) <= EXACT_LIMIT
    print(f"\nmultihost exactness: admitted {admitted} of {EXACT_LIMIT} ({admitted / EXACT_LIMIT:.3f}); "
          f"claims {claims}; {dict(statuses)}")


async def test_redis_killed_under_load_fails_no_request_and_resynchronises_after_restart(deployment):
    await within_one_minute(10)
    run = uuid.uuid4().hex[:8]
    before, during, after = Counter(), Counter(), Counter()
    with trio.fail_after(20):
        # A quarter of the limit before Redis goes: the hosts' shares are not claimed yet, so the outage has to be
        # served from the keepers' fallback shares.
        await load(deployment.port, "/outage", run, 0.5, before, clients=1, most=OUTAGE_LIMIT // 4)
        deployment.redis.kill()
        await load(deployment.port, "/outage", run, 2.0, during)
        admitted = before[200] + during[200]
        deployment.redis.start()  # empty: it lost every count
        restarted = time.monotonic()
        synced_in = None
        while time.monotonic() - restarted < 3:
            await load(deployment.port, "/outage", run, 0.1, after, clients=2)
            if sum(window_claims(deployment, run).values()) >= admitted:
                synced_in = time.monotonic() - restarted
                break
    for phase in (before, during, after):
        assert set(phase) <= {200, 429}, (before, during, after)  # no request failed because of Redis
    assert during[429] > 0, "the hosts did not reach their shares"
    # each host admits at most its share (limit / 2 hosts) of the window, so together at most the limit
    assert admitted <= OUTAGE_LIMIT * 1.01, (before, during)
    assert synced_in is not None and synced_in < 1.0, synced_in
    total = admitted + after[200]
    assert total <= OUTAGE_LIMIT * 1.01, (before, during, after)
    # The workers report what they admitted on their shares at their next flush, and the keeper counts it at its next
    # Redis tick: on a busy machine that may be after the load ended.
    fallback = 0.0
    deadline = time.monotonic() + 10
    while not fallback and time.monotonic() < deadline:
        fallback = sum(float(m) for h in deployment.hosts for m in re.findall(
            r'^gateway_ratelimit_redis_fallback_total\{plugin="rate-limiting::outage:"\} (\S+)$', h.metrics(), re.M))
        if not fallback:
            await trio.sleep(0.2)
    assert fallback > 0
    print(f"\nmultihost outage: admitted {admitted} of {OUTAGE_LIMIT} before+during the outage, {total} in the "
          f"window; claims resynchronised {synced_in:.2f}s after the restart; fallback tokens {fallback:.0f}")


async def test_mcp_sessions_through_haproxy_stay_on_their_server_whichever_host_serves_a_request(deployment):
    url = f"http://127.0.0.1:{deployment.port}/mcp"
    keys = etcd_keys(deployment.etcd.endpoint, "/gateway/upstreams/mcp-gateway/")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["host-1", "host-2"]  # both hosts registered themselves
    seen: dict[int, set[str]] = {}
    with trio.fail_after(20):
        for session in range(4):
            async with sdk_client(url, fresh_connections=True) as (client, ids):
                seen[session] = {await whoami(client) for _ in range(5)}
                assert len(set(ids.seen)) == 1 and 404 not in ids.statuses
    assert all(len(names) == 1 for names in seen.values()), seen  # every session stayed on its server
    assert set().union(*seen.values()) <= {"s1", "s2"}
    def served() -> list[float]:
        return [sum(float(v) for v in re.findall(  # the labels in either order (Kong's exporter: declared order)
            r'^gateway_requests_total\{(?:code="2\d\d",route="mcp"|route="mcp",code="2\d\d")\} (\S+)$',
            host.metrics(), re.M)) for host in deployment.hosts]

    counts = served()
    deadline = time.monotonic() + 5
    while not all(counts) and time.monotonic() < deadline:  # workers write their counts at each 1 s flush
        await trio.sleep(0.2)
        counts = served()
    assert all(counts), counts  # both hosts served the sessions' requests


async def test_a_clients_own_address_reaches_the_upstream_through_haproxy_and_either_host(deployment, nursery):
    """HAProxy's send-proxy-v2 before each host's proxy_protocol listener: a client connecting from 127.0.0.2 is the
    upstream's X-Real-IP and X-Forwarded-For whichever host serves it, not HAProxy's 127.0.0.1 (nginx's realip with
    real_ip_header proxy_protocol takes the PROXY header's source: src/http/modules/ngx_http_realip_module.c,
    NGX_HTTP_REALIP_PROXY, at release-1.27.1)."""
    echo = EchoBackend()
    echo.port = deployment.echo_port
    await nursery.start(echo.serve)
    seen = []
    with trio.fail_after(10):
        for _ in range(2):  # roundrobin: two new connections, one on each host
            stream = await trio.open_tcp_stream("127.0.0.1", deployment.port, local_address="127.0.0.2")
            async with Client(stream, "multihost.test") as client:
                reply = await client.request("GET", "/echo")
            assert reply.status == 200, reply.body
            seen.append(dict(reply.json()["headers"]))
    assert sorted(h["x-forwarded-port"] for h in seen) == sorted(str(h.port) for h in deployment.hosts)  # both hosts
    assert [(h["x-real-ip"], h["x-forwarded-for"]) for h in seen] == [("127.0.0.2", "127.0.0.2")] * 2
