"""Which instances run on a route, found through one index of the plugins (gateway.plugin_index): compiling a config
is linear in its routes, plugins and consumers, as Kong's plugins iterator is built in one pass
(kong/runloop/plugins_iterator.lua:523-591, each instance stored once in `combos[name][route:service:consumer]`) and
looks an instance up per request with at most eight hash lookups (:215-267 lookup_cfg)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.config import parse_config
from gateway.runtime import NO_SERVICE, compile_config

# The child: load the config (not timed), then compile it, printing the CPU seconds compile_config took (its own
# CPU time: what other processes on a busy host take from it does not count).
_CHILD = textwrap.dedent("""
    import sys, time
    from gateway.config import load_config
    from gateway.runtime import compile_config
    config = load_config(sys.argv[1])
    started = time.process_time()
    compile_config(config)
    print(time.process_time() - started)
""")


def _compile_seconds(doc: dict, tmp_path: Path, limit: float) -> float:
    """compile_config's time for `doc` in a child process, bounded: past `limit` seconds of the child's life it is
    killed (subprocess.run kills the child it started, by its pid) and the time counts as `limit`. The file is
    JSON, which the loader reads as JSON (not through YAML), so loading it takes a fraction of a second."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                              timeout=limit, cwd=Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        return limit
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


def test_per_consumer_rate_limits_compile_in_time_linear_in_consumers(tmp_path):
    """The canonical Kong setup of one rate-limiting instance per consumer (2500 consumers) behind key-auth, on a
    service of 30 routes. Kong stores each instance once (plugins_iterator.lua:523-591) and looks a consumer's up
    per request (:215-267 lookup_cfg), so loading is linear in the consumers. Resolving every consumer's chain on
    every route by scanning every instance took some 10 s here (routes x consumers^2), and with 3000 consumers
    `gateway start` failed its 15 s worker_start_timeout_s where Kong starts; a linear build takes well under a
    second."""
    consumers, routes = 2500, 30
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1",
                         "routes": [{"name": f"r{i}", "paths": [f"/r{i}"]} for i in range(routes)]}],
           "consumers": [{"username": f"c{j}", "keyauth_credentials": [{"key": f"key-{j}"}],
                          "plugins": [{"name": "rate-limiting", "config": {"minute": 10 + j, "policy": "local"}}]}
                         for j in range(consumers)],
           "plugins": [{"name": "key-auth"}]}
    seconds = _compile_seconds(doc, tmp_path, limit=9.0)
    assert seconds < 3.0, f"compile_config took {seconds:.1f} s (or was killed at the limit)"


def test_routes_with_plugins_of_their_own_compile_in_time_linear_in_routes(tmp_path):
    """4000 routes, each with its own request-size-limiting and circuit-breaker: Kong finds a route's instances by
    key (lookup_cfg), not by scanning every instance of the config for each route. Scanning them (for the chains,
    and for each route's circuit-breaker) took some 6 s here (routes x plugins); through the index, well under a
    second."""
    routes = 4000
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1",
                         "routes": [{"paths": [f"/r{i}"], "plugins": [{"name": "request-size-limiting"},
                                                                      {"name": "circuit-breaker"}]}
                                    for i in range(routes)]}]}
    seconds = _compile_seconds(doc, tmp_path, limit=9.0)
    assert seconds < 3.0, f"compile_config took {seconds:.1f} s (or was killed at the limit)"


def test_a_consumers_chain_on_a_route_without_a_service_still_ends_in_the_503():
    """A route without a service runs its plugins, then answers Kong's 503 "no Service found with those values";
    lookup_cfg (plugins_iterator.lua:215-267) skips the lookups by service for it, so bob's instance for the route
    applies to bob, and the 503 still comes after it."""
    bob = "0b7c4c3e-6a52-4c0e-9d5e-1f0f6f2c7a11"
    doc = {"routes": [{"name": "r", "paths": ["/"]}],
           "consumers": [{"username": "bob", "id": bob}],
           "plugins": [{"name": "request-size-limiting", "route": "r", "consumer": bob,
                        "config": {"allowed_payload_size": 7, "size_unit": "bytes"}}]}
    route = compile_config(parse_config(json.dumps(doc))).router.match(b"GET", b"/", None, []).payload
    assert route.policies == [NO_SERVICE]
    limit, last = route.consumer_policies[bob]
    assert (limit.name, limit.limit, last) == ("request-size-limiting", 7, NO_SERVICE)
