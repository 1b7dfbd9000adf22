"""Unit tests of scripts/bench: wrk output parsing, units, medians and ratios, the run order, targets.

Fast and offline: no server and no wrk is started. The wrk outputs below were captured from wrk 4.1.0 running
loadtest/post_1k.lua against nginx 1.22 on loopback, except where marked as crafted.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench"


def load(name: str, path: Path):
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


bench = load("bench_script", SCRIPT)
payloads = load("mcp_payloads_under_test", ROOT / "loadtest" / "mcp_payloads.py")


# Real: wrk straight at the nginx backend (return 200 with the fixed JSON-RPC result).
WRK_CLEAN = """\
Running 2s test @ http://127.0.0.1:18081/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   330.68us  116.09us   3.16ms   95.99%
    Req/Sec   150.69k    12.13k  159.76k    90.48%
  Latency Distribution
     50%  313.00us
     75%  319.00us
     90%  343.00us
     99%  780.00us
  313558 requests in 2.10s, 68.48MB read
Requests/sec: 149243.69
Transfer/sec:     32.59MB
"""

# Real: an nginx answering 503 with worker_connections 32, so that it also drops connections.
WRK_ERRORS = """\
Running 2s test @ http://127.0.0.1:18082/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   783.63us  702.09us   4.07ms   86.77%
    Req/Sec     1.08k   792.57     2.43k    77.78%
  Latency Distribution
     50%  771.00us
     75%    0.97ms
     90%    1.84ms
     99%    3.35ms
  1482 requests in 2.10s, 288.01KB read
  Socket errors: connect 0, read 59856, write 0, timeout 0
  Non-2xx or 3xx responses: 1482
Requests/sec:    705.47
Transfer/sec:    137.10KB
"""

# Real: the same 503 server with enough connections: non-2xx responses only.
WRK_NON2XX = """\
Running 2s test @ http://127.0.0.1:18082/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   300.08us  110.27us   2.98ms   90.87%
    Req/Sec   144.80k     8.13k  151.64k    95.00%
  Latency Distribution
     50%  296.00us
     75%  317.00us
     90%  352.00us
     99%  584.00us
  288013 requests in 2.00s, 54.63MB read
  Non-2xx or 3xx responses: 288013
Requests/sec: 143942.23
Transfer/sec:     27.30MB
"""

# Crafted: a slow server (ms and s units, timeouts, connect errors).
WRK_SLOW_CRAFTED = """\
Running 10s test @ http://127.0.0.1:8080/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.10ms  300.02ms   1.99s    70.00%
    Req/Sec   120.00     30.00   200.00     65.00%
  Latency Distribution
     50%  350.50ms
     75%  600.00ms
     90%  900.00ms
     99%    1.80s
  1200 requests in 10.01s, 300.00KB read
  Socket errors: connect 3, read 0, write 1, timeout 17
  Non-2xx or 3xx responses: 5
