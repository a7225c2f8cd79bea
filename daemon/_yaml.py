"""Safe YAML loading that remembers where every value came from.

Config and rule files are parsed by ruamel.yaml's event parser (its C build on libyaml,
ruamel.yaml.clib, where installed), which only yields events: no Python object is ever
built from a tag, so loading is safe, and fast enough for thousands of rules. The events
are composed here, without recursion, into `Node`s that keep their line and column, with
YAML 1.2's core schema for plain scalars (`yes` and `on` stay text). `Node` wraps a
value with its position so validation code can say `rules/sites.yaml:14:12: ... — write
... instead` without tracking positions itself.

Whatever a file holds, loading it ends in a value or in a ConfigError naming the file
(and the line and column where they are known): bytes that are not UTF-8, a folder or
a file deleted while being saved, nesting past `SETTINGS_DEPTH_MAX`, a list or mapping
used as a key, a duplicate key, a tag pipewarden does not read.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipewarden.errors import ConfigError
from pipewarden.limits import MIB, SETTINGS_DEPTH_MAX, SETTINGS_FILE_MAX

DURATION_MAX_CHARS = 64
_FLOAT_MAX = sys.float_info.max
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*")
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_NAMES = {
    "ms": "ms", "msec": "ms",
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "m": "m", "min": "m", "mins": "m", "minute": "m", "minutes": "m",
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
    "w": "w", "week": "w", "weeks": "w",
}  # fmt: skip


def parse_duration(text: str | float | int) -> float:
    """'1h30m', '2w', '1d12h', '90s', '250ms', '1.5m', '2 hours' or a number of seconds -> seconds.

    Parts run from the largest unit down, each unit once ('30m1h' and '1h30' are refused, as
    typos); a number alone is seconds. NaN and infinity are refused; a negative number is
    returned for the caller to refuse with its own bounds. Anything else is a ValueError.
    """
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, int | float):
        seconds = float(text) if abs(text) < _FLOAT_MAX else math.inf  # float(10**400) raises
    elif isinstance(text, str):
        seconds = _duration_text_seconds(text)
    else:
        raise ValueError(text)
    if not math.isfinite(seconds):
        raise ValueError(text)
    return seconds


def _duration_text_seconds(text: str) -> float:
    if len(text) > DURATION_MAX_CHARS:  # a worker's reply may be long: not worth reading
        raise ValueError(text[:DURATION_MAX_CHARS])
    parts, position = [], 0
    while position < len(text) or not parts:  # part by part: no backtracking over the text
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(text)
        parts.append((float(match.group(1)), match.group(2)))
        position = match.end()
    if len(parts) == 1 and parts[0][1] == "":
        return parts[0][0]
    seconds, previous = 0.0, math.inf
    for number, name in parts:
        unit = _UNIT_SECONDS.get(_UNIT_NAMES.get(name, ""))
        if unit is None or unit >= previous:
            raise ValueError(text)
        seconds, previous = seconds + number * unit, unit
    return seconds


def load_file(path: Path, shown: str | None = None) -> Node:
    """Read and parse one YAML file; every problem is a ConfigError naming `shown` (or path)."""
    return load_bytes(read_file(path, shown), shown or str(path))


def read_file(path: Path, shown: str | None = None) -> bytes:
    """The file's bytes, or a ConfigError that says why they cannot be had."""
    where = shown or str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(SETTINGS_FILE_MAX + 1)
    except IsADirectoryError:
        raise ConfigError(where, 0, 0, "is a folder, not a file", "name a .yaml file") from None
    except FileNotFoundError:
        raise ConfigError(
            where, 0, 0, "no such file (an editor may have removed it while saving)",
            "save it again, or fix the name in the config's `rules:`",
        ) from None  # fmt: skip
    except OSError as exc:
        raise ConfigError(where, 0, 0, f"cannot read file: {exc.strerror}") from None
    if len(raw) > SETTINGS_FILE_MAX:
        raise ConfigError(
            where, 0, 0, f"larger than {SETTINGS_FILE_MAX // MIB} MiB", "split it into files"
        )
    return raw


def load_bytes(raw: bytes, path: Path | str) -> Node:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        problem = f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        raise ConfigError(path, line, column, problem, "save the file as UTF-8") from None
    return load_text(text.removeprefix("\ufeff"), path)


