"""What /metrics serves (gateway.status.collect) over real metric files, as Kong's prometheus plugin writes it: the
text (bucket bounds, numbers, types, label order), which families show without a plugin, the workers' memory; and
the folding of exited processes' files (gateway.metrics.fold_dead_processes)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_st_app import FakeSource

from gateway import metrics
from gateway.metrics import FilesCollector, fold_dead_processes
from gateway.status import CheckResult, StatusApp
from gateway.status.collect import encode_text, gateway_registry

UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
DEAD_PID = 5_000_000  # above any kernel's pid_max (2^22): never a live process

# One worker's worth of everything the text encodes: Kong's per-request families, the gateway's own, a live gauge.
WRITER = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from gateway.metrics import (CONNECTIONS, KONG_BANDWIDTH, KONG_LATENCY, KONG_REQUEST_LATENCY, KONG_REQUESTS,
                                 REQUESTS, TARGET_LATENCY)
    KONG_REQUESTS.labels("s", "r", "200", "service", "default", "").inc(3)
    KONG_REQUESTS.labels("s", "r", "500", "kong", "default", 'a "quoted" \\\\ name').inc()
    REQUESTS.labels("r", "200").inc(3)
    for ms in (12.5, 300):
        KONG_REQUEST_LATENCY.labels("s", "r", "default").observe(ms)
        KONG_LATENCY.labels("s", "r", "default").observe(ms / 100)
    TARGET_LATENCY.labels("up", "127.0.0.1:1").observe(0.7)
    KONG_BANDWIDTH.labels("s", "r", "ingress", "default", "").inc(264)
    CONNECTIONS.labels("active").set(2)
""")

KONG_LE = {"kong_kong_latency_ms": ["1", "2", "5", "7", "10", "15", "20", "30", "50", "75", "100", "200", "500", "750",
                                    "1000", "3000", "6000", "+Inf"],
           "kong_request_latency_ms": ["25", "50", "80", "100", "250", "400", "700", "1000", "2000", "5000", "10000",
                                       "30000", "60000", "+Inf"]}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A metrics directory holding the files of one process that wrote WRITER's values and exited."""
    path = tmp_path_factory.mktemp("written")
    proc = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return path


def _scrape(path: Path, kong_enabled: bool = True) -> str:
    registry, _ = gateway_registry(str(path), node="n", version="3.9", kong_enabled=lambda: kong_enabled)
    return encode_text(registry).decode()


def _lines(body: str, prefix: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith(prefix)]


# --- the text, as Kong's exporter writes it --------------------------------------------------------------------------


def test_bucket_bounds_of_kongs_histograms_are_written_as_kong_writes_them(written: Path) -> None:
    """prometheus.lua fix_histogram_bucket_labels writes a bound as Lua prints the number: le="25", not
    prometheus_client's le="25.0"; before Prometheus 3.0 those are different series, and a rule on Kong's
    kong_request_latency_ms_bucket{le="250"} would match nothing. The gateway's own families keep
    prometheus_client's spelling, so that their series do not change."""
    body = _scrape(written)
    for family, expected in KONG_LE.items():
        bounds = [line.split('le="', 1)[1].split('"', 1)[0] for line in _lines(body, family + "_bucket{")]
        assert bounds == expected, family
    assert 'le="1.0"' in "".join(_lines(body, "gateway_upstream_latency_ms_bucket{"))


def test_kong_families_values_are_written_as_lua_numbers(written: Path) -> None:
    """Kong writes its values with Lua's tostring: kong_http_requests_total{...} 3, a sum 312.5; the gateway's own
    families are written by prometheus_client's rules (3.0)."""
    body = _scrape(written)
    assert 'kong_http_requests_total{service="s",route="r",code="200",source="service",workspace="default",' \
           'consumer=""} 3' in body.splitlines()
    assert 'kong_request_latency_ms_sum{service="s",route="r",workspace="default"} 312.5' in body.splitlines()
    assert 'gateway_requests_total{route="r",code="200"} 3.0' in body.splitlines()


def test_bandwidth_is_typed_counter_under_kongs_name(written: Path) -> None:
    """exporter.lua: prometheus:counter("bandwidth_bytes"), written "# TYPE kong_bandwidth_bytes counter" with the
    samples named kong_bandwidth_bytes (no _total), which Kong's dashboards rate()."""
    body = _scrape(written)
    assert _lines(body, "# TYPE kong_bandwidth_bytes") == ["# TYPE kong_bandwidth_bytes counter"]
    assert _lines(body, "kong_bandwidth_bytes") == [
        'kong_bandwidth_bytes{service="s",route="r",direction="ingress",workspace="default",consumer=""} 264']


def test_labels_are_in_the_order_the_family_declares_them_and_le_last(written: Path) -> None:
    """Kong's full_metric_name writes labels in the order exporter.lua declares them (the multiprocess merge sorts
    them), a bucket's le after them."""
    body = _scrape(written)
    assert _lines(body, 'kong_kong_latency_ms_bucket{service="s",route="r",workspace="default",le="1"} ')
    assert _lines(body, 'gateway_requests_total{route="r",code="200"} ')


def test_label_values_are_escaped_and_the_text_parses(written: Path) -> None:
    """A backslash or a double quote in a label value is escaped (08-unit_spec "emit metric data"), and the whole
    text is valid Prometheus text format: prometheus_client's parser reads every family back."""
    body = _scrape(written)
    assert 'consumer="a \\"quoted\\" \\\\ name"} 1' in body
    families = {family.name: family for family in text_string_to_metric_families(body)}
    assert families["kong_bandwidth_bytes"].type == "counter"
    [consumer] = [s.labels["consumer"] for s in families["kong_http_requests"].samples if s.labels["code"] == "500"]
    assert consumer == 'a "quoted" \\ name'


