r"""ConfigError and the translation of msgspec's validation messages into `path: expected X, got Y` lines.

Every message is one line, `field path: what is wrong`, whatever the file holds, by two rules:

- A value is shown by `show` (double-quoted) or, inside a text copied from Kong that quotes values its own way, by
  `inline` (the value itself while it is printable). Either way a character that is not printable (a control
  character; U+2028 and U+2029, which YAML and some terminals take for line breaks; a lone surrogate) is escaped as
  YAML escapes it in double quotes: \n, \t, \u2028.
- A key is a segment of a field path as `key_part` writes it: a key of ASCII letters, digits, `_` and `-` as it is
  (`gateway.listen`); any other key double-quoted like a value, and its spaces, `.`, `:`, `[` and `]` escaped as
  \uXXXX too (`gateway."a\u002eb"` for the key "a.b", `"a\u0020b"` for "a b"). So a path holds no space and no
  separator but its own: it ends at the message's first ": " and splits at its dots and brackets; and the quoted
  form, pasted into the file as a double-quoted YAML key, is that key.

Every ConfigError's messages are also as the latest load has them reported (`as_reported`): a secret resolved from a
vault reference shown as the reference, and a `gateway:` field a KONG_<KEY> variable set named with the variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import msgspec
import msgspec.inspect as mi

_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
CONTROL_FREE = r"^[^\x00-\x08\x0a-\x1f\x7f]*\Z"  # the pattern of gateway.config.consumers.HeaderText
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|(\[\.\.\.\])")  # a field, an index, a value of a mapping
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f", '"': '\\"', "\\": "\\\\"}
_PATH_RESERVED = frozenset(" .:[]")


class ConfigError(Exception):
    """An invalid configuration: one message per problem, each naming the file and the field path; each as the
    latest load has it reported (`as_reported`: no secret of a reference, the variables that set a field)."""

    def __init__(self, messages: list[str], partial: Any = None, order: list[str] | None = None) -> None:
        messages = [as_reported(m) for m in messages]
        super().__init__("\n".join(messages))
        self.messages = messages
        # What did decode of a refused file, and its top-level keys in file order, so that later stages can report
        # their problems in the same pass (gateway.runtime.check_file).
        self.partial = partial
        self.order = order or []


def in_file_order(messages: list[str], order: list[str], prefix: str = "") -> list[str]:
    """Messages sorted as the fields they name appear in the file: by top-level key (`order`), then by the indices
    in the path (stable, so the problems of one field keep the order they were found in)."""
    rank = {key: i for i, key in enumerate(order)}

    def key(message: str) -> tuple[int, tuple[int, ...]]:
        path = message.removeprefix(prefix).split(": ", 1)[0].split(" and ", 1)[0]
        top = re.match(r"[A-Za-z_]+", path)
        return rank.get(top.group(0) if top else "", len(rank)), tuple(int(n) for n in re.findall(r"\[(\d+)\]", path))

    return sorted(messages, key=key)


def key_part(key: Any) -> str:
    """A key as a segment of a field path (the module's rule): plain keys as they are, any other quoted and escaped,
    so that an odd key (a space, a dot, a line break) cannot make the path read as another one."""
    text = key if isinstance(key, str) else str(key)
    if _PLAIN_KEY.fullmatch(text):
        return text
    return '"' + "".join(_code(c) if c in _PATH_RESERVED else _escape(c) for c in text) + '"'


def join_path(prefix: str, suffix: str) -> str:
    """Join field paths: ('services[0]', '.url') -> 'services[0].url'."""
    if not prefix:
        return suffix.lstrip(".")
    if not suffix:
        return prefix
    return prefix + suffix if suffix.startswith("[") else f"{prefix}.{suffix.lstrip('.')}"


def describe_validation_error(err: msgspec.ValidationError, raw: Any, typ: Any, prefix: str,
                              dec_hook: Any = None) -> str:
    """`prefix.path: expected int >= 0, got "ten"` from msgspec's "Expected `int`, got `str` - at `$.x`"; a value
    in a mapping (msgspec's `[...]`) named by its key: `prefix.headers.x-a`."""
    text = str(err)
    m = _MSGSPEC_PATH.search(text)
    rel = m.group("path") if m else ""
    reason = text[: m.start()] if m else text
    parts = _name_keys(rel, raw, typ, text, dec_hook)
    if parts is not None:
        rel = "".join(f"[{idx}]" if idx is not None else f".{key_part(name)}" for name, idx in parts)
    path = join_path(prefix, rel)
    if reason.startswith("Object contains unknown field"):
        field = reason[reason.index("`") + 1:reason.rindex("`")]  # (the key may hold a backtick)
        return (f"{join_path(path, key_part(field))}: unknown field (check the spelling; see the README's config "
                "reference)")
    if reason.startswith("Object missing required field"):
        field = reason.split("`")[1]
        return f"{join_path(path, field)}: required field is missing"
    value, found = _lookup(raw, parts) if parts is not None else (None, False)
    info = _unwrap(_lookup_type(typ, parts)) if parts is not None else None
    if isinstance(info, mi.ListType | mi.DictType) and isinstance(value, list | dict):  # Kong's LENGTH_MIN / MAX
        if info.min_length is not None and len(value) < info.min_length:
            return f"{path}: length must be at least {info.min_length}"
        if info.max_length is not None and len(value) > info.max_length:
            return f"{path}: length must be at most {info.max_length}"
    if isinstance(info, mi.StrType) and isinstance(value, str) and len(value) < (info.min_length or 0):
        return f"{path}: length must be at least {info.min_length}"  # Kong's len_min, checked before its match
    expected = _describe_type(info) or reason.split(",")[0].removeprefix("Expected ")
    if reason.startswith("Invalid enum value"):
        return f"{path}: expected one of {expected}, got {show(value)}"
    if found and reason.startswith("Expected"):  # not a check's own message (e.g. raised by __post_init__)
        return f"{path}: expected {expected}, got {show(value)}"
    return f"{path}: {reason.replace('`', '')}"


def _shown_pattern(pattern: str) -> str:
    """A field's pattern as a message shows it: its end `\\Z` (no final line break either) as the familiar `$`."""
    return pattern.removesuffix(r"\Z") + "$" if pattern.endswith(r"\Z") else pattern


def show(value: Any) -> str:
    """A value as a message shows it: a string double-quoted and escaped (so the message stays one line), a
    mapping or a list by its kind, a scalar as YAML writes it."""
    if isinstance(value, str):
        return '"' + "".join(_escape(c) for c in value) + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def inline(text: str) -> str:
    """A value inside a message that quotes it its own way (Kong's "invalid value: ..."): the text itself while every
    character is printable, else its escaped form as `show` writes it without the quotes."""
    return text if text.isprintable() else show(text)[1:-1]


def _escape(char: str) -> str:
    """One character of a double-quoted value: printable as it is, `"` and `\\` and the others escaped."""
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    return char if char.isprintable() else _code(char)


def _code(char: str) -> str:
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def _name_keys(rel: str, raw: Any, typ: Any, text: str, dec_hook: Any) -> list[tuple[Any, int | None]] | None:
    """msgspec's path as (field or key, index) steps, each `[...]` (a value of a mapping: msgspec does not say
    which) made the key of the value it refuses: the one that, alone in its mapping, gets the same error. None if
    none does (then msgspec's path and wording are shown)."""
    parts: list[tuple[Any, int | None]] = []
    trial = raw  # with each mapping resolved so far reduced to its refused key
    for name, idx, any_key in _PATH_PART.findall(rel):
        if not any_key:
            parts.append((name, int(idx)) if idx else (name, None))
            continue
        mapping, found = _lookup(trial, parts)
        if not (found and isinstance(mapping, dict)):
            return None
        for key, value in mapping.items():
            alone = _replaced(trial, parts, {key: value})
            try:
                msgspec.convert(alone, typ, dec_hook=dec_hook)
            except msgspec.ValidationError as e:
                if str(e) == text:
                    trial = alone
                    parts.append((key, None))
                    break
        else:
            return None
    return parts


def _replaced(raw: Any, parts: list[tuple[Any, int | None]], new: Any) -> Any:
    """A copy of `raw` with the value at `parts` replaced by `new` (only the containers on the way are copied)."""
    if not parts:
        return new
    (name, idx), rest = parts[0], parts[1:]
    out = list(raw) if idx is not None else dict(raw)
    step = idx if idx is not None else name
    out[step] = _replaced(raw[step], rest, new)
    return out


def _lookup(raw: Any, parts: list[tuple[Any, int | None]]) -> tuple[Any, bool]:
    cur = raw
    for name, idx in parts:
        try:
            cur = cur[idx] if idx is not None else cur[name]
        except (KeyError, IndexError, TypeError):
            return None, False
    return cur, True


def _lookup_type(typ: Any, parts: list[tuple[Any, int | None]]) -> mi.Type | None:
    info: mi.Type | None = mi.type_info(typ)
    for name, idx in parts:
        info = _unwrap(info)
        if idx is not None and isinstance(info, mi.ListType):
            info = info.item_type
        elif idx is None and isinstance(info, mi.StructType):
            info = next((f.type for f in info.fields if f.encode_name == name), None)
        elif idx is None and isinstance(info, mi.DictType):
            info = info.value_type
        else:
            return None
    return info


def _unwrap(info: mi.Type | None) -> mi.Type | None:
    """A `X | None` union is described by its X."""
    if isinstance(info, mi.UnionType):
        rest = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return info


def _describe_type(info: mi.Type | None) -> str | None:
    info = _unwrap(info)
    if isinstance(info, mi.LiteralType):
        return ", ".join(show(v) for v in info.values)
    if isinstance(info, mi.IntType | mi.FloatType):
        name = "int" if isinstance(info, mi.IntType) else "number"
        bounds = [
            f"{op} {v:.15g}" if isinstance(v, float) else f"{op} {v}"
            for op, v in ((">=", info.ge), (">", info.gt), ("<=", info.le), ("<", info.lt))
            if v is not None
        ]
        return " ".join([name, " and ".join(bounds)]) if bounds else name
    if isinstance(info, mi.StrType) and (info.pattern or info.min_length):
        text = "text" if info.pattern in (None, CONTROL_FREE) else f"string matching {_shown_pattern(info.pattern)}"
        if info.pattern == CONTROL_FREE:
            text += " without control characters"
        return "non-empty " + text if info.min_length == 1 else text
    simple = {mi.StrType: "string", mi.BoolType: "true or false", mi.ListType: "a list", mi.DictType: "a mapping",
              mi.StructType: "a mapping"}
    for cls, text in simple.items():
        if isinstance(info, cls):
            return text
    if isinstance(info, mi.UnionType):
        return " or ".join(filter(None, (_describe_type(t) for t in info.types)))
    return None


# --- what the latest load's messages must not show, and must say ------------------------------------------------------
# A secret resolved from a vault reference is validated as the field's value (Kong validates the reference text only,
# kong/db/schema/init.lua:995), so a check's message may quote it: every ConfigError shows the reference in its place.
# A `gateway:` field set by a KONG_<KEY> variable is named with the variable. The latest load (parse_config) records
# both; the checks that run after it (compile_config, at check-config, start and reload) are reported by it too.

_LONG_SECRET = 8  # a secret this long is hidden in every message; a shorter one only where its field is named


@dataclass
class _Hidden:
    """A resolved secret (or a part of one), the reference it came from, the field path (or entity) whose messages
    may show it, and whether every other message may not (`anywhere`). A part of a URL secret is matched as a word of
    its own (`bounded`), never inside a longer one."""

    secret: str
    reference: str
    scope: str
    anywhere: bool
    bounded: bool = False
    pattern: re.Pattern[str] = field(init=False)
    note: str = field(init=False)
    scope_named: re.Pattern[str] = field(init=False)  # where a message names `scope` (_path_named)

    def __post_init__(self) -> None:
        self.note = f" ({self.reference} is shown in place of the secret it resolved to)"
        self.scope_named = _path_named(self.scope)
        forms = sorted({self.secret, show(self.secret)[1:-1], repr(self.secret)[1:-1]} - {""}, key=len, reverse=True)
        hidden = "|".join(map(re.escape, forms))
        if self.bounded:
            hidden = rf"(?<![0-9A-Za-z])(?:{hidden})(?![0-9A-Za-z])"
        # the reference and the note first: text already reported is matched as it is, so reporting twice is the same
        self.pattern = re.compile("|".join([re.escape(self.note), re.escape(self.reference), hidden]))

    def replace(self, m: re.Match[str]) -> str:
        """A match of `pattern`: the note and the reference stay, a form of the secret becomes the reference."""
        return m.group(0) if m.group(0) in (self.note, self.reference) else self.reference


_hidden: list[_Hidden] = []
_variables: dict[str, str] = {}  # a `gateway.<field>` path -> the KONG_<KEY> variable that set it
_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")  # a URL's scheme and its netloc (RFC 3986)


def new_load() -> None:
    """Forget what the previous load recorded (a new file is being loaded)."""
    _hidden.clear()
    _variables.clear()


def hide(secret: str, reference: str, scope: str) -> None:
    """Have messages show `reference` in place of `secret`: those naming `scope` (a field path or an entity's path,
    `plugins[0]`), and every message when the secret is long enough not to be an ordinary word. Of a URL, its parts
    too, which a message may quote alone (Python's urlsplit quotes the netloc or the host it refuses): its user info
    and password as a secret is hidden; its netloc and host where `scope` is named, when not an ordinary word."""
    if not secret or secret == reference:
        return
    _hidden.append(_Hidden(secret, reference, scope, len(secret) >= _LONG_SECRET))
    credentials, others = _url_parts(secret)
    parts = {part: len(part) >= _LONG_SECRET for part in credentials}
    parts.update((part, False) for part in others if len(part) >= _LONG_SECRET and part not in parts)
    for part in sorted(parts.keys() - {secret, reference}, key=len, reverse=True):  # (a part before those in it)
        _hidden.append(_Hidden(part, reference, scope, parts[part], bounded=True))


def _url_parts(secret: str) -> tuple[set[str], set[str]]:
    """A URL's credentials (its user info and password, as written and unescaped) and the other parts of its
    authority (netloc, host and port, host); empty sets for text that is no URL."""
    m = _AUTHORITY.match(secret)
    if m is None:
        return set(), set()
    netloc = m.group(1)
    userinfo, _, hostport = netloc.rpartition("@")
    password = userinfo.partition(":")[2]
    if ":" not in hostport or hostport.startswith("[") and "]:" not in hostport:
        host = hostport  # (no port: an IPv6 address in brackets has colons of its own)
    else:
        host = hostport.rpartition(":")[0]
    credentials = {userinfo, unquote(userinfo), password, unquote(password)} - {""}
    return credentials, {netloc, hostport, host, host.strip("[]")} - {""}


def name_variable(path: str, variable: str) -> None:
    """Have messages about `path` (`gateway.trusted_ips`) say that `variable` set it."""
    _variables[path] = variable


def _path_named(path: str) -> re.Pattern[str]:
    """A mention of the field path `path` (or of a path under it) in a message, up to the text after it, past its
    ": ". A check's message under its mapping's path names the field after it (`gateway: headers: invalid entry ...`,
    msgspec's path and a __post_init__'s words): that mentions `gateway.headers` too. (Compiled once per path: a
    large config's references outnumber the re module's cache, and every message is checked against each.)"""
    parent, dot, last = path.rpartition(".")
    named = rf"{re.escape(parent)}(?:\.|: ){re.escape(last)}" if dot else re.escape(path)
    return re.compile(rf"(?:^|(?<=[\s:])){named}(?=[.:\[\s]|$)[^\s:]*(?:: )?")


def _named_at(message: str, named: re.Pattern[str]) -> int | None:
    """Where the text after the first mention `named` (_path_named) finds in `message` starts; None when none."""
    m = named.search(message)
    return None if m is None else m.end()


def as_reported(message: str) -> str:
    """`message` as the latest load reports it: each secret it resolved shown as its reference, and the variable
    named where it set the field. Reporting a reported message changes nothing."""
    for hidden in _hidden:
        start = _named_at(message, hidden.scope_named)
        if start is None and not hidden.anywhere:
            continue
        start = start or 0
        replaced = hidden.pattern.sub(hidden.replace, message[start:])
        if replaced != message[start:]:
            message = message[:start] + replaced + ("" if hidden.note in replaced else hidden.note)
    for path, variable in _variables.items():
        note = f" (set by the environment variable {variable}, which overrides the file)"
        if note not in message and _named_at(message, _path_named(path)) is not None:
            message += note
    return message