def load_text(text: str, path: Path | str) -> Node:
    from ruamel.yaml import YAML  # imported where a file is read
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.reader import ReaderError

    try:
        return _compose(YAML, text, path)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        if "maximum nesting depth" in problem:  # libyaml's own limit, deeper than ours
            raise ConfigError(path, line, col, *_TOO_DEEP) from None
        raise ConfigError(path, line, col, f"invalid YAML: {problem}") from None
    except ReaderError as exc:
        line, col = _position(text, text.find(chr(exc.character)))
        raise ConfigError(
            path, line, col, f"invalid YAML: character U+{exc.character:04X} is not allowed",
            "remove it, or write it as an escape in double quotes (\"\\x07\")",
        ) from None  # fmt: skip
    except YAMLError as exc:
        raise ConfigError(path, 0, 0, f"invalid YAML: {exc}") from None


def _compose(yaml: Any, text: str, path: Path | str) -> Node:
    """Nodes from the C parser (ruamel.yaml.clib: 8,000 rules in 0.4 s, not 4 s), and
    from the pure-Python one where the C one refuses the text: its libyaml predates parts
    of YAML 1.2 (`[pack:http]` is one plain scalar there), so the pure parser decides."""
    from ruamel.yaml.error import MarkedYAMLError

    try:
        return _Composer(str(path)).compose(yaml(typ="safe", pure=False).parse(text))
    except MarkedYAMLError:
        return _Composer(str(path)).compose(yaml(typ="safe", pure=True).parse(text))


def _position(text: str, offset: int) -> tuple[int, int]:
    if offset < 0:
        return 0, 0
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


class _Pairs(list):
    """A mapping's (key Node, value Node) pairs, in file order."""


class _Items(list):
    """A sequence's Nodes, in file order."""


class _Open:
    """A mapping or sequence being composed."""

    __slots__ = ("key", "merges", "node", "seen")

    def __init__(self, node: Node):
        self.node = node
        self.key: Node | None = None  # a mapping's key, while its value is being composed
        self.seen: dict[tuple[type, Any], int] = {}  # a mapping's keys -> their lines
        self.merges: list[Node] = []  # `<<: *defaults` mappings, merged at the end


_TOO_DEEP = (f"nested more than {SETTINGS_DEPTH_MAX} levels deep",
             "config and rule files need only a few levels")  # fmt: skip
_CORE = "tag:yaml.org,2002:"
_NULLS = ("", "~", "null", "Null", "NULL")
_MAYBE_NOT_TEXT = frozenset("~nNtTfF+-.0123456789")  # how a null, a boolean or a number begins
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False,
          "FALSE": False}  # fmt: skip
_INT = re.compile(r"[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)")
_FLOAT = re.compile(
    r"[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))|\.(?:nan|NaN|NAN)"
)


