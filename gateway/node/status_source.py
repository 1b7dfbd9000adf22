"""The root's live data for the status server: the supervision tree, the keeper, discovery, upstream health."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.bus.keeper_link import KeeperUnavailable
from gateway.discovery.service import target_address
from gateway.status import BaseStatusSource, CheckResult

if TYPE_CHECKING:
    from gateway.node.root import Node

KEEPER_TIMEOUT_S = 0.5


class NodeStatus(BaseStatusSource):
    """Each check answers from state the root already has, or one short question to the keeper; none waits for the
    root supervisor, which a reload keeps busy while it starts the new generation."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def _keeper_health(self) -> dict[str, Any]:
        reply = await self.node.keeper.call("health", {}, timeout=KEEPER_TIMEOUT_S)
        if not reply.ok:
            raise KeeperUnavailable(reply.error or "the keeper refused")
        return reply.result

    async def workers(self) -> CheckResult:
        infos = await self.node.current_workers()
        expected = self.node.worker_count(self.node.config)  # type: ignore[arg-type]
        running = [i.pid.os_pid for i in infos if i.pid is not None and i.pid.os_pid]
        details = {"expected": expected, "running": len(running), "generation": self.node.generation,
                   "pids": running, "restarts": sum(i.restart_count for i in infos)}
        if len(running) == expected:
            return CheckResult("healthy", details)
        return CheckResult("degraded" if running else "unhealthy", details)

    async def bus(self) -> CheckResult:
        try:
            health = await self._keeper_health()
        except KeeperUnavailable as e:
            return CheckResult("unhealthy", {"keeper": "not answering", "reason": str(e)})
        return CheckResult("healthy", {"keeper": health["incarnation"], "workers_connected": health["workers_seen"]})

    async def discovery(self) -> CheckResult:
        child = await self.node.listed_child("discovery")  # (never waits for a busy root)
        if child is None:
            return CheckResult("healthy", {"note": "no discovery configured"})
        if child.pid is None or not child.pid.os_pid or child.pid.reason is not None:  # (reason: it has exited)
            return CheckResult("unhealthy", {"process": "not running"})
        try:
            health = await self._keeper_health()
        except KeeperUnavailable:
            return CheckResult("degraded", {"process": child.pid.os_pid, "note": "keeper not answering"})
        return CheckResult("healthy", {"process": child.pid.os_pid, "upstreams": health["discovered"]})

    async def upstreams(self) -> CheckResult:
        health = await self._keeper_health()
        per: dict[str, dict[str, int]] = {}
        for key, healthy in health["targets"].items():
            upstream = key.split("|", 1)[0]
            counts = per.setdefault(upstream, {"healthy": 0, "total": 0})
            counts["total"] += 1
            counts["healthy"] += healthy
        if any(c["total"] and not c["healthy"] for c in per.values()):
            return CheckResult("unhealthy", per)
        if any(c["healthy"] < c["total"] for c in per.values()):
            return CheckResult("degraded", per)
        return CheckResult("healthy", per)

    async def overview(self) -> dict[str, Any]:
        """For the status page (gateway.status.page): the tree, the keeper's targets and breakers, the config's
        upstreams (targets, weights, whether anything checks their health)."""
        from gateway.telemetry.health_metrics import has_checks

        node = self.node
        targets = breakers = None
        try:
            reply = await node.keeper.call("targets", {}, timeout=KEEPER_TIMEOUT_S)
            targets = reply.result if reply.ok else None
            reply = await node.keeper.call("breakers", {}, timeout=KEEPER_TIMEOUT_S)
            breakers = reply.result if reply.ok else None
        except KeeperUnavailable:
            pass
        upstreams: dict[str, Any] = {}
        config = node.config
        if config is not None:
            for up in config.upstreams:
                upstreams[up.name] = {"checked": has_checks(up), "targets": {},
                                      "threshold": up.healthchecks.threshold}
            for t in config.targets:
                hostport = target_address(t.target)
                if t.upstream in upstreams and hostport is not None:
                    host, port = hostport
                    name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # as TargetRuntime names it
                    upstreams[t.upstream]["targets"][name] = t.weight
        return {"status": await node.status(), "targets": targets, "breakers": breakers, "upstreams": upstreams}

    async def readiness(self) -> dict[str, bool]:
        infos = await self.node.current_workers()
        expected = self.node.worker_count(self.node.config)  # type: ignore[arg-type]
        running = sum(1 for i in infos if i.pid is not None and i.pid.os_pid)
        return {"config": self.node.config is not None, "workers": running == expected}