def test_the_metric_errors_counter_only_with_a_prometheus_plugin(written: Path) -> None:
    """prometheus.lua keeps kong_nginx_metric_errors_total in its shared dict, not with the local metrics:
    metric_data(local_only), with no plugin configured, leaves it out; with one it is there, 0 until an error."""
    assert "kong_nginx_metric_errors_total" not in _scrape(written, kong_enabled=False)
    assert "kong_nginx_metric_errors_total 0" in _scrape(written, kong_enabled=True).splitlines()


async def test_metrics_has_each_workers_memory_as_kong_does(tmp_path: Path) -> None:
    """exporter.lua's local metric kong_memory_workers_lua_vms_bytes{node_id, pid, kong_subsystem}, one sample per
    worker (04-status_api_spec "exposes Lua worker VM stats"), with or without a plugin: here each worker's RSS, as
    the Status API's memory.workers_lua_vms; the workers are the ones the workers check reports."""
    source = FakeSource()
    source.results["workers"] = CheckResult("healthy", {"pids": [os.getpid()]})
    registry, collector = gateway_registry(str(tmp_path), node="n")
    app = StatusApp(source, registry, prepare=collector.prepare)
    status, headers, body = await app.metrics({"headers": []})
    assert status == 200 and dict(headers)[b"content-type"] == b"text/plain; charset=UTF-8"
    [line] = _lines(body.decode(), "kong_memory_workers_lua_vms_bytes{")
    match = re.fullmatch(rf'kong_memory_workers_lua_vms_bytes{{node_id="({UUID})",pid="{os.getpid()}",'
                         r'kong_subsystem="http"} (\d+)', line)
    assert match and match[1] == collector.node_id and int(match[2]) > 0


# --- exited processes' files -----------------------------------------------------------------------------------------


def _dead_copies(template: Path, path: Path, pids: range) -> None:
    """The files of processes `pids` that wrote what the template's one process wrote and exited; each appears at
    once (renamed into place), as prometheus_client's does before a scrape can read it."""
    for source in template.iterdir():
        if source.suffix == ".db":
            kind = source.stem.rpartition("_")[0]
            for pid in pids:
                aside = path / f"{kind}_{pid}.tmp"
                shutil.copyfile(source, aside)
                os.replace(aside, path / f"{kind}_{pid}.db")


def _totals(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample's value as a scrape reads the files (no folding)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in FilesCollector(None, str(path)).collect() for s in family.samples}


def test_dead_processes_files_fold_into_one_archive_per_type_with_their_sums(written: Path, tmp_path: Path) -> None:
    """At a scrape, N exited processes' counters, histograms and summed gauges fold into one file per type with the
    totals unchanged, and their live gauges go; a later fold adds to the archives (counters never go back)."""
    _dead_copies(written, tmp_path, range(DEAD_PID, DEAD_PID + 20))
    one = _totals(written)
    live = {key for key in one if key[0] == "gateway_connections"}
    assert live and _totals(tmp_path) == pytest.approx({key: 20 * value for key, value in one.items()})
    assert len(list(tmp_path.iterdir())) == 20 * len(list(written.iterdir()))
    _, collector = gateway_registry(str(tmp_path))
    collector.prepare()
    collector.families()
    archives = sorted(f"{kind}_archive.db" for kind in ("counter", "histogram", "gauge_sum"))
    assert sorted(p.name for p in tmp_path.iterdir()) == archives
    assert _totals(tmp_path) == pytest.approx({key: 20 * value for key, value in one.items() if key not in live})

    _dead_copies(written, tmp_path, range(DEAD_PID + 20, DEAD_PID + 25))
    assert sorted(fold_dead_processes(str(tmp_path))) == list(range(DEAD_PID + 20, DEAD_PID + 25))
    assert sorted(p.name for p in tmp_path.iterdir() if "live" not in p.name) == archives
    assert {key: value for key, value in _totals(tmp_path).items() if key not in live} == \
        pytest.approx({key: 25 * value for key, value in one.items() if key not in live})


def test_a_scrape_during_a_fold_counts_each_dead_process_once(written: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst moment for a scrape: the new archives renamed into place, the dead files not yet deleted. A scrape
    started then waits for the fold (FILES_LOCK) and sees every process once, not the archive and the files both."""
    key = ("gateway_requests_total", (("code", "200"), ("route", "r")))
    _dead_copies(written, tmp_path, range(DEAD_PID, DEAD_PID + 4))
    assert _totals(tmp_path)[key] == 12
    seen: list[float] = []
    waited: list[bool] = []
    readers: list[threading.Thread] = []
    replace = os.replace

    def replace_then_scrape(src: str, dst: str) -> None:
        replace(src, dst)
        if not readers and dst.endswith("counter_archive.db"):
            reader = threading.Thread(target=lambda: seen.append(_totals(tmp_path)[key]))
            reader.start()
            reader.join(0.3)  # long enough to read the files, had it not waited
            waited.append(reader.is_alive())
            readers.append(reader)

    monkeypatch.setattr(metrics.os, "replace", replace_then_scrape)
    fold_dead_processes(str(tmp_path))
    monkeypatch.undo()
    for reader in readers:
        reader.join(5)
    assert waited == [True], "a scrape read the files while they were being folded"
    assert seen == [12]
    assert _totals(tmp_path)[key] == 12
