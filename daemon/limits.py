"""Every size pipewarden accepts or keeps, in one place (the README's "Limits" lists them).

Whatever a worker writes, a person types or a client posts, the daemon holds and stores
at most these many bytes of it; above a limit, input is refused with the reason and
kept output is cut with "… N bytes cut".
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

REPLY_LINE_MAX = 16 * MIB  # one protocol line from a worker; longer is a protocol error
OUTPUT_KEPT = 64 * KIB  # a run's kept stdout (lines that are not protocol messages)
STDERR_KEPT = 64 * KIB  # a run's stderr tail
TRACEBACK_KEPT = 64 * KIB  # a run's traceback (the worker's, or its stderr tail)
MESSAGE_KEPT = 1 * KIB  # a run's latest progress message
ERROR_TEXT_MAX = 8 * KIB  # a run's error text
KEY_MAX = 1 * KIB  # an item key, in UTF-8 bytes
DATA_MAX = 8 * MIB  # an item's data, as JSON
DELAY_MAX_S = 366 * 86400.0  # the longest retry_after or defer a worker may ask for
SETTINGS_FILE_MAX = 16 * MIB  # a config or rules file
SETTINGS_DEPTH_MAX = 64  # how deeply a config or rules file may nest lists and mappings
INTERNAL_FAILURES_MAX = 3  # runs ended by internal errors before the item fails
API_BODY_MAX = 64 * MIB  # one request body to the API; bigger is refused (413)
API_RUNS_MAX = 1000  # runs one /api/runs answer lists; `limit` is clamped to 1..this

_CUT_NOTE_MAX = len("… 99999999999999999999 bytes cut\n".encode())  # within the limit


def cut(text: str | None, limit: int, dropped: int = 0) -> str | None:
    """`text` within `limit` UTF-8 bytes, note included, keeping its end (where errors
    usually are); `dropped` counts bytes already left out before `text`."""
    if text is None:
        return None
    raw = text.encode("utf-8", errors="surrogateescape")
    if len(raw) <= limit and not dropped:
        return text
    room = limit - _CUT_NOTE_MAX
    kept = raw[len(raw) - room :] if len(raw) > room else raw
    return f"… {dropped + len(raw) - len(kept)} bytes cut\n" + kept.decode("utf-8", errors="ignore")
