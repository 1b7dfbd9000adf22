"""Route precedence where Kong 3.9's default router (traditional_compatible) goes past get_priority's categories: ties
of equal priority, broken by the ATC router's matcher ids, and `hosts: []`, which still sets the plain-host bit.
Each config is loaded and compiled as a file is; the answer is the service (named after its one route) matched."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from gateway.runtime import compile_config

LOW = "00000000-0000-4000-8000-000000000001"
MID = "80000000-0000-4000-8000-000000000000"
HIGH = "ffffffff-ffff-4fff-bfff-ffffffffffff"
# the ids Kong gives the pieces of a route it splits by path (kong/router/transform.lua:674)
_SPLIT_NAMESPACE = uuid.UUID("7f145bf9-0dce-4f91-98eb-debbce4b9f6b")
# Kong's declarative ids of named entities (kong/db/schema/others/declarative_config.lua:544-556 generate_uuid)
_KONG_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")


def _piece_id(route_id: str, piece: int) -> str:
    return str(uuid.uuid5(_SPLIT_NAMESPACE, f"{route_id}#{piece}"))


def _named_id(name: str) -> str:
    return str(uuid.uuid5(uuid.uuid5(_KONG_NAMESPACE, "routes"), name))


def _winner(routes: list[tuple[str, dict[str, Any]]], target: str,
            headers: list[tuple[bytes, bytes]] | None = None) -> str | None:
    """The tag of the route a GET of `target` reaches, each route (tag, fields) under a service named tag."""
    doc = {"_format_version": "3.0", "services": [
        {"name": tag, "url": "http://127.0.0.1:9", "routes": [route]} for tag, route in routes]}
    runtime = compile_config(parse_config(yaml.safe_dump(doc, sort_keys=False), "<test config>", environ={}))
    match = runtime.router.match(b"GET", target.encode(), b"gw.test", headers or [])
    return None if match is None else match.payload.facts.service


# --- ties: atc-router walks its matchers by (priority, uuid), greatest first --------------------------------------


@pytest.mark.parametrize("order", [1, -1], ids=["low-first", "high-first"])
def test_a_tie_goes_to_the_greater_given_id_whatever_the_order(order: int) -> None:
    """atc-router src/router.rs:12-17, 95: MatcherKey(priority, Uuid) in a BTreeMap walked `.iter().rev()`, and
    kong/router/atc.lua:150 files each route under route.id: of two routes of one header each (equal priority), the
    one with the greater id wins, in either order in the file."""
    routes = [("low", {"id": LOW, "headers": {"x-a": ["1"]}}), ("high", {"id": HIGH, "headers": {"x-b": ["1"]}})]
    assert _winner(routes[::order], "/", [(b"x-a", b"1"), (b"x-b", b"1")]) == "high"


def test_a_tie_of_regex_paths_goes_to_the_greater_id() -> None:
    """The same (src/router.rs:95) for two regex paths of one regex_priority that both match /users/123."""
    routes = [("byid", {"id": LOW, "paths": ["~/users/\\d+$"]}), ("any", {"id": HIGH, "paths": ["~/users/.*"]})]
    assert _winner(routes, "/users/123") == "any"


def test_a_named_route_ties_by_kongs_declarative_id_of_its_name() -> None:
    """declarative_config.lua:559-614 (get_key_for_uuid_gen: the endpoint key, a route's unique name): alpha is
    dcf4252b-..., beta ce1342b2-..., so alpha wins the tie though defined second."""
    assert _named_id("alpha") > _named_id("beta")
    routes = [("beta", {"name": "beta", "paths": ["/api"]}), ("alpha", {"name": "alpha", "paths": ["/api"]})]
    assert _winner(routes, "/api/x") == "alpha"


def test_a_given_id_outranks_the_one_of_the_name() -> None:
    """get_key_for_uuid_gen (declarative_config.lua:566-569) makes no id for a route that has one: "beta" with id
    HIGH beats "alpha" (whose name's id is the greater)."""
    routes = [("alpha", {"name": "alpha", "paths": ["/api"]}),
              ("beta", {"name": "beta", "id": HIGH, "paths": ["/api"]})]
    assert _winner(routes, "/api/x") == "beta"


def test_a_split_routes_prefix_piece_ties_by_the_pieces_id() -> None:
    """transform.lua:704-755 split_routes_and_services_by_path: a route with prefixes of two lengths becomes pieces,
    piece n with id uuid5(7f145bf9-..., "<route id>#n"); route HIGH's /api piece (#1, 24c8bbf6-...) loses the tie to
    a route of id MID, though HIGH > MID."""
    assert _piece_id(HIGH, 1) < MID < HIGH
    routes = [("mixed", {"id": HIGH, "paths": ["/api", "/elsewhere"]}), ("other", {"id": MID, "paths": ["/api"]})]
    assert _winner(routes, "/api/x") == "other"


def test_a_split_routes_regex_piece_is_numbered_by_first_appearance() -> None:
    """transform.lua:681-699 group_by_regex_or_length: the regexes' group (key 0) is numbered where its first path
    stands, here second after /foo, so route HIGH's regex piece is #2 (f50d3d84-...), above a route of id MID."""
    assert _piece_id(HIGH, 1) < MID < _piece_id(HIGH, 2)
    routes = [("other", {"id": MID, "paths": ["~/api/x"]}), ("mixed", {"id": HIGH, "paths": ["/foo", "~/api/.*"]})]
    assert _winner(routes, "/api/x") == "mixed"


def test_a_route_of_one_group_of_paths_is_not_split_and_ties_by_its_own_id() -> None:
    """transform.lua:718-720: prefixes of one length are one group, which Kong keeps whole under the route's id:
    route HIGH with /api and /xyz beats MID (its piece #1's id, 24c8bbf6-..., would not)."""
    routes = [("other", {"id": MID, "paths": ["/api"]}), ("same", {"id": HIGH, "paths": ["/api", "/xyz"]})]
    assert _winner(routes, "/api/x") == "same"


def test_routes_of_neither_id_nor_name_tie_after_the_others_in_definition_order() -> None:
    """An anonymous route's id is random in Kong (declarative_config.lua generates none; the DAO a fresh UUID), so any
    order among them is Kong's: the gateway ranks them after routes with ids, in the order they are defined."""
    routes = [("first", {"paths": ["/api"]}), ("second", {"paths": ["/api"]}),
              ("named", {"name": "n", "paths": ["/api"]})]
    assert _winner(routes, "/api/x") == "named"
    assert _winner(routes[:2], "/api/x") == "first"


# --- `hosts: []`: get_priority's plain-host bit -------------------------------------------------------------------


def test_an_empty_hosts_list_sets_the_plain_host_bit() -> None:
    """transform.lua:609 `local plain_host_only = type(hosts) == "table"`: an empty list is a table, so `hosts: []`
    sets PLAIN_HOST_ONLY_BIT (bit 60) without counting a category, and outranks a longer prefix."""
    routes = [("short", {"paths": ["/api"], "hosts": []}), ("long", {"paths": ["/api/v2"]})]
    assert _winner(routes, "/api/v2/x") == "short"


@pytest.mark.parametrize("hosts", [{}, {"hosts": None}], ids=["absent", "null"])
def test_hosts_not_given_or_null_set_no_plain_host_bit(hosts: dict[str, Any]) -> None:
    """The same line: hosts never given, or null (ngx.null, a userdata), is no table, so the longer prefix wins."""
    routes = [("short", {"paths": ["/api"], **hosts}), ("long", {"paths": ["/api/v2"]})]
    assert _winner(routes, "/api/v2/x") == "long"


# --- regex_priority past 12 bits: a documented difference (README, "Where it differs") ----------------------------


@pytest.mark.xfail(strict=True, reason="the gateway follows get_priority's intended layout (README), not LuaJIT's "
                                       "32-bit `regex_priority << 19`")
@pytest.mark.parametrize(("big", "other", "winner"), [
    (10000, {"paths": ["~/v1/items"], "regex_priority": 2000}, "other"),  # 1808 < 2000
    (8192, {"paths": ["~/v1/items"], "regex_priority": 1}, "other"),  # 0 < 1
    (4096, {"paths": ["/v1"], "methods": ["GET"]}, "big"),  # 0xffffffffa0000000 > 0x40000003 (two categories)
])
def test_kongs_regex_priority_wraps_from_4096(big: int, other: dict[str, Any], winner: str) -> None:
    """transform.lua:456-465 lshift_uint64 rebinds its cdata to the Lua number, so `regex_priority << 19` (:657) is a
    32-bit shift: 10000 ranks as 1808 would, 8192 as 0, and 4096 (2^31, sign-extended when OR-ed with REGEX_URL_BIT)
    above every route of plain priority, one of more categories too."""
    routes = [("big", {"paths": ["~/v1/.*"], "regex_priority": big}), ("other", other)]
    assert _winner(routes, "/v1/items") == winner
