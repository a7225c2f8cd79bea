"""Halts and pauses on PostgreSQL: the SQLite part's, with the fleet told of each change.

The unique index on active holds makes a halt raised by two daemons at once one row: the
second insert does nothing, so only the first notifies.

A daemon's scheduler reads the active holds on every pass; while its listener is
connected (see listen.py), every change reaches it — its own through these methods, the
fleet's as a notification — so the holds last read serve until one of them says they
changed, and a pass spends no round trip on them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from pipewarden.store.models import Hold
from pipewarden.store.postgres.base import Connected
from pipewarden.store.sqlite.holds import Holds as SqliteHolds


class HoldsSeen:
    """The active holds as last read, and whether they may serve again. A change made in
    a transaction counts again when it ends (committed or not), so what a transaction
    read of its own changes is never kept past it."""

    def __init__(self) -> None:
        self.listening = False  # set by the listener while its connection is up
        self._version = 0
        self._kept: tuple[int, list[Hold]] | None = None
        self._lock = threading.Lock()
        self._local = threading.local()  # per thread: a change in its open transaction

    def changed(self, in_transaction: bool = False) -> None:
        with self._lock:
            self._version += 1
        if in_transaction:
            self._local.pending = True

    def transaction_ended(self) -> None:
        if getattr(self._local, "pending", False):
            self._local.pending = False
            self.changed()

    def kept(self) -> list[Hold] | None:
        kept = self._kept
        if not self.listening or getattr(self._local, "pending", False) or kept is None:
            return None
        return list(kept[1]) if kept[0] == self._version else None

    def version(self) -> int:
        return self._version

    def keep(self, version: int, holds: list[Hold]) -> None:
        if self.listening and not getattr(self._local, "pending", False):
            self._kept = (version, holds)


class Holds(Connected, SqliteHolds):
    holds_seen: HoldsSeen

    def active_holds(self) -> list[Hold]:
        """As on SQLite; the holds last read while nothing says they changed."""
        if (kept := self.holds_seen.kept()) is not None:
            return kept
        version = self.holds_seen.version()
        holds = SqliteHolds.active_holds(self)
        self.holds_seen.keep(version, holds)
        return list(holds)

    def add_hold(self, hold: dict[str, Any]) -> Hold | None:
        """Insert an active hold; None when the same one is already active (on any daemon)."""
        with self._write():
            row = self._pg.execute(
                f"INSERT INTO holds ({', '.join(hold)}) VALUES ({', '.join(['%s'] * len(hold))})"
                " ON CONFLICT DO NOTHING RETURNING id",
                [json.dumps(v) if isinstance(v, list) else v for v in hold.values()],
            ).fetchone()
            if row is None:
                return None
            self._holds_changed()
            return self.Hold.get_by_id(row[0])

    def clear_holds(self, target: str, kinds: Sequence[str], who: str, now: float) -> list[Hold]:
        with self._write():
            cleared = SqliteHolds.clear_holds(self, target, kinds, who, now)
            if cleared:
                self._holds_changed()
        return cleared

    def update_hold(self, hold_id: int, **fields: Any) -> None:
        with self._write():
            SqliteHolds.update_hold(self, hold_id, **fields)
            self._holds_changed()

    def _holds_changed(self, what: str = "holds") -> None:
        """The fleet told (at commit), and this daemon's own holds read again."""
        self._notify(what)
        self.holds_seen.changed(in_transaction=True)
