"""The bench's authentication configurations (scripts/bench gw-jwt, gw-key-auth, gw-hmac-auth) are valid configs,
and the credentials wrk sends with every request are accepted (checked through the in-process gateway, not
benchmarked)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml
from auth_helpers import call, http_codec  # noqa: F401 - the fixture: one codec
from backends import EchoBackend

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench"


def load_bench():  # noqa: ANN201 - the script as a module
    loader = importlib.machinery.SourceFileLoader("bench_script_auth", str(SCRIPT))
    spec = importlib.util.spec_from_loader("bench_script_auth", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_script_auth"] = module
    loader.exec_module(module)
    return module


bench = load_bench()
NAMES = ["gw-jwt", "gw-key-auth", "gw-hmac-auth"]
CONFIGS = {c.name: c for c in bench.CONFIGURATIONS if c.name in NAMES}


def test_the_configurations_are_in_the_bench_and_send_credentials():
    assert set(CONFIGS) == set(NAMES)
    for config in CONFIGS.values():
        assert config.headers
        argv = bench.wrk_argv("wrk", "http://127.0.0.1:9/", 10, config.headers)
        assert argv[argv.index("-H") + 1] == config.headers[0]


@pytest.mark.parametrize("name", NAMES)
async def test_the_credentials_are_accepted_and_a_request_without_them_is_not(nursery, gateway, name):
    backend = EchoBackend()
    await nursery.start(backend.serve)
    config = CONFIGS[name]
    doc = yaml.safe_load(bench.fill(config.config, port=0, backend_port=backend.port))
    doc.pop("gateway")
    port = await gateway(doc)
    headers = [tuple(h.split(": ", 1)) for h in config.headers]
    ok = await call(port, "/", headers=headers, method="POST", body=b"{}")
    assert ok.status == 200
    seen = dict(ok.json()["headers"])
    assert seen["x-consumer-username"] == "bench"
    assert (await call(port, "/", method="POST", body=b"{}")).status == 401
