"""What each API endpoint takes: its query parameters and JSON body fields, declared as schemas.

A request that does not fit gets 400 and the reason before its handler acts; no field
goes unread and none is guessed. Body fields are checked by `inputs.field`, the same
check the CLI's arguments and item files meet; query parameters arrive as text and are
read into their type first. A number a client chooses for its own convenience (how many
runs to list) is clamped into its range instead of refused.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from pipewarden.errors import PipewardenError, UsageError
from pipewarden.inputs import escape_controls, field, shown
from pipewarden.limits import API_BODY_MAX, KEY_MAX, MIB
from starlette.datastructures import QueryParams
from starlette.requests import Request

_REQUIRED: Any = object()
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,30}")
_FLAGS = {"1": True, "true": True, "0": False, "false": False}
_PARSE_OFF_LOOP = 1 * MIB  # a bigger body is parsed in a thread: the loop keeps its beat
TEXT_MAX = KEY_MAX  # a name the API takes is at most as long as an item key


class RequestTooLarge(PipewardenError):
    """A body above API_BODY_MAX (answered 413)."""


@dataclass(frozen=True)
class Param:
    """One query parameter or body field: its JSON type, default, and allowed values."""

    kind: type = str
    default: Any = _REQUIRED
    choices: tuple[str, ...] = ()
    clamp: tuple[int, int] | None = None  # a number outside is moved to the nearer end
    above: float | None = None  # a number must be greater than this

    def constrained(self, name: str, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, str) and (problem := _text_problem(value)):
            raise UsageError(f"'{name}' {problem}")
        if self.choices and value not in self.choices:
            raise UsageError(
                f"'{name}' must be one of {', '.join(self.choices)}, not '{shown(str(value))}'"
            )
        if self.clamp is not None:
            return max(self.clamp[0], min(self.clamp[1], value))
        if self.above is not None and not value > self.above:
            raise UsageError(f"'{name}' must be above {self.above:g}, not {value:g}")
        return value


Schema = dict[str, Param]


def _text_problem(text: str) -> str | None:
    """Why `text` cannot be a name the API takes (a target, a label, a stage), or None."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 text (a lone surrogate)"
    if size > TEXT_MAX:
        return f"is {size:,} bytes long; at most {TEXT_MAX:,} bytes"
    if escape_controls(text) != text:
        return f"holds a control character ('{shown(text)}'): write one line of printable text"
    return None


def query(request: Request, schema: Schema) -> dict[str, Any]:
    """The request's query parameters, read and checked against `schema`."""
    return checked_query(request.query_params, schema)


def checked_query(params: QueryParams, schema: Schema) -> dict[str, Any]:
    _refuse_unknown(params.keys(), schema, "parameter")
    values: dict[str, Any] = {}
    for name, param in schema.items():
        given = params.getlist(name)
        if len(given) > 1:
            raise UsageError(f"'{name}' is given {len(given)} times; give it once")
        value = _from_text(name, given[0], param.kind) if given else None
        values[name] = param.constrained(name, _defaulted(name, value, param))
    return values


async def body(request: Request, schema: Schema) -> dict[str, Any]:
    """The request's JSON object, its fields checked against `schema`."""
    data = await _json_object(request)
    _refuse_unknown(data.keys(), schema, "field")
    values: dict[str, Any] = {}
    for name, param in schema.items():
        if param.default is _REQUIRED:
            value = field(data, name, param.kind)
        else:
            value = field(data, name, param.kind, param.default)
        values[name] = param.constrained(name, value)
    return values


def _refuse_unknown(names: Any, schema: Schema, what: str) -> None:
    unknown = sorted(set(names) - set(schema))
    if unknown:
        takes = f"it takes {', '.join(schema)}" if schema else f"it takes no {what}s"
        raise UsageError(f"unknown {what} '{shown(unknown[0])}': {takes}")


def _defaulted(name: str, value: Any, param: Param) -> Any:
    if value is not None:
        return value
    if param.default is _REQUIRED:
        raise UsageError(f"'{name}' is missing")
    return param.default


def _from_text(name: str, text: str, kind: type) -> Any:
    if kind is int:
        if not _WHOLE_NUMBER.fullmatch(text):
            raise UsageError(f"'{name}' must be a whole number, not '{shown(text)}'")
        return int(text)
    if kind is float:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise UsageError(f"'{name}' must be a number, not '{shown(text)}'")
        return number
    if kind is bool:
        if text not in _FLAGS:
            raise UsageError(f"'{name}' must be 1 or 0, not '{shown(text)}'")
        return _FLAGS[text]
    return text


async def _json_object(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > API_BODY_MAX:
        raise RequestTooLarge(_too_large(int(declared)))
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > API_BODY_MAX:
            raise RequestTooLarge(_too_large(len(raw)))
    try:
        if len(raw) > _PARSE_OFF_LOOP:
            data = await asyncio.to_thread(json.loads, bytes(raw))
        else:
            data = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise UsageError("the request body must be a JSON object")
    return data


def _too_large(size: int) -> str:
    return (
        f"the request body is over {API_BODY_MAX // MIB} MiB ({size:,} bytes or more):"
        " send it in parts"
    )
