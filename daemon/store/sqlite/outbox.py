"""The notification outbox: each row one message for one target, sent once."""

from __future__ import annotations

from collections.abc import Sequence

from pipewarden.store.models import Outbox as OutboxRow
from pipewarden.store.sqlite.base import Connected

DUE_BATCH = 500  # rows a delivery takes at once
_IDS_PER_QUERY = 500  # within SQLite's bound on parameters


class Outbox(Connected):
    """Queued, due, sent or retried later."""

    def add_notification(
        self, key: str, event: str, target: str, title: str, body: str, now: float, due: float
    ) -> None:
        self.Outbox.create(
            key=key, event=event, target=target, title=title, body=body,
            created_at=now, due_at=due, next_try_at=due,
        )  # fmt: skip

    def sent_recently(self, key: str, target: str, since: float) -> bool:
        """A notification with this key was queued for `target` since `since`."""
        outbox = self.Outbox
        return (
            outbox.select()
            .where((outbox.key == key) & (outbox.target == target) & (outbox.created_at >= since))
            .exists()
        )

    def next_notification_due(self, targets: Sequence[str]) -> float | None:
        """When the next undelivered notification to one of `targets` is due."""
        if not targets:
            return None
        # Plain SQL: asked on every scheduler pass.
        return self._conn.execute(
            "SELECT MIN(next_try_at) FROM outbox WHERE sent_at IS NULL"
            f" AND target IN ({', '.join('?' * len(targets))})",
            list(targets),
        ).fetchone()[0]

    def due_notifications(self, now: float, stopping: bool) -> list[OutboxRow]:
        """Undelivered rows due now (at a stop: also every one never tried), oldest first."""
        outbox = self.Outbox
        ready = (outbox.next_try_at <= now) | (stopping & (outbox.attempts == 0))
        query = outbox.select().where(outbox.sent_at.is_null() & ready)
        return list(query.order_by(outbox.id).limit(DUE_BATCH))

    def unsent(self, target: str, events: Sequence[str]) -> list[OutboxRow]:
        """Every undelivered row of these events for `target`, whenever due."""
        outbox = self.Outbox
        return list(
            outbox.select().where(
                outbox.sent_at.is_null() & (outbox.target == target) & outbox.event.in_(events)
            )
        )

    def mark_sent(self, ids: Sequence[int], now: float) -> None:
        outbox = self.Outbox
        outbox.update(sent_at=now, attempts=outbox.attempts + 1).where(
            outbox.id.in_(list(ids))
        ).execute()

    def mark_failed(
        self, ids: Sequence[int], attempts: int, next_try_at: float, error: str
    ) -> None:
        self.Outbox.update(attempts=attempts, next_try_at=next_try_at, last_error=error).where(
            self.Outbox.id.in_(list(ids))
        ).execute()

    def outbox_backlog(self) -> int:
        return self.Outbox.select().where(self.Outbox.sent_at.is_null()).count()

    def run_facts(self, run_ids: Sequence[str]) -> dict[str, tuple[str, str, str, str, str]]:
        """run id -> (pipeline, stage, channel, label, item key), for the runs that exist."""
        facts: dict[str, tuple[str, str, str, str, str]] = {}
        for start in range(0, len(run_ids), _IDS_PER_QUERY):
            chunk = list(run_ids[start : start + _IDS_PER_QUERY])
            facts.update(
                (row[0], row[1:])
                for row in self._conn.execute(
                    "SELECT id, pipeline, stage, channel, label, item_key FROM runs"
                    f" WHERE id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
            )
        return facts