Requests/sec:    119.88
Transfer/sec:     29.97KB
"""


# --- wrk output -----------------------------------------------------------------------------------------------------


def test_parse_clean_output():
    result = bench.parse_wrk(WRK_CLEAN)
    assert result.rps == pytest.approx(149243.69)
    assert result.p50_ms == pytest.approx(0.313)
    assert result.p99_ms == pytest.approx(0.780)
    assert result.requests == 313558
    assert result.non2xx == 0
    assert result.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert result.errors == 0


def test_parse_output_with_non2xx_and_socket_errors():
    result = bench.parse_wrk(WRK_ERRORS)
    assert result.rps == pytest.approx(705.47)
    assert result.p50_ms == pytest.approx(0.771)
    assert result.p99_ms == pytest.approx(3.35)
    assert result.requests == 1482
    assert result.non2xx == 1482
    assert result.socket_errors == {"connect": 0, "read": 59856, "write": 0, "timeout": 0}
    assert result.errors == 1482 + 59856


def test_parse_output_with_non2xx_only():
    result = bench.parse_wrk(WRK_NON2XX)
    assert result.non2xx == 288013
    assert sum(result.socket_errors.values()) == 0
    assert result.errors == 288013


def test_parse_crafted_slow_output():
    result = bench.parse_wrk(WRK_SLOW_CRAFTED)
    assert result.rps == pytest.approx(119.88)
    assert result.p50_ms == pytest.approx(350.5)
    assert result.p99_ms == pytest.approx(1800.0)
    assert result.socket_errors == {"connect": 3, "read": 0, "write": 1, "timeout": 17}
    assert result.errors == 5 + 3 + 1 + 17


@pytest.mark.parametrize(
    "output",
    [
        "",
        "unable to connect to 127.0.0.1:1 Connection refused\n",
        WRK_CLEAN.replace("  Latency Distribution\n", "").replace("     50%  313.00us\n", ""),  # no --latency
    ],
)
def test_parse_rejects_unexpected_output(output):
    with pytest.raises(ValueError):
        bench.parse_wrk(output)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("612.00us", 0.612),
        ("0.00us", 0.0),
        ("1.20ms", 1.2),
        ("  0.97ms ", 0.97),
        ("2.00s", 2000.0),
        ("1.50m", 90_000.0),
        ("1.00h", 3_600_000.0),
        ("12us", 0.012),
    ],
)
def test_to_ms(text, ms):
    assert bench.to_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "12", "1.2 ms", "1.2ns", "ms", "-1.0ms", "1.2msx"])
def test_to_ms_rejects(text):
    with pytest.raises(ValueError):
        bench.to_ms(text)


def test_wrk_command_line():
    argv = bench.wrk_argv("/usr/bin/wrk", "http://127.0.0.1:9/", 10)
    assert argv == [
        "/usr/bin/wrk",
        "-t1",
        "-c50",
        "-d10s",
        "--latency",
        "-s",
        str(ROOT / "loadtest" / "post_1k.lua"),
        "http://127.0.0.1:9/",
    ]


# --- schedule, medians, ratios, targets -----------------------------------------------------------------------------


def test_schedule_interleaves_configurations():
    assert bench.schedule(["A", "B", "C", "D"], 3) == [
        (1, "A"), (1, "B"), (1, "C"), (1, "D"),
        (2, "A"), (2, "B"), (2, "C"), (2, "D"),
        (3, "A"), (3, "B"), (3, "C"), (3, "D"),
    ]  # fmt: skip
    assert bench.schedule(["A"], 1) == [(1, "A")]


def make_run(config, round_, rps, p50=1.0, p99=2.0, non2xx=0, timeouts=0, cpu_s=None):
    result = bench.WrkResult(rps=rps, p50_ms=p50, p99_ms=p99, requests=int(rps), non2xx=non2xx)
    result.socket_errors["timeout"] = timeouts
    return bench.Run.of(round_, config, "2024-01-01T00:00:00+00:00", 97.25, result, cpu_s)


RUNS = [
    make_run("direct", 1, 80_000, 0.30, 0.60),
    make_run("nginx", 1, 30_000, 0.80, 2.00, cpu_s=0.75),
    make_run("gw", 1, 6_000, 8.0, 20.0, non2xx=2, cpu_s=0.9),
    make_run("direct", 2, 90_000, 0.40, 0.50),
    make_run("nginx", 2, 34_000, 0.70, 1.80, cpu_s=0.85),
    make_run("gw", 2, 7_000, 7.0, 30.0, cpu_s=1.12),
    make_run("direct", 3, 70_000, 0.35, 0.90),
    make_run("nginx", 3, 32_000, 0.90, 1.90, cpu_s=0.8),
    make_run("gw", 3, 8_000, 9.0, 25.0, timeouts=1, cpu_s=1.2),
]


def test_run_record_has_cpu_per_request():
    assert RUNS[1].cpu_us_per_req == 25.0  # 0.75 s over 30,000 requests
    assert RUNS[0].cpu_us_per_req is None


def test_group_cpu_seconds_counts_the_process_group(tmp_path):
    proc = tmp_path / "proc"
    for pid, pgrp, utime, stime in ((10, 10, 300, 100), (11, 10, 50, 50), (12, 99, 1000, 1000)):
        (proc / str(pid)).mkdir(parents=True)
        fields = ["S", "1", str(pgrp)] + ["0"] * 8 + [str(utime), str(stime)] + ["0"] * 10
        (proc / str(pid) / "stat").write_text(f"{pid} (name with ) paren) " + " ".join(fields) + "\n")
    (proc / "self").mkdir()
    ticks = os.sysconf("SC_CLK_TCK")
    assert bench.group_cpu_seconds(10, str(proc)) == pytest.approx(500 / ticks)
    assert bench.group_cpu_seconds(77, str(proc)) == 0.0


def test_run_record():
    run = RUNS[2]
    assert run.config == "gw" and run.round == 1 and run.idle_pct == 97.2
    assert run.errors == 2
    assert json.loads(json.dumps(bench.asdict(run)))["socket_errors"]["timeout"] == 0


def test_summarize_medians_ratios_and_errors():
    summaries = bench.summarize(RUNS, order=["direct", "nginx", "gw"])
    assert list(summaries) == ["direct", "nginx", "gw"]
    nginx, gw, direct = summaries["nginx"], summaries["gw"], summaries["direct"]
    assert nginx.rps == 32_000 and nginx.p50_ms == 0.80 and nginx.p99_ms == 1.90
    assert nginx.ratio_vs_nginx == 1.0
    assert direct.rps == 80_000 and direct.p50_ms == 0.35 and direct.p99_ms == 0.60
    assert direct.ratio_vs_nginx == pytest.approx(2.5)
    assert gw.rps == 7_000 and gw.p50_ms == 8.0 and gw.p99_ms == 25.0
    assert gw.ratio_vs_nginx == pytest.approx(7_000 / 32_000)
    assert gw.errors == 3 and gw.suspect and not nginx.suspect
    assert gw.rounds == 3
    assert gw.as_json() == {
        "rps": 7000,
        "p50_ms": 8.0,
        "p99_ms": 25.0,
        "ratio_vs_nginx": 0.2188,
        "errors": 3,
        "rounds": 3,
        "cpu_us_per_req": 150.0,
        "cpu_us_per_req_by_round": {"1": 150.0, "2": 160.0, "3": 150.0},
    }
    assert direct.cpu_us is None  # nothing of ours ran: wrk hit the backend


def test_summarize_even_rounds_and_no_reference():
    runs = [make_run("gw", 1, 100), make_run("gw", 2, 300)]
    summary = bench.summarize(runs)["gw"]
    assert summary.rps == 200  # median of an even count: the mean of the middle two
    assert summary.ratio_vs_nginx is None


def test_summarize_keeps_the_given_order():
    assert list(bench.summarize(RUNS, order=["gw", "nginx", "missing", "direct"])) == ["gw", "nginx", "direct"]
    assert list(bench.summarize(RUNS)) == ["direct", "nginx", "gw"]


def test_targets():
    summaries = bench.summarize(RUNS)
    targets = [bench.Target("direct", 2.0), bench.Target("direct", 3.0), bench.Target("gw", 0.2)]
    results = bench.check_targets(summaries, targets)
    assert [r.ok for r in results] == [True, False, False]  # gw is fast enough but had errors
    assert "errors" in results[2].detail
    clean = {k: v for k, v in summaries.items() if k != "gw"}
    assert bench.check_targets(clean, [bench.Target("gw", 0.2)]) == []  # gw did not run: not checked
    no_reference = bench.summarize([r for r in RUNS if r.config != "nginx"])
    assert bench.check_targets(no_reference, targets) == []


def test_default_targets_name_configurations():
    names = {c.name for c in bench.CONFIGURATIONS}
    assert {t.config for t in bench.TARGETS} | {t.reference for t in bench.TARGETS} <= names
    assert {str(t) for t in bench.TARGETS} == {
        "gw-llhttp-1w >= 0.20 x nginx",
        "gw-llhttp-2w >= 0.30 x nginx",
        "gw-llhttp-1w-rl-cb >= 0.90 x gw-llhttp-1w-sup",
        "gw-llhttp-1w-rl-redis >= 0.95 x gw-llhttp-1w-rl-cb",
    }


def test_targets_against_another_configuration():
    runs = [make_run("nginx", 1, 30_000), make_run("sup", 1, 10_000), make_run("plugins", 1, 9_500)]
    target = bench.Target("plugins", 0.90, reference="sup")
    [result] = bench.check_targets(bench.summarize(runs), [target])
    assert result.ok and result.detail == "0.95 x sup"
    [result] = bench.check_targets(bench.summarize(runs[:2] + [make_run("plugins", 1, 8_000)]), [target])
    assert not result.ok and result.detail == "0.80 x sup"
    assert bench.check_targets(bench.summarize([runs[0], runs[2]]), [target]) == []  # the reference did not run


def test_markdown_table():
    table = bench.markdown_table(bench.summarize(RUNS)).splitlines()
    assert table[0] == "| configuration | req/s | p50 ms | p99 ms | vs nginx | CPU µs/req | errors |"
    assert table[2] == "| direct | 80,000 | 0.35 | 0.60 | 2.50x | n/a | 0 |"
    assert table[3] == "| nginx | 32,000 | 0.80 | 1.90 | 1.00x | 25.0 | 0 |"
    assert table[4] == "| gw | 7,000 | 8.00 | 25.00 | 0.22x | 150.0 | 3 (suspect) |"
    alone = bench.markdown_table(bench.summarize([make_run("gw", 1, 10)]))
    assert "| n/a |" in alone


# --- configurations -------------------------------------------------------------------------------------------------


def test_configurations_are_unique_and_ordered():
    names = [c.name for c in bench.CONFIGURATIONS]
    assert len(names) == len(set(names))
    assert names[:7] == ["direct", "nginx", "floor", "gw-llhttp-1w", "gw-h11-1w", "floor-2p", "gw-llhttp-2w"]
    assert bench.REFERENCE in names


def test_select():
    assert [c.name for c in bench.select(None)] == [c.name for c in bench.CONFIGURATIONS]
    assert [c.name for c in bench.select("gw-h11-1w,direct")] == ["direct", "nginx", "gw-h11-1w"]
    assert [c.name for c in bench.select(" nginx ")] == ["nginx"]
    with pytest.raises(bench.BenchError, match="nope"):
        bench.select("direct,nope")


def test_drop_unavailable_notes_the_reason():
    configs = [
        bench.Configuration("a", "a"),
        bench.Configuration("b", "b", requires=lambda: "no --workers yet"),
        bench.Configuration("c", "c", requires=lambda: None),
    ]
    notes = []
    assert [c.name for c in bench.drop_unavailable(configs, notes)] == ["a", "c"]
    assert notes == ["skipped b: no --workers yet"]


def test_fill_replaces_only_the_given_placeholders():
    assert bench.fill("{a} {b} { a } {c}", a=1, b="x") == "1 x { a } {c}"


def render(template, **extra):
    values = {"prefix": "/tmp/p", "port": 8081, "backend_port": 9091, "result": bench.BACKEND_RESULT,
              "log_sink_port": 9092, "udp_sink_port": 9093, "syslog_socket": "/tmp/p/log", **extra}
    return bench.fill(template, **values)


def test_nginx_configs():
    backend = render(bench.NGINX_BACKEND_CONF)
    proxy = render(bench.NGINX_PROXY_CONF)
    for conf in (backend, proxy):
        for directive in ("daemon off;", "master_process on;", "worker_processes 1;", "access_log off;"):
            assert directive in conf
        assert "pid /tmp/p/nginx.pid;" in conf and "error_log /tmp/p/error.log" in conf
        assert "{prefix}" not in conf and "{port}" not in conf and conf.count("{") == conf.count("}")
    assert "listen 127.0.0.1:8081" in backend
    assert f"return 200 '{bench.BACKEND_RESULT}';" in backend and "default_type application/json;" in backend
    assert json.loads(bench.BACKEND_RESULT)["result"]["content"] == [{"type": "text", "text": "ok"}]
    assert "server 127.0.0.1:9091;" in proxy and "keepalive 64;" in proxy and "listen 127.0.0.1:8081" in proxy
    assert "proxy_http_version 1.1;" in proxy and 'proxy_set_header Connection "";' in proxy


def test_gateway_configs():
    by_name = {c.name: c for c in bench.CONFIGURATIONS}
    for name, codec in [("gw-llhttp-1w", "llhttp"), ("gw-h11-1w", "h11"), ("gw-llhttp-2w", "llhttp")]:
        config = yaml.safe_load(render(by_name[name].config))
        assert config == {
            "_format_version": "3.0",
            "gateway": {"listen": "127.0.0.1:8081", "status_listen": None, "http_codec": codec},
            "services": [{"name": "backend", "url": "http://127.0.0.1:9091"}],
            "routes": [{"name": "all", "service": "backend", "paths": ["/"]}],
        }
    argv = [bench.fill(a, python="PY", config="C") for a in by_name["gw-llhttp-1w"].argv]
    assert argv == ["PY", "-m", "gateway", "run", "--config", "C"]
    argv = [bench.fill(a, python="PY", config="C") for a in by_name["gw-llhttp-2w"].argv]
    assert argv == ["PY", "-m", "gateway", "start", "--foreground", "--workers", "2", "--config", "C"]
    assert by_name["gw-llhttp-2w"].requires is bench.gateway_supports_workers
    assert by_name["direct"].argv is None
    extra = yaml.safe_load(
        render(bench.gateway_yaml("llhttp", "plugins:\n  - name: cors\n    config: {origins: ['*']}\n"))
    )
    assert extra["plugins"] == [{"name": "cors", "config": {"origins": ["*"]}}]


def test_supervised_gateway_configs_with_and_without_plugins():
    by_name = {c.name: c for c in bench.CONFIGURATIONS}
    sup, plugins = by_name["gw-llhttp-1w-sup"], by_name["gw-llhttp-1w-rl-cb"]
    for config in (sup, plugins):
        argv = [bench.fill(a, python="PY", config="C") for a in config.argv]
        assert argv == ["PY", "-m", "gateway", "start", "--foreground", "--workers", "1", "--config", "C"]
        assert config.gateway and config.requires is bench.gateway_supports_workers
    base = yaml.safe_load(render(sup.config))
    assert base == yaml.safe_load(render(by_name["gw-llhttp-1w"].config))
    with_plugins = yaml.safe_load(render(plugins.config))
    assert with_plugins.pop("plugins") == [
        {"name": "rate-limiting", "service": "backend", "config": {"second": 10000000, "limit_by": "service"}},
        {"name": "circuit-breaker", "service": "backend", "config": {}},
    ]
    assert with_plugins == base


def test_parse_args():
    args = bench.parse_args([])
    assert (args.rounds, args.duration, args.warmup, args.only, args.check) == (3, 10, 2, None, False)
    assert args.json == Path("bench-results.json")
    args = bench.parse_args(["--quick", "--rounds", "5", "--only", "direct,nginx", "--json", "x.json", "--check"])
    assert (args.rounds, args.duration, args.only, args.json, args.check) == (
        1,
        2,
        "direct,nginx",
        Path("x.json"),
        True,
    )
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "0"])
    assert bench.parse_args([]).restarts == 5 and bench.parse_args(["--quick"]).restarts == 3
    assert bench.parse_args(["--restarts", "0"]).restarts == 0
    with pytest.raises(SystemExit):
        bench.parse_args(["--restarts", "-1"])


def test_restart_targets_and_report_line():
    restarts = {"count": 3, "worker_ms": [31.0, 45.5, 38.0], "keeper_ms": [40.0, 130.0, 120.0],
                "median_ms": {"worker": 38.0, "keeper": 120.0}}
    results = bench.check_restarts(restarts)
    assert [(str(r.target), r.ok, r.detail) for r in results] == [
        ("worker restart <= 50 ms", True, "median 38 ms"),
        ("keeper restart <= 100 ms", False, "median 120 ms"),
    ]
    assert bench.check_restarts(None) == []
    assert bench.restarts_line(restarts) == ("kill -9 -> serving again (median of 3): worker 38 ms (31, 46, 38), "
                                             "keeper 120 ms (40, 130, 120); targets 50 and 100 ms")


def test_a_gateway_that_cannot_start_is_skipped_with_what_it_said(tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Traceback ...' >&2\necho \"ModuleNotFoundError: No module named 'msgspec'\" >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(bench.sys, "executable", str(fake))
    reason = bench.gateway_supports_workers.__wrapped__()
    assert reason == (f"`-m gateway start --help` exited 1 with {fake}: ModuleNotFoundError: No module named "
                      "'msgspec'")


def test_started_by_another_python_the_bench_runs_itself_with_the_projects(tmp_path):
    other = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if other is None or Path(other).resolve() == Path(sys.executable).resolve():
        pytest.skip("no python3 other than the project's")
    out = subprocess.run([other, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "GATEWAY_BENCH_REEXEC"})
    assert out.returncode == 0, out.stderr
    assert f"bench: running with {ROOT / '.venv' / 'bin' / 'python'} (the project's environment), not {other}" \
        in out.stderr
    assert "--restarts N" in out.stdout


# --- the machine ----------------------------------------------------------------------------------------------------


def test_cpu_idle(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 7 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n")
    assert bench.read_cpu_times(str(stat)) == (850, 1000)
    assert bench.idle_percent((850, 1000), (1750, 2000)) == pytest.approx(90.0)
    assert bench.idle_percent((0, 0), (0, 0)) == 100.0
    idle, total = bench.read_cpu_times()  # the real /proc/stat
    assert 0 <= idle <= total


# --- loadtest/ ------------------------------------------------------------------------------------------------------


def test_tools_call_body_is_1k_json_rpc():
    body = payloads.tools_call_body()
    assert len(body.encode()) == 1024
    message = json.loads(body)
    assert message["jsonrpc"] == "2.0" and message["method"] == "tools/call"
    assert message["params"]["name"] == "echo" and set(message["params"]["arguments"]["text"]) == {"x"}
    assert len(payloads.tools_call_body(2048).encode()) == 2048
    with pytest.raises(ValueError):
        payloads.tools_call_body(10)


def test_wrk_script_sends_the_1k_body():
    lua = (ROOT / "loadtest" / "post_1k.lua").read_text()
    assert 'wrk.method = "POST"' in lua
    assert 'wrk.headers["Content-Type"] = "application/json"' in lua
    assert f"wrk.body = '{payloads.tools_call_body()}'" in lua


def test_other_mcp_payloads():
    assert json.loads(payloads.initialize_body())["method"] == "initialize"
    assert "id" not in json.loads(payloads.initialized_notification())
    assert json.loads(payloads.tools_list_body(7)) == {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}}


def test_locustfile_is_valid_python_with_the_two_user_classes_scripts_load_runs():
    tree = ast.parse((ROOT / "loadtest" / "locustfile.py").read_text())
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"McpSessionUser", "StatelessUser"} <= classes
    assert "McpSessionUser StatelessUser" in (ROOT / "scripts" / "load").read_text()


def test_baseline_twins_follow_each_gateway_configuration_and_run_the_other_tree(tmp_path):
    configs = bench.select("gw-llhttp-1w,gw-llhttp-1w-sup")
    twins = bench.with_baseline(configs, tmp_path)
    assert [c.name for c in twins] == ["nginx", "gw-llhttp-1w", "gw-llhttp-1w@base", "gw-llhttp-1w-sup",
                                       "gw-llhttp-1w-sup@base"]
    base = twins[2]
    assert base.root == tmp_path and base.argv == twins[1].argv and base.config == twins[1].config
    assert bench.gateway_env(tmp_path)["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)


def test_baseline_table_gives_the_ratio_and_cpu_delta_against_the_twin():
    def summary(name, rps, cpu):  # noqa: ANN001, ANN202
        return bench.Summary(name, rps, 1.0, 2.0, None, 0, 3, cpu)

    table = bench.baseline_table({"gw": summary("gw", 9800, 71.5), "gw@base": summary("gw@base", 10000, 70.0)})
    assert table.splitlines()[-1] == "| gw | 0.980x | 71.5 | 70.0 | +1.5 | n/a |"


def test_baseline_table_pairs_each_round_with_its_twin():
    runs = [make_run("gw", 1, 1000, cpu_s=0.100), make_run("gw@base", 1, 1000, cpu_s=0.102),
            make_run("gw", 2, 1000, cpu_s=0.200), make_run("gw@base", 2, 1000, cpu_s=0.204),
            make_run("gw", 3, 1000, cpu_s=0.150), make_run("gw@base", 3, 1000, cpu_s=0.149)]
    row = bench.baseline_table(bench.summarize(runs)).splitlines()[-1]
    # the medians (150 against 149 µs) say "slower"; round by round it was faster twice
    assert row == "| gw | 1.000x | 150.0 | 149.0 | +1.0 | -2.0, -4.0, +1.0 (-2.0) |"


def test_export_tree_refuses_an_unknown_revision(tmp_path):
    with pytest.raises(bench.BenchError, match="not a commit"):
        bench.export_tree("no-such-rev-xyz", tmp_path / "t")


def test_instructions_table_compares_each_round_with_its_baseline_twin():
    table = bench.instructions_table({"gw": [300_000, 280_000, 320_000], "gw@base": [298_000, 279_000, 317_000]})
    assert table.splitlines()[2] == "| gw | 300,000 | 13.3% | +2,000 (+0.67%) |"


def test_valgrind_argv_follows_children_with_a_file_per_pid(tmp_path):
    argv = bench.valgrind_argv(["python", "-m", "gateway", "run"], tmp_path)
    assert argv[:3] == ["valgrind", "--tool=callgrind", "--trace-children=yes"]
    assert argv[3] == f"--callgrind-out-file={tmp_path}/callgrind.%p" and argv[4:] == ["python", "-m", "gateway", "run"]


def test_tls_table_compares_the_tls_ratio_with_the_plaintext_one():
    def summary(name, rps, ratio=None, hs=None):  # noqa: ANN001, ANN202
        return bench.Summary(name, rps, 1.0, 2.0, ratio, 0, 3, None, hs)

    table = bench.tls_table({"nginx": summary("nginx", 40000, 1.0),
                             "gw-llhttp-1w": summary("gw-llhttp-1w", 10000, 0.25),
                             "nginx-tls": summary("nginx-tls", 30000, 0.75, 2000.0),
                             "gw-tls-1w": summary("gw-tls-1w", 6900, 0.17, 900.0)})
    assert table.splitlines()[-1] == "| gw-tls-1w / nginx-tls | 0.23 | 0.25 | 0.92 | 900 vs 2,000 | 0.45 |"


def test_tls_configurations_listen_with_ssl_and_a_certificate():
    (gw,) = bench.select("gw-tls-1w")[1:]
    assert gw.tls and '  listen: "127.0.0.1:{port} ssl"' in gw.config and "ssl_cert_key" in gw.config
    nginx = next(c for c in bench.CONFIGURATIONS if c.name == "nginx-tls")
    assert "listen 127.0.0.1:{port} ssl backlog=4096;" in nginx.config and "ssl_certificate {tls_cert};" in nginx.config


def test_cpu_targets_compare_with_the_floor():
    def summary(name, cpu):  # noqa: ANN001, ANN202
        return bench.Summary(name, 1000, 1.0, 2.0, 0.5, 0, 3, cpu)

    results = bench.check_targets({"floor": summary("floor", 100.0), "gw-llhttp-1w": summary("gw-llhttp-1w", 125.0),
                                   "gw-llhttp-1w-rl-cb": summary("gw-llhttp-1w-rl-cb", 150.0)}, targets=[])
    assert [(str(r.target), r.ok, r.detail) for r in results] == [
        ("gw-llhttp-1w CPU <= 1.30 x floor", True, "CPU 1.25 x floor"),
        ("gw-llhttp-1w-rl-cb CPU <= 1.40 x floor", False, "CPU 1.50 x floor")]
    [budget] = bench.check_targets({"gw-mcp-session": summary("gw-mcp-session", 310.0)}, targets=[])
    assert (str(budget.target), budget.ok, budget.detail) == ("gw-mcp-session CPU <= 300 µs/req", False,
                                                              "CPU 310 µs/req")
    table = bench.markdown_table({"floor": summary("floor", 100.0), "gw-llhttp-1w": summary("gw-llhttp-1w", 125.0)})
    assert table.splitlines()[-1].endswith("| 125.0 | 0 | 1.25x |")


FLOOR_ROUNDS = [make_run("floor", 1, 1000, cpu_s=0.100), make_run("gw-llhttp-1w", 1, 1000, cpu_s=0.210),
                make_run("floor", 2, 1000, cpu_s=0.060), make_run("gw-llhttp-1w", 2, 1000, cpu_s=0.132),
                make_run("floor", 3, 1000, cpu_s=0.080), make_run("gw-llhttp-1w", 3, 1000, cpu_s=0.184)]


def test_the_floor_ratio_is_the_median_of_the_rounds_ratios():
    summaries = bench.summarize(FLOOR_ROUNDS)
    # the ratio of the medians would be 184 / 80 = 2.30; each round against its own floor: 2.10, 2.20, 2.30
    assert bench.markdown_table(summaries).splitlines()[-1].endswith("| 184.0 | 0 | 2.20x |")
    [result] = bench.check_targets(summaries, targets=[], cpu_targets=[bench.CpuTarget("gw-llhttp-1w", 2.25)])
    assert result.ok and result.detail == "CPU 2.20 x floor (by round: 2.10, 2.20, 2.30)"


def test_the_floor_rounds_table_lists_each_rounds_ratio():
    table = bench.floor_rounds_table(bench.summarize(FLOOR_ROUNDS)).splitlines()
    assert table[-1] == "| gw-llhttp-1w | 2.10x, 2.20x, 2.30x | 2.20x |"
    assert bench.floor_rounds_table(bench.summarize(FLOOR_ROUNDS[:2])) == ""  # one round: nothing to spread


def test_mcp_answers_are_read_from_json_or_event_streams():
    sse = ('event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}\r\n\r\n'
           'event: message\ndata: {"jsonrpc":"2.0","id":4,\ndata: "result":{"ok":true}}\n\n')
    answer = payloads.messages("text/event-stream", sse)
    assert [m.get("method") for m in answer] == ["notifications/progress", None]
    assert payloads.response_to(4, answer) == {"jsonrpc": "2.0", "id": 4, "result": {"ok": True}}
    assert payloads.messages("application/json; charset=utf-8", '{"jsonrpc":"2.0","id":1,"result":{}}')[0]["id"] == 1
    with pytest.raises(ValueError, match="no response with id 5"):
        payloads.response_to(5, answer)
    with pytest.raises(ValueError, match="not an MCP answer: Content-Type text/html"):
        payloads.messages("text/html", "<p>")


def test_session_and_stateless_tool_calls():
    call = json.loads(payloads.call_body("slow", {"steps": 2}, 3, progress_token=9))
    assert call == {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                    "params": {"name": "slow", "arguments": {"steps": 2}, "_meta": {"progressToken": 9}}}
    headers, body = payloads.stateless_call("whoami", request_id=2)
    assert headers["Mcp-Method"] == "tools/call" and headers["Mcp-Name"] == "whoami"
    assert headers["MCP-Protocol-Version"] == "2026-07-28" == payloads.STATELESS_VERSION
    assert json.loads(body)["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert json.loads(payloads.initialize_body())["params"]["protocolVersion"] == "2025-06-18"


def test_observability_configs_are_valid_gateway_configs():
    """gw-metrics, gw-otel-*, gw-tcp-log, gw-udp-log, gw-statsd, gw-datadog, gw-syslog, gw-loggly and gw-zipkin:
    the gateway accepts them (check-config's compile), with the plugin as described."""
    from gateway.config import parse_config
    from gateway.runtime import compile_config

    by_name = {c.name: c for c in bench.CONFIGURATIONS}
    for name, plugin in [("gw-metrics", "prometheus"), ("gw-otel-0.01", "opentelemetry"),
                         ("gw-otel-1", "opentelemetry"), ("gw-tcp-log", "tcp-log"), ("gw-udp-log", "udp-log"),
                         ("gw-statsd", "statsd"), ("gw-datadog", "datadog"), ("gw-syslog", "syslog"),
                         ("gw-loggly", "loggly"), ("gw-zipkin", "zipkin")]:
        text = render(by_name[name].config)
        config = parse_config(text, name)
        compile_config(config, name)
        assert [p.name for p in config.plugins] == [plugin]
    assert yaml.safe_load(render(by_name["gw-syslog"].config))["gateway"]["syslog_socket"] == "/tmp/p/log"
    rates = {name: yaml.safe_load(render(by_name[name].config))["plugins"][0]["config"]["sampling_rate"]
             for name in ("gw-otel-0.01", "gw-otel-1")}
    assert rates == {"gw-otel-0.01": 0.01, "gw-otel-1": 1}
    tracing = {name: yaml.safe_load(render(by_name[name].config))["gateway"]["tracing_instrumentations"]
               for name in ("gw-otel-0.01", "gw-otel-1")}
    assert tracing == {"gw-otel-0.01": "all", "gw-otel-1": "all"}  # off (Kong's default) would export nothing
    metrics = yaml.safe_load(render(by_name["gw-metrics"].config))["plugins"][0]["config"]
    assert all(metrics[k] for k in ("status_code_metrics", "latency_metrics", "bandwidth_metrics",
                                    "upstream_health_metrics"))


def test_the_log_sink_takes_and_discards_lines_while_open():
    with bench.LogSink() as sink:
        with socket.create_connection(("127.0.0.1", sink.port), timeout=5) as conn:
            conn.sendall(b'{"a": 1}\n' * 1000)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sink.port), timeout=1).close()


