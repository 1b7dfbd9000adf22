"""Real Kong declarative files (tests/kongconfig/real/: Kong's spec configs, the `kong config init` template, its
236-service router fixture, decK's test data): exactly the files of LOADS.txt load; every other one is refused
with one line per problem, each naming its field (a file refused never crashes the loader)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.runtime import check_file

REAL = Path(__file__).parent / "real"
FILES = sorted(p for p in REAL.glob("*/*") if p.suffix in (".yml", ".yaml"))
LOADS = {line for line in (REAL / "LOADS.txt").read_text().splitlines() if line and not line.startswith("#")}
_PATH = r"[A-Za-z_][A-Za-z0-9_-]*(?:\[\d+\])*(?:\.[A-Za-z0-9_${}#-]+(?:\[\d+\])*)*"


def test_the_collection_is_the_one_described():
    assert len(FILES) >= 600
    assert {p.parent.name for p in FILES} == {"kong", "deck"}
    assert all(p.read_text().startswith("# Source: Kong/") for p in FILES)
    assert LOADS <= {str(p.relative_to(REAL)) for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(REAL)) for p in FILES])
def test_a_real_file_loads_or_is_refused_line_by_line(path: Path):
    name = str(path.relative_to(REAL))
    try:
        runtime = check_file(str(path))
    except ConfigError as e:
        assert name not in LOADS, "\n".join(e.messages)
        assert e.messages
        for message in e.messages:
            assert "\n" not in message
            if re.match(re.escape(str(path)) + r":\d+:\d+: YAML error: the key ", message):
                continue  # a key given twice (YAML 1.2: keys are unique), named by its line and column
            rest = message.removeprefix(f"{path}: ")
            assert re.match(_PATH + r"(?: and " + _PATH + r")?(?:: \S| is not supported)", rest), message
        return
    assert name in LOADS, f"{name} loads: add it to LOADS.txt"
    assert runtime.config is not None


def test_kongs_router_fixture_loads_whole():
    """burst.yml: 236 services and their routes, ip-restriction on 94 of them, and one global prometheus."""
    runtime = check_file(str(REAL / "kong" / "fixtures__burst.yml"))
    assert len(runtime.config.services) == 236 and len(runtime.config.routes) > 236
    assert Counter(p.name for p in runtime.config.plugins) == {"ip-restriction": 94, "prometheus": 1}
