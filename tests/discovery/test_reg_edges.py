"""Self-registration's lifecycle at its edges: a stop while the registration is unanswered, and the default check of
a serving gateway whose backends are partly down."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import h11
import trio
from backends import _Backend

from gateway.config.discovery import RegistrationSettings
from gateway.config.schema import GatewaySettings
from gateway.discovery.registration import resolve_registration, run_registration
from gateway.status.app import CheckResult, StatusApp


class HoldingConsul(_Backend):
    """Records requests; holds the register PUT unanswered, answers everything else 200."""

    def __init__(self) -> None:
        super().__init__("consul")
        self.register_received = trio.Event()
        self.deregister_received = trio.Event()

    @property
    def calls(self) -> list[tuple[str, str]]:
        return [(seen.method, seen.target) for seen in self.requests]

    async def handle_conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        seen = await self._read_request(stream, conn)
        if seen is None:
            return
        if seen.target == "/v1/agent/service/register":
            self.register_received.set()
            await trio.sleep_forever()  # the agent is slow: the registration is sent, the answer not yet
        if seen.target.startswith("/v1/agent/service/deregister/"):
            self.deregister_received.set()
        body = b"{}"
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body))),
                                                                             ("Connection", "close")]))
                              + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


async def test_stop_during_unanswered_register_put_still_deregisters() -> None:
    """A registration sent and not yet answered may be held by the registry (Consul: a registration "must be paired
    with a deregistration"); a stop then deregisters too. It was uncertain only after a transport error, so a stop
    while the agent was slow to answer left the gateway registered (passing for good with no check)."""
    consul = HoldingConsul()
    async with trio.open_nursery() as servers:
        port = await servers.start(consul.serve)
        settings = RegistrationSettings(backend="consul", address=f"127.0.0.1:{port}", id="gw-repro-1",
                                        check="", timeout_s=3.0, retry_initial_s=0.1, retry_max_s=0.2)
        gw = GatewaySettings(listen="127.0.0.1:18080", status_listen=None)
        with trio.move_on_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_registration, settings, gw)
                await consul.register_received.wait()
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()  # the gateway stops while the PUT awaits its answer
        with trio.move_on_after(1):
            await consul.deregister_received.wait()
        servers.cancel_scope.cancel()
    assert ("PUT", "/v1/agent/service/register") in consul.calls
    assert any(t.startswith("/v1/agent/service/deregister/gw-repro-1") for _, t in consul.calls), (
        f"a registration was sent and never answered, then the gateway stopped without deregistering: "
        f"{consul.calls}")


class OneTargetDown:
    """A serving gateway: workers, bus, discovery and memory fine; upstream `mcp` has 2 of 3 targets healthy."""

    async def workers(self) -> CheckResult:
        return CheckResult("healthy", {"running": 2, "expected": 2})

    async def bus(self) -> CheckResult:
        return CheckResult("healthy")

    async def discovery(self) -> CheckResult:
        return CheckResult("healthy")

    async def upstreams(self) -> CheckResult:
        return CheckResult("degraded", {"mcp": {"healthy": 2, "total": 3}})

    async def memory(self) -> CheckResult:
        return CheckResult("healthy")

    async def readiness(self) -> dict[str, bool]:
        return {"config": True, "workers": True}


async def _get(app: StatusApp, path: str) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [],
             "raw_path": path.encode()}
    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


async def test_default_consul_check_passes_while_one_backend_target_is_down() -> None:
    """Consul passes only 2xx (429 a warning); /health is 503 when one backend target is down, which every gateway
    sees at once: as the default check it took the whole fleet out of Consul-fed load balancers. The default is the
    gateway's readiness (/status/ready: workers up, config loaded, not draining)."""
    gw = GatewaySettings(listen="0.0.0.0:8080", status_listen="0.0.0.0:8100")
    reg = resolve_registration(RegistrationSettings(backend="consul"), gw)
    check = reg.consul_payload()["Check"]["HTTP"]
    path = urlsplit(check).path or "/"
    status = await _get(StatusApp(OneTargetDown()), path)
    consul_state = "passing" if 200 <= status < 300 else "warning" if status == 429 else "critical"
    assert consul_state != "critical", (
        f"Consul's check of a serving gateway ({check}) answers {status}: Consul marks it critical and every "
        f"Consul-fed load balancer drops it (and every other gateway seeing the same dead backend target)")
