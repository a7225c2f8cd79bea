"""Safe YAML loading that remembers where every value came from.

Config and rule files are parsed with ruamel.yaml's round-trip loader, which only
builds plain mappings, sequences and scalars (no arbitrary Python objects) and keeps
line and column numbers. `Node` wraps a value with its position so validation code can
say `rules/sites.yaml:14:12: ... — write ... instead` without tracking positions itself.
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
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

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


def load_file(path: Path) -> Node:
    """Parse one YAML file into a Node; syntax errors become ConfigError with a position."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, 0, 0, f"cannot read file: {exc.strerror}") from None
    return load_text(text, path)


def load_text(text: str, path: Path | str) -> Node:
    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True  # lets a regex error point at the exact column
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise ConfigError(path, line, col, f"invalid YAML: {problem}") from None
    return Node(data if data is not None else CommentedMap(), str(path), 1, 1)


class Node:
    """A YAML value with the file, line and column (1-based) it was read from."""

    __slots__ = ("column", "line", "path", "value")

    def __init__(self, value: Any, path: str, line: int, column: int):
        self.value = value
        self.path = path
        self.line = line
        self.column = column

    # -- errors --------------------------------------------------------------
    def error(self, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.path, self.line, self.column, problem, fix)

    # -- structure -----------------------------------------------------------
    def mapping(
        self, what: str, allowed: set[str], required: frozenset[str] = frozenset()
    ) -> dict[str, Node]:
        """The mapping's entries as Nodes; unknown or missing keys are errors."""
        if not isinstance(self.value, CommentedMap):
            raise self.error(f"{what} must be a mapping (key: value lines)")
        entries: dict[str, Node] = {}
        for key in self.value:
            key_line, key_col = self.value.lc.key(key)
            if not isinstance(key, str) or key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                fix = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"allowed: {', '.join(sorted(allowed))}"
                )
                raise ConfigError(
                    self.path, key_line + 1, key_col + 1, f"unknown key '{key}' in {what}", fix
                )
            entries[key] = self._child(key, self.value.lc.value(key))
        for key in sorted(required - entries.keys()):
            raise self.error(f"{what} is missing '{key}'", f"add '{key}: ...'")
        return entries

    def items(self, what: str) -> Iterator[Node]:
        """The sequence's elements as Nodes; a single value is not a list."""
        if not isinstance(self.value, CommentedSeq):
            raise self.error(f"{what} must be a list (lines starting with '- ')")
        for index, value in enumerate(self.value):
            yield self._child(value, self.value.lc.item(index))

    def entries(self, what: str) -> Iterator[tuple[str, Node]]:
        """A mapping whose keys are free-form names (pipelines, env)."""
        if not isinstance(self.value, CommentedMap):
            raise self.error(f"{what} must be a mapping (name: value lines)")
        for key in self.value:
            if not isinstance(key, str):
                line, col = self.value.lc.key(key)
                raise ConfigError(self.path, line + 1, col + 1, f"{what} names must be text")
            yield key, self._child(key, self.value.lc.value(key))

    def _child(self, key_or_value: Any, position: tuple[int, int]) -> Node:
        value = self.value[key_or_value] if isinstance(self.value, CommentedMap) else key_or_value
        line, col = position
        return Node(value, self.path, line + 1, col + 1)

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
        if isinstance(self.value, DoubleQuotedScalarString):
            return self.column if "\\" in self.value else self.column + 1 + offset
        if isinstance(self.value, SingleQuotedScalarString):
            return self.column if "'" in self.value else self.column + 1 + offset
        return self.column + offset


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"'{str(value).lower()}' (true/false)"
    if isinstance(value, CommentedMap):
        return "a mapping"
    if isinstance(value, CommentedSeq):
        return "a list"
    return f"'{value}'"
