"""The form of a refused config's messages (gateway/config/errors.py): each is one line, `field path: what is
wrong`, whatever the file holds. A value holding a line break (a control character, U+2028, U+2029) is shown
escaped; a key that is not a plain name is quoted in its field path, so the path cannot read as another one.

Found by the config fuzz (tests/kongconfig/test_config_fuzz.py): MASTER_SEED 31337011 case 256 (a refused name
with a newline) and MASTER_SEED 31337012 case 2867 (a U+2028 in a comment: YAML ends the line there, so the rest of
the comment became a top-level key with spaces).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError
from gateway.config.errors import inline, key_part, show
from gateway.runtime import check_file

# A value each field refuses ("/" is in none of them), with {} where the line break goes.
REFUSED_VALUES = {
    "service name": 'services: [{name: "a/{}b", url: "http://h"}]',
    "route name": 'services: [{name: s, url: "http://h", routes: [{name: "a/{}b", paths: ["/"]}]}]',
    "service host": 'services: [{name: s, host: "a/{}b"}]',
    "route host": 'services: [{name: s, url: "http://h", routes: [{hosts: ["a/{}b"]}]}]',
    "route wildcard host": 'services: [{name: s, url: "http://h", routes: [{hosts: ["*.a/{}b"]}]}]',
    "tag": 'services: [{name: s, url: "http://h", tags: ["a/{}b"]}]',
    "upstream name": 'upstreams: [{name: "a/{}b"}]',
    "target": 'upstreams: [{name: u, targets: [{target: "a/{}b:80"}]}]',
    "sni name": 'certificates: [{cert: "x", key: "y", snis: [{name: "a/{}b"}]}]',
    "route header name": 'services: [{name: s, url: "http://h", routes: [{headers: {"a/{}b": [x]}}]}]',
    "route path": 'services: [{name: s, url: "http://h", routes: [{paths: ["a/{}b"]}]}]',
}
# Line breaks as a YAML double-quoted string writes them, and as a message shows them.
LINE_BREAKS = {"\\n": "\\n", "\\r": "\\r", "\\x0b": "\\u000b", "\\x85": "\\u0085", "\\u2028": "\\u2028",
               "\\u2029": "\\u2029"}


def refused(tmp_path: Path, text: str) -> list[str]:
    """The messages of a refused file, without the file name they start with."""
    path = tmp_path / "case.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        check_file(str(path))
    return [m.removeprefix(f"{path}: ") for m in caught.value.messages]


@pytest.mark.parametrize("line_break", list(LINE_BREAKS))
@pytest.mark.parametrize("field", list(REFUSED_VALUES))
def test_a_refused_value_holding_a_line_break_gives_one_line_messages(field: str, line_break: str,
                                                                      tmp_path: Path) -> None:
    messages = refused(tmp_path, REFUSED_VALUES[field].replace("{}", line_break))
    assert messages
    assert [m for m in messages if m.splitlines() != [m]] == []


@pytest.mark.parametrize("line_break", list(LINE_BREAKS))
@pytest.mark.parametrize("field", list(REFUSED_VALUES))
def test_a_refused_value_holding_a_line_break_is_shown_with_it_escaped(field: str, line_break: str,
                                                                       tmp_path: Path) -> None:
    messages = refused(tmp_path, REFUSED_VALUES[field].replace("{}", line_break))
    assert any(f"a/{LINE_BREAKS[line_break]}b" in m for m in messages), messages


def test_a_printable_value_keeps_kongs_wording(tmp_path: Path) -> None:
    assert refused(tmp_path, REFUSED_VALUES["service name"].replace("{}", "")) == [
        "services[0].name: invalid value 'a/b': the only accepted ascii characters are alphanumerics or ., -, _, "
        "and ~"]


@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\0", "\x7f", "\x85", "\u2028", "\u2029", "\u200b", "\ud800"])
def test_show_escapes_every_character_that_is_not_printable(char: str) -> None:
    shown = show(f"a{char}b")
    assert shown.isprintable()
    assert shown.startswith('"a\\') and shown.endswith('b"')


def test_show_writes_its_escapes_as_yaml_reads_them_back() -> None:
    value = 'a\n\t"\\\x7f\u2028é\U0001f600b'
    assert yaml.safe_load(show(value)) == value


@pytest.mark.parametrize("value", ["a/b", "é", "a'b"])
def test_inline_leaves_a_printable_value_as_it_is(value: str) -> None:
    assert inline(value) == value


def test_inline_escapes_a_value_that_is_not_printable_without_quoting_it() -> None:
    assert inline('a"\n\u2028b') == 'a\\"\\n\\u2028b'


@pytest.mark.parametrize("key", ["listen", "_format_version", "X-Request-Id", "0"])
def test_a_plain_key_is_written_as_it_is_in_a_field_path(key: str) -> None:
    assert key_part(key) == key


@pytest.mark.parametrize(("key", "written"), [
    ("a b", '"a\\u0020b"'),
    ("a.b", '"a\\u002eb"'),
    ("a: b", '"a\\u003a\\u0020b"'),
    ("a[0]", '"a\\u005b0\\u005d"'),
    ("a\nb", '"a\\nb"'),
    ("a\u2028b", '"a\\u2028b"'),
    ('a"b', '"a\\"b"'),
    ("é", '"é"'),
    ("", '""'),
])
def test_any_other_key_is_quoted_with_the_path_separators_escaped(key: str, written: str) -> None:
    assert key_part(key) == written


@pytest.mark.parametrize("key", ["a b", "a.b", "a: b", "a[0]", "a\nb", "a\u2028b", 'a"b\\c', "é", ""])
def test_a_quoted_key_pasted_into_yaml_is_the_key(key: str) -> None:
    assert yaml.safe_load(f"{key_part(key)}: 1") == {key: 1}


@pytest.mark.parametrize(("doc", "path"), [
    ('"a b": 1', '"a\\u0020b"'),
    ("# a comment, r\u2028estart, uses it (the first signs; rotate by prepending):",
     '"estart,\\u0020uses\\u0020it\\u0020(the\\u0020first\\u0020signs;\\u0020rotate\\u0020by\\u0020prepending)"'),
    ('gateway: {"a.b": 1}', 'gateway."a\\u002eb"'),
    ('services: [{name: s, url: "http://h", "a b": 1}]', 'services[0]."a\\u0020b"'),
    ('services: [{name: s, url: "http://h", "a\\nb": 1}]', 'services[0]."a\\nb"'),
    ('upstreams: [{name: u, healthchecks: {active: {"x: y": 1}}}]',
     'upstreams[0].healthchecks.active."x\\u003a\\u0020y"'),
])
def test_an_unknown_key_is_named_by_a_field_path_that_quotes_it(doc: str, path: str, tmp_path: Path) -> None:
    assert [m.split(": ", 1)[0] for m in refused(tmp_path, doc)] == [path]


def test_an_unknown_key_listed_in_a_message_is_quoted_as_in_a_path(tmp_path: Path) -> None:
    assert refused(tmp_path, 'vaults: [{name: env, prefix: p-x, config: {"a.b": 1}}]') == [
        "vaults[0].config: \"a\\u002eb\" is not supported (Kong OSS's env vault takes prefix only)"]


def test_an_entity_with_an_odd_unknown_key_still_has_its_other_fields_checked(tmp_path: Path) -> None:
    assert refused(tmp_path, 'services: [{name: "a/b", url: "http://h", "a b": 1}]') == [
        "services[0].\"a\\u0020b\": unknown field (check the spelling; see the README's config reference)",
        "services[0].name: invalid value 'a/b': the only accepted ascii characters are alphanumerics or ., -, _, "
        "and ~"]


OAUTH2 = """\
services:
- name: s
  url: http://127.0.0.1:9
  routes:
  - name: r
    paths: [/mcp]
    plugins:
    - name: ai-mcp-oauth2
      config:
        resource: http://gw.test/mcp
        jwks_endpoint: http://as.test/jwks
"""


@pytest.mark.parametrize("field", ["consumer_claim", "credential_claim", "consumer_groups_claim", "consumer_by",
                                   "authorization_servers"])
def test_an_empty_list_where_one_item_is_needed_gets_kongs_length_message(field: str, tmp_path: Path) -> None:
    """Kong's LENGTH_MIN (kong/db/schema/init.lua); the gateway said "expected a list, got a list" (the config fuzz,
    seed 42420401)."""
    lines = [f"        {field}: []"]
    if field != "authorization_servers":
        lines.append("        authorization_servers: [http://as.test]")
    messages = refused(tmp_path, OAUTH2 + "\n".join(lines) + "\n")
    assert any(m.endswith(f"config.{field}: length must be at least 1") for m in messages), messages
