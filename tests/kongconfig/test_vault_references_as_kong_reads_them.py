"""Vault references as Kong 3.9.3 reads them: kong/pdk/vault.lua:122-183 (parse_reference) takes the text between
the braces apart with LuaSocket 3.0-rc1's socket.url parse (src/url.lua:126-175 at tag v3.0-rc1, the version
kong-3.9.3-0.rockspec:17 pins): the vault is its host, the resource and key its path's segments (parse_path,
unescaped, then ngx.unescape_uri), the version Lua's tonumber of its fragment, the options ngx.decode_args of its
query. The gateway read references with urllib's urlsplit, which differs on these. Config-only: no process."""

from __future__ import annotations

import json

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.vaults import VaultError, Vaults

PREVIOUS = {"TOKEN": "current", "TOKEN_PREVIOUS": "previous"}


def resolve(reference: str, env: dict[str, str], configured: dict[str, str | None] | None = None) -> str:
    return Vaults(configured, env).resolve(reference)


def refusal(reference: str, env: dict[str, str], configured: dict[str, str | None] | None = None) -> str:
    with pytest.raises(VaultError) as e:
        resolve(reference, env, configured)
    return str(e.value)


# --- the vault's name: socket.url's host ----------------------------------------------------------------------------

@pytest.mark.parametrize("reference", ["{vault://user@env/token}", "{vault://env:8200/token}", "{vault://env:/token}",
                                       "{vault://[env]/token}"])
def test_the_vault_name_is_the_urls_host_without_user_info_port_or_brackets(reference):
    """vault.lua:132-135 names the vault by `url.host`, which url.lua:161-168 takes from the authority less a user
    info up to the first `@`, a `:port` and IPv6 brackets. The gateway looked for a vault named `user@env`,
    `env:8200` (and refused `[env]` as no IPv6 address)."""
    assert resolve(reference, {"TOKEN": "x"}) == "x"


def test_a_question_mark_before_the_first_slash_is_part_of_the_vault_name():
    """url.lua:143-146: the authority runs to the first `/`, so `{vault://env?prefix=A_/token}` names the vault
    `env?prefix=A_` (Kong: "could not find vault"). The gateway said no secret was named."""
    message = refusal("{vault://env?prefix=A_/token}", {"A_TOKEN": "x"})
    assert message.startswith('no vault "env?prefix=A_": ')
    assert "Kong's vault name runs to the first /" in message


def test_the_message_of_a_misplaced_option_names_the_field():
    """The same refusal in a file: the field, the vault name Kong reads, and where the options go."""
    doc = {"plugins": [{"name": "session", "config": {"secret": "{vault://env?prefix=A_/token}"}}]}
    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps(doc), "kong.yml")
    assert e.value.messages == [
        'kong.yml: plugins[0].config.secret: no vault "env?prefix=A_": the gateway has Kong OSS\'s env vault '
        "({vault://env/...}) and the `vaults` entries that configure it (by their prefix) (Kong's vault name runs to "
        "the first /: write options after the secret, {vault://env/<secret>?prefix=P_})"]


# --- the resource and the key: the path ------------------------------------------------------------------------------

def test_a_semicolon_ends_the_path_as_urls_params_begin():
    """url.lua:153-156: after the query, `;` begins the params, so `/token;v1` is the path `/token`. The gateway read
    the variable TOKEN;V1."""
    assert resolve("{vault://env/token;v1}", {"TOKEN": "x", "TOKEN;V1": "y"}) == "x"


@pytest.mark.parametrize(("reference", "variable"), [
    ("{vault://env/my%252Dkey}", "MY_KEY"),  # %25 -> %, then %2D -> -
    ("{vault://env/my+key}", "MY KEY"),  # ngx.unescape_uri's + is a space
    ("{vault://env/my%2Bkey}", "MY KEY"),  # parse_path's %2B is a +, which ngx.unescape_uri makes a space
])
def test_the_resource_is_unescaped_twice_the_second_time_with_plus_as_space(reference, variable):
    """url.lua:260-271 (parse_path) unescapes each segment's %xx, then vault.lua:161-166 ngx.unescape_uri's the
    resource (lua-nginx-module's ngx_http_lua_unescape_uri: %xx, and + as a space). The gateway unescaped once."""
    assert resolve(reference, {variable: "x"}) == "x"


