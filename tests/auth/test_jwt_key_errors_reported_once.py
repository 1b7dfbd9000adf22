"""A jwt credential's key that Kong refuses is reported once, on the credential, as Kong 3.9.3 reports it.

The jwt page (app/_kong_plugins/jwt/index.md) tells decK users to fill in `key`, `algorithm` and `secret` (a dummy
for RS*) and upload the public key in `rsa_public_key`. A credential whose `rsa_public_key` is missing or is no key
is refused by Kong 3.9.3 once, on the credential (kong/plugins/jwt/daos.lua:50-68: the conditional entity check
`then_match = { required = true, custom_validator = validate_ssl_key }`, "required field missing" /
"invalid key"). check-config once reported it again under every jwt plugin instance, at a path that does not
exist (`services[0].routes[0].plugins[0].consumers[0].jwt_secrets[0]...`), and for a missing key added a "Could not
parse the provided public key" line about a key that was never given.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

NOT_A_KEY = "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"


def errors(doc: dict, tmp: Path) -> list[str]:
    """`gateway check-config` on `doc` (JSON is YAML): its lines, without the file name."""
    path = tmp / "k.yml"
    path.write_text(json.dumps(doc))
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], capture_output=True,
                            text=True, timeout=30, cwd=Path(__file__).parent.parent)
    assert result.returncode == 2, result
    return [line.removeprefix(f"{path}: ") for line in (result.stdout + result.stderr).splitlines()
            if line.startswith(str(path))]


def doc_with(secret: dict) -> dict:
    """The jwt how-to's layout (a consumer with jwt_secrets), the plugin on two routes (two instances)."""
    return {"_format_version": "3.0",
            "services": [{"name": "example-service", "url": "http://127.0.0.1:9/anything",
                          "routes": [{"paths": ["/a"], "plugins": [{"name": "jwt"}]},
                                     {"paths": ["/b"], "plugins": [{"name": "jwt",
                                                                    "config": {"key_claim_name": "kid"}}]}]}],
            "consumers": [{"username": "jsmith", "jwt_secrets": [secret]}]}


def test_a_jwt_secret_that_is_no_key_is_reported_once_on_the_credential(tmp_path):
    """daos.lua:62-66 (validate_ssl_key, "invalid key"): one error, on consumers[0].jwt_secrets[0].rsa_public_key;
    not one more per jwt plugin instance, prefixed with the plugin's path."""
    secret = {"key": "k1", "algorithm": "RS256", "secret": "dummy", "rsa_public_key": NOT_A_KEY}
    found = errors(doc_with(secret), tmp_path)
    assert [m for m in found if "rsa_public_key" in m] == [
        "consumers[0].jwt_secrets[0].rsa_public_key: not usable as a RS256 public key (PEM): Could not parse the "
        "provided public key."], found


def test_a_missing_rsa_public_key_is_reported_once_as_missing(tmp_path):
    """daos.lua:62-64 (required = true: "required field missing"): one error saying the key is needed, not that
    it "could not parse the provided public key" (none was provided), nor that again per instance."""
    found = errors(doc_with({"key": "k1", "algorithm": "RS256", "secret": "dummy"}), tmp_path)
    assert [m for m in found if "rsa_public_key" in m] == [
        "consumers[0].jwt_secrets[0].rsa_public_key: algorithm RS256 needs the consumer's public key (PEM)"], found