def test_the_log_sink_takes_datagrams_while_open():
    with bench.LogSink() as sink, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("127.0.0.1", sink.udp_port))
        for _ in range(100):
            udp.send(b'{"a": 1}')
        time.sleep(0.05)
        udp.send(b"{}")  # no ICMP port unreachable came back: something listens
    assert _refused_within(sink.udp_port, seconds=5), "the closed sink's UDP port still takes datagrams"


def test_the_log_sink_takes_syslog_datagrams_while_open_and_removes_its_socket():
    with bench.LogSink() as sink, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        path = sink.unix_path
        unix.settimeout(5)  # a send that waits longer: nothing reads
        unix.connect(path)
        for _ in range(1000):  # more than a Unix socket's queue holds: someone reads them
            unix.send(b"<14>Dec  4 16:25:37 kong[1]: {}")
    assert not os.path.exists(path)


def _refused_within(udp_port: int, seconds: float) -> bool:
    """Whether datagrams to the port come back unreachable (the next send raises) within the time."""
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("127.0.0.1", udp_port))
        while time.monotonic() < deadline:
            try:
                udp.send(b"{}")
            except ConnectionRefusedError:
                return True
            time.sleep(0.01)
    return False


def test_the_bench_starts_no_redis_server_for_a_selection_without_the_redis_configuration(monkeypatch):
    started = []
    monkeypatch.setattr(bench.subprocess, "Popen", lambda *a, **k: started.append(a) or pytest.fail("started"))
    with bench.bench_redis("gw-llhttp-1w,floor"):
        pass
    assert started == []


