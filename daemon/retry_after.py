"""How long an error message asks to wait: `retry_after: from_text` on a rule.

Rate limits often say when to come back: a header quoted in the text ("Retry-After:
30", "x-ratelimit-reset: 1732270000"), a JSON field ("retry_after": 12.5, "retryDelay":
"38s"), or a sentence ("Please try again in 6.5s", "retry after 1 minute", "wait 20
seconds", "resets at 2026-11-22T10:00:00Z"). The first of these the text holds decides,
bounded by DELAY_MAX_S; a text that says none gives None and the stage's backoff applies.
A worker's own `retry_after` still wins over the text (outcomes.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from pipewarden.limits import DELAY_MAX_S

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(?:\d+(?:\.\d+)?|an?|one)"
_UNIT = r"(?:ms|msecs?|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?)"
# "1m30s", "6.5s", "1 minute 30 seconds", "an hour": a duration written with units.
_END = r"(?![a-z])"  # a unit ends where letters do: "1m30s" is two terms
_DURATION = rf"{_NUMBER}\s*{_UNIT}{_END}(?:[\s,]*(?:and\s+)?\d+(?:\.\d+)?\s*{_UNIT}{_END})*"
_TERM = re.compile(rf"({_NUMBER})\s*({_UNIT}){_END}", re.IGNORECASE)

_HTTP_DATE = r"[a-z]{3},\s*\d{1,2}\s+[a-z]{3}\s+\d{4}\s+\d\d:\d\d:\d\d\s*GMT"
_HEADER = re.compile(
    rf"retry-after(-ms)?[\"']?\s*[:=]\s*[\"']?({_HTTP_DATE}|{_DURATION}|\d+(?:\.\d+)?)",
    re.IGNORECASE,
)
_JSON_SECONDS = re.compile(r"[\"']retry_?after[\"']\s*:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_JSON_DELAY = re.compile(r"[\"']retryDelay[\"']\s*:\s*[\"'](\d+(?:\.\d+)?)s", re.IGNORECASE)
_SENTENCE = re.compile(
    rf"\b(?:try\s+again|retry(?:ing)?|wait)(?:\s+(?:after|in|for))?\s+(?:about\s+)?({_DURATION})",
    re.IGNORECASE,
)
# Telegram's "Too Many Requests: retry after 35": a bare number of seconds.
_BARE_SECONDS = re.compile(r"\b(?:retry|try\s+again)\s+after\s+(\d+(?:\.\d+)?)(?![\w.%/:-])", re.I)
_RESET_IN = re.compile(
    rf"\bresets?(?:-requests|-tokens)?(?:\s+in|\s*[:=])\s*[\"']?({_DURATION})", re.IGNORECASE
)
_RESET_AT = re.compile(
    r"\breset(?:s|_at|-at)?(?:\s+at)?[\"']?\s*[:=]?\s*[\"']?"
    r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?|\d+(?:\.\d+)?)\b",
    re.IGNORECASE,
)


def asked_delay(text: str, now: float) -> float | None:
    """Seconds from `now` the message asks to wait, within [0, DELAY_MAX_S]; None if unsaid."""
    for find in (_from_header, _from_json, _from_sentence, _from_reset):
        seconds = find(text, now)
        if seconds is not None:
            return min(max(seconds, 0.0), DELAY_MAX_S)
    return None


def _from_header(text: str, now: float) -> float | None:
    match = _HEADER.search(text)
    if not match:
        return None
    value = match.group(2)
    if value[0].isdigit() and value.replace(".", "", 1).isdigit():
        return float(value) / (1000.0 if match.group(1) else 1.0)
    if value[0].isdigit():
        return _duration(value)
    return parsedate_to_datetime(value).timestamp() - now  # the HTTP-date form


def _from_json(text: str, _now: float) -> float | None:
    match = _JSON_SECONDS.search(text) or _JSON_DELAY.search(text)
    return float(match.group(1)) if match else None


def _from_sentence(text: str, _now: float) -> float | None:
    if match := _SENTENCE.search(text):
        return _duration(match.group(1))
    match = _BARE_SECONDS.search(text)
    return float(match.group(1)) if match else None


def _from_reset(text: str, now: float) -> float | None:
    if match := _RESET_IN.search(text):
        return _duration(match.group(1))
    match = _RESET_AT.search(text)
    if not match:
        return None
    value = match.group(1)
    if "-" in value:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
        if moment.tzinfo is None:  # a reset time without a zone is read as UTC
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp() - now
    stamp = float(value)
    if stamp < 1e9:  # a count of seconds from now, not a moment
        return stamp
    return (stamp / 1000.0 if stamp > 1e12 else stamp) - now


def _duration(text: str) -> float | None:
    """'1m30s', '6.5 seconds', 'an hour' -> seconds; None when no term has a unit."""
    terms = _TERM.findall(text)
    if not terms:
        return None
    return sum(_count(number) * _UNIT_S[_unit_key(unit)] for number, unit in terms)


def _count(number: str) -> float:
    return 1.0 if number.lower() in ("a", "an", "one") else float(number)


def _unit_key(unit: str) -> str:
    unit = unit.lower()
    if unit.startswith("ms") or unit.startswith("milli"):
        return "ms"
    return unit[0]
