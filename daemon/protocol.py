"""The worker protocol: JSON lines in, JSON lines out (see DESIGN.md).

in:  {"item": KEY, "run": ID, "attempt": N, "data": {...}}
out: {"progress": 0.4, "message": "..."}               any number of times
     {"ok": true, "data": {...}, "cost": 0.1, "rows_out": 3}
     {"ok": false, "error": "text", "type": "TimeoutError", "retry_after": 30}
     {"defer": "1h"} | {"defer_until": ISO8601} | {"ignore": "reason"}
A stdout line that is not a JSON object is output to keep, never a protocol error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pipewarden._yaml import parse_duration


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


def request_line(
    key: str, run_id: str, attempt: int, data: dict[str, Any], traceparent: str
) -> bytes:
    message = {
        "item": key, "run": run_id, "attempt": attempt, "data": data, "traceparent": traceparent,
    }  # fmt: skip
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def parse_line(raw: bytes) -> WorkerReport | Progress | str:
    """One stdout line: a result, a progress update, or plain output text."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    if not text.startswith("{"):
        return text
    try:
        message = json.loads(text)
    except ValueError:
        return text
    if not isinstance(message, dict):
        return text
    if any(key in message for key in _RESULT_KEYS):
        return _parse_result(message)
    if "progress" in message or "message" in message:
        return Progress(_number(message.get("progress")), _text(message.get("message")))
    return text


def _parse_result(message: dict[str, Any]) -> WorkerReport:
    extras = {"cost": _number(message.get("cost")), "rows_out": _integer(message.get("rows_out"))}
    try:
        if "ignore" in message:
            reason = _text(message["ignore"]) or "ignored by the worker"
            return WorkerReport(Verdict.IGNORE, ignore_reason=reason, **extras)
        if "defer_until" in message:
            until = datetime.fromisoformat(str(message["defer_until"])).timestamp()
            return WorkerReport(Verdict.DEFER, defer_until=until, **extras)
        if "defer" in message:
            return WorkerReport(Verdict.DEFER, defer_s=parse_duration(message["defer"]), **extras)
        if message.get("ok") is True:
            data = message.get("data")
            if data is not None and not isinstance(data, dict):
                raise ValueError("'data' must be a JSON object")
            return WorkerReport(Verdict.OK, data=data, **extras)
        if message.get("ok") is False:
            error_type = _text(message.get("type"))
            types = message.get("types")
            chain = tuple(str(t) for t in types) if isinstance(types, list) else ()
            return WorkerReport(
                Verdict.ERROR,
                error=_text(message.get("error")) or None,
                error_type=error_type,
                exception_types=chain or ((error_type,) if error_type else ()),
                traceback=_text(message.get("traceback")),
                retry_after_s=(
                    parse_duration(message["retry_after"]) if "retry_after" in message else None
                ),
                **extras,
            )
        raise ValueError("'ok' must be true or false")
    except (ValueError, TypeError) as exc:
        return WorkerReport(
            Verdict.ERROR, error=f"invalid worker reply: {exc}", error_type="ProtocolError"
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
