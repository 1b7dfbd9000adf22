"""Fixtures of the authentication tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ldap_server import SlapdProcess, find_slapd
from tls_helpers import Pki


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdProcess]:
    """A real slapd (Debian's) with the test directory, for the module's tests; they skip where there is none."""
    path, why = find_slapd()
    if path is None:
        pytest.skip(why)
    server = SlapdProcess(tmp_path_factory.mktemp("slapd"), Pki())
    server.start()
    try:
        yield server
    finally:
        server.stop()
