"""Optional libraries load only for configs that need them: PyJWT and cryptography cost every process about 10 MiB
(issue 19), and asyncio (through zmq.utils.monitor) is never needed. The zygote preloads what the root's config used,
so workers still share those pages."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PLAIN = ("_format_version: '3.0'\n"
         "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n")
WITH_JWT = PLAIN + ("plugins: [{name: jwt, route: r}]\n"
                    "consumers: [{username: u}]\n"
                    "jwt_secrets: [{consumer: u, key: k, secret: '0123456789abcdef0123456789abcdef'}]\n")


def _compile_in_fresh_process(config: str) -> dict:
    """Import what the root, zygote and worker import, compile `config`, and report what got loaded."""
    code = textwrap.dedent(f"""
        import json, sys
        import gateway.cli, gateway.worker, gateway.node.root, gateway.node.zygote
        from gateway.config import parse_config
        from gateway.runtime import compile_config
        from gateway.node.zygote import needed_libraries
        compile_config(parse_config({config!r}, "test"))
        print(json.dumps({{"loaded": [m for m in ("jwt", "cryptography", "asyncio") if m in sys.modules],
                           "needed": needed_libraries()}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_a_plain_config_loads_neither_pyjwt_nor_cryptography_nor_asyncio() -> None:
    result = _compile_in_fresh_process(PLAIN)
    assert result == {"loaded": [], "needed": []}


def test_a_jwt_config_loads_pyjwt_and_names_it_for_the_zygote_to_preload() -> None:
    result = _compile_in_fresh_process(WITH_JWT)
    assert "jwt" in result["loaded"]
    assert "jwt" in result["needed"]


def test_the_zygote_preloads_only_libraries_it_knows() -> None:
    code = textwrap.dedent("""
        import sys
        from gateway.node.zygote import preload
        preload(["jwt", "os.path; import antigravity"])
        print("jwt" in sys.modules, "antigravity" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_a_session_config_loads_cryptography_and_names_it_for_the_zygote_to_preload() -> None:
    result = _compile_in_fresh_process(PLAIN + "plugins: [{name: session, route: r, config: {secret: s3cret}}]\n")
    assert "cryptography" in result["loaded"]
    assert "cryptography.hazmat.primitives.ciphers.aead" in result["needed"]


def test_every_http_config_and_telemetry_module_imports_first_without_a_cycle() -> None:
    """Each module imported first, with no gateway module loaded before it: an import cycle that only an import
    order hides (kong_errors once imported gateway.config, which imports it) fails here, not in a later caller."""
    code = textwrap.dedent("""
        import importlib, pathlib, sys
        failed = []
        for package in ("http", "config", "telemetry"):
            for path in sorted(pathlib.Path("gateway", package).glob("*.py")):
                name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
                for loaded in [m for m in sys.modules if m.partition(".")[0] in ("gateway", "prometheus_client")]:
                    del sys.modules[loaded]
                try:
                    importlib.import_module(name)
                except ImportError as e:  # (prometheus_client goes too: its registry takes each metric once)
                    failed.append(f"{name}: {e}")
        print("\\n".join(failed))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_the_clis_control_commands_import_no_data_plane_module() -> None:
    """`gateway status`, `stop` and `admin` import the control module only: the root (and through it the runtime,
    the workers' code and hypercorn) is imported by the commands that start a node or check a config whole, so an
    operator's status costs no fifth of a second of imports."""
    code = textwrap.dedent("""
        import json, sys
        import gateway.cli, gateway.node.control
        print(json.dumps([m for m in ("gateway.node.root", "gateway.runtime", "gateway.worker", "hypercorn")
                          if m in sys.modules]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []
