"""kong.conf's KONG_<KEY> variables given to `gateway reload`, as `kong reload` takes them (kong/cmd/reload.lua): the
reloading command loads kong.conf in its own process, with its own variables (kong/conf_loader/parse.lua:897-920,
overrides' getenv), over the running node's settings (the prefix's .kong_env), and writes the result back to
.kong_env (prefix_handler.prepare_prefix), so later reloads keep it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import request
from e2e_helpers import node_factory

from gateway.bus.admin_client import admin_call
from gateway.node import control

TIMEOUT = 10


def test_gateway_reload_carries_its_kong_variables_that_set_kong_conf_keys(monkeypatch: pytest.MonkeyPatch):
    """reload.lua:14-16 and 31-33: conf_loader runs in the `kong reload` process, whose getenv reads
    `KONG_<KEY>` for kong.conf's keys only (KONG_VAULT_ENV_PREFIX is vault_env_prefix's); other variables, and those
    naming no key (KONG_DATADOG_AGENT_HOST is the datadog plugin's), stay behind."""
    sent: list[dict[str, Any] | None] = []
    monkeypatch.setattr(control, "admin", lambda _config, _cmd, args, **_: sent.append(args) or 0)
    for variable in [v for v in os.environ if v.startswith("KONG_")]:
        monkeypatch.delenv(variable)
    for variable, text in {"KONG_HEADERS": "off", "KONG_VAULT_ENV_PREFIX": "APP_", "KONG_DATADOG_AGENT_HOST": "dd",
                           "KONG_NOT_A_KEY": "x", "HEADERS": "on"}.items():
        monkeypatch.setenv(variable, text)
    assert control.reload(None) == 0
    assert sent == [{"KONG_HEADERS": "off", "KONG_VAULT_ENV_PREFIX": "APP_"}]


async def test_kong_variables_given_to_reload_apply_stay_for_later_reloads_and_a_rejected_one_leaves_nothing(
        tmp_path: Path):
    """`KONG_HEADERS=off kong reload` turns Kong's response headers off: reload.lua:31-33 loads .kong_env with the
    reloading process's variables over it, and prepare_prefix writes the result to .kong_env, which a later
    `kong reload` without the variable (or the admin channel's reload here, which carries none) loads again. A
    reload whose variables make the config invalid fails (reload.lua's assert) and the running node, .kong_env
    included, is untouched: the next reload still has headers off and does not see the refused variable."""
    with node_factory(tmp_path) as make:
        gw = make({"services": []})
        with trio.fail_after(TIMEOUT):
            await gw.start(workers=1)
            before = await request(gw.port, "GET", "/nothing")
        assert before.status == 404 and before.header("server") is not None  # the default headers are on
        generation = (await gw.status())["generation"]
        env = {**os.environ, "KONG_HEADERS": "off"}
        done = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "gateway", "reload", "--config", str(gw.config)], cwd=gw.dir, env=env,
            capture_output=True, text=True, timeout=30))
        assert done.returncode == 0, done.stderr
        with trio.fail_after(TIMEOUT):
            assert (await gw.status())["generation"] == generation + 1
            applied = await request(gw.port, "GET", "/nothing")
        assert (applied.status, applied.header("server"), applied.header("x-kong-request-id")) == (404, None, None)

        socket = f"ipc://{gw.dir / 'run' / 'admin.sock'}"
        rejected = await trio.to_thread.run_sync(lambda: admin_call(socket, "reload", {"KONG_HEADERS": "nonsense"},
                                                                    30.0))
        assert not rejected.ok and "config rejected" in (rejected.error or "")
        assert "KONG_HEADERS" in (rejected.error or "")  # the message names the variable that set it
        with trio.fail_after(TIMEOUT):
            assert (await gw.admin("reload"))["generation"] == generation + 2  # no variable, the refused one not kept
            kept = await request(gw.port, "GET", "/nothing")
        assert (kept.status, kept.header("server")) == (404, None)
