"""The status page (GET /status, HTML; GET /status.json, its data), HAProxy's stats page for this gateway: one glance
tells what is wrong.

    problems      what needs a person now: targets down, breakers open, errors, restarts, rejections
    upstreams     per target: state (UP / DOWN / DRAINED), health, breaker, weight, active requests, req/s, error
                  rate, p50 / p99 latency (ms)
    routes        per route: req/s, 4xx/s, 5xx/s, totals
    processes     the supervision tree: pids, uptime, restarts
    rate limits   admissions and rejections per plugin and window

Rates and percentiles are over the last RATE_WINDOW_S seconds, from the metric counters every process writes (a
sample is kept at most once a second); the states come from the state keeper (health verdicts, breakers, drains,
weights), asked at each refresh. The page refreshes itself every REFRESH_S seconds (a small script replaces its
content; without scripts, a meta refresh), and renders on the server, so `curl` shows the same.
"""

from __future__ import annotations

import html
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import trio

from gateway.health.threshold import upstream_healthy

RATE_WINDOW_S = 10.0
REFRESH_S = 2
ERROR_RATE_WARN = 0.05  # a target or route above this share of 5xx (or failed tries) is listed as a problem

Families = list[Any]  # prometheus_client Metric families, as a collector yields them


class OverviewSource(Protocol):
    async def overview(self) -> dict[str, Any]:
        """{"status": the root's status (tree), "targets": keeper's targets list or None, "breakers": keeper's
        breakers or None, "upstreams": {upstream: {"checked": bool, "targets": {target: weight}}}}."""
        ...


class Sample:
    """The counters the page computes rates from, at one moment."""

    __slots__ = ("at", "counters", "buckets")

    def __init__(self, at: float, counters: dict[tuple[str, ...], float],
                 buckets: dict[str, list[tuple[float, float]]]) -> None:
        self.at = at
        self.counters = counters  # ("target"|"target_err"|"route"|"route_4xx"|"route_5xx"|"rl_rej"|..., key) -> n
        self.buckets = buckets  # target -> [(le, cumulative count)]


