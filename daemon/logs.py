"""Log lines for a person at a terminal, or for journald.

Under systemd ($JOURNAL_STREAM names our stderr) each line starts with a syslog
priority (`<4>` for a warning) and carries no timestamp of its own: the journal keeps
the time and the priority, and `journalctl -p warning` works. Elsewhere lines get a
local timestamp and the level's name. Either way a record is one line (see `_Formatter`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pipewarden.inputs import escape_controls

_PRIORITIES = {
    logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7,
}  # fmt: skip


class _Formatter(logging.Formatter):
    """One record, one line: the message's control characters are written out (`\\n`,
    `\\x1b`), so text a worker or a client chose (an error, a key) can neither start a line
    of its own nor drive the terminal. A traceback keeps its lines, each one indented, so
    none of them passes for a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + escape_controls(line, keep="\t") for line in text.splitlines())


class _JournalFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def under_journald() -> bool:
    """True when stderr is the journal stream systemd gave us."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return bool(stream) and f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
