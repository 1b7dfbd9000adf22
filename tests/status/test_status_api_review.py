"""Kong's Status API (status_listen) against Kong 3.9.3 / nginx 1.27.1: /status/dns, the 404 of a path it has no route
for, the configuration hash of a file with CRLF line ends, the status server's own connections and requests in
nginx's counters, Kong's JSON Content-Type, and Kong's before_filter (415) ahead of POST /status/ready."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio
from backends import Client, request
from prometheus_client import CollectorRegistry

from gateway.node.root import Node, load_validated
from gateway.status import BaseStatusSource, CheckResult, StatusApp, serve_status
from gateway.status.collect import gateway_registry
from gateway.status.kong import config_hash

CONFIG = """\
_format_version: "3.0"
services:
  - name: s1
    url: http://up1/
    routes:
      - name: r1
        paths: ["/"]
upstreams:
  - name: up1
    targets:
      - target: 127.0.0.1:18433
"""


class Source(BaseStatusSource):
    """Ready, with this process as its one worker."""

    async def workers(self) -> CheckResult:
        return CheckResult("healthy", {"expected": 1, "running": 1, "pids": [os.getpid()]})

    async def readiness(self) -> dict[str, bool]:
        return {"config": True}


async def _serve(nursery: trio.Nursery, tmp_path: Path, registry: Any = None) -> tuple[StatusApp, int]:
    """A status server over CONFIG, its app and port."""
    path = tmp_path / "kong.yaml"
    path.write_text(CONFIG)
    _, config = load_validated(str(path))
    app = StatusApp(Source(), registry if registry is not None else CollectorRegistry(), check_timeout=1.0,
                    families=lambda: [], config=lambda: config, config_text=lambda: CONFIG)
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    return app, port


# --- /status/dns and unknown paths ----------------------------------------------------------------------------------


async def test_status_dns_is_kongs_501_with_the_legacy_dns_client(nursery: trio.Nursery, tmp_path: Path) -> None:
    """kong/status/init.lua:30 attaches kong.api.routes.dns; with new_dns_client off (the gateway's only DNS client)
    GET /status/dns is 501 {"message": "not implemented with the legacy DNS client"} (kong/api/routes/dns.lua:8-12;
    spec/02-integration/08-status_api/05-dns_client_spec.lua:91-101); the route has GET, HEAD and OPTIONS."""
    _, port = await _serve(nursery, tmp_path)
    for path in ("/status/dns", "/status/dns/"):
        reply = await request(port, "GET", path)
        assert (reply.status, reply.json()) == (501, {"message": "not implemented with the legacy DNS client"}), path
    options = await request(port, "OPTIONS", "/status/dns")
    assert options.status == 204 and options.header("allow") == "GET, HEAD, OPTIONS"
    post = await request(port, "POST", "/status/dns", headers=[("Content-Type", "application/json")], body=b"{}")
    assert (post.status, post.json()) == (405, {"message": "Method not allowed"})


async def test_an_unknown_status_api_path_is_kongs_404_not_found(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Kong's Status API app: default_route -> handle_404 -> 404 {"message": "Not found"} (kong/api/api_helpers.lua:
    528-545, kong/status/init.lua:15-16) for any path it has no route for, whatever the method."""
    _, port = await _serve(nursery, tmp_path)
    for method, path in (("GET", "/status/nope"), ("GET", "/nope"), ("DELETE", "/status/ready/x")):
        reply = await request(port, method, path)
        assert (reply.status, reply.json()) == (404, {"message": "Not found"}), (method, path)


# --- configuration_hash ---------------------------------------------------------------------------------------------


def test_configuration_hash_is_the_md5_of_the_files_bytes_with_crlf_lines(tmp_path: Path) -> None:
    """Kong hashes the declarative file's contents as read (kong/db/declarative/init.lua:97 pl_file.read, :149
    md5(contents)): a file saved with CRLF line ends keeps its CRs in the hash, so `md5sum kong.yml` is /status's
    configuration_hash. The root's copy of the file is read as it is (Node._current_text), line ends untranslated."""
    raw = CONFIG.replace("\n", "\r\n").encode()
    path = tmp_path / "kong.yaml"
    path.write_bytes(raw)
    _, config = load_validated(str(path))
    text = Node._current_text(SimpleNamespace(_current=str(path)))  # type: ignore[arg-type]
    assert config_hash(text, config) == hashlib.md5(raw).hexdigest()


# --- the status server's own connections and requests ---------------------------------------------------------------


async def test_status_counts_its_own_request_as_nginx_stub_status_does(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Kong's /status `server` is kong.nginx.get_statistics() (kong/pdk/nginx.lua:79-88): nginx's stub-status
    counters, which count every connection and request of the instance, its status server's too
    (ngx_event_accept.c:136,156,265; ngx_http_request.c:550-552,2130-2132): the request asking is in progress
    (active, writing) and counted (accepted, handled, total_requests); a second on the same connection is counted
    again, the first answered (no longer writing: :3735)."""
    _, port = await _serve(nursery, tmp_path)
    async with await Client.connect(port) as client:
        first = (await client.request("GET", "/status")).json()["server"]
        second = (await client.request("GET", "/status")).json()["server"]
    assert first == {"connections_active": 1, "connections_reading": 0, "connections_writing": 1,
                     "connections_waiting": 0, "connections_accepted": 1, "connections_handled": 1,
                     "total_requests": 1}
    assert second == {**first, "total_requests": 2}


async def test_kong_nginx_counters_on_metrics_count_the_status_servers_own(nursery: trio.Nursery,
                                                                           tmp_path: Path) -> None:
    """kong_nginx_connections_total and kong_nginx_requests_total are the same stub-status counters
    (kong/plugins/prometheus/exporter.lua:422-430): the scrape's own connection and request are in them."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    registry, _ = gateway_registry(str(metrics), node="n", version="3.9")
    _, port = await _serve(nursery, tmp_path, registry)
    text = (await request(port, "GET", "/metrics")).body.decode()
    for line in ('kong_nginx_connections_total{node_id="', 'subsystem="http",state="accepted"} 1',
                 'subsystem="http",state="writing"} 1', 'subsystem="http",state="total"} 1',
                 'kong_nginx_requests_total{node_id="'):
        assert line in text, line
    assert [n for n in text.splitlines() if n.startswith("kong_nginx_requests_total")][0].endswith(" 1")


# --- Content-Type ---------------------------------------------------------------------------------------------------


async def test_status_api_json_content_type_has_kongs_charset(nursery: trio.Nursery, tmp_path: Path) -> None:
    """kong.response.exit with a table body sets Content-Type "application/json; charset=utf-8"
    (kong/pdk/response.lua:81, :743), on every JSON answer of the Status API, errors too."""
    _, port = await _serve(nursery, tmp_path)
    for path in ("/status", "/status/ready", "/status/dns", "/upstreams/up1/targets", "/upstreams/nope/health"):
        reply = await request(port, "GET", path)
        assert reply.header("content-type") == "application/json; charset=utf-8", path


# --- before_filter --------------------------------------------------------------------------------------------------


async def test_post_status_ready_with_an_unsupported_body_type_is_415_and_does_not_drain(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    """Kong's Status API before_filter (kong/status/init.lua:18, kong/api/api_helpers.lua:241-270): a POST whose
    Content-Type does not begin (case-sensitively) as JSON, a form or multipart does, or without one but with a
    Content-Length other than "0", is 415 with no body before the handler runs: the node is not drained."""
    app, port = await _serve(nursery, tmp_path)
    for headers in ([("Content-Type", "text/plain")], [("Content-Type", "Application/JSON")], []):
        post = await request(port, "POST", "/status/ready?status=draining", headers=headers, body=b"drain please")
        assert (post.status, post.body) == (415, b""), headers
    ready = await request(port, "GET", "/status/ready")
    assert (ready.status, app.draining) == (200, False)


async def test_kongs_before_filter_answers_415_on_any_path_of_its_app(nursery: trio.Nursery, tmp_path: Path) -> None:
    """before_filter runs ahead of every route of the Lapis app (api_helpers.lua:241-270), the 404 and 405 ones too:
    a PUT or PATCH with a text body is 415; a body of a type it takes reaches the route (405, 404)."""
    _, port = await _serve(nursery, tmp_path)
    text = [("Content-Type", "text/plain")]
    for method, path in (("PUT", "/status"), ("PATCH", "/nope"), ("POST", "/upstreams/up1/targets")):
        assert (await request(port, method, path, headers=text, body=b"x")).status == 415, (method, path)
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    assert (await request(port, "PUT", "/status", headers=form, body=b"a=1")).status == 405
    assert (await request(port, "PATCH", "/nope", headers=form, body=b"a=1")).status == 404


async def test_post_status_ready_without_a_body_passes_the_before_filter(nursery: trio.Nursery,
                                                                         tmp_path: Path) -> None:
    """before_filter lets a body-less request through (Content-Length "0", api_helpers.lua:248-251): POST
    /status/ready?status=draining drains (ready.lua:127-131)."""
    app, port = await _serve(nursery, tmp_path)
    post = await request(port, "POST", "/status/ready?status=draining", headers=[("Content-Length", "0")])
    assert (post.status, app.draining) == (204, True)


async def test_post_status_ready_reads_a_multipart_status_field(nursery: trio.Nursery, tmp_path: Path) -> None:
    """lapis's params_post parses a multipart/form-data body into self.params (lapis/nginx.lua parse_multipart), which
    ready.lua's POST reads: status=draining in a multipart form drains (204)."""
    app, port = await _serve(nursery, tmp_path)
    body = (b'--b0undary\r\nContent-Disposition: form-data; name="status"\r\n\r\ndraining\r\n--b0undary--\r\n')
    post = await request(port, "POST", "/status/ready", body=body,
                         headers=[("Content-Type", "multipart/form-data; boundary=b0undary")])
    assert (post.status, app.draining) == (204, True)
    ready = await request(port, "GET", "/status/ready")
    assert (ready.status, ready.json()) == (503, {"message": "draining"})
