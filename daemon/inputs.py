"""What pipewarden takes from outside, checked at the door and escaped where it is shown.

Item keys and data come from the CLI, a JSON-lines file or the API; replies come from
workers. Each door calls the same checks, so an item the CLI refuses is refused by the
API too, and nothing reaches the store that the store, a worker or a renderer cannot
take back: no empty or control-character keys, no NaN or Infinity, no lone surrogates
(SQLite refuses them mid-batch), nothing above its limit in `limits.py`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pipewarden.errors import UsageError
from pipewarden.limits import DATA_MAX, KEY_MAX

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: each can end a
# log line early, move a terminal's cursor or colour what follows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_REQUIRED: Any = object()
_JSON_TYPES = {
    dict: "an object", list: "a list", str: "text", bool: "true or false",
    int: "a whole number", float: "a number", type(None): "null",
}  # fmt: skip


def escape_controls(text: str, keep: str = "") -> str:
    """`text` with control characters written out (`\\n`, `\\x00`, `\\x1b`), except `keep`."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m[0] if m[0] in keep else _escape(m[0]), text)


def _escape(char: str) -> str:
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def shown(text: str, limit: int = 60) -> str:
    """A key or value quoted in an error message: escaped, and cut if long."""
    text = escape_controls(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_kind(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


# -- item keys and data ------------------------------------------------------------------
def key_problem(key: Any) -> str | None:
    """Why `key` cannot be an item key, or None when it can."""
    if not isinstance(key, str):
        return f"must be text, not {_json_kind(key)}"
    if not key.strip():
        return "must not be empty or only spaces"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    if size > KEY_MAX:
        return (
            f"is {size:,} bytes long; a key may have at most {KEY_MAX:,} bytes (UTF-8)"
            " — keep long values in the item's data"
        )
    if control := _CONTROL.search(key):
        return (
            f"contains the control character {_escape(control[0])} at position"
            f" {control.start() + 1}; keys are one line of printable text"
        )
    return None


def encode_json(value: Any) -> str:
    """`value` as strict JSON text; ValueError says what JSON (or SQLite) cannot hold."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except UnicodeEncodeError:  # before ValueError, its base
        raise ValueError("holds text that is not valid UTF-8 (a lone surrogate)") from None
    except ValueError:
        raise ValueError("holds NaN or Infinity, which are not numbers in JSON") from None
    except RecursionError:
        raise ValueError("is nested too deep") from None
    except TypeError as exc:
        raise ValueError(f"holds a value JSON cannot carry ({exc})") from None
    return text


def data_problem(data: Any) -> str | None:
    """Why `data` cannot be an item's data, or None when it can."""
    if not isinstance(data, dict):
        return f"must be a JSON object, not {_json_kind(data)}"
    try:
        size = len(encode_json(data).encode("utf-8"))
    except ValueError as exc:
        return str(exc)
    if size > DATA_MAX:
        return f"is {size:,} bytes of JSON; an item's data may have at most {DATA_MAX:,} bytes"
    return None


def check_item(key: Any, data: Any) -> tuple[str, dict[str, Any] | None]:
    """One item to enqueue, or UsageError naming the key and what is wrong.

    Data None is none given (a known item keeps its own)."""
    if problem := key_problem(key):
        where = f"key '{shown(key)}'" if isinstance(key, str) else "key"
        raise UsageError(f"{where} {problem}")
    if data is not None and (problem := data_problem(data)):
        raise UsageError(f"data of '{shown(key)}' {problem}")
    return key, data


# -- request bodies ----------------------------------------------------------------------
def field(body: dict[str, Any], name: str, kind: type, default: Any = _REQUIRED,
          where: str = "") -> Any:  # fmt: skip
    """`body[name]`, which must be of JSON type `kind`; a missing optional field is `default`.

    `where` prefixes the field's name in the error, e.g. "items[3]." for one list entry.
    """
    value = body.get(name)
    if value is None:
        if default is _REQUIRED:
            raise UsageError(f"'{where}{name}' is missing")
        return default
    if not _is_kind(value, kind):
        raise UsageError(f"'{where}{name}' must be {_JSON_TYPES[kind]}, not {_json_kind(value)}")
    return value


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):  # JSON's true is no number, 1 no boolean
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and _finite(value)
    return isinstance(value, kind)


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond any float
        return False


def items_field(body: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """The `items` of an enqueue request: a list of {"key": "...", "data": {...}}; an entry
    without data (or with null) gives none, and a known item keeps its own."""
    items = []
    for index, entry in enumerate(field(body, "items", list)):
        where = f"items[{index}]"
        if not isinstance(entry, dict):
            raise UsageError(f"'{where}' must be an object with a key, not {_json_kind(entry)}")
        key = field(entry, "key", str, where=f"{where}.")
        data = field(entry, "data", dict, None, where=f"{where}.")
        try:
            items.append(check_item(key, data))
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
    return items