@pytest.mark.skipif(not shutil.which("redis-server", path="/usr/bin:/usr/sbin:/usr/local/bin"),
                    reason="redis-server is not installed")
def test_the_bench_starts_a_redis_server_for_the_redis_configuration_and_stops_it(monkeypatch):
    if bench.redis_answers() is None:
        pytest.skip("a redis-server already answers on 127.0.0.1:6379")
    monkeypatch.setattr(bench, "log", lambda message: None)
    with bench.bench_redis(bench.REDIS_CONFIG):
        assert bench.redis_answers() is None
    assert bench.redis_answers() is not None


def test_the_standard_webhooks_configuration_signs_the_body_wrk_sends():
    """gw-standard-webhooks: its headers are what the plugin admits for post_1k.lua's body (else every request would
    be a 400 and the bench would measure the refusal)."""
    import hashlib
    import hmac

    from gateway.config import parse_config
    from gateway.policies.standard_webhooks.handler import signature
    from gateway.runtime import compile_config

    by_name = {c.name: c for c in bench.CONFIGURATIONS}
    config = by_name["gw-standard-webhooks"]
    compile_config(parse_config(render(config.config), "gw-standard-webhooks"))
    headers = dict(h.split(": ", 1) for h in config.headers)
    body = bench.load_payloads().tools_call_body().encode()
    assert body in (bench.ROOT / "loadtest" / "post_1k.lua").read_bytes()
    keyed = hmac.new(b"bench-webhook-secret", digestmod=hashlib.sha256)
    expected = signature(keyed, headers["webhook-id"].encode(),
                         headers["webhook-timestamp"].encode(), body)
    assert headers["webhook-signature"].encode() == expected