def read_metrics(families: Families, at: float) -> tuple[Sample, dict[str, Any]]:
    """A Sample of the counters, and the gauges and totals shown as they are."""
    counters: dict[tuple[str, ...], float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    gauges: dict[str, Any] = {"active": {}, "breaker": {}, "restarts": {}, "local_share": {}}

    def add(key: tuple[str, ...], value: float) -> None:
        counters[key] = counters.get(key, 0.0) + value

    for family in families:
        name = family.name
        for s in family.samples:
            labels = s.labels
            if name == "gateway_upstream_requests" and s.name.endswith("_total"):
                key = f"{labels['upstream']}|{labels['target']}"
                add(("target", key), s.value)
                code = labels.get("code", "")
                if not code.isdigit() or int(code) >= 500:
                    add(("target_err", key), s.value)
            elif name == "gateway_upstream_latency_ms" and s.name.endswith("_bucket"):
                key = f"{labels['upstream']}|{labels['target']}"
                le = labels["le"]
                buckets.setdefault(key, []).append((math.inf if le == "+Inf" else float(le), s.value))
            elif name == "gateway_upstream_active_requests":
                key = f"{labels['upstream']}|{labels['target']}"
                gauges["active"][key] = gauges["active"].get(key, 0.0) + s.value
            elif name == "gateway_requests" and s.name.endswith("_total"):
                route, code = labels.get("route", "-"), labels.get("code", "")
                add(("route", route), s.value)
                if code.startswith("4"):
                    add(("route_4xx", route), s.value)
                elif code.startswith("5"):
                    add(("route_5xx", route), s.value)
            elif name == "gateway_ratelimit_rejected" and s.name.endswith("_total"):
                add(("rl_rej", labels["plugin"], labels["window"]), s.value)
            elif name == "gateway_ratelimit_admitted" and s.name.endswith("_total"):
                add(("rl_adm", labels["plugin"], labels["window"]), s.value)
            elif name == "gateway_ratelimit_local_share" and s.name.endswith("_total"):
                gauges["local_share"][labels["plugin"]] = s.value
            elif name == "gateway_circuit_breaker_state" and s.value:
                gauges["breaker"][labels["target"]] = labels["state"]
            elif name == "gateway_supervisor_restarts" and s.name.endswith("_total"):
                key = f"{labels['supervisor']}/{labels['child']}"
                gauges["restarts"].setdefault(key, {})[labels["reason"]] = s.value
                add(("restart", key, labels["reason"]), s.value)
    for rows in buckets.values():
        rows.sort()
    return Sample(at, counters, buckets), gauges


def quantile(q: float, rows: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile over cumulative (le, count) rows: linear within the bucket."""
    if not rows or rows[-1][1] <= 0:
        return None
    total = rows[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in rows:
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the last finite bound: its lower edge is all we know
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return None


class RateHistory:
    """Samples of the last RATE_WINDOW_S seconds, one per second at most."""

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self.samples: deque[Sample] = deque()

    def base(self, now: Sample) -> Sample | None:
        """The oldest kept sample at least a second older than `now` (what rates are measured from)."""
        while self.samples and now.at - self.samples[0].at > self.window + 1:
            self.samples.popleft()
        base = self.samples[0] if self.samples and now.at - self.samples[0].at >= 1.0 else None
        if not self.samples or now.at - self.samples[-1].at >= 1.0:
            self.samples.append(now)
        return base


def _delta_rows(now: list[tuple[float, float]], base: list[tuple[float, float]] | None) -> list[tuple[float, float]]:
    if not base:
        return now
    before = dict(base)
    return [(le, count - before.get(le, 0.0)) for le, count in now]


class StatusPage:
    """Builds the page's data and HTML from the metric files and the root's live view."""

    def __init__(self, source: OverviewSource, families: Callable[[], Families],
                 clock: Callable[[], float] = time.monotonic, prepare: Callable[[], None] | None = None) -> None:
        self.source = source
        self.families = families  # reads every process's metric files (run in a thread)
        self.clock = clock
        self.prepare = prepare  # run first, in this thread (the root flushes its own counts)
        self.history = RateHistory()

    async def data(self) -> dict[str, Any]:
        overview = await self.source.overview()
        if self.prepare is not None:
            self.prepare()
        families = await trio.to_thread.run_sync(self.families)
        now, gauges = read_metrics(families, self.clock())
        base = self.history.base(now)
        return build(overview, now, base, gauges)

    async def html(self) -> bytes:
        return render(await self.data()).encode()


def _rate(now: Sample, base: Sample | None, key: tuple[str, ...]) -> float | None:
    if base is None:
        return None
    elapsed = now.at - base.at
    return max(0.0, now.counters.get(key, 0.0) - base.counters.get(key, 0.0)) / elapsed if elapsed > 0 else None


def _above_threshold(rows: list[dict[str, Any]], threshold: float) -> bool:
    """Kong's balancer health over the page's rows (gateway.health.threshold): drained and circuit-open targets
    count in neither sum."""
    weights = [r["weight"] if isinstance(r["weight"], int) else 0 for r in rows]
    unhealthy = {i for i, r in enumerate(rows) if r["health"] == "unhealthy"}
    excluded = {i for i, r in enumerate(rows) if r["drained"] or r["breaker"] in ("open", "forced_open")}
    return upstream_healthy(weights, unhealthy, excluded, threshold)


def build(overview: dict[str, Any], now: Sample, base: Sample | None, gauges: dict[str, Any]) -> dict[str, Any]:
    """The page's data: every number the HTML shows, and the problems at the top."""
    problems: list[str] = []
    keeper_targets = overview.get("targets")
    keeper_breakers = overview.get("breakers")
    upstream_conf: dict[str, Any] = overview.get("upstreams") or {}
    if keeper_targets is None:
        problems.append("the state keeper is not answering: health, breaker and drain states are unknown")
    states = {t["key"]: t for t in keeper_targets or ()}
    names = {key: t["name"] for key, t in states.items() if "name" in t}  # an address of a target name: that name
    resolved = {f"{key.partition('|')[0]}|{name}" for key, name in names.items()}  # (its own row is its addresses')
    keys: list[str] = []
    for upstream, conf in upstream_conf.items():
        keys += [k for target in conf.get("targets", {}) if (k := f"{upstream}|{target}") not in resolved]
    keys += [k for k in states if k not in keys]
    keys += [k for (kind, *rest) in now.counters if kind == "target" for k in rest if k not in keys]
    upstreams: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        upstream, _, target = key.partition("|")
        conf = upstream_conf.get(upstream, {})
        state = states.get(key, {})
        breaker = (keeper_breakers or {}).get(key, {}).get("state") if keeper_breakers is not None \
            else gauges["breaker"].get(key)
        healthy = state.get("healthy")
        checked = conf.get("checked", False)
        health = "unknown" if keeper_targets is None else "healthchecks_off" if not checked \
            else "unhealthy" if healthy is False else "healthy"
        weight = state.get("weight")
        if weight is None:
            weight = conf.get("targets", {}).get(names.get(key, target), "-")
        drained = bool(state.get("drained"))
        down = health == "unhealthy" or breaker in ("open", "forced_open")
        status = "DOWN" if down else "DRAINED" if drained else "UP" if checked else "NO CHECK"
        rps = _rate(now, base, ("target", key))
        err_rps = _rate(now, base, ("target_err", key))
        error_rate = (err_rps / rps) if rps and err_rps is not None else (0.0 if rps is not None else None)
        buckets = _delta_rows(now.buckets.get(key, []), base.buckets.get(key) if base else None)
        shown = f"{target.rpartition('/')[2]} ({names[key]})" if key in names else target  # (its address)
        row = {"key": key, "target": shown, "status": status, "health": health, "breaker": breaker or "-",
               "weight": weight, "drained": drained, "active": int(gauges["active"].get(key, 0)),
               "rps": rps, "error_rate": error_rate,
               "p50_ms": quantile(0.5, buckets), "p99_ms": quantile(0.99, buckets),
               "requests": int(now.counters.get(("target", key), 0)),
               "failed": int(now.counters.get(("target_err", key), 0))}
        upstreams.setdefault(upstream, []).append(row)
        if down:
            why = "unhealthy" if health == "unhealthy" else f"circuit breaker {breaker}"
            problems.append(f"target {key} is DOWN ({why})")
        elif breaker == "half_open":
            problems.append(f"target {key}: circuit breaker half-open (probing)")
        if error_rate is not None and error_rate > ERROR_RATE_WARN and rps:
            problems.append(f"target {key}: {error_rate:.0%} of tries failed in the last {RATE_WINDOW_S:.0f}s")
    for upstream, rows in upstreams.items():
        if rows and all(r["status"] in ("DOWN", "DRAINED") for r in rows):
            problems.insert(0, f"upstream {upstream} has no target UP: its requests get 503")
        elif (threshold := upstream_conf.get(upstream, {}).get("threshold")) and not _above_threshold(rows, threshold):
            problems.insert(0, f"upstream {upstream} is UNHEALTHY: its healthy targets' weight is not above its "
                               f"healthchecks.threshold of {threshold:g}%, so its requests get 503")
    routes = []
    for route_key in sorted(k for k in now.counters if k[0] == "route"):
        name = route_key[1]
        rps = _rate(now, base, ("route", name))
        r5 = _rate(now, base, ("route_5xx", name))
        routes.append({"route": name, "rps": rps, "rps_4xx": _rate(now, base, ("route_4xx", name)), "rps_5xx": r5,
                       "requests": int(now.counters[route_key]),
                       "errors_5xx": int(now.counters.get(("route_5xx", name), 0))})
        if r5 and rps and r5 / rps > ERROR_RATE_WARN:
            problems.append(f"route {name}: {r5 / rps:.0%} of requests answered 5xx in the last "
                            f"{RATE_WINDOW_S:.0f}s")
    limits = []
    for adm_key in sorted(k for k in now.counters if k[0] == "rl_adm"):
        plugin, window = adm_key[1], adm_key[2]
        rejected = now.counters.get(("rl_rej", plugin, window), 0.0)
        rej_rps = _rate(now, base, ("rl_rej", plugin, window))
        limits.append({"plugin": plugin, "window": window, "admitted": int(now.counters[adm_key]),
                       "rejected": int(rejected), "rejected_rps": rej_rps,
                       "local_share": int(gauges["local_share"].get(plugin, 0))})
        if rej_rps:
            problems.append(f"rate limit {plugin} ({window}): rejecting {rej_rps:.1f} requests/s")
    for rej_key in [k for k in now.counters if k[0] == "rl_rej"]:
        plugin, window = rej_key[1], rej_key[2]
        if not any(lim["plugin"] == plugin and lim["window"] == window for lim in limits):
            limits.append({"plugin": plugin, "window": window, "admitted": 0,
                           "rejected": int(now.counters[rej_key]),
                           "rejected_rps": _rate(now, base, rej_key), "local_share": 0})
    node_status: dict[str, Any] = overview.get("status") or {}
    tree = node_status.get("tree")
    for child in _walk(tree):
        if child is not tree and child.get("state") != "running":
            problems.append(f"process {child['id']} is {child.get('state') or 'not running'}")
    restarts = gauges["restarts"]
    for restart_key in sorted(k for k in now.counters if k[0] == "restart"):
        who, reason = restart_key[1], restart_key[2]
        recent = now.counters[restart_key] - (base.counters.get(restart_key, 0.0) if base else 0.0)
        if base is not None and recent > 0:
            problems.append(f"{who} restarted {int(recent)} time{'s' if recent != 1 else ''} in the last "
                            f"{RATE_WINDOW_S:.0f}s ({reason})")
    return {"generated_at": time.time(), "window_s": RATE_WINDOW_S if base is not None else None,
            "node": {k: node_status.get(k) for k in ("version", "pid", "uptime_s", "generation", "listen")},
            "problems": problems, "upstreams": [{"name": u, "targets": rows} for u, rows in upstreams.items()],
            "routes": routes, "rate_limits": limits, "tree": tree, "restarts": restarts}


def _walk(node: dict[str, Any] | None) -> Iterable[dict[str, Any]]:
    if not node:
        return
    yield node
    for child in node.get("children", ()):
        yield from _walk(child)


# --- HTML -----------------------------------------------------------------------------------------------------------

_CSS = """
body{font:13px/1.4 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#23303e;color:#fff;padding:10px 16px}header h1{font-size:17px;margin:0;display:inline}
header span{margin-left:14px;color:#c9d3dd}main{padding:12px 16px}h2{font-size:14px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:6px}
th,td{border:1px solid #d8dce1;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#e8ebef;font-weight:600}td.name,th.name{text-align:left}
tr.up td.state{background:#c8f0c8}tr.down td{background:#fbd5d5}tr.down td.state{background:#e74c3c;color:#fff;
font-weight:700}tr.drained td.state{background:#f5deb3}tr.no-check td.state{background:#e3e6ea}
tr.upstream th{background:#d3dae3;text-align:left}
.problems{background:#fbd5d5;border:1px solid #e74c3c;padding:8px 12px}.ok{background:#c8f0c8;border:1px solid
#4caf50;padding:8px 12px}.problems li{margin:2px 0}.muted{color:#888}ul.tree{margin:0;padding-left:18px}
"""

_SCRIPT = """
setInterval(async function(){try{
const r=await fetch(location.pathname,{cache:'no-store',headers:{Accept:'text/html'}});if(!r.ok)return;
const doc=new DOMParser().parseFromString(await r.text(),'text/html');
document.querySelector('main').replaceWith(doc.querySelector('main'));
document.querySelector('header').replaceWith(doc.querySelector('header'));}catch(e){}},%d);
"""


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return '<span class="muted">-</span>'
    return f"{value:.{digits}f}{suffix}"


def _pct(value: float | None) -> str:
    return _fmt(value * 100 if value is not None else None, 1, "%")


def render(data: dict[str, Any]) -> str:
    """The page as HTML (escaped: target and route names come from the config and discovery)."""
    e = html.escape
    node = data["node"]
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>gateway status</title>',
           f'<noscript><meta http-equiv="refresh" content="{REFRESH_S}"></noscript><style>{_CSS}</style></head>',
           "<body><header><h1>mcp-gateway status</h1>",
           f"<span>version {e(str(node.get('version') or '-'))}</span><span>root pid {e(str(node.get('pid')))}"
           f"</span><span>uptime {_duration(node.get('uptime_s'))}</span><span>generation "
           f"{e(str(node.get('generation')))}</span><span>listen {e(', '.join(node.get('listen') or []))}</span>"
           f"<span id=\"updated\">updated {time.strftime('%H:%M:%S', time.localtime(data['generated_at']))}</span>"
           "</header><main>"]
    window = data["window_s"]
    problems = data["problems"]
    if problems:
        out.append('<div class="problems" id="problems"><strong>Problems</strong><ul>')
        out += [f"<li>{e(p)}</li>" for p in problems]
        out.append("</ul></div>")
    else:
        out.append('<div class="ok" id="problems">No problems: every target is up, no breaker is open, no errors.'
                   "</div>")
    rates = f"per second over the last {window:.0f}s" if window else "rates appear after the next refresh"
    out.append("<h2>Upstreams</h2><table id=\"upstreams\"><tr><th class=\"name\">target</th><th>state</th>"
               "<th>health</th><th>breaker</th><th>weight</th><th>active</th><th>req/s</th><th>err %</th>"
               "<th>p50 ms</th><th>p99 ms</th><th>tries</th><th>failed</th></tr>")
    for upstream in data["upstreams"]:
        out.append(f'<tr class="upstream"><th colspan="12">{e(upstream["name"])}</th></tr>')
        for t in upstream["targets"]:
            out.append(
                f'<tr class="target {t["status"].lower().replace(" ", "-")}" data-target="{e(t["key"])}">'
                f'<td class="name">{e(t["target"])}</td><td class="state">{t["status"]}</td>'
                f'<td class="health">{e(t["health"])}</td><td class="breaker">{e(str(t["breaker"]))}</td>'
                f'<td>{e(str(t["weight"]))}</td><td class="active">{t["active"]}</td><td class="rps">'
                f'{_fmt(t["rps"])}</td><td class="errors">{_pct(t["error_rate"])}</td><td>{_fmt(t["p50_ms"], 2)}'
                f'</td><td>{_fmt(t["p99_ms"], 2)}</td><td class="requests">{t["requests"]}</td><td class="failed">'
                f'{t["failed"]}</td></tr>')
    out.append(f'</table><div class="muted">{rates}; p50/p99 from the time to each response head</div>')
    out.append('<h2>Routes</h2><table id="routes"><tr><th class="name">route</th><th>req/s</th><th>4xx/s</th>'
               "<th>5xx/s</th><th>requests</th><th>5xx</th></tr>")
    for r in data["routes"]:
        out.append(f'<tr data-route="{e(r["route"])}"><td class="name">{e(r["route"])}</td><td>{_fmt(r["rps"])}</td>'
                   f'<td>{_fmt(r["rps_4xx"])}</td><td>{_fmt(r["rps_5xx"])}</td><td class="requests">{r["requests"]}'
                   f'</td><td>{r["errors_5xx"]}</td></tr>')
    out.append('</table><h2>Rate limits</h2><table id="rate-limits"><tr><th class="name">plugin</th><th '
               'class="name">window</th><th>admitted</th><th>rejected</th><th>rejected/s</th><th>on local share</th>'
               "</tr>")
    for lim in data["rate_limits"]:
        out.append(f'<tr><td class="name">{e(lim["plugin"])}</td><td class="name">{e(lim["window"])}</td>'
                   f'<td>{lim["admitted"]}</td><td class="rejected">{lim["rejected"]}</td>'
                   f'<td>{_fmt(lim["rejected_rps"])}</td><td>{lim["local_share"]}</td></tr>')
    out.append('</table><h2>Processes</h2><table id="processes"><tr><th class="name">process</th><th>type</th>'
               "<th>state</th><th>pid</th><th>uptime</th><th>restarts</th></tr>")
    for depth, child in _walk_depth(data["tree"]):
        pid = child.get("pid")
        out.append(f'<tr data-process="{e(str(child.get("id")))}"><td class="name" style="padding-left:'
                   f'{7 + 16 * depth}px">{e(str(child.get("id")))}</td><td>{e(str(child.get("type", "")))}</td>'
                   f'<td>{e(str(child.get("state", "")))}</td><td class="pid">{pid if pid else "-"}</td>'
                   f'<td>{_duration(child.get("uptime_s"))}</td><td class="restarts">{child.get("restarts", 0)}'
                   "</td></tr>")
    out.append(f"</table></main><script>{_SCRIPT % (REFRESH_S * 1000)}</script></body></html>")
    return "".join(out)


def _walk_depth(node: dict[str, Any] | None, depth: int = 0) -> Iterable[tuple[int, dict[str, Any]]]:
    if not node:
        return
    yield depth, node
    for child in node.get("children", ()):
        yield from _walk_depth(child, depth + 1)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"
