"""The worker protocol: JSON lines in, JSON lines out (see DESIGN.md).

in:  {"item": KEY, "run": ID, "attempt": N, "data": {...}}
out: {"progress": 0.4, "message": "..."}               any number of times
     {"ok": true, "data": {...}, "cost": 0.1, "rows_out": 3}
     {"ok": false, "error": "text", "type": "TimeoutError", "retry_after": 30}
     {"defer": "1h"} | {"defer_until": ISO8601} | {"ignore": "reason"}
A stdout line that is not a JSON object is output to keep, never a protocol error.

A result is refused whole (a ProtocolError failure, retried like any other) when it
holds NaN or Infinity anywhere, a delay outside 0..DELAY_MAX_S, a `defer_until` that
is unparsable or further than that from now, a negative cost, or data that could not
be an item's data. Texts are kept as valid UTF-8, error texts cut to ERROR_TEXT_MAX.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pipewarden._yaml import parse_duration
from pipewarden.inputs import data_problem, shown
from pipewarden.limits import DELAY_MAX_S, ERROR_TEXT_MAX, cut


class Verdict(StrEnum):
    OK = "ok"
    ERROR = "error"
    DEFER = "defer"
    IGNORE = "ignore"


@dataclass
class WorkerReport:
    """What one attempt produced, whichever way the worker ended."""

    verdict: Verdict
    data: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    exception_types: tuple[str, ...] = ()  # the type and its bases, most specific first
    traceback: str | None = None
    retry_after_s: float | None = None
    defer_s: float | None = None
    defer_until: float | None = None  # UNIX time
    ignore_reason: str | None = None
    cost: float | None = None
    rows_out: int | None = None
    timed_out: bool = False
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    pgid: int | None = None
    proc_start: int | None = None  # the worker's start time, /proc/PID/stat field 22
    output: list[str] = field(default_factory=list)
    progress: float | None = None
    message: str | None = None


@dataclass(frozen=True)
class Progress:
    fraction: float | None
    message: str | None


_RESULT_KEYS = ("ok", "defer", "defer_until", "ignore")
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one per process: json.dumps makes one a call
_MAYBE_NOT_FINITE = re.compile(r"NaN|Infinity|\d[eE]")  # 1e999 parses as infinity
_CONSTANTS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_TYPES_MAX = 32  # exception types kept from a reply's "types" (a class chain is short)
_NAME_MAX = 200  # characters of one exception type's name


def request_line(
    key: str, run_id: str, attempt: int, data: dict[str, Any], traceparent: str
) -> bytes:
    message = {
        "item": key, "run": run_id, "attempt": attempt, "data": data, "traceparent": traceparent,
    }  # fmt: skip
    return (_COMPACT.encode(message) + "\n").encode()


def parse_line(raw: bytes, now: float | None = None) -> WorkerReport | Progress | str:
    """One stdout line: a result, a progress update, or plain output text.

    `now` (default: the wall clock) is what a `defer_until` is checked against.
    """
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    if not text.startswith("{"):
        return text
    try:
        message = json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        return _protocol_error("its JSON is nested too deep")
    if not isinstance(message, dict):
        return text
    if any(key in message for key in _RESULT_KEYS):
        return _parse_result(message, time.time() if now is None else now, text)
    if "progress" in message or "message" in message:
        return Progress(_fraction(message.get("progress")), _progress_text(message.get("message")))
    return text


def error_text(value: Any) -> str | None:
    """An error text as it is kept: None when blank, valid UTF-8, cut to ERROR_TEXT_MAX.

    Applied once, where a run's error is decided (a cut text cut again would lose its
    count); a report carries the text as the worker gave it.
    """
    text = _reported(value)
    return None if text is None else cut(text, ERROR_TEXT_MAX)


def _parse_result(message: dict[str, Any], now: float, text: str) -> WorkerReport:
    try:
        if _MAYBE_NOT_FINITE.search(text):  # else no number in it can be NaN or infinite
            _check_numbers(message)
        extras = {"cost": _cost(message.get("cost")), "rows_out": _rows(message.get("rows_out"))}
        if "ignore" in message:
            reason = _reported(message["ignore"]) or "ignored by the worker"
            return WorkerReport(Verdict.IGNORE, ignore_reason=reason, **extras)
        if "defer_until" in message:
            until = _moment(message["defer_until"], now)
            return WorkerReport(Verdict.DEFER, defer_until=until, **extras)
        if "defer" in message:
            return WorkerReport(Verdict.DEFER, defer_s=_delay(message, "defer"), **extras)
        if message.get("ok") is True:
            data = message.get("data")
            if data is not None and (problem := data_problem(data)):
                raise ValueError(f"'data' {problem}")
            return WorkerReport(Verdict.OK, data=data, **extras)
        if message.get("ok") is False:
            error_type = _name(message.get("type"))
            types = message.get("types")
            chain = tuple(_name(t) for t in types[:_TYPES_MAX]) if isinstance(types, list) else ()
            return WorkerReport(
                Verdict.ERROR,
                error=_reported(message.get("error")),
                error_type=error_type,
                exception_types=chain or ((error_type,) if error_type else ()),
                traceback=_text(message.get("traceback")),
                retry_after_s=_delay(message, "retry_after") if "retry_after" in message else None,
                **extras,
            )
        raise ValueError("'ok' must be true or false")
    except (ValueError, TypeError, OverflowError) as exc:
        said = _reported(message.get("error"))
        # Cut to half the limit, so the whole stays within it and starts with the problem.
        said = cut(said, ERROR_TEXT_MAX // 2) if said else None
        return _protocol_error(f"{exc}" + (f" — the worker said: {said}" if said else ""))


def _protocol_error(problem: str) -> WorkerReport:
    return WorkerReport(
        Verdict.ERROR, error=f"invalid worker reply: {problem}", error_type="ProtocolError"
    )


def _check_numbers(message: dict[str, Any]) -> None:
    """NaN and Infinity are no JSON numbers: a reply that holds one is refused whole.

    `data` is left to `data_problem`, which encodes it anyway (it may be megabytes).
    """
    for name, value in message.items():
        if name == "data":
            continue
        try:
            json.dumps(value, allow_nan=False)
        except RecursionError:
            raise ValueError(f"'{name}' is nested too deep") from None
        except ValueError:
            verb = "is" if isinstance(value, float) else "holds"
            constant = _CONSTANTS.get(repr(value), "NaN or Infinity")
            raise ValueError(f"'{name}' {verb} {constant}, not a number JSON knows") from None


def _delay(message: dict[str, Any], name: str) -> float:
    value = message[name]
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(
            f"'{name}' must be seconds or a duration such as '90s' or '2h', not {_quoted(value)}"
        ) from None
    if not 0 <= seconds <= DELAY_MAX_S:
        raise ValueError(
            f"'{name}' must be from 0 to {DELAY_MAX_S / 86400:g} days, not {_quoted(value)}"
        )
    return seconds


def _moment(value: Any, now: float) -> float:
    """A `defer_until` as UNIX time: ISO 8601 text within DELAY_MAX_S of now."""
    try:
        until = datetime.fromisoformat(value).timestamp()
    except (ValueError, TypeError, OverflowError, OSError):
        raise ValueError(
            f"'defer_until' must be an ISO 8601 time such as '2026-11-23T09:00:00+00:00',"
            f" not {_quoted(value)}"
        ) from None
    if abs(until - now) > DELAY_MAX_S:
        raise ValueError(
            f"'defer_until' {_quoted(value)} is more than {DELAY_MAX_S / 86400:g} days away"
        )
    return until


def _cost(value: Any) -> float | None:
    try:
        cost = _number(value)
    except OverflowError:
        cost = math.inf
    if cost is not None and not 0 <= cost < math.inf:
        raise ValueError(f"'cost' must be a number from 0 up, not {_quoted(value)}")
    return cost


def _rows(value: Any) -> int | None:
    rows = _integer(value)
    if rows is not None and not 0 <= rows < 2**63:
        raise ValueError(f"'rows_out' must be a count from 0 to 2**63 - 1, not {_quoted(value)}")
    return rows


def _fraction(value: Any) -> float | None:
    """A progress fraction within 0..1; one that is no finite number is dropped."""
    try:
        fraction = _number(value)
    except OverflowError:
        return None
    if fraction is None or not math.isfinite(fraction):
        return None
    return min(1.0, max(0.0, fraction))


def _progress_text(value: Any) -> str | None:
    return None if value is None else cut(_valid_utf8(str(value)), ERROR_TEXT_MAX)


def _text(value: Any) -> str | None:
    return None if value is None else _valid_utf8(str(value))


def _reported(value: Any) -> str | None:
    """An error text or reason: None when blank (the daemon then writes what it knows)."""
    text = _text(value)
    return text if text and text.strip() else None


def _name(value: Any) -> str | None:
    """An exception type's name, as reported: short text."""
    text = _text(value)
    return text if text is None or len(text) <= _NAME_MAX else text[: _NAME_MAX - 1] + "…"


def _valid_utf8(text: str) -> str:
    # A lone surrogate (JSON allows "\\ud800") cannot be stored: SQLite refuses the batch.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def _quoted(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(shown(text)) if isinstance(value, str) else shown(text)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
