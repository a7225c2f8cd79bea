"""What people did: one line per action taken from the page, the CLI or the tray.

Every change a person makes goes through `control`, which writes its line here in the
same transaction as the change itself, so a line is never missing for a change that
happened nor kept for one that did not. A dry run changes nothing and leaves no line.
`who` says by whom and through what ("alice via page (api from 127.0.0.1)", "alice (cli)").
"""

from __future__ import annotations

from typing import Any

from pipewarden.store import Store

AUDIT_SHOWN_MAX = 500  # lines one request may list


def record(store: Store, who: str, action: str, target: str, detail: str, now: float) -> None:
    """Write one audit line (inside the caller's transaction when there is one)."""
    store.add_audit(who, action, target, detail, now)


def recent(store: Store, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` lines, newest first."""
    names = ("id", "at", "who", "action", "target", "detail")
    return [
        dict(zip(names, row, strict=True)) for row in store.audit_lines(min(limit, AUDIT_SHOWN_MAX))
    ]
