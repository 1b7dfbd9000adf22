"""The state keeper's state and message handling, independent of the sockets (tested directly): the
authoritative rate-limit ledgers, one circuit breaker per target, the operators' target overrides (drained, weight),
target health verdicts and discovered targets, and the host-wide stores (Kong's shared dicts)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import trio

from gateway.breaker.keeper import BreakerBoard
from gateway.breaker.messages import BreakerUpdate
from gateway.breaker.state import State
from gateway.bus import protocol as p
from gateway.bus.admin_protocol import argument_problem
from gateway.config import Config, ConfigError, kong_conf, parse_config
from gateway.config.loader import read_config_text
from gateway.discovery.dns import made_by_dns, target_names
from gateway.discovery.http import excerpt
from gateway.discovery.service import discovered_upstreams
from gateway.health.board import CLEAR_HEALTH_STATUS_DELAY_S, HealthBoard
from gateway.health.machine import Event
from gateway.health.policy import TCP_FAILURE, TIMEOUT
from gateway.keeper.intake import refusal
from gateway.keeper.peers import Peers
from gateway.keeper.saved import SavedBreaker, SavedState, SavedTarget
from gateway.node.files import current_config
from gateway.node.start_only import inherited
from gateway.node.tree import needs_health
from gateway.policies.proxy_cache import ProxyCacheConfig, render_entry
from gateway.ratelimit.ledger import Ledger, returned_problem
from gateway.ratelimit.messages import FallbackUsage, Grant, LeaseRequest
from gateway.runtime import Runtime, compile_config, id_of
from gateway.stores import Counters, HostCache
from gateway.stores.cache import FLUSHED_BY_RELOAD
from gateway.telemetry.health_metrics import TargetHealthMetrics

log = logging.getLogger("gateway.keeper")

TICK_S = 0.01  # breaker timers (open -> half-open) are checked this often while a breaker is not closed
EXPIRE_S = 1.0  # rate-limit windows that ended, and keys left with nothing to count, are dropped this often
HEALTH_GRACE_S = 3.0  # the longest a new keeper publishes no health verdicts while it waits for the checker's
PASSIVE_CODES = {-1: TCP_FAILURE, -2: TIMEOUT}  # how workers encode non-HTTP outcomes in PassiveOutcomes
REDIS_PREFIX = "gateway:rl:"  # every key policy redis keeps in Redis starts with this
LOGGED_NAMES = 5  # a discovery change's log line names this many targets added (and removed, changed) at most
LOG_TEXT = 200  # ... in at most this many characters (README: registry text reaches the log as one line of 200)
Addressed = TypeVar("Addressed", LeaseRequest, FallbackUsage)  # items naming the keeper they are for


@dataclass(frozen=True)
class ReadConfig:
    """A reload's config, read and compiled (Keeper.read_reload), to be applied (Keeper.apply_reload)."""

    path: str  # the copy it was read from
    config: Config
    runtime: Runtime
    variables: dict[str, str]  # the KONG_ variables it was read under


