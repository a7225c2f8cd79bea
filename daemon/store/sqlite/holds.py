"""Halts and pauses: raised, cleared, probed; at most one active per target and kind."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from pipewarden.store.models import Hold
from pipewarden.store.sqlite.base import Connected


class Holds(Connected):
    """The holds table."""

    def active_holds(self) -> list[Hold]:
        # Plain SQL: the scheduler asks on every pass, and a Peewee query costs far more.
        cursor = self._conn.execute("SELECT * FROM holds WHERE cleared_at IS NULL ORDER BY id")
        columns = [column[0] for column in cursor.description]
        return [self.Hold(**dict(zip(columns, row, strict=True))) for row in cursor]

    def add_hold(self, hold: dict[str, Any]) -> Hold | None:
        """Insert an active hold; None when the same one is already active."""
        with self._write():
            cursor = self._conn.execute(
                f"INSERT INTO holds ({', '.join(hold)}) VALUES ({', '.join('?' * len(hold))})"
                " ON CONFLICT DO NOTHING",
                [json.dumps(v) if isinstance(v, list) else v for v in hold.values()],
            )
            return self.Hold.get_by_id(cursor.lastrowid) if cursor.rowcount else None

    def clear_holds(self, target: str, kinds: Sequence[str], who: str, now: float) -> list[Hold]:
        """Clear the active holds of `kinds` on `target`; returns the ones cleared."""
        with self._write():
            cleared = list(
                self.Hold.select().where(
                    self.Hold.cleared_at.is_null()
                    & (self.Hold.target == target)
                    & self.Hold.kind.in_(list(kinds))
                )
            )
            if cleared:
                self.Hold.update(cleared_at=now, cleared_by=who).where(
                    self.Hold.id.in_([h.id for h in cleared])
                ).execute()
        return cleared

    def holds_on(self, targets: Iterable[str], since: float) -> list[Hold]:
        """Holds on these targets that were active at some point since `since`."""
        hold = self.Hold
        return list(
            hold.select()
            .where(
                hold.target.in_(list(targets))
                & (hold.cleared_at.is_null() | (hold.cleared_at >= since))
            )
            .order_by(hold.created_at)
        )

    def update_hold(self, hold_id: int, **fields: Any) -> None:
        with self._write():
            self.Hold.update(**fields).where(self.Hold.id == hold_id).execute()

    def halt_cleared_at(self, scope: str, target: str) -> float | None:
        """When a halt on this target was last cleared (by a person, a probe or a new day)."""
        return self._conn.execute(
            "SELECT MAX(cleared_at) FROM holds WHERE scope = ? AND target = ? AND kind = 'halt'",
            (scope, target),
        ).fetchone()[0]

    def hold(self, hold_id: int) -> Hold | None:
        return self.Hold.get_or_none(self.Hold.id == hold_id)