class _Composer:
    """The parser's events -> Nodes, with an explicit stack (no recursion, bounded depth)."""

    def __init__(self, path: str):
        self.path = path
        self.anchors: dict[str, Node] = {}
        self.stack: list[_Open] = []
        self.root: Node | None = None
        self.documents = 0

    def compose(self, events: Iterator[Any]) -> Node:
        from ruamel.yaml import events as ev

        handlers = {
            ev.ScalarEvent: self._scalar, ev.AliasEvent: self._alias,
            ev.MappingStartEvent: self._open, ev.SequenceStartEvent: self._open,
            ev.MappingEndEvent: self._close, ev.SequenceEndEvent: self._close,
            ev.DocumentStartEvent: self._document,
        }  # fmt: skip
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        return self.root if self.root is not None else Node(_Pairs(), self.path, 1, 1)

    def _error(self, event: Any, problem: str, fix: str = "") -> ConfigError:
        mark = event.start_mark
        return ConfigError(self.path, mark.line + 1, mark.column + 1, problem, fix)

    def _document(self, event: Any) -> None:
        self.documents += 1
        if self.documents > 1:
            raise self._error(event, "more than one document ('---')", "keep one per file")

    def _scalar(self, event: Any) -> None:
        node = self._node(_scalar_value(event, self._error), event, event.style or None)
        self._add(node, event)

    def _alias(self, event: Any) -> None:
        node = self.anchors.get(event.anchor)
        if node is None:
            raise self._error(event, f"invalid YAML: no anchor '&{event.anchor}' before this")
        self._add(node, event)

    def _open(self, event: Any) -> None:
        from ruamel.yaml.events import MappingStartEvent

        if self._at_key():
            raise self._error(
                event, "a list or mapping used as a key", "keys are plain names: write 'name: ...'"
            )
        if len(self.stack) >= SETTINGS_DEPTH_MAX:
            raise self._error(event, *_TOO_DEEP)
        is_mapping = isinstance(event, MappingStartEvent)
        expected = "map" if is_mapping else "seq"
        if event.tag not in (None, "!", f"{_CORE}{expected}"):
            raise self._error(event, f"tag {event.tag} is not supported", "remove the tag")
        node = self._node(_Pairs() if is_mapping else _Items(), event, None)
        self.stack.append(_Open(node))

    def _close(self, event: Any) -> None:
        closed = self.stack.pop()
        if closed.merges:
            _merge(closed)
        self._add(closed.node, event)

    def _node(self, value: Any, event: Any, style: str | None) -> Node:
        mark = event.start_mark
        node = Node(value, "", mark.line + 1, mark.column + 1, style)
        if event.anchor:
            self.anchors[event.anchor] = node
        return node

    def _at_key(self) -> bool:
        top = self.stack[-1] if self.stack else None
        return top is not None and isinstance(top.node.value, _Pairs) and top.key is None

    def _add(self, node: Node, event: Any) -> None:
        """Place a finished node in the collection being composed (or make it the root)."""
        if not self.stack:
            self.root = node
            self.root.path = self.path
            return
        parent = self.stack[-1]
        if isinstance(parent.node.value, _Items):
            parent.node.value.append(node)
        elif parent.key is None:
            if isinstance(node.value, _Pairs | _Items):  # an alias to a collection
                raise self._error(event, "a list or mapping used as a key",
                                  "keys are plain names: write 'name: ...'")  # fmt: skip
            seen = parent.seen.get((type(node.value), node.value))
            if seen is not None:
                raise self._error(event, f"duplicate key '{node.value}' (also on line {seen})",
                                  "keep one of them")  # fmt: skip
            parent.seen[(type(node.value), node.value)] = node.line
            parent.key = node
        else:
            key, parent.key = parent.key, None
            if key.value == "<<" and key.style is None:
                parent.merges.append(node)
            else:
                parent.node.value.append((key, node))


def _merge(closed: _Open) -> None:
    """`<<: *defaults` (or a list of them): their entries, where the mapping has none."""
    own = {key.value for key, _ in closed.node.value}
    for merged in closed.merges:
        sources = merged.value if isinstance(merged.value, _Items) else [merged]
        for source in sources:
            if not isinstance(source.value, _Pairs):
                raise source.error("'<<' merges a mapping (or a list of them), not a value")
            for key, value in source.value:
                if key.value not in own:
                    own.add(key.value)
                    closed.node.value.append((key, value))


def _scalar_value(event: Any, error: Any) -> Any:
    """A scalar's value: text, unless it is a plain YAML 1.2 null, boolean or number."""
    text, tag = event.value, event.tag
    if tag in (None, "!"):
        return _plain(text) if tag is None and not event.style else text
    wanted = {"str": str, "int": int, "float": float, "bool": bool, "null": type(None)}.get(
        tag.removeprefix(_CORE) if tag.startswith(_CORE) else ""
    )
    if wanted is None:
        raise error(event, f"tag {tag} is not supported", "remove the tag")
    if wanted is str:
        return text
    value = _plain(text)
    if wanted is float and type(value) is int:
        value = float(value)
    if type(value) is not wanted:
        raise error(event, f"'{text}' is not a valid {tag.removeprefix(_CORE)}")
    return value


def _plain(text: str) -> Any:
    if text and text[0] not in _MAYBE_NOT_TEXT:  # the common case: a word
        return text
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT.fullmatch(text) and any(c.isdigit() for c in text):
        digits = text.replace("_", "")
        sign = -1 if digits.startswith("-") else 1
        body = digits.lstrip("+-")
        base = {"0b": 2, "0o": 8, "0x": 16}.get(body[:2], 10)
        return sign * int(body[2:] if base != 10 else body, base)
    if _FLOAT.fullmatch(text):
        number = text.replace("_", "").lower().replace(".inf", "inf").replace(".nan", "nan")
        return float(number)
    return text


