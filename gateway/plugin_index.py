"""Which plugin instances run on a route, and for a consumer on it: Kong's lookup (kong/runloop/plugins_iterator.lua).

The instances are indexed once by (route, service, consumer), as Kong's `combos` (plugins_iterator.lua:523-586), and
a chain is resolved from the index by Kong's eight lookups in order (:215-267 lookup_cfg), so compiling a config is
linear in its routes, plugins and consumers; a consumer's chain on a route is resolved the first time that consumer
is authenticated there (Kong looks each plugin up per request, :372-411), then kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.config.schema import Plugin, Route
from gateway.policies.base import Policy

Built = tuple[Plugin, Any, Policy | None]  # an enabled HTTP plugin: its entity, validated config, policy (or None)
# (route: its name, or id() of the route a plugin is nested under; service; consumer)
Key = tuple[Any, str | None, str | None]
Chosen = dict[str, tuple[int, Built]]  # plugin name -> (the rank of the lookup that found it, the instance)

# Kong's lookup order (lookup_cfg): whether a lookup names the (route, service, consumer); the first that finds an
# instance of a plugin wins, and its place here is the instance's rank.
LEVELS = ((True, True, True), (True, False, True), (False, True, True), (True, True, False),
          (False, False, True), (True, False, False), (False, True, False), (False, False, False))
_CONSUMER_ONLY = LEVELS.index((False, False, True))
_NOT_FOUND = (len(LEVELS), None)


def ordered(chosen: Chosen) -> list[Policy]:
    """The policies of the chosen instances in the order they run: by priority, highest first, then by name (an
    instance whose plugin builds no policy, the circuit-breaker, still hides the instances it won over)."""
    policies = [policy for _, (_, _, policy) in chosen.values() if policy is not None]
    return sorted(policies, key=lambda p: (-p.priority, p.name))


class PluginIndex:
    """The instances of a config by the (route, service, consumer) they are scoped to."""

    def __init__(self, plugins: list[Built]) -> None:
        self.at: dict[Key, list[Built]] = {}
        self.consumers_at: dict[tuple[Any, str | None], set[str]] = {}  # (route, service) -> consumers with an instance
        self.consumer_only: set[str] = set()  # the names of plugins with an instance scoped to a consumer alone
        for built in plugins:
            plugin = built[0]
            owner = getattr(plugin, "_route", None)  # nested under a route: that route, even if unnamed
            key = (plugin.route if owner is None else id(owner), plugin.service, plugin.consumer)
            self.at.setdefault(key, []).append(built)
            if plugin.consumer is not None:
                self.consumers_at.setdefault(key[:2], set()).add(plugin.consumer)
                if key[:2] == (None, None):
                    self.consumer_only.add(plugin.name)

    def chosen(self, lookups: list[tuple[int, Key]]) -> Chosen:
        """For each plugin name, the instance the first of `lookups` ((rank, key), in rank order) that has one finds."""
        chosen: Chosen = {}
        at = self.at
        for rank, key in lookups:
            for built in at.get(key, ()):
                chosen.setdefault(built[0].name, (rank, built))
        return chosen

    def route(self, route: Route, tail: tuple[Policy, ...] = ()) -> RouteScoping:
        """How instances apply to `route`; `tail` ends each of its chains (a route without a service's 503)."""
        return RouteScoping(self, route, tail)


class RouteScoping:
    """The instances that apply to one route: its own chain (a request with no consumer), and the lookups that
    resolve a consumer's."""

    __slots__ = ("index", "chosen", "chain", "tail", "_consumer_lookups", "_places")

    def __init__(self, index: PluginIndex, route: Route, tail: tuple[Policy, ...]) -> None:
        self.index = index
        self.tail = tail
        # the route's identities (a plugin names it by name, one nested under it by id()) and its service, if any
        routes = [id(route)] if route.name is None else [id(route), route.name]
        service = route.service
        lookups: list[tuple[int, Key]] = []
        consumer_lookups: list[tuple[int, Any, str | None]] = []
        for rank, (by_route, by_service, by_consumer) in enumerate(LEVELS):
            if by_service and service is None:
                continue  # Kong's lookup_cfg skips a lookup by service for a request without one
            for r in routes if by_route else [None]:
                if by_consumer:
                    consumer_lookups.append((rank, r, service if by_service else None))
                else:
                    lookups.append((rank, (r, service if by_service else None, None)))
        self._consumer_lookups = consumer_lookups
        self._places = [(r, s) for _, r, s in consumer_lookups]  # where the instances for consumers may be
        self.chosen = index.chosen(lookups)
        self.chain = [*ordered(self.chosen), *tail]

    def consumer_chains(self) -> ConsumerChains | None:
        """The chains of the consumers whose chain differs from the route's own, resolved when first asked for;
        None when no consumer's can (no instance scoped to a consumer wins over the route's own here)."""
        index = self.index
        if not any(index.consumers_at.get(place) for place in self._places if place != (None, None)) and not any(
                self.chosen.get(name, _NOT_FOUND)[0] > _CONSUMER_ONLY for name in index.consumer_only):
            return None
        return ConsumerChains(self)

    def consumer_chain(self, consumer: str) -> list[Policy]:
        """The route's chain for a request `consumer` is authenticated as (Kong's lookup_cfg with the consumer): the
        route's own list itself when no instance of the consumer's changes what runs."""
        at = self.index.at
        chosen = self.chosen
        for rank, r, s in self._consumer_lookups:
            for built in at.get((r, s, consumer), ()):
                name = built[0].name
                if rank < chosen.get(name, _NOT_FOUND)[0]:
                    if chosen is self.chosen:
                        chosen = dict(chosen)
                    chosen[name] = (rank, built)
        if chosen is self.chosen:
            return self.chain
        chain = [*ordered(chosen), *self.tail]
        return self.chain if len(chain) == len(self.chain) and all(
            a is b for a, b in zip(chain, self.chain, strict=True)) else chain

    def candidates(self) -> set[str]:
        """The consumers with an instance that can apply on this route."""
        found: set[str] = set()
        for place in self._places:
            found |= self.index.consumers_at.get(place, set())
        return found


class ConsumerChains(Mapping[str, list[Policy]]):
    """Consumer id -> the access steps of the route's chain for that consumer, for each consumer whose chain is not
    the route's own; each consumer's is resolved when first asked for (Kong resolves per request), then kept: `in`
    and [] cost a dict lookup once it is."""

    __slots__ = ("scoping", "_differs", "_access", "_whole")

    def __init__(self, scoping: RouteScoping) -> None:
        self.scoping = scoping
        self._differs = _Resolving(self._resolve)  # consumer -> whether its chain is not the route's own
        self._access = _Resolving(self._access_steps)  # consumer -> its chain's access steps, for those
        self._whole: dict[str, list[Policy]] = {}  # consumer -> its whole chain, for those

    def __contains__(self, consumer: object) -> bool:
        return self._differs[consumer]  # type: ignore[no-any-return]

    def __getitem__(self, consumer: str) -> list[Policy]:
        return self._access[consumer]  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return iter([c for c in sorted(self.scoping.candidates()) if c in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def whole(self, consumer: str) -> list[Policy]:
        """The consumer's whole chain (every phase)."""
        return self._whole[consumer] if consumer in self else self.scoping.chain

    def _resolve(self, consumer: object) -> bool:
        own = self.scoping.chain
        chain = self.scoping.consumer_chain(consumer) if isinstance(consumer, str) else own
        differs = self._differs[consumer] = chain is not own
        if differs:
            self._whole[consumer] = chain  # type: ignore[index]
            self._access[consumer] = [p for p in chain if hasattr(p, "access")]
        return differs

    def _access_steps(self, consumer: object) -> list[Policy]:
        if self._differs[consumer]:
            return self._access[consumer]  # type: ignore[no-any-return]
        raise KeyError(consumer)


class _Resolving(dict[Any, Any]):
    """A dict whose missing key's value `resolve` works out (and stores), or raises KeyError for."""

    __slots__ = ("resolve",)

    def __init__(self, resolve: Any) -> None:
        super().__init__()
        self.resolve = resolve

    def __missing__(self, key: Any) -> Any:
        return self.resolve(key)
