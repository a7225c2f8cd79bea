"""The outbox on PostgreSQL: each row delivered by one daemon of the fleet.

A daemon takes the rows it will deliver (claimed_by, and a retry time a claim's length
ahead) with FOR UPDATE SKIP LOCKED, so two daemons never take the same row; if it dies
mid-delivery, the claim lapses and another daemon delivers the row.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipewarden.store.models import Outbox as OutboxRow
from pipewarden.store.postgres.base import Connected
from pipewarden.store.sqlite.outbox import DUE_BATCH
from pipewarden.store.sqlite.outbox import Outbox as SqliteOutbox

CLAIM_S = 120.0  # a delivery takes at most this long (Apprise's timeouts are shorter)


class Outbox(Connected, SqliteOutbox):
    def due_notifications(self, now: float, stopping: bool) -> list[OutboxRow]:
        """Undelivered rows due now (at a stop: also every one never tried that no other
        daemon is delivering), oldest first, taken for this daemon to deliver."""
        # A row another daemon took is never tried until its delivery ends: at a stop,
        # taking it too delivered it twice.
        untried = " OR (attempts = 0 AND (claimed_by IS NULL OR claimed_by = %(me)s))"
        ready = "next_try_at <= %(now)s" + (untried if stopping else "")
        return self._take(f"({ready})", {"now": now})

    def unsent(self, target: str, events: Sequence[str]) -> list[OutboxRow]:
        """Every undelivered row of these events for `target` that no other daemon is
        delivering, taken for this one."""
        return self._take(
            "target = %(target)s AND event = ANY(%(events)s) AND (claimed_by IS NULL"
            " OR claimed_by = %(me)s OR next_try_at <= %(now)s)",
            {"target": target, "events": list(events), "now": None},
        )

    def _take(self, where: str, params: dict) -> list[OutboxRow]:
        with self._write():
            clock = self._pg.execute(
                "SELECT extract(epoch from clock_timestamp())::float8"
            ).fetchone()
            now = params["now"] if params["now"] is not None else clock[0]
            ids = [row[0] for row in self._pg.execute(
                "UPDATE outbox SET claimed_by = %(me)s, next_try_at = %(until)s"
                " WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NULL AND"
                f" {where} ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING id",
                {**params, "now": now, "me": self.daemon or "", "until": now + CLAIM_S,
                 "limit": DUE_BATCH},
            )]  # fmt: skip
        if not ids:
            return []
        return list(self.Outbox.select().where(self.Outbox.id.in_(ids)).order_by(self.Outbox.id))