class Node:
    """A YAML value with the file, line and column (1-based) it was read from.

    A mapping's value is its (key, value) Node pairs and a sequence's its Nodes; the
    children take their parent's path when handed out, so setting the root's path
    names the file everywhere.
    """

    __slots__ = ("column", "line", "path", "style", "value")

    def __init__(self, value: Any, path: str, line: int, column: int, style: str | None = None):
        self.value = value
        self.path = path
        self.line = line
        self.column = column
        self.style = style  # how a scalar was written: None (plain), "'", '"', "|" or ">"

    # -- errors --------------------------------------------------------------
    def error(self, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.path, self.line, self.column, problem, fix)

    # -- structure -----------------------------------------------------------
    def mapping(
        self, what: str, allowed: set[str], required: frozenset[str] = frozenset()
    ) -> dict[str, Node]:
        """The mapping's entries as Nodes; unknown or missing keys are errors."""
        if not isinstance(self.value, _Pairs):
            raise self.error(f"{what} must be a mapping (key: value lines)")
        entries: dict[str, Node] = {}
        for key, value in self.value:
            if not isinstance(key.value, str) or key.value not in allowed:
                close = difflib.get_close_matches(str(key.value), sorted(allowed), n=1)
                fix = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"allowed: {', '.join(sorted(allowed))}"
                )
                raise self._child(key).error(f"unknown key '{key.value}' in {what}", fix)
            entries[key.value] = self._child(value)
        for key in sorted(required - entries.keys()):
            raise self.error(f"{what} is missing '{key}'", f"add '{key}: ...'")
        return entries

    def items(self, what: str) -> Iterator[Node]:
        """The sequence's elements as Nodes; a single value is not a list."""
        if not isinstance(self.value, _Items):
            raise self.error(f"{what} must be a list (lines starting with '- ')")
        for value in self.value:
            yield self._child(value)

    def entries(self, what: str) -> Iterator[tuple[str, Node]]:
        """A mapping whose keys are free-form names (pipelines, env)."""
        if not isinstance(self.value, _Pairs):
            raise self.error(f"{what} must be a mapping (name: value lines)")
        for key, value in self.value:
            if not isinstance(key.value, str):
                raise self._child(key).error(f"{what} names must be text")
            yield key.value, self._child(value)

    def _child(self, node: Node) -> Node:
        return Node(node.value, self.path, node.line, node.column, node.style)

    # -- scalars -------------------------------------------------------------
    def text(self, what: str) -> str:
        if not isinstance(self.value, str) or not self.value.strip():
            raise self.error(f"{what} must be non-empty text, not {_describe(self.value)}")
        return str(self.value)

    def text_list(self, what: str) -> tuple[str, ...]:
        """A list of text, or a single text taken as a one-element list."""
        if isinstance(self.value, str):
            return (self.text(what),)
        return tuple(node.text(f"each entry of {what}") for node in self.items(what))

    def integer(self, what: str, minimum: int | None = None) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.error(f"{what} must be a whole number, not {_describe(self.value)}")
        if minimum is not None and self.value < minimum:
            raise self.error(f"{what} must be at least {minimum}, not {self.value}")
        return int(self.value)

    def number(self, what: str, minimum: float | None = None) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise self.error(f"{what} must be a number, not {_describe(self.value)}")
        if minimum is not None and self.value < minimum:
            raise self.error(f"{what} must be at least {minimum}, not {self.value}")
        return float(self.value)

    def duration(self, what: str) -> float:
        try:
            seconds = parse_duration(self.value)
        except (ValueError, TypeError):
            raise self.error(
                f"{what} must be a duration, not {_describe(self.value)}",
                "write e.g. 30s, 5m, 2h, 1h30m, 2w or a number of seconds",
            ) from None
        if seconds < 0:
            raise self.error(f"{what} must not be negative")
        return seconds

    def choice(self, what: str, choices: tuple[str, ...]) -> str:
        value = self.text(what)
        if value not in choices:
            raise self.error(f"{what} must be one of {', '.join(choices)}, not '{value}'")
        return value

    def text_column(self, offset: int) -> int:
        """Column of character `offset` inside this scalar, when it can be known exactly.

        For a quoted scalar the opening quote shifts it by one; escapes in a
        double-quoted scalar make the mapping uncertain, so the scalar's own column
        is returned for those.
        """
        if self.style == '"':
            return self.column if "\\" in self.value else self.column + 1 + offset
        if self.style == "'":
            return self.column if "'" in self.value else self.column + 1 + offset
        return self.column + offset


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"'{str(value).lower()}' (true/false)"
    if isinstance(value, _Pairs):
        return "a mapping"
    if isinstance(value, _Items):
        return "a list"
    return f"'{value}'"
