"""Kong 3.9.3 spec audit: the `it` blocks of spec/02-integration/08-status_api/02-targets_routes_spec.lua no other test
covered, each a test citing its spec file and `it` title."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from backends import Client, request
from prometheus_client import CollectorRegistry

from gateway.node.root import load_validated
from gateway.status import BaseStatusSource, StatusApp, serve_status

# --- spec/02-integration/08-status_api/02-targets_routes_spec.lua ----------------------------------------------------

CONFIG = """\
_format_version: "3.0"
upstreams:
  - name: four
    targets:
      - {target: "api-1:80", weight: 10}
      - {target: "api-2:80", weight: 20}
      - {target: "api-3:80", weight: 30}
      - {target: "api-4:80", weight: 40}
"""


async def _status(nursery: trio.Nursery, tmp_path: Path) -> int:
    path = tmp_path / "kong.yaml"
    path.write_text(CONFIG)
    _, config = load_validated(str(path))

    class Source(BaseStatusSource):
        """No keeper answering: the targets routes read the config alone."""

        async def overview(self) -> dict[str, Any]:
            return {"status": {}, "targets": None, "breakers": {}, "upstreams": {}}

    app = StatusApp(Source(), CollectorRegistry(), check_timeout=1.0, families=lambda: [], config=lambda: config,
                    config_text=lambda: CONFIG)
    _, port = await nursery.start(serve_status, app, "127.0.0.1", 0)
    return port


async def test_targets_all_paginates_a_set_to_an_empty_last_page(nursery, tmp_path):
    """02-targets_routes_spec.lua "paginates a set": 4 targets, size=2, following `offset`: 2, 2, then 0 rows, each
    page different. Kong's /targets/all is page_for_upstream_raw, the DB-less strategy's page_for_prefix
    (kong/db/strategies/off/init.lua:115-150): an offset whenever lua-resty-lmdb 1.6.0's prefix.page says "more",
    which is `ret == page_size` (lib/resty/lmdb/prefix.lua: "it is possible there are more keys"), a full last page
    included; the third request, from that offset, is `{"data": [], "next": null}`."""
    port = await _status(nursery, tmp_path)
    pages: list[dict[str, Any]] = []
    offset = None
    for i in range(3):
        query = "size=2" + (f"&offset={offset}" if offset is not None else "")
        reply = await request(port, "GET", f"/upstreams/four/targets/all?{query}")
        assert reply.status == 200
        doc = reply.json()
        assert len(doc["data"]) == (2 if i < 2 else 0), (i, doc)
        if pages:
            assert doc != pages[-1]
        offset = doc.get("offset")
        pages.append(doc)


async def test_targets_all_ignores_an_invalid_body(nursery, tmp_path):
    """02-targets_routes_spec.lua "ignores an invalid body": a GET with Content-Type application/json and a body
    that is no JSON is 200."""
    port = await _status(nursery, tmp_path)
    async with await Client.connect(port) as client:
        reply = await client.request("GET", "/upstreams/four/targets/all",
                                     headers=[("content-type", "application/json")],
                                     body=b"this fails if decoded as json")
    assert reply.status == 200 and len(reply.json()["data"]) == 4


async def test_targets_shows_all_targets_with_and_without_a_trailing_slash(nursery, tmp_path):
    """02-targets_routes_spec.lua "shows all targets" (with "" and "/" appended) and "data property is an empty
    array"."""
    port = await _status(nursery, tmp_path)
    for append in ("", "/"):
        reply = await request(port, "GET", f"/upstreams/four/targets{append}")
        assert reply.status == 200
        assert sorted(t["target"] for t in reply.json()["data"]) == ["api-1:80", "api-2:80", "api-3:80", "api-4:80"]
