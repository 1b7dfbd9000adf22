"""References between declarative entities as Kong 3.x resolves them (kong/db/schema/others/declarative_config.lua):
a reference is an entity's name before another's id (find_entity), each entity is kept apart from every other, and
the place of an unnamed entity in the file is no reference. Pure load/compile tests: no process, no socket."""

from __future__ import annotations

import textwrap

import pytest

from gateway.config import Config, parse_config
from gateway.config.errors import ConfigError
from gateway.runtime import compile_config

UUID = "3f2a63d2-2b43-4a5b-9d1e-5c6b1f0e8a42"


def _load(text: str) -> Config:
    return parse_config(textwrap.dedent(text), "kong.yml")


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(text)
    return [m.removeprefix("kong.yml: ") for m in info.value.messages]


# --- a name before an id ----------------------------------------------------------------------------------------------


def test_a_reference_that_is_one_services_name_and_another_services_id_names_the_service_of_that_name():
    """kong/db/schema/others/declarative_config.lua:464-466, find_entity: `by_key[ws_id][entity][key]` (the endpoint
    key, a service's name: services.lua:25) is looked up before `by_id[entity][key]`, and lines 780-782 resolve a
    route's `service` with it. So `service: X`, where one service is named X and another has the id X, is the
    service named X."""
    config = _load(f"""
        _format_version: "3.0"
        services:
        - {{name: {UUID}, url: "http://127.0.0.1:9001"}}
        - {{name: other, id: {UUID}, url: "http://127.0.0.1:9002"}}
        routes:
        - {{name: r, service: {UUID}, paths: [/]}}
        plugins:
        - {{name: cors, service: {UUID}}}
    """)
    assert config.routes[0].service == UUID  # the service named so, not "other"
    assert config.plugins[0].service == UUID


def test_a_reference_that_is_one_routes_name_and_another_routes_id_names_the_route_of_that_name():
    """kong/db/schema/others/declarative_config.lua:464-466 and 780-782: a plugin's `route` is looked up by the
    routes' endpoint key (their name: routes.lua:144) before their id, so it runs on the route named so, not on
    the one with that id."""
    runtime = compile_config(_load(f"""
        _format_version: "3.0"
        routes:
        - {{name: {UUID}, paths: [/named]}}
        - {{id: {UUID}, paths: [/by-id]}}
        plugins:
        - {{name: cors, route: {UUID}}}
    """), "kong.yml")
    chains = {}
    for path in (b"/named", b"/by-id"):
        match = runtime.router.match(b"GET", path, None, [])
        assert match is not None
        chains[path] = [policy.name for policy in match.payload.policies if policy.name == "cors"]
    assert chains == {b"/named": ["cors"], b"/by-id": []}


def test_a_reference_that_is_one_upstreams_name_and_another_upstreams_id_names_the_upstream_of_that_name():
    """kong/db/schema/others/declarative_config.lua:464-466 and 780-782: a target's `upstream` is looked up by the
    upstreams' endpoint key (their name: upstreams.lua:178) before their id, so the target is one of the upstream
    named so."""
    runtime = compile_config(_load(f"""
        _format_version: "3.0"
        upstreams:
        - {{name: {UUID}}}
        - {{name: other, id: {UUID}}}
        targets:
        - {{target: "127.0.0.1:9001", upstream: {UUID}}}
    """), "kong.yml")
    assert [t.port for t in runtime.groups[UUID].targets] == [9001]
    assert runtime.groups["other"].targets == []


# --- every entity its own ---------------------------------------------------------------------------------------------


def test_an_unnamed_service_and_a_service_named_with_its_id_each_proxy_their_own_routes():
    """kong/db/schema/others/declarative_config.lua:413-414, 430-445: every entity is kept by its own primary key
    (`by_id[entity][item_id]`), and a nested route's service is its parent's primary key (`item[child_key] =
    parent_fk`, line 453). So service A (no name, id X) and service B (named X) are two services, each with its own
    routes: a request for A's route goes to A's upstream, one for B's to B's."""
    config = _load(f"""
        _format_version: "3.0"
        services:
        - id: {UUID}
          url: "http://127.0.0.1:9001"
          routes: [{{name: ra, paths: [/a]}}]
        - name: {UUID}
          url: "http://127.0.0.1:9002"
          routes: [{{name: rb, paths: [/b]}}]
    """)
    runtime = compile_config(config, "kong.yml")
    ports = []
    for path in (b"/a", b"/b"):
        match = runtime.router.match(b"GET", path, None, [])
        assert match is not None and match.payload.service is not None
        ports.append(match.payload.service.group.targets[0].port)
    assert ports == [9001, 9002]


# --- a place in the file is no reference ------------------------------------------------------------------------------


def test_an_unnamed_services_place_in_the_file_is_not_a_reference():
    """kong/db/schema/others/declarative_config.lua:484-496: a reference that names no entity by its endpoint key or
    its primary key is "invalid reference 'service: ...' (no such entry in 'services')". A service without a name
    has only its id: `service: "services[0]"` (its place in the file) names none, from a route or a plugin."""
    problems = _errors("""
        _format_version: "3.0"
        services:
        - url: http://127.0.0.1:9000
        routes:
        - name: r
          service: "services[0]"
          paths: [/]
        plugins:
        - name: cors
          service: "services[0]"
    """)
    assert "routes[0].service: no service with id or name 'services[0]'" in problems, problems
    assert "plugins[0].service: no service with id or name 'services[0]'" in problems, problems


_CERTIFICATE = """
    certificates:
    - cert: "-----BEGIN CERTIFICATE-----"
      key: "-----BEGIN PRIVATE KEY-----"
"""


def test_a_certificates_place_in_the_file_is_not_an_snis_reference():
    """kong/db/schema/others/declarative_config.lua:484-496: an sni's `certificate` names a certificate by its id
    (certificates.lua has no endpoint_key); "certificates[0]", the place of one without an id, names none."""
    problems = _errors(_CERTIFICATE + """
    snis:
    - {name: a.test, certificate: {id: "certificates[0]"}}
    """)
    assert "snis[0].certificate: no certificate with id 'certificates[0]'" in problems, problems


def test_a_certificates_place_in_the_file_is_not_a_client_certificate():
    """kong/db/schema/others/declarative_config.lua:484-496: a service's or an upstream's `client_certificate` names a
    certificate by its id; "certificates[0]" names none."""
    problems = _errors(_CERTIFICATE + """
    services:
    - {name: s, url: "https://127.0.0.1:9000", client_certificate: {id: "certificates[0]"}}
    upstreams:
    - {name: u, client_certificate: {id: "certificates[0]"}}
    """)
    assert "services[0].client_certificate: no certificate with id 'certificates[0]'" in problems, problems
    assert "upstreams[0].client_certificate: no certificate with id 'certificates[0]'" in problems, problems

