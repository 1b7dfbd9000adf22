"""Review findings on discovery and self-registration, each pinned to what etcd's or Consul's docs (or the README)
say: a hung etcd member is left, a bracketed host must be an IPv6 address, a Consul registration always has a
check, a setting nothing reads is refused, and a registration is withdrawn from every agent that holds it.
Loopback only; every process started here is stopped by pid."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import unquote

import pytest
import trio
from backends import free_port, stop_process
from consul_server import FakeConsul
from etcd_server import find_etcd

from gateway.config import ConfigError, parse_config
from gateway.config.discovery import DiscoverySettings, RegistrationSettings
from gateway.config.schema import GatewaySettings
from gateway.discovery import LinkState, TargetInfo, run_consul, run_etcd, run_registration
from gateway.discovery.etcd import EtcdClient, parse_target_value
from gateway.discovery.http import TransportError
from gateway.discovery.liveness import while_responsive
from gateway.discovery.registration import resolve_registration

REPO = Path(__file__).resolve().parent.parent.parent


class Recorder:
    def __init__(self) -> None:
        self.latest: dict[str, list[TargetInfo]] = {}
        self._changed = trio.Event()

    def __call__(self, upstream: str, targets: list[TargetInfo]) -> None:
        self.latest[upstream] = targets
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, upstream: str, pred: Callable[[list[TargetInfo]], bool], timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while upstream not in self.latest or not pred(self.latest[upstream]):
                await self._changed.wait()
            return True
        return False


# ---- a three-member etcd cluster on loopback ----------------------------------------------------------------------


class EtcdCluster:
    def __init__(self, binary: str, workdir: Path, size: int = 3) -> None:
        self.binary = binary
        self.workdir = workdir
        self.members = [(f"m{i}", free_port(), free_port()) for i in range(size)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def endpoint(self, i: int) -> str:
        return f"127.0.0.1:{self.members[i][1]}"

    def start(self) -> None:
        cluster = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in self.members)
        for name, client, peer in self.members:
            argv = [self.binary, "--name", name, "--data-dir", str(self.workdir / name),
                    "--listen-client-urls", f"http://127.0.0.1:{client}",
                    "--advertise-client-urls", f"http://127.0.0.1:{client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error"]
            log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL))
            log.close()
        deadline = time.monotonic() + 15
        for i in range(len(self.members)):
            while True:
                try:
                    with urllib.request.urlopen(f"http://{self.endpoint(i)}/health", timeout=0.5) as resp:
                        if b'"true"' in resp.read():
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("etcd cluster did not become healthy")
                time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped member must run to take its SIGTERM
            stop_process(proc)


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    path, why = find_etcd()
    if path is None:
        pytest.skip(why)
    cluster = EtcdCluster(path, tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def test_etcd_watch_on_a_hung_member_is_left_for_a_live_one(etcd_cluster: EtcdCluster, nursery: trio.Nursery,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """README: "If etcd is lost the last known targets stay, with reconnection on exponential backoff"; etcd's
    clientv3 notices a hung member through gRPC keepalive pings and WithRequireLeader ("the watch is canceled if the
    member loses its leader") and moves to another endpoint. A member stopped with SIGSTOP keeps the watch open and
    silent (its kernel acks TCP keep-alive): the liveness probe beside the watch fails within timeout_s, the
    discovery link goes down, and the next endpoint's targets (written after the hang) are served."""
    caplog.set_level(logging.ERROR, logger="gateway.discovery")
    c = etcd_cluster
    writer = EtcdClient([c.endpoint(1), c.endpoint(2)], timeout=1.0)
    await writer.put("/hung/1", b"10.0.0.1:1")
    rec = Recorder()
    link = LinkState("discovery: upstream hung", logging.getLogger("gateway.discovery.etcd"))
    s = DiscoverySettings(type="etcd", endpoints=[c.endpoint(0), c.endpoint(1), c.endpoint(2)], prefix="/hung/",
                          timeout_s=1.0, retry_initial_s=0.05, retry_max_s=0.5)
    await nursery.start(partial(run_etcd, link=link), "hung", s, rec)  # (the link: what /health reads)
    assert await rec.wait_for("hung", lambda t: t == [TargetInfo("10.0.0.1", 1)], 5)
    await trio.sleep(0.3)  # the watch on member 0 is created

    os.kill(c.procs[0].pid, signal.SIGSTOP)
    with trio.fail_after(8):  # members 1 and 2 elect a leader (election timeout 0.5 s) and take the write
        while True:
            try:
                await writer.put("/hung/2", b"10.0.0.1:2")
                break
            except TransportError:
                writer.rotate()
                await trio.sleep(0.1)
    seen = await rec.wait_for("hung", lambda t: TargetInfo("10.0.0.1", 2) in t, 10)
    assert seen, ("10 s after member 0 hung (timeout_s 1, two live endpoints configured), the gateway still "
                  f"serves {rec.latest['hung']}: its watch on the hung member was never noticed")
    assert any("liveness probe" in r.getMessage() for r in caplog.records), "the hang was not reported"
    with trio.fail_after(5):  # (the targets are read before the watch is created, which makes etcd "back")
        while link.state != "ok":
            await trio.sleep(0.05)
    assert link.extra["endpoint"] != f"http://{c.endpoint(0)}"


async def test_a_failed_probe_ends_a_silent_stream_with_its_own_error() -> None:
    """gateway/discovery/liveness.py: the first failing probe cancels the stream it guards and is raised as it is
    (not in an exception group), so run_etcd's `except TransportError` treats it as losing etcd."""
    async def silent() -> None:
        await trio.sleep_forever()

    async def failing() -> None:
        raise TransportError("liveness probe: no answer")

    with trio.fail_after(2), pytest.raises(TransportError, match="liveness probe: no answer"):
        await while_responsive(silent, failing, 0.01)


async def test_the_stream_s_own_error_is_raised_as_it_is() -> None:
    """As above, the other way round: the stream failing (a compaction, a cut connection) stops the probing and its
    exception reaches the caller unwrapped."""
    async def probe() -> None:
        pass

    async def broken() -> None:
        await trio.sleep(0.02)
        raise KeyError("stream")

    with trio.fail_after(2), pytest.raises(KeyError):
        await while_responsive(broken, probe, 0.005)


# ---- bracketed hosts -----------------------------------------------------------------------------------------------


@pytest.fixture
async def consul(nursery: trio.Nursery) -> FakeConsul:
    fake = FakeConsul()
    await nursery.start(fake.serve)
    return fake


def consul_settings(consul: FakeConsul, **kw: object) -> DiscoverySettings:
    base: dict[str, object] = {"endpoints": [f"127.0.0.1:{consul.port}"], "wait_s": 5, "retry_initial_s": 0.05,
                               "retry_max_s": 0.2, "timeout_s": 1.0}
    base.update(kw)
    return DiscoverySettings(type="consul", **base)  # type: ignore[arg-type]


async def test_consul_entry_whose_address_carries_a_port_is_left_out(consul: FakeConsul, nursery: trio.Nursery,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """README: "a key or Consul entry that is not a usable target (its address, port, weight or checks) is left out
    with a warning naming it, and the rest apply." Service.Address "10.0.1.11:8080" (the port is Service.Port) is no
    IPv6 address for all that it is made of an IPv6 address's characters: not the target "[10.0.1.11:8080]:8080"."""
    caplog.set_level(logging.WARNING, logger="gateway.discovery")
    consul.register({"ID": "good", "Name": "erlmcp", "Address": "10.0.1.10", "Port": 8080})
    consul.register({"ID": "bad", "Name": "erlmcp", "Address": "10.0.1.11:8080", "Port": 8080})
    rec = Recorder()
    await nursery.start(run_consul, "erlmcp", consul_settings(consul), rec)
    assert await rec.wait_for("erlmcp", lambda t: True, 5)
    assert rec.latest["erlmcp"] == [TargetInfo("10.0.1.10", 8080, 1)], rec.latest["erlmcp"]
    assert any("bad" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.mark.parametrize("value", ["[10.0.0.1:8080]:80", "[:]:80", "[1:2:3:4:5:6:7:8:9]:80", "[1.2.3.4]:80"])
def test_etcd_value_with_a_bracketed_host_that_is_no_ipv6_address_is_refused(value: str) -> None:
    """README: an etcd key "that is not a usable target ... is left out with a warning naming it": brackets hold an
    IPv6 address (RFC 3986's IP-literal), checked as one, not as a run of hex digits, colons and dots."""
    with pytest.raises(ValueError, match="expected"):
        parse_target_value(value.encode(), 100)


def test_etcd_value_with_a_bracketed_ipv6_address_is_a_target() -> None:
    """The other side of the rule above: "[::1]:80" and an IPv4-mapped "[::ffff:10.0.0.1]:80" are targets."""
    assert parse_target_value(b"[::1]:80", 100) == TargetInfo("::1", 80, 100)
    assert parse_target_value(b"[::ffff:10.0.0.1]:80", 100) == TargetInfo("::ffff:10.0.0.1", 80, 100)


@pytest.mark.parametrize("block, message", [
    ('{type: etcd, endpoints: ["[10.0.0.1:80]:2379"]}',
     'upstreams[0].discovery: endpoints[0]: expected "host:port" or "http://host:port", got "[10.0.0.1:80]:2379"'),
    ('{type: consul, endpoints: ["http://[:]:8500"]}',
     'upstreams[0].discovery: endpoints[0]: expected "host:port" or "http://host:port", got "http://[:]:8500"'),
])
def test_registry_endpoint_with_a_bracketed_host_that_is_no_ipv6_address_is_refused(block: str,
                                                                                      message: str) -> None:
    """Rules: an accepted key does what it promises; an endpoint whose bracketed host is no IPv6 address could never
    be connected to, so the config is refused at the field."""
    with pytest.raises(ConfigError) as e:
        parse_config(f"upstreams:\n  - name: u\n    discovery: {block}\n", "f.yml")
    assert e.value.messages == [f"f.yml: {message}"]


def test_advertise_with_a_bracketed_host_that_is_no_ipv6_address_is_refused() -> None:
    """As above, for the address the gateway registers itself at."""
    with pytest.raises(ConfigError) as e:
        parse_config("gateway:\n  registration: {backend: consul, advertise: '[10.0.0.1]:80'}\n", "f.yml")
    assert e.value.messages == ['f.yml: gateway.registration: advertise: expected "host:port", got "[10.0.0.1]:80"']


# ---- a Consul registration always has a check --------------------------------------------------------------------


async def test_consul_registration_without_a_status_server_gets_a_ttl_check(consul: FakeConsul) -> None:
    """README: Consul's check is, "unless `check` says otherwise, the status server's /status/ready". Without a
    status server there is nothing to probe, and a service with no check is passing for as long as its node is
    (a SIGKILLed gateway would stay a passing instance): the check is then a TTL check (Consul: "If an external
    system fails to update the status within a given TTL, the check is set to the failed state") of
    check_interval + check_timeout, passing from the registration on."""
    reg = RegistrationSettings(backend="consul", address=f"127.0.0.1:{consul.port}", service="gw", id="gw-1",
                               retry_initial_s=0.05, retry_max_s=0.1, deregister_critical_after="1m")
    gw = GatewaySettings(listen="127.0.0.1:8080", status_listen=None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_registration, reg, gw)
            assert "gw-1" in consul.services
            own = [c for c in consul.checks.values() if c["ServiceID"] == "gw-1"]
            nursery.cancel_scope.cancel()
    assert [(c["CheckID"], c["Type"], c["TTL"], c["Status"]) for c in own] == [("service:gw-1", "ttl", "15s",
                                                                                "passing")]
    check = resolve_registration(reg, gw).consul_payload()["Check"]
    assert check["DeregisterCriticalServiceAfter"] == "1m"


async def test_consul_ttl_check_is_passed_while_the_gateway_runs(consul: FakeConsul) -> None:
    """Consul's TTL checks: the application must PUT /v1/agent/check/pass/:check_id within the TTL. The gateway
    passes it every third of the TTL (here 300 ms: check_interval 100ms + check_timeout 200ms)."""
    reg = RegistrationSettings(backend="consul", address=f"127.0.0.1:{consul.port}", service="gw", id="gw-1",
                               check_interval="100ms", check_timeout="200ms", retry_initial_s=0.05, retry_max_s=0.1)
    gw = GatewaySettings(listen="127.0.0.1:8080", status_listen=None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_registration, reg, gw)
            await trio.sleep(0.65)
            nursery.cancel_scope.cancel()
    passes = [t for m, t in consul.requests if m == "PUT" and t == "/v1/agent/check/pass/service:gw-1"]
    assert 3 <= len(passes) <= 10, f"{len(passes)} passes in 0.65 s of a 300 ms TTL (one each 100 ms expected)"


class OldConsul(FakeConsul):
    """Consul agents before 1.x's NotFound answer a pass of an unknown TTL check with 500 "CheckID ... does not have
    associated TTL" (agent.updateTTLCheck)."""

    async def _dispatch(self, method: str, target: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        if target.startswith("/v1/agent/check/pass/"):
            cid = unquote(target.rsplit("/", 1)[1])
            if cid not in self.checks:
                self.requests.append((method, target))
                return 500, [], f'CheckID "{cid}" does not have associated TTL'.encode()
        return await super()._dispatch(method, target, body)


@pytest.mark.parametrize("agent", [FakeConsul, OldConsul], ids=["404", "500"])
async def test_consul_agent_that_lost_the_ttl_check_gets_the_registration_again(agent: type[FakeConsul]) -> None:
    """README: "It registers again only when the registry says the registration is gone (... a Consul 404)". A pass
    of a TTL check the agent no longer has (a 404, or the 500 naming the CheckID older agents send) is that."""
    consul = agent()
    reg = RegistrationSettings(backend="consul", service="gw", id="gw-1", check_interval="100ms",
                               check_timeout="200ms", retry_initial_s=0.05, retry_max_s=0.1)
    gw = GatewaySettings(listen="127.0.0.1:8080", status_listen=None)
    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            reg.address = f"127.0.0.1:{await outer.start(consul.serve)}"
            async with trio.open_nursery() as nursery:
                await nursery.start(run_registration, reg, gw)
                consul.deregister("gw-1")  # the agent lost it (restarted without its state)
                while "gw-1" not in consul.services:
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    assert [t for m, t in consul.requests if t == "/v1/agent/service/register"] == ["/v1/agent/service/register"] * 2


def test_consul_check_durations_are_sent_as_consul_reads_them() -> None:
    """Consul parses check durations with Go's time.ParseDuration, which refuses "10" (no unit) and "1.5 s": what
    the config accepts for check_interval and check_timeout is sent as "10s" and "1.5s"."""
    reg = RegistrationSettings(backend="consul", check="http://10.0.0.1:8100/status/ready", check_interval="10",
                               check_timeout="1.5 s")
    check = resolve_registration(reg, GatewaySettings(listen="10.0.0.1:80")).consul_payload()["Check"]
    assert (check["Interval"], check["Timeout"]) == ("10s", "1.5s")


# ---- settings nothing would read are refused ----------------------------------------------------------------------


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)


def test_check_config_refuses_ttl_s_with_consul_registration(tmp_path: Path) -> None:
    """Rules: "anything not built is refused by check-config with a message naming the file and field". `ttl_s` is
    the etcd lease; with `backend: consul` nothing reads it (a TTL check's TTL is check_interval + check_timeout)."""
    result = check_config(tmp_path, 'gateway:\n  listen: "127.0.0.1:9000"\n'
                                    '  registration: {backend: consul, ttl_s: 30}\n')
    assert result.returncode != 0 and "ttl_s" in result.stderr and "gw.yaml" in result.stderr, result.stdout


def test_check_config_refuses_consul_check_settings_with_etcd_registration(tmp_path: Path) -> None:
    """As above: `check_interval`, `check_timeout` and `refresh_s` are Consul's; with `backend: etcd` the lease is
    kept alive every ttl_s/3 and no check is run."""
    result = check_config(tmp_path, 'gateway:\n  listen: "127.0.0.1:9000"\n'
                                    '  registration: {backend: etcd, check_interval: 1s, refresh_s: 1}\n')
    assert result.returncode != 0 and "gw.yaml" in result.stderr, result.stdout
    assert "check_interval" in result.stderr or "refresh_s" in result.stderr, result.stderr


def test_check_config_refuses_registry_settings_with_static_discovery(tmp_path: Path) -> None:
    """As above: `discovery: {type: static}` asks no registry, and its targets carry their own weights, so
    `default_weight`, `timeout_s`, `retry_initial_s` and `retry_max_s` are refused as `endpoints` is."""
    result = check_config(tmp_path, 'upstreams:\n  - name: u\n'
                                    '    discovery: {type: static, default_weight: 5}\n'
                                    '    targets: [{target: "10.0.0.1:80"}]\n')
    assert result.returncode != 0 and "default_weight" in result.stderr and "gw.yaml" in result.stderr, result.stdout


@pytest.mark.parametrize("text, message", [
    ("gateway: {registration: {backend: etcd, check_timeout: 1s}}",
     "gateway.registration: check_timeout: not used with backend etcd (the lease of ttl_s seconds is kept alive "
     "every ttl_s/3, and etcd runs no check)"),
    ("gateway: {registration: {backend: etcd, refresh_s: 5}}",
     "gateway.registration: refresh_s: not used with backend etcd (the lease of ttl_s seconds is kept alive every "
     "ttl_s/3, and etcd runs no check)"),
    ("gateway: {registration: {backend: consul, check: '', check_interval: 5s}}",
     'gateway.registration: check_interval: not used with check: "" (it registers no check; remove the field, or '
     'leave check unset)'),
    ("gateway: {registration: {backend: consul, check: '', deregister_critical_after: 1m}}",
     'gateway.registration: deregister_critical_after: not used with check: "" (it registers no check; remove the '
     'field, or leave check unset)'),
    ("upstreams: [{name: u, discovery: {type: static, timeout_s: 2}}]",
     "upstreams[0].discovery: timeout_s: not used with type static (targets come from the config)"),
    ("upstreams: [{name: u, discovery: {type: static, retry_initial_s: 1}}]",
     "upstreams[0].discovery: retry_initial_s: not used with type static (targets come from the config)"),
    ("upstreams: [{name: u, discovery: {type: static, retry_max_s: 1}}]",
     "upstreams[0].discovery: retry_max_s: not used with type static (targets come from the config)"),
])
def test_a_setting_nothing_reads_is_refused_at_its_field(text: str, message: str) -> None:
    """As above, for each field the chosen backend (or `check: ""`, which registers no check) leaves unread."""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "f.yml")
    assert e.value.messages == [f"f.yml: {message}"]


# ---- every agent registered with is deregistered from -----------------------------------------------------------


async def test_consul_registration_moved_to_another_agent_is_withdrawn_from_both_on_stop() -> None:
    """README: the gateway "registers itself once its workers accept and deregisters on stop". A Consul service
    belongs to the agent it was registered with ("Agent endpoints interact with the local Consul agent"): with two
    `address`es, one failed refresh moves the gateway to the second agent, which answers 404 and gets it too. On
    stop it is deregistered from both, not only from the agent in use."""
    a, b = FakeConsul(), FakeConsul()
    reg = RegistrationSettings(backend="consul", service="gw", id="gw-1", refresh_s=0.2, timeout_s=0.5,
                               retry_initial_s=0.05, retry_max_s=0.1, check="")
    gw = GatewaySettings(listen="127.0.0.1:8080")
    with trio.fail_after(15):
        async with trio.open_nursery() as outer:
            port_a = await outer.start(a.serve)
            await outer.start(b.serve)
            reg.address = [f"127.0.0.1:{port_a}", f"127.0.0.1:{b.port}"]
            async with trio.open_nursery() as nursery:
                await nursery.start(run_registration, reg, gw)
                assert "gw-1" in a.services
                await a.stop()  # a blip: agent A is unreachable for a moment, its state kept
                while "gw-1" not in b.services:
                    await trio.sleep(0.05)
                await outer.start(a.serve, port_a)  # A is back, still holding the registration
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()  # the gateway stops: deregisters
            left = [name for name, agent in (("A", a), ("B", b)) if "gw-1" in agent.services]
            outer.cancel_scope.cancel()
    assert left == [], f"after the gateway stopped, agent(s) {left} still hold its registration"