def test_the_key_is_unescaped_twice_too():
    """vault.lua:165-166: the key is the last segment, through the same two unescapes."""
    assert resolve("{vault://env/creds/pass+word%2521}", {"CREDS": json.dumps({"pass word!": "p"})}) == "p"


def test_an_escape_of_a_byte_that_is_no_utf8_names_the_variable_of_that_byte():
    """Kong looks the variable up by bytes (kong/vaults/env reads `environ`); os.environ holds such a name with
    surrogateescape. The gateway looked for U+FFFD."""
    assert resolve("{vault://env/a%ff}", {"A\udcff": "x"}) == "x"


def test_a_tab_in_the_resource_is_kept():
    """socket.url's parse keeps every byte of the path; urlsplit dropped the tab and read the variable AB."""
    assert "the environment variable A\\tB is not set" in refusal("{vault://env/a\tb}", {"AB": "x"})


# --- the version: Lua's tonumber of the fragment ---------------------------------------------------------------------

@pytest.mark.parametrize("version", ["2.0", "0x2", " 2 ", "2e0", "0b10", "+2"])
def test_a_version_lua_reads_as_2_is_the_previous_value(version):
    """vault.lua:147-153 `tonumber(version, 10)` is LuaJIT's number syntax; kong/vaults/env reads
    <NAME>_PREVIOUS for `version == 2`. The gateway refused anything but ASCII digits."""
    assert resolve(f"{{vault://env/token#{version}}}", PREVIOUS) == "previous"


@pytest.mark.parametrize("version", ["inf", "-Infinity", "nan"])
def test_inf_and_nan_are_numbers_that_are_not_2(version):
    """LuaJIT's tonumber takes inf, infinity and nan (lj_strscan.c), numbers that are not 2: the current value."""
    assert resolve(f"{{vault://env/token#{version}}}", PREVIOUS) == "current"


def test_an_empty_version_is_refused():
    """url.lua:135-138 gives `#` an empty fragment, which vault.lua:148-152 refuses ("reference url has invalid
    version": tonumber("") is nil). The gateway read it as no version."""
    assert refusal("{vault://env/token#}", PREVIOUS).endswith("the version (#) must be a number")


# --- the options: ngx.decode_args of the query -----------------------------------------------------------------------

def test_an_empty_prefix_option_reads_the_variable_without_any_prefix():
    """ngx.decode_args gives `prefix=` an empty value, which arguments.infer_value makes ngx.null, which the env
    vault's schema takes (vault.lua get_vault_config_and_hash): no prefix, not even the vaults entry's. The gateway
    refused it."""
    assert resolve("{vault://my-env/token?prefix=}", {"TOKEN": "x", "APP_TOKEN": "y"}, {"my-env": "APP_"}) == "x"


def test_a_prefix_option_given_twice_is_refused():
    """ngx.decode_args makes a repeated name a table, which the env vault's string field refuses, so Kong reads the
    variable without a prefix. The gateway took the last one."""
    message = refusal("{vault://env/token?prefix=A_&prefix=B_}", {"A_TOKEN": "a", "B_TOKEN": "b", "TOKEN": "x"})
    assert message.endswith("prefix is given 2 times (Kong then reads no prefix at all; give it once)")


@pytest.mark.parametrize("query", ["&prefix=A_&", "=B_&prefix=A_", "prefix=A_&&"])
def test_an_option_without_a_name_is_dropped(query):
    """ngx_http_lua_parse_args ignores a pair whose name is empty. The gateway refused it as unknown option ""."""
    assert resolve(f"{{vault://env/token?{query}}}", {"A_TOKEN": "x"}) == "x"


def test_the_option_escapes_are_decoded_with_plus_as_a_space():
    """ngx.decode_args unescapes names and values as ngx.unescape_uri does: `%70refix` is prefix; `A+B` the prefix
    `A B`, which the env vault's match refuses. The gateway read `A+B`."""
    assert resolve("{vault://env/token?%70refix=A_}", {"A_TOKEN": "x"}) == "x"
    assert 'prefix: expected letters, digits, _ and - (not starting with a digit), got "A B"' in refusal(
        "{vault://env/token?prefix=A+B}", {"TOKEN": "x"})


def test_options_after_the_hundredth_pair_are_ignored():
    """ngx.decode_args stops at NGX_HTTP_LUA_MAX_ARGS (100) pairs, so a prefix after them is not read."""
    assert resolve("{vault://env/token?" + "&" * 100 + "prefix=A_}", {"TOKEN": "x", "A_TOKEN": "y"}) == "x"