class Keeper:
    """The keeper's state and message handling, independent of the sockets (tested directly)."""

    def __init__(self, config: Config, workers: int, config_path: str | None = None, host: str | None = None) -> None:
        self.incarnation = uuid.uuid4().hex[:12]
        self.workers = workers
        self.config_path = config_path
        # `host` names this gateway host in Redis: the same across keeper restarts, distinct per host.
        self.ledger = Ledger(workers=workers, host=host or f"{socket.gethostname()}:{os.getpid()}")
        self.stores: dict[str, Any] = {}  # plugin id -> SharedStore (rate-limiting policy redis)
        self.pending: dict[str, list[tuple[bytes, LeaseRequest, float]]] = {}  # key -> requests waiting for a block
        self.held: dict[str, list[tuple[bytes, LeaseRequest]]] = {}  # key -> requests held for a recall (ledger.py 12)
        self.routes: dict[str, bytes] = {}  # worker name (its lease requests') -> its bus id: where Recalls go
        self.ledger.reachable = self.routes
        self._direct: list[tuple[bytes, p.Msg]] = []  # for workers other than the sender of a message (`outbox`)
        self.redis_wake = trio.Event()  # a key's call is due: the Redis level runs it now, not at its next tick
        self.breakers = BreakerBoard({})
        self.targets: dict[str, p.TargetState] = {}
        self.health = HealthBoard({}, {})  # every target's health state machine (configure builds it)
        self.peers = Peers()  # the live workers, and the probe permits each holds
        self.seq = 0
        self.discovered: dict[str, list[p.TargetInfo]] = {}
        self._early_health: dict[str, bool] = {}  # verdicts on targets of upstreams discovery has not reported yet
        # What the keeper before this one saved of targets of upstreams a source has not reported yet (`restore`).
        self._early_targets: dict[str, SavedTarget] = {}
        self._early_breakers: dict[str, tuple[State, float]] = {}  # target -> its state, opened at (this clock)
        self._flips: list[p.TargetState] = []
        # A new keeper knows no verdicts but the state file's, which may lag: until the checker's first report
        # (re-sent to every new keeper), it publishes targets without one, so workers keep theirs rather than send
        # traffic to a target known down. Without active checks there is no checker: the file's verdicts stand.
        self.health_pending = needs_health(config)
        self._pending_since: float | None = None
        self.caches: dict[str, HostCache] = {}  # proxy-cache's dictionaries (Kong's shared dicts), made when used
        self.counters = Counters()  # response-ratelimiting's policy local
        self.dns_settings = config.gateway  # the process's resolver (its Redis hosts'): the dns_* keys of the config
        self.reloads = 0  # reloads applied: the Redis level makes a client to a host name anew after one
        self.on_reload: Callable[[Config], None] | None = None  # the process's part (process.py: a new resolver)
        self.configure(config)

    def configure(self, config: Config, runtime: Runtime | None = None, now: float = 0.0) -> None:
        """(Re)build breakers and targets from a config (and its compiled `runtime`, compiled here when not given);
        states of targets that stay are kept, and those of targets that left are kept for a while (HealthBoard.adopt,
        `now` the keeper's clock)."""
        runtime = runtime or compile_config(config)
        self.stores = runtime.stores
        self.cached = {id_of(plugin): msgspec.convert(plugin.config, ProxyCacheConfig).memory.dictionary_name
                       for plugin in config.plugins if plugin.name == "proxy-cache" and plugin.enabled}
        for name, store in self.stores.items():
            self.ledger.add_store(name, REDIS_PREFIX, store.fault_tolerant, store.sync_rate)
        if self.stores:
            self.redis_wake.set()
        old = self.breakers
        self.breakers = BreakerBoard(runtime.breakers, runtime.breaker_upstreams)
        # A source's list replaces the config's (names resolved into addresses); an upstream no source reports for
        # any more (its discovery block or names gone) is the config's again.
        sourced = self._sourced = {up.name for up in discovered_upstreams(config)}
        self.discovered = {u: infos for u, infos in self.discovered.items() if u in sourced}
        self._early_targets = {k: v for k, v in self._early_targets.items() if k.split("|", 1)[0] in sourced}
        self._early_breakers = {k: v for k, v in self._early_breakers.items() if k.split("|", 1)[0] in sourced}
        self.targets = {key: self.targets.get(key) or p.TargetState(key)
                        for group in runtime.all_groups() if group.name not in self.discovered for key in group.keys}
        for upstream, infos in self.discovered.items():
            for info in infos:
                key = f"{upstream}|{info.name}"
                self.targets.setdefault(key, p.TargetState(key))
            self.breakers.cover(upstream, [f"{upstream}|{info.name}" for info in infos])
        self.breakers.adopt(old)
        # One state machine per target for both checks; a reload keeps those of the targets that stay.
        old_health, self.health = self.health, HealthBoard.from_config(config)
        staying = {(u, t) for u, _, t in (key.partition("|") for key in self.targets)}
        self._take_back(self.health.adopt(old_health, staying, now))
        self._uncheck()
        self.health_metrics = TargetHealthMetrics(config)

    def reload(self, config: Config, runtime: Runtime | None = None, now: float = 0.0) -> None:
        """A reload's config, applied as Kong's reload applies its own: the new dns_* keys (a new resolver, and new
        Redis clients for host names), the dictionaries Kong's reload purges emptied (stores/cache.py)."""
        self.configure(config, runtime, now)
        self.dns_settings = config.gateway
        self.reloads += 1
        if self.on_reload is not None:
            self.on_reload(config)
        for name in FLUSHED_BY_RELOAD:
            if (cache := self.caches.get(name)) is not None:
                cache.flush()

    def sample_metrics(self) -> None:
        """At each metrics flush: breaker states and Kong's target health gauges."""
        self.breakers.sample_states()
        self.health_metrics.sample(self.targets, self.discovered)

    def _set_health(self, key: str, healthy: bool, source: str) -> None:
        state = self.targets.get(key)
        if state is None and key.split("|", 1)[0] not in self.discovered:
            # A restarted keeper hears the checker's re-sent verdicts and discovery's re-sent lists in either
            # order: a verdict on a target of a list not known yet applies when the list arrives (`discover`).
            self._early_health[key] = healthy
            return
        if state is None or state.healthy == healthy:
            return
        state.healthy = healthy
        log.warning("target %s is now %s (%s)", key, "healthy" if healthy else "unhealthy", source)
        self._flips.append(state)

    def _take_back(self, back: list[tuple[str, str]]) -> None:
        """The verdicts of targets a reload put back while their machines were retired (HealthBoard.adopt): Kong's
        new checker re-adds each with its state in the shm and applies it to the balancer (balancer/healthcheckers.lua
        populate_healthchecker), so one taken out is still out."""
        for upstream, target in back:
            key = f"{upstream}|{target}"
            self.targets[key].healthy = healthy = self.health.healthy(upstream, target)
            if not healthy:
                log.warning("target %s is unhealthy again: a reload put it back within %.0fs of the one that "
                            "removed it, and it keeps its verdict, as Kong's checker does", key,
                            CLEAR_HEALTH_STATUS_DELAY_S)

    def _uncheck(self) -> None:
        """Targets of upstreams without health checks (any more: a reload) are healthy: Kong's rebuilt balancer adds
        every address available when its upstream uses no check (kong/runloop/balancer/healthcheckers.lua
        create_healthchecker: `return populate_balancer(balancer)`), and nothing here could revive them later."""
        for key, state in self.targets.items():
            if state.healthy is False and not self.health.tracks(key.partition("|")[0]):
                state.healthy = True
                log.warning("target %s is now healthy (its upstream has no health checks any more)", key)
        self._early_health = {k: v for k, v in self._early_health.items() if self.health.tracks(k.partition("|")[0])}

    def _take_view(self, report: p.HealthReport) -> None:
        """A new keeper's verdicts from the checker's first report: the targets it holds unhealthy are, every other
        one is healthy. It replaces what the state file gave (restore): it is what the last keeper published, which
        the file follows by up to keeper/process.py's SAVE_EVERY_S."""
        reported = {f"{upstream}|{target}" for upstream, target, _ in report.items}
        for upstream, target, healthy in report.items:
            self.health.set_health(upstream, target, healthy)
            self._set_health(f"{upstream}|{target}", healthy, "the health checker's last view")
        for key, state in self.targets.items():
            if state.healthy is False and key not in reported:
                upstream, _, target = key.partition("|")
                self.health.set_health(upstream, target, True)
                self._set_health(key, True, "the health checker's last view")
        for key, saved in self._early_targets.items():
            if not saved.healthy and key not in reported:
                self._early_health[key] = True

    def _force_health(self, key: str, healthy: bool) -> None:
        """An operator's verdict on a target, Kong's PUT /upstreams/{u}/targets/{t}/healthy (or /unhealthy): its
        state set and its counters cleared (lua-resty-healthcheck set_target_status); refused, as Kong's 400 "no
        healthchecker found", for an upstream without health checks, whose targets are always healthy."""
        upstream, _, target = key.partition("|")
        if not self.health.tracks(upstream):
            raise ValueError(f"upstream {upstream!r} has no health checks (its healthchecks.active intervals and "
                             f"healthchecks.passive failure counts are all 0), so its targets always get traffic; "
                             f"to take {key} out, drain it: `targets drain target={key}`")
        self.health.set_health(upstream, target, healthy)
        self.targets[key].healthy = healthy
        log.warning("target %s set %s by an operator", key, "healthy" if healthy else "unhealthy")

    def _mark(self, key: str, healthy: bool) -> tuple[Any, list[p.Msg]]:
        """`targets healthy|unhealthy target=KEY`, Kong's PUT /upstreams/{u}/targets/{t}/healthy (/unhealthy): a
        target's key marks it; a configured `name:port` marks every current address of the name, as Kong's post_health
        without an address (balancer/init.lua:412-429 set_all_target_statuses_for_hostname), in one change."""
        if key in self.targets:
            keys = [key]
        else:
            names = target_names(self.discovered)[0]
            keys = [k for k, name in names.items() if f"{k.partition('|')[0]}|{name}" == key and k in self.targets]
        if not keys:
            raise KeyError(f"no target {key!r}; `targets` lists them as upstream|host:port (an address of a target "
                           f"name as upstream|name/ip:port, with that name:port, which marks all of them)")
        for k in keys:
            self._force_health(k, healthy)
        states = [self.targets[k] for k in keys]  # (an operator's verdict goes out even while a new keeper waits)
        shown = [_shown_target(state) for state in states]
        return (shown[0] if keys == [key] else shown), [p.TargetsChanged(targets=states)]

    def _flushed_flips(self) -> list[p.Msg]:
        flips, self._flips = self._flips, []
        return [p.TargetsChanged(targets=flips)] if flips else []

    def _corrections(self, report: p.HealthReport) -> list[p.Msg]:
        """The verdicts the checker's view has wrong (it missed a publication, or restarted and knows none): it
        picks each target's probe interval by them. The keeper owns the verdicts, so the view itself is not applied."""
        held = {f"{upstream}|{target}" for upstream, target, healthy in report.items if not healthy}
        wrong = [state for key, state in self.targets.items()
                 if state.healthy is not None and state.healthy == (key in held)]
        return [p.TargetsChanged(targets=wrong)] if wrong else []

    # Each handler returns (replies to the sender, broadcasts to all).

    def handle(self, sender: bytes, msg: p.Msg, now: float, wall: float) -> tuple[list[p.Msg], list[p.Msg]]:
        """A message from `sender`; one the keeper cannot use (intake.py) is dropped with a log line, unapplied."""
        why = refusal(msg, wall)
        if why is not None:
            log.warning("state keeper: dropped the %s from %s: %s", type(msg).__name__, self.peers.name(sender), why)
            return [], []
        if isinstance(msg, p.AskLeases):
            joined = self._seen(sender)
            grants = []
            for r in self._for_this_one(sender, msg.requests):
                self.routes[r.worker] = sender
                grant = self.ledger.grant_request(r, now, wall)
                if grant is None:  # policy redis: answered when the key's next block arrives
                    waiting = LeaseRequest(r.key, r.spec, r.worker, r.want, 0, waiting=r.waiting)
                    self.pending.setdefault(r.key, []).append((sender, waiting, now))
                    self.redis_wake.set()
                elif not self._held(sender, r, grant, now):
                    grants.append(grant)
            return joined + ([p.Grants(grants=grants)] if grants else []), []
        if isinstance(msg, p.Outcomes):
            joined = self._seen(sender)
            self.peers.reported(sender, [item.target for item in msg.items if item.target in self.breakers])
            updates, permits = self.breakers.record(msg.items, now, lambda target: self.peers.spent(sender, target))
            for target in permits:  # freed by a probe's outcome: to the worker that has traffic for the target
                self.peers.hold(sender, target, now)
            sent, withdrawn = self.breakers.settle(permits, [item.target for item in msg.items if item.kept])
            return joined + [p.ProbePermit(target=t) for t in sent] + \
                [p.ProbePermit(target=t, withdrawn=True) for t in withdrawn], self._breakers_changed(updates)
        if isinstance(msg, p.GiveBack):
            why = next((why for back in msg.recalled if (why := returned_problem(back)) is not None), None)
            if why is not None:  # (intake.py checks the rest: a message is checked whole before any of it is applied)
                log.warning("state keeper: dropped the GiveBack from %s: %s", self.peers.name(sender), why)
                return [], []
            for back in msg.returned:
                self.ledger.return_unused(back)
            for f in self._for_this_one(sender, msg.fallback):
                self.ledger.report_fallback(f, now)
            if msg.recalled:
                self._recalled(sender, msg, now, wall)
            return [], []
        if isinstance(msg, p.PassiveOutcomes):
            for upstream, target, code in msg.items:
                if f"{upstream}|{target}" in self.targets:  # (Kong's incr_counter: not in the list, not counted)
                    flip = self.health.report(upstream, target, PASSIVE_CODES.get(code, code))
                    if flip is not None:
                        self._set_health(f"{upstream}|{target}", flip, "passive checks")
            return [], self._flushed_flips()
        if isinstance(msg, p.ProbeOutcomes):
            for upstream, target, kind in msg.items:
                if f"{upstream}|{target}" in self.targets:
                    flip = self.health.probed(upstream, target, Event(kind))
                    if flip is not None:
                        self._set_health(f"{upstream}|{target}", flip, f"active checks: {kind}")
            return [], self._flushed_flips()
        if isinstance(msg, p.HealthReport):
            if not self.health_pending:
                return self._corrections(msg), []
            self._take_view(msg)
            return [], self._verdicts_known()
        if isinstance(msg, p.Discovered):
            return [], self.discover(msg.upstream, msg.targets)
        if isinstance(msg, p.Hello):
            self.peers.seen(sender, msg.worker, msg.pid)
            return [self.snapshot(), *self._waiting_permits(sender)], []
        if isinstance(msg, p.StoreBatch):
            answers: list[p.CacheEntry | p.CounterValues] = []
            for call in msg.items:
                for reply in self.handle(sender, call, now, wall)[0]:
                    assert isinstance(reply, (p.CacheEntry, p.CounterValues))
                    answers.append(reply)
            return ([p.StoreBatch(items=list(answers))] if answers else []), []
        if isinstance(msg, p.CacheFetch):
            cache = self.caches.get(msg.dictionary)
            return [p.CacheEntry(id=msg.id, entry=cache.get(msg.key, wall) if cache is not None else None)], []
        if isinstance(msg, p.CacheStore):  # (of one of Kong's shared dicts: intake.py)
            cache = self.caches.get(msg.dictionary)
            if cache is None:
                cache = self.caches[msg.dictionary] = HostCache.named(msg.dictionary)
            if not cache.set(msg.key, msg.entry, msg.ttl, wall):
                log.warning("proxy-cache: an entry of %d bytes is larger than the whole dictionary %s (%d bytes): "
                            "not stored", len(msg.entry), msg.dictionary, cache.capacity)
            return [], []
        if isinstance(msg, p.CachePurge):
            cache = self.caches.get(msg.dictionary)
            if cache is not None and msg.key is not None:
                cache.delete(msg.key)
            elif cache is not None:
                cache.flush()
            return [], []
        if isinstance(msg, p.CountersGet):
            return [p.CounterValues(id=msg.id, values=[self.counters.get(k, wall) for k in msg.keys])], []
        if isinstance(msg, p.CountersAdd):
            if msg.keeper not in ("", self.incarnation):  # sent before this keeper: the worker's restate replaces it
                return [], []
            for key, n, ttl in msg.items:
                self.counters.add(key, n, ttl, wall)
            return [], []
        if isinstance(msg, p.AdminOp):
            return self.answer(msg, lambda: self.admin(msg.cmd, msg.args, now, wall))
        return [], []

    def answer(self, msg: p.AdminOp, run: Callable[[], tuple[Any, list[p.Msg]]]) -> tuple[list[p.Msg], list[p.Msg]]:
        """The operator's command `msg`, carried out by `run` (unless it came past its deadline): its AdminResult,
        and what to publish. A command that fails says why, and changes nothing."""
        if msg.deadline and msg.cmd not in p.LATE_APPLIED and (late := time.monotonic() - msg.deadline) > 0:
            log.warning("state keeper: refused the operator's `%s %s`, read %.1fs after its deadline: the root "
                        "has reported it failed", msg.cmd, msg.args.get("action", "list"), late)
            return [p.AdminResult(id=msg.id, ok=False, error=f"the state keeper read the command {late:.1f}s "
                                  "after its deadline (it was stopped or busy); it was not carried out")], []
        try:
            result, broadcasts = run()
        except (KeyError, ValueError) as e:  # (a KeyError's str() is its message's repr: take the message)
            error = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
            return [p.AdminResult(id=msg.id, ok=False, error=error)], []
        except ConfigError as e:  # (reload_config: a file this process cannot read as the root read it)
            return [p.AdminResult(id=msg.id, ok=False, error="\n".join(e.messages))], []
        except (TypeError, ArithmeticError) as e:  # e.g. a list as target: it must not kill the keeper
            return [p.AdminResult(id=msg.id, ok=False, error=f"invalid arguments for {msg.cmd}: {e}")], []
        return [p.AdminResult(id=msg.id, ok=True, result=result)], broadcasts

    def _for_this_one(self, sender: bytes, items: list[Addressed]) -> list[Addressed]:
        """The rate-limit items meant for this keeper incarnation (lease.py rule 5): a worker's restate replaces what
        it sent to the keeper before this one, which ZeroMQ delivers here if that one died before reading it. Kept
        all the same: a report under policy redis, whose use the restate does not state again (it was reported)."""
        mine = [item for item in items if item.keeper in ("", self.incarnation) or
                (isinstance(item, FallbackUsage) and item.spec.remote)]
        if len(mine) < len(items):
            log.info("state keeper: ignored %d rate-limit item(s) (%s) %s sent to the keeper before this one; its "
                     "resynchronisation with this one replaces them", len(items) - len(mine), type(items[0]).__name__,
                     self.peers.name(sender))
        return mine

    def _held(self, sender: bytes, request: LeaseRequest, grant: Grant, now: float) -> bool:
        """Hold `request`, refused for an exhausted window, while the tokens other workers hold of it are recalled
        (ledger.py rule 12), True; False: nothing can come back, send `grant`."""
        recalls = self.ledger.recall(request, grant, now)
        if recalls is None:
            return False
        self.held.setdefault(request.key, []).append(
            (sender, LeaseRequest(request.key, request.spec, request.worker, request.want, keeper=request.keeper,
                                  waiting=request.waiting)))  # (only waiting requests are held: rule 13's tokens)
        keys: dict[str, list[str]] = {}
        for key, worker in recalls:
            keys.setdefault(worker, []).append(key)
        self._direct += [(self.routes[worker], p.Recall(keys=recalled, keeper=self.incarnation))
                         for worker, recalled in keys.items()]
        return True

    def _recalled(self, sender: bytes, msg: p.GiveBack, now: float, wall: float) -> None:
        """A worker's answer to a Recall: its tokens credited, and the requests held for it answered once it was the
        last one waited for. An answer to a keeper before this one is dropped: the restate replaced its tokens."""
        if msg.keeper != self.incarnation:
            log.info("state keeper: ignored %d recalled lease(s) %s gave back to the keeper before this one",
                     len(msg.recalled), self.peers.name(sender))
            return
        done = [key for back in msg.recalled for key in self.ledger.recalled(back)]
        self._answer_held(done, now, wall)

    def _answer_held(self, keys: list[str], now: float, wall: float) -> None:
        """Grant again what was held for the recall of `keys` (never recalling again: ledger.py rule 12), into the
        outbox; what now waits for Redis waits on in `pending`."""
        by_sender: dict[bytes, list[Grant]] = {}
        for key in keys:
            for sender, request in self.held.pop(key, ()):
                grant = self.ledger.grant_request(request, now, wall)
                if grant is None:
                    self.pending.setdefault(key, []).append((sender, request, now))
                    self.redis_wake.set()
                else:
                    by_sender.setdefault(sender, []).append(grant)
        self._direct += [(sender, p.Grants(grants=grants)) for sender, grants in by_sender.items()]

    def outbox(self) -> list[tuple[bytes, p.Msg]]:
        """Messages for other workers than the sender of the message handled last (Recalls, the grants of held
        requests), which `handle` cannot reply: its caller sends them after each."""
        direct, self._direct = self._direct, []
        return direct

    def peer_gone(self, sender: bytes, now: float) -> list[tuple[bytes, p.Msg]]:
        """The bus found `sender` gone (its process exited: a worker replaced, or retired by a reload): forget it, and
        its requests waiting on Redis; the probe permits it held are taken back and placed with live workers."""
        if sender not in self.peers:
            return []
        name = self.peers.name(sender)
        held = self.peers.forget(sender)
        for key in [k for k, waiting in self.pending.items() if any(w[0] == sender for w in waiting)]:
            self.pending[key] = [w for w in self.pending[key] if w[0] != sender]
            if not self.pending[key]:
                del self.pending[key]
        for key in [k for k, waiting in self.held.items() if any(w[0] == sender for w in waiting)]:
            self.held[key] = [w for w in self.held[key] if w[0] != sender]  # (its recall ends when it would have)
        for worker in [worker for worker, route in self.routes.items() if route == sender]:
            del self.routes[worker]  # (in place: the ledger's `reachable`)
        direct = [placed for target, granted_at in held for again in self.breakers.take_back(target, granted_at, now)
                  if (placed := self._place(again, now)) is not None]
        log.info("state keeper: %s is gone%s", name,
                 f"; {len(held)} probe permit(s) it held were taken back" if held else "")
        return direct

    def _seen(self, sender: bytes) -> list[p.Msg]:
        """A worker's message: a worker the keeper did not know gets the permits waiting for one."""
        return self._waiting_permits(sender) if self.peers.seen(sender) else []

    def _waiting_permits(self, sender: bytes) -> list[p.Msg]:
        """The permits granted while no worker was known (those still in flight), to `sender`."""
        waiting, self.peers.waiting = self.peers.waiting, []
        permits: list[p.Msg] = []
        for target, granted_at in waiting:
            if granted_at in self.breakers.in_flight(target):
                self.peers.hold(sender, target, granted_at)
                permits.append(p.ProbePermit(target=target))
        return permits

    def _place(self, target: str, granted_at: float) -> tuple[bytes, p.Msg] | None:
        """A permit just granted, to the live worker Peers.place picks; None: it waits for a worker to connect."""
        self.peers.keep_only(target, self.breakers.in_flight(target))
        sender = self.peers.place(target, granted_at)
        return (sender, p.ProbePermit(target=target)) if sender is not None else None

    def _breakers_changed(self, updates: list[BreakerUpdate]) -> list[p.Msg]:
        """Transitions to publish; a breaker's permits out are void once it leaves half-open."""
        for update in updates:
            if update.state is State.HALF_OPEN:
                self.peers.half_open(update.target)
            else:
                self.peers.keep_only(update.target, ())
        return [p.BreakersChanged(updates=updates)] if updates else []

    def answer_pending(self, keys: list[str], now: float, wall: float) -> list[tuple[bytes, p.Msg]]:
        """Grant what waits on `keys` (a block arrived, or Redis is away); what still cannot be served waits on."""
        by_sender: dict[bytes, list] = {}
        for key in keys:
            for sender, request, since in self.pending.pop(key, ()):
                grant = self.ledger.grant_request(request, now, wall)
                if grant is None:
                    self.pending.setdefault(key, []).append((sender, request, since))
                else:
                    by_sender.setdefault(sender, []).append(grant)
        return [(sender, p.Grants(grants=grants)) for sender, grants in by_sender.items()]

    def overdue(self, now: float, wall: float) -> list[tuple[bytes, p.Msg]]:
        """Requests that waited their Redis' timeout (redis.timeout, per plugin) for a block: that Redis is too slow,
        so its hosts use their shares (or answer 500). Kong's request waits for its Redis as long as the timeout
        says."""
        late: dict[str, float] = {}
        for waiting in self.pending.values():
            if waiting:
                store = waiting[0][1].spec.store
                shared = self.stores.get(store)
                bound = shared.settings.timeout_s if shared is not None else 0.0  # a plugin gone: no call answers
                if now - waiting[0][2] >= bound:
                    late[store] = bound
        answers = []
        for store, bound in late.items():
            if self.ledger.store_down(store, f"no answer from Redis within {bound:g}s"):
                log_store_down(self, store)
            answers += self.answer_pending(self.ledger.remote_keys(store), now, wall)
        return answers

    def _verdicts_known(self) -> list[p.Msg]:
        """The checker has spoken (or the grace is over): from now on every target's verdict is published."""
        self.health_pending = False
        self._flips.clear()
        return [p.TargetsChanged(targets=list(self.targets.values()))] if self.targets else []

    def _published(self, states: list[p.TargetState]) -> list[p.TargetState]:
        """`states` as workers may see them: without a health verdict while the checker has not reported yet."""
        if not self.health_pending:
            return states
        return [p.TargetState(s.key, s.drained, s.weight, None) for s in states]

    def snapshot(self) -> p.Snapshot:
        return p.Snapshot(incarnation=self.incarnation, breakers=self.breakers.states(),
                          targets=self._published(list(self.targets.values())),
                          upstreams=[p.UpstreamTargets(upstream=u, targets=t) for u, t in self.discovered.items()])

    def discover(self, upstream: str, targets: list[p.TargetInfo]) -> list[p.Msg]:
        """Discovery's new list for an upstream: remember it, and tell workers and the checker."""
        before = self.discovered.get(upstream)
        if before == targets:
            return []
        self.discovered[upstream] = list(targets)
        names = {t.name for t in targets}
        self.breakers.cover(upstream, [f"{upstream}|{name}" for name in names])
        added = []
        for t in targets:
            key = f"{upstream}|{t.name}"
            if key not in self.targets:
                state = self.targets[key] = p.TargetState(key)
                saved = self._early_targets.get(key)
                state.healthy = self._early_health.get(key, saved is None or saved.healthy)
                if saved is not None:
                    state.drained, state.weight = saved.drained, saved.weight
                if not state.healthy:
                    self.health.set_health(upstream, t.name, False)
                added.append(state)
        restored = [BreakerUpdate(key, state) for key, (state, opened_at) in self._early_breakers.items()
                    if key.startswith(upstream + "|") and self.breakers.restore(key, state, opened_at)]
        for early in (self._early_health, self._early_targets, self._early_breakers):
            for key in [k for k in early if k.startswith(upstream + "|")]:
                del early[key]
        for key in [k for k in self.targets if k.startswith(upstream + "|") and k.split("|", 1)[1] not in names]:
            del self.targets[key]
        self.health.retain(upstream, names)
        log.info("discovery: upstream %s now has %d target(s)%s", upstream, len(targets),
                 list_change(before or [], targets))
        # The new targets' states go out too: workers may still hold older verdicts on them (from before a keeper
        # restart), and the keeper only publishes flips, so a stale "unhealthy" would otherwise never be corrected.
        return [p.UpstreamTargets(upstream=upstream, targets=list(targets))] + \
            ([p.TargetsChanged(targets=self._published(added))] if added else []) + \
            ([p.BreakersChanged(updates=restored)] if restored else [])

    def restore(self, saved: SavedState, now: float, wall: float) -> None:
        """Begin from what the keeper before this one saved (keeper/saved.py), before the first snapshot: the
        operators' drains and weights, the unhealthy verdicts (counted afresh from), the breakers not closed (an open
        one's timeout runs from when it opened). What the config no longer has is dropped (a verdict, with its
        upstream's checks); what is saved of an upstream a source reports waits for its list."""
        for key, target in saved.targets.items():
            upstream, _, name = key.partition("|")
            if not target.healthy and not self.health.tracks(upstream):
                target = msgspec.structs.replace(target, healthy=True)
            state = self.targets.get(key)
            if state is not None:
                state.drained, state.weight, state.healthy = target.drained, target.weight, target.healthy
                if not target.healthy:
                    self.health.set_health(upstream, name, False)
            elif upstream in self._sourced and target != SavedTarget():
                self._early_targets[key] = target
        for key, breaker in saved.breakers.items():
            restored = State.FORCED_OPEN if breaker.state == "forced_open" else State.OPEN
            opened_at = now - max(0.0, wall - breaker.opened)  # (a wall clock set back: the whole timeout again)
            if not self.breakers.restore(key, restored, opened_at) and key.split("|", 1)[0] in self._sourced:
                self._early_breakers[key] = (restored, opened_at)
        log.info("state keeper: took up %d target override(s), %d unhealthy target(s) and %d breaker(s) not closed "
                 "from the keeper before it%s", sum(t.drained or t.weight is not None for t in self.targets.values()),
                 sum(t.healthy is False for t in self.targets.values()), len(self.breakers.not_closed()),
                 f" ({len(self._early_targets) + len(self._early_breakers)} wait for their upstream's discovery)"
                 if self._early_targets or self._early_breakers else "")

    def saved(self, now: float, wall: float) -> SavedState:
        """What a keeper started after this one must begin from (`restore`): the state file's content."""
        targets = {key: SavedTarget(s.drained, s.weight, s.healthy is not False) for key, s in self.targets.items()
                   if s.drained or s.weight is not None or s.healthy is False}
        breakers = {key: SavedBreaker("forced_open" if state is State.FORCED_OPEN else "open",
                                      round(wall - (now - opened_at), 3))
                    for key, (state, opened_at) in (self._early_breakers | self.breakers.not_closed()).items()}
        return SavedState(targets=self._early_targets | targets, breakers=breakers)

    async def drop_ended_limits(self) -> None:
        """Rate-limit keys go with their windows, as Kong's counters with their TTL (ledger.py rule 10): the keeper
        process's task, and `gateway run`'s (SharedState.run_local)."""
        while True:
            await trio.sleep(EXPIRE_S)
            self.ledger.expire(trio.current_time(), time.time())

    def ticking(self) -> bool:
        """Has `tick` work due within TICK_S: a breaker not closed, the wait for the checker's first report, or held
        requests waiting for a recall (ledger.py rule 12)?"""
        return self.health_pending or not self.breakers.all_closed() or self.ledger.recalling

    def tick(self, now: float) -> tuple[list[tuple[bytes, p.Msg]], list[p.Msg]]:
        """Breaker timers: open -> half-open, with probe permits spread over the workers; the health grace; the
        requests held for a recall that waited RECALL_S (ledger.py rule 12), answered; retired health machines whose
        time is up, forgotten."""
        verdicts: list[p.Msg] = []
        if self.health_pending:
            if self._pending_since is None:
                self._pending_since = now
            elif now - self._pending_since >= HEALTH_GRACE_S:
                log.warning("no report from the health checker %.0fs after start: publishing health verdicts "
                            "without it", HEALTH_GRACE_S)
                verdicts = self._verdicts_known()
        self.health.purge(now)
        updates, permits = self.breakers.tick(now)
        changed = self._breakers_changed(updates)
        direct = [placed for target in permits if (placed := self._place(target, now)) is not None]
        if self.ledger.recalling:
            self._answer_held(self.ledger.recalls_overdue(now), now, time.time())
        return direct + self.outbox(), verdicts + changed

    def admin(self, cmd: str, args: dict[str, Any], now: float, wall: float) -> tuple[Any, list[p.Msg]]:
        """breakers [list|reset|open] [target=], limits [show|reset] key=, targets [list|drain|enable|weight|healthy|
        unhealthy], proxy-cache [list|get|purge|flush] [key=] [plugin=]; an argument the action does not take is
        refused, never ignored (`proxy-cache flush plugn=ID` would flush every plugin's dictionary)."""
        if (problem := argument_problem(cmd, args)) is not None:
            raise ValueError(problem)
        action = args.get("action", "list")
        if cmd == "breakers":
            if action == "list":
                return self.breakers.describe(now), []
            target = _target(args)
            if action == "reset":
                update = self.breakers.reset(target)
            elif action == "open":
                update = self.breakers.force_open(target, now)
            else:
                _bad(cmd, action)
            return self.breakers.describe(now, target), self._breakers_changed([update])
        if cmd == "limits":
            if action in ("list", "show") and "key" not in args:
                return {"keys": self.ledger.keys()}, []
            if action in ("list", "show"):
                key = args["key"]
                if key not in self.ledger.keys():
                    raise KeyError(f"no rate-limit state for key {key!r}; `limits` lists the keys")
                return {"key": key, "usage": self.ledger.usage(key, now, wall)}, []
            if action == "reset":
                return {"reset": self.ledger.reset(_need(args, "key"))}, []
            _bad(cmd, action)
        if cmd == "targets":
            if action == "list":
                names = target_names(self.discovered)[0]
                made = made_by_dns(self.discovered)  # (its record type and the weight DNS gave it: the status API's)
                return [{"key": t.key, "drained": t.drained, "weight": t.weight, "healthy": t.healthy,
                         **({"name": names[t.key]} if t.key in names else {}),
                         **({"dns": made[t.key].dns, "dns_weight": made[t.key].weight} if t.key in made else {})}
                        for t in self.targets.values()], []
            key = _target(args)
            if action in ("healthy", "unhealthy"):
                return self._mark(key, action == "healthy")
            if key not in self.targets:
                raise KeyError(f"no target {key!r}; `targets` lists them as upstream|host:port")
            state = self.targets[key]
            if action == "drain":
                state.drained = True
            elif action == "enable":
                state.drained = False
            elif action == "weight":
                state.weight = _weight(_need(args, "weight"))
            else:
                _bad(cmd, action)
            return _shown_target(state), [p.TargetsChanged(targets=self._published([state]))]
        if cmd == "proxy-cache":
            return _proxy_cache_admin(self, action, args, wall), []
        if cmd == "health":
            return {"incarnation": self.incarnation, "workers_seen": len(self.peers),
                    "targets": {t.key: t.healthy for t in self.targets.values()},
                    "discovered": {u: len(t) for u, t in self.discovered.items()}}, []
        if cmd == "reload_config":
            return self.apply_reload(self.read_reload(args), now)
        raise ValueError(f"unknown command {cmd!r} for the state keeper")

    def read_reload(self, args: dict[str, Any]) -> ReadConfig:
        """reload_config's reading: the run directory's copy of the config, parsed as check-config parsed the file
        (in its format: files.current_config) under the KONG_ variables the root checked it under (`args`, `gateway
        reload`'s among them), and compiled. Seconds for a large file, and it changes nothing: the keeper process
        runs it in a thread while it serves on (process.py), then applies it on its loop."""
        if self.config_path is None:
            raise ValueError("this keeper was started without a config path")
        path = current_config(self.config_path)
        variables = kong_conf.carried({key: value for key, value in args.items() if isinstance(value, str)})
        config = inherited(parse_config(read_config_text(path), path, {**os.environ, **variables}))
        return ReadConfig(path, config, compile_config(config, path), variables)

    def apply_reload(self, read: ReadConfig, now: float) -> tuple[Any, list[p.Msg]]:
        """reload_config's part on the keeper's loop: the config read_reload read, applied at `now` (the keeper's
        clock); the snapshot to publish."""
        self.config_path = read.path
        self.reload(read.config, read.runtime, now)
        os.environ.update(read.variables)  # kept for later reloads, as the root keeps them
        return {"incarnation": self.incarnation}, [self.snapshot()]


