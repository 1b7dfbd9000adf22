"""A config file's text into plain data, strictly: what YAML would let through silently is an error here.

PyYAML's safe loader keeps the last of two equal keys (YAML 1.2 says keys are unique: a second `plugins:` would drop
the first, and the plugins in it would not run), recurses once per level of nesting (a deep file overflows the
stack), reads `!!set` in hash order (messages change from run to run), reads `.inf`, `.nan` and `1e999` as
numbers no setting can use, and raises a bare ValueError for a scalar its tag cannot read (`!!int x`). Each is
refused with the line and column, or the field path, where it is.

An unquoted scalar is typed as Kong's YAML reader types it (lyaml 6.2.8's implicit scalars, not PyYAML's YAML 1.1):
`6e4` and `1.5e3` are numbers, as any text Lua's tonumber reads with a `.`, `e` or `E`; `08080` is 8080, `0:30` is
30, `=` is text, and an unquoted date stays text (PyYAML would read the first four as text, fail on `=`, and make
`tags: [2024-01-01]` a date and `2024-02-30` a crash).

A file whose name ends in `json` is read as JSON, as Kong reads it with cjson (kong/db/declarative/init.lua,
unserialize): PyYAML would refuse tab indentation and split a surrogate-pair escape into two lone surrogates. The
same strictness holds there: a key twice in one object, nesting deeper than MAX_DEPTH, a lone surrogate escape and
a number too large to be finite are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import yaml

from gateway.config.errors import ConfigError, key_part, show

MAX_DEPTH = 64  # levels of nesting; a Kong config needs about 10
_MERGE = "tag:yaml.org,2002:merge"
_NULL, _BOOL, _FLOAT, _STR = (f"tag:yaml.org,2002:{kind}" for kind in ("null", "bool", "float", "str"))
_NUMBER = "tag:gateway.lyaml:number"  # an unquoted number as lyaml reads it (_lyaml_number)
_ANNOTATIONS = ("_comment", "_ignore")  # Kong's free-form annotations: dropped unread, so not checked


class _Refused(yaml.MarkedYAMLError):
    """A document PyYAML would read that the gateway does not."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _StrictLoader(yaml.SafeLoader):
    """safe_load, refusing duplicate keys, nesting deeper than MAX_DEPTH, `!!set` and scalars their tag cannot read,
    and typing unquoted scalars as lyaml does."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # a scalar its tag cannot read: !!int x, !!timestamp 2024-13-01
            raise _Refused(f"cannot read {show(str(node.value))} as {node.tag.rsplit(':', 1)[-1]}: {e}",
                           node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue  # a merge's keys may be overridden; a collection as a key is refused by the constructor
            key = self.construct_object(key_node)
            seen = first.setdefault(key, key_node)
            if seen is not key_node:
                mark = seen.start_mark
                raise _Refused(f"the key {show(key)} is given twice in one mapping (first at line {mark.line + 1}, "
                               f"column {mark.column + 1}); YAML keys are unique: keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]

    def refuse_set(self, node: yaml.Node) -> None:
        raise _Refused("a !!set has no order; write a list", node.start_mark)

    def resolve(self, kind: type[yaml.Node], value: str, implicit: tuple[bool, bool]) -> str:
        """An unquoted scalar's type as lyaml's default implicit_scalar finds it (lib/lyaml/init.lua: null, octal,
        decimal, float, bool, inf, nan, hexadecimal, binary, sexagesimal, sexfloat, else text); `<<` stays the merge
        key, which lyaml merges too. Quoted and tagged scalars, and collections, as PyYAML."""
        if kind is not yaml.ScalarNode or not implicit[0]:
            return super().resolve(kind, value, implicit)  # type: ignore[no-any-return]
        if value in _LYAML_NULLS:
            return _NULL
        if value in _LYAML_BOOLS:
            return _BOOL
        if value in _LYAML_INFS_NANS:
            return _FLOAT
        if value == "<<":
            return _MERGE
        try:
            return _NUMBER if _lyaml_number(value) is not None else _STR
        except ValueError:
            return _NUMBER  # (its constructor refuses it, with its place)

    def construct_lyaml_number(self, node: yaml.ScalarNode) -> int | float:
        number = _lyaml_number(node.value)
        assert number is not None  # (resolved as one)
        return number


_StrictLoader.add_constructor("tag:yaml.org,2002:set", _StrictLoader.refuse_set)
_StrictLoader.add_constructor(_NUMBER, _StrictLoader.construct_lyaml_number)

# lyaml 6.2.8's implicit scalars (lib/lyaml/implicit.lua), matched as its Lua patterns are: on the whole text
_LYAML_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_LYAML_BOOLS = frozenset(spelling for word in ("true", "false", "yes", "no", "on", "off")
                         for spelling in (word, word.capitalize(), word.upper()))
_LYAML_INFS_NANS = frozenset({".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF",
                              ".nan", ".NaN", ".NAN"})
_OCTAL = re.compile(r"([+-]?)0_*([0-7][0-7_]*)")
_DECIMAL = re.compile(r"([+-]?)_*([0-9][0-9_]*)")
_HEXADECIMAL = re.compile(r"([+-]?)0x_*([0-9a-fA-F][0-9a-fA-F_]*)")
_BINARY = re.compile(r"([+-]?)0b_*([01][01_]+)")
_SEXAGESIMAL = re.compile(r"([+-]?)([0-9]+:[0-5]?[0-9][:0-9]*)(\.[0-9]+)?")  # (with the fraction: sexfloat)
# What Lua's tonumber reads (LuaJIT src/lj_strscan.c, without the inf and nan words, which have no . e or E): a
# decimal with a fraction or exponent, or a hexadecimal with a fraction or binary exponent
_LUA_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_LUA_HEXADECIMAL = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?")
_FLOAT_MARK = re.compile(r"[.eE]")


def _lyaml_number(text: str) -> int | float | None:
    """The number lyaml reads an unquoted scalar as, or None (not one of its numbers). ValueError where lyaml's
    own parse fails (an octal or binary number ending in `_`: implicit.lua's `_*(.)` hands the `_` to tonumber)."""
    if match := _OCTAL.fullmatch(text):
        return _signed(match[1], _digits(match[2], 8))
    if match := _DECIMAL.fullmatch(text):
        return _signed(match[1], int(match[2].replace("_", "")))
    if _FLOAT_MARK.search(text):  # implicit.float: tonumber of the text without its underscores
        plain = text.replace("_", "")
        if _LUA_DECIMAL.fullmatch(plain):
            return float(plain)
        if _LUA_HEXADECIMAL.fullmatch(plain):
            return float.fromhex(plain)
    if match := _HEXADECIMAL.fullmatch(text):
        return _signed(match[1], int(match[2].replace("_", ""), 16))
    if match := _BINARY.fullmatch(text):
        return _signed(match[1], _digits(match[2], 2))
    if match := _SEXAGESIMAL.fullmatch(text):
        whole = 0
        for digits in re.findall("[0-9]+", match[2]):
            whole = whole * 60 + int(digits)
        return _signed(match[1], whole + float(match[3]) if match[3] else whole)
    return None


def _digits(text: str, base: int) -> int:
    if text.endswith("_"):
        raise ValueError("Kong's YAML reader (lyaml) fails on a number ending in _; remove the _, or quote the text")
    return int(text.replace("_", ""), base)


def _signed(sign: str, number: int | float) -> int | float:
    return -number if sign == "-" else number


MAX_CONFIG_BYTES = 64 << 20  # a config of thousands of entities is a few MiB: a larger file is not one


def read_text(path: str | os.PathLike[str]) -> str:
    """The file's text; a file that cannot be read, is larger than MAX_CONFIG_BYTES or is not UTF-8 is a
    ConfigError naming it."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError([f"{name}: cannot read the config file: {e.strerror or e}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{name}: larger than {MAX_CONFIG_BYTES >> 20} MiB, too large to be a config file (is "
                           "it the right file?)"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{name}: not UTF-8 text: {e.reason} at byte {e.start}"]) from None


def read_document(text: str, name: str) -> Any:
    """The YAML document in `text` (JSON when `name` ends in json, as Kong) as plain data, its numbers finite and its
    keys strings; ConfigError otherwise."""
    if name.endswith("json"):
        return _read_json(text, name)
    try:
        loader = _StrictLoader(text)  # the reader checks every character here
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError([_located(e, text, name)]) from None
    errors = _scalar_problems(raw) if isinstance(raw, dict) else []  # anything else: not a config (the loader says)
    if errors:
        raise ConfigError([f"{name}: {e}" for e in errors])
    return raw


class _Repeated(dict[str, Any]):
    """A JSON object that gave `key` twice (json keeps the last; the walk in _json_problems reports it)."""

    key = ""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: the object, marked (_Repeated) when a key came twice, for the walk to report."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    repeated = _Repeated(obj)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            repeated.key = key
            break
        seen.add(key)
    return repeated


_SURROGATE = re.compile("[\ud800-\udfff]")


def _read_json(text: str, name: str) -> Any:
    """The JSON document in `text`, checked as read_document checks YAML; ConfigError naming the line and column, or
    the field path, otherwise."""
    try:
        raw = json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as e:
        raise ConfigError([f"{name}:{e.lineno}:{e.colno}: JSON syntax error: {e.msg}"]) from None
    except RecursionError:
        raise ConfigError([f"{name}: JSON error: nested more than {MAX_DEPTH} levels deep"]) from None
    if raw is None:
        raise ConfigError([f"{name}: the JSON document is null; write {{}} for a config without services"])
    errors = _json_problems(raw) + _scalar_problems(raw, False) if isinstance(raw, dict) else []
    if errors:
        raise ConfigError([f"{name}: {e}" for e in errors])
    return raw


def _json_problems(raw: dict[str, Any]) -> list[str]:
    """What JSON lets through that YAML here does not (nesting deeper than MAX_DEPTH, a key twice in one object),
    and lone surrogate escapes (cjson refuses them; they are not characters), by field path. Iterative."""
    errors: list[str] = []
    stack: list[tuple[str, Any, int]] = [("", raw, 1)]
    while stack:
        path, node, depth = stack.pop()
        where = path or "the document"
        if isinstance(node, str):
            if _SURROGATE.search(node):
                errors.append(f"{where}: JSON error: a \\u escape of a lone surrogate is not a character (write "
                              "the character, or its surrogate pair)")
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            errors.append(f"{where}: JSON error: nested more than {MAX_DEPTH} levels deep")
            continue
        if isinstance(node, list):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in reversed(list(enumerate(node))))
            continue
        if isinstance(node, _Repeated):
            errors.append(f"{where}: JSON error: the key {show(node.key)} is given twice in one object; keys are "
                          "unique: keep one")
        for key, value in reversed(list(node.items())):
            key_path = f"{path}.{key_part(key)}" if path else key_part(key)
            if _SURROGATE.search(key):
                errors.append(f"{key_path}: JSON error: a \\u escape of a lone surrogate is not a character")
            elif key not in _ANNOTATIONS:
                stack.append((key_path, value, depth + 1))
    return errors


def _located(e: yaml.YAMLError, text: str, name: str) -> str:
    """One line: 'file:line:column: YAML syntax error: what' (PyYAML's own text spans several, with a caret)."""
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow; PyYAML gives only its offset
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        what = "a byte order mark inside the text" if e.character == 0xFEFF else \
            f"the character U+{e.character:04X}, which YAML does not allow in a document"
        return f"{name}:{line}:{column}: YAML syntax error: {what}"
    mark = getattr(e, "problem_mark", None)
    where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    kind = "YAML error" if isinstance(e, _Refused) else "YAML syntax error"
    return f"{name}{where}: {kind}: {' '.join(problem.split())}"


def _scalar_problems(raw: Any, surrogates: bool = True) -> list[str]:
    """Infinite or NaN numbers, keys that are not strings and YAML escapes of surrogates (not characters: the text
    could not be encoded, sent or logged), by field path. Iterative, and each shared node (a YAML alias) is visited
    once, so neither a deep document nor an alias bomb costs more than its text. (JSON's surrogates: _json_problems.)"""
    errors: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", raw)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            if surrogates and _SURROGATE.search(node):
                errors.append(f"{path or 'the document'}: a \\u escape of a surrogate is not a character (write "
                              "the character itself, or its \\U escape: \\U0001F600)")
            continue
        if isinstance(node, float) and not math.isfinite(node):
            yaml_name = ".nan" if math.isnan(node) else ".inf" if node > 0 else "-.inf"
            errors.append(f"{path}: expected a finite number, got {yaml_name}")
        if not isinstance(node, dict | list) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(node))))
            continue
        for key, value in reversed(list(node.items())):
            if not isinstance(key, str):
                if path:  # at the top, an unknown key like any other (the loader lists the known ones)
                    errors.append(f"{path}: a key must be a string, got {show(key)} (quote it)")
            elif surrogates and _SURROGATE.search(key):
                errors.append(f"{path or 'the document'}: a key with a \\u escape of a surrogate, which is not a "
                              "character")
            elif key not in _ANNOTATIONS:
                stack.append((f"{path}.{key_part(key)}" if path else key_part(key), value))
    return errors
