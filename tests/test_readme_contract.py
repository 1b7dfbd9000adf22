"""README.md as an operator's contract: what it shows check-config printing, and the kong.conf names it says are
taken, are what the gateway prints and takes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

# A file that makes exactly the four errors of README's `$ gateway check-config bad.yml` transcript, in its order.
BAD_YML = """\
services:
  - name: a
    url: http://127.0.0.1:9
    retries: many
    routes:
      - paths: [no-slash]
routes:
  - name: r2
    paths: [/x]
  - name: r1
    paths: [/y]
    service: billing
plugins:
  - name: cors
    config:
      origins: ["http://(a"]
"""


def readme_check_config_transcript() -> list[str]:
    """The output lines of README's check-config example (the fenced block that starts `$ gateway check-config`)."""
    match = re.search(r"```\n\$ gateway check-config bad\.yml\n(.*?)```", README, re.S)
    assert match, "README's check-config example is gone"
    return match.group(1).strip().splitlines()


def test_readme_check_config_example_output_is_what_check_config_prints(tmp_path):
    """README (## Configuration) shows check-config's output for a bad file, line for line (a `...` in a line stands
    for the rest of the message): cors origins are compiled with PCRE2, as Kong's ngx.re (kong/plugins/cors/
    handler.lua:153; the message kong/plugins/cors/schema.lua:22 "'%s' is not a valid regex"), so PCRE2's words."""
    (tmp_path / "bad.yml").write_text(BAD_YML)
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "bad.yml"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    printed = (result.stdout + result.stderr).strip().splitlines()
    documented = readme_check_config_transcript()
    assert len(printed) == len(documented), printed
    for doc_line, line in zip(documented, printed, strict=True):
        prefix = doc_line.split("...")[0] if "..." in doc_line else doc_line
        assert line.startswith(prefix) if "..." in doc_line else line == doc_line, (doc_line, line)


def test_readme_names_every_kong_conf_name_taken_as_an_alias():
    """README (### `gateway:`) lists the kong.conf names taken under Kong's name, with the setting each is
    (kong/conf_loader/constants.lua's aliases and Kong's own keys): every name gateway/config/kong_conf.py's ALIASES
    takes is there, so an operator never reads one as refused."""
    from gateway.config.kong_conf import ALIASES

    match = re.search(r"These are taken under Kong's name\s+too(.*?)Both names at once", README, re.S)
    assert match, "README's sentence on the kong.conf aliases is gone"
    listed = set(re.findall(r"`(\w+)`", match.group(1)))
    assert set(ALIASES) - listed == set()
    assert set(ALIASES.values()) - listed == set()