def list_change(before: list[p.TargetInfo], after: list[p.TargetInfo]) -> str:
    """What changed from one discovered list to the next, for the log: counts of targets added, removed and changed
    (weight, name), each with its first LOGGED_NAMES names, at most LOG_TEXT characters of registry text: a list
    of thousands must not make a line of every name at each change."""
    old = {t.name: t for t in before}
    new = {t.name for t in after}
    parts = [(what, [t.name for t in targets]) for what, targets in (
        ("added", [t for t in after if t.name not in old]),
        ("removed", [t for t in before if t.name not in new]),
        ("changed", [t for t in after if t.name in old and old[t.name] != t]))]
    text = "; ".join(f"{what} {len(names)}: {', '.join(names[:LOGGED_NAMES])}"
                     + (f" and {len(names) - LOGGED_NAMES} more" if len(names) > LOGGED_NAMES else "")
                     for what, names in parts if names)
    return f" ({excerpt(text, LOG_TEXT)})" if text else ""


def _proxy_cache_admin(keeper: Keeper, action: str, args: dict[str, Any], wall: float) -> Any:
    """Kong's Admin API /proxy-cache endpoints: get (GET /proxy-cache/{key}), purge (DELETE /proxy-cache/{key}) and
    flush (DELETE /proxy-cache), over every proxy-cache plugin or the one `plugin=` names (/proxy-cache/{plugin
    id}/caches/{key}); list: the plugins, their dictionaries and what those hold."""
    plugins = keeper.cached
    if "plugin" in args:
        if args["plugin"] not in plugins:
            raise KeyError(f"no proxy-cache plugin {args['plugin']!r}; `proxy-cache` lists them")
        plugins = {args["plugin"]: plugins[args["plugin"]]}
    caches = [(pid, name, keeper.caches.get(name)) for pid, name in plugins.items()]
    if action == "list":
        return [{"plugin": pid, "dictionary": name, "entries": len(c) if c else 0, "bytes": c.size if c else 0}
                for pid, name, c in caches]
    if action == "flush":
        return {"flushed": sum(c.flush() for _, _, c in caches if c is not None)}
    key = _need(args, "key")
    for pid, _, cache in caches:
        raw = cache.get(key, wall) if cache is not None else None
        if raw is None:
            continue
        if action == "get":
            return {"plugin": pid, "entry": render_entry(raw)}
        if action == "purge":
            for _, _, other in caches:  # as Kong: from every plugin's dictionary that has it
                if other is not None:
                    other.delete(key)
            return {"purged": key}
        _bad("proxy-cache", action)
    if action not in ("get", "purge"):
        _bad("proxy-cache", action)
    raise KeyError(f"no cached entry for key {key!r} (in the dictionaries of {len(caches)} proxy-cache plugin(s))")


def log_store_down(keeper: Keeper, name: str) -> None:
    store, shared = keeper.ledger.stores[name], keeper.stores.get(name)
    where = shared.settings.address if shared is not None else "?"
    if store.fault_tolerant:
        log.warning("rate-limiting %s: Redis at %s is unreachable (%s); this host admits its share of each limit "
                    "(limit / %d hosts) until it is back", name, where, store.why, store.hosts)
    else:
        log.warning("rate-limiting %s: Redis at %s is unreachable (%s); requests get 500 (fault_tolerant is off) "
                    "until it is back", name, where, store.why)


def _shown_target(state: p.TargetState) -> dict[str, Any]:
    """A target's state as an operator's `targets` command answers it."""
    return {"key": state.key, "drained": state.drained, "weight": state.weight, "healthy": state.healthy}


def _need(args: dict[str, Any], name: str) -> Any:
    if name not in args:
        raise ValueError(f"missing argument {name}=...")
    return args[name]


def _target(args: dict[str, Any]) -> str:
    """The target= argument: a target's name is a string (an integer or null is not an unknown target)."""
    target = _need(args, "target")
    if not isinstance(target, str):
        raise ValueError(f"target={_shown(target)}: target must be a string upstream|host:port")
    return target


def _weight(value: Any) -> int:
    """A target weight as Kong's schema has it, an integer 0..65535, given as a JSON integer or its decimal text (as
    the CLI sends it); a float, a boolean, null or text of more than five digits (never given to int(), whose own
    refusal past 4300 digits names no range) is refused, never rounded."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value.lstrip("0")) <= 5:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"weight must be 0..65535 (an integer), got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """An argument as the operator wrote it in JSON (null, true, 1.5, "x"), at most 40 characters."""
    return excerpt(json.dumps(value), 40)


def _bad(cmd: str, action: str) -> Any:
    raise ValueError(f"unknown action {action!r} for {cmd}")
