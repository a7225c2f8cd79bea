"""What people and calendars do to many items at once: defer, requeue, release, fail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipewarden.store.records import FAILED_BY_A_PERSON, HeldChange
from pipewarden.store.sqlite.base import Connected
from pipewarden.store.sqlite.queue import _CLAIMABLE
from pipewarden.store.sqlite.schema import ASIDE


class Requeue(Connected):
    """Bulk changes to items."""

    def defer_channel(self, channel: str, until: float, now: float, label: str) -> int:
        """Ready items of a closed channel wait, deferred (not failed), until it opens."""
        with self._write():
            return self._conn.execute(
                f"UPDATE items SET state = 'deferred', ready_at = ?, last_label = ?,"
                f" last_group = 'defer', updated_at = ? WHERE channel = ?"
                f" AND state IN ({_CLAIMABLE}) AND ready_at <= ?",
                (until, label, now, channel, now),
            ).rowcount

    def requeue_by_label(
        self, label: str, now: float, pipeline: str | None = None, stage: str | None = None,
        since: float | None = None, dry_run: bool = False, force: bool = False,
        before: float | None = None, limit: int | None = None,
    ) -> int:  # fmt: skip
        """Failed and retrying items with `label` back in the queue, attempts reset; with
        `before`, only those whose last change was before it; at most `limit` of them."""
        where = f"last_label = ? AND state IN ('failed', 'retrying') AND {ASIDE}"
        params: list[Any] = [label]
        for column, value in (("pipeline", pipeline), ("stage", stage)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        for bound, value in ((">=", since), ("<", before)):
            if value is not None:
                where += f" AND updated_at {bound} ?"
                params.append(value)
        if limit is not None:
            where = f"id IN (SELECT id FROM items WHERE {where} ORDER BY id LIMIT ?)"
            params.append(limit)
        with self._write():
            if dry_run:
                return self._conn.execute(
                    f"SELECT COUNT(*) FROM items WHERE {where}", params
                ).fetchone()[0]
            return self._conn.execute(
                f"UPDATE items SET state = 'queued', attempt = 0, ready_at = ?, updated_at = ?,"
                f" requeues = requeues + 1, force = ? WHERE {where}",
                (now, now, int(force), *params),
            ).rowcount

    def change_held(
        self, pipeline: str, keys: Sequence[str] | None, now: float,
        fail_reason: str | None = None, dry_run: bool = False,
    ) -> HeldChange:  # fmt: skip
        """Held items back in the queue at the attempt they were held at, or, with
        `fail_reason`, failed with it (label FAILED_BY_A_PERSON). `keys` None: every held
        item of the pipeline."""
        with self._write():
            found = self._held(pipeline, keys)
            changed = [key for _, key in found]
            done = set(changed)
            not_held = self._states(
                pipeline, [k for k in dict.fromkeys(keys or ()) if k not in done]
            )
            if dry_run or not found:
                return HeldChange(changed, not_held)
            if fail_reason is None:
                update = "state = 'queued', ready_at = ?, updated_at = ?", (now, now)
            else:
                update = (
                    "state = 'failed', ready_at = NULL, last_error = ?, last_label = ?,"
                    " last_group = 'terminal', updated_at = ?",
                    (fail_reason, FAILED_BY_A_PERSON, now),
                )
            self._conn.executemany(
                f"UPDATE items SET {update[0]} WHERE id = ? AND state = 'held'",
                [(*update[1], item_id) for item_id, _ in found],
            )
        return HeldChange(changed, not_held)

    def _held(self, pipeline: str, keys: Sequence[str] | None) -> list[tuple[int, str]]:
        if keys is None:
            return self._conn.execute(
                f"SELECT id, key FROM items WHERE state = 'held' AND {ASIDE}"
                " AND pipeline = ? ORDER BY id",
                (pipeline,),
            ).fetchall()
        rows = []
        for key in dict.fromkeys(keys):
            rows += self._conn.execute(
                "SELECT id, key FROM items WHERE pipeline = ? AND key = ? AND state = 'held'",
                (pipeline, key),
            ).fetchall()
        return rows

    def _states(self, pipeline: str, keys: Sequence[str]) -> dict[str, str | None]:
        states: dict[str, str | None] = {}
        for key in keys:
            row = self._conn.execute(
                "SELECT state FROM items WHERE pipeline = ? AND key = ?", (pipeline, key)
            ).fetchone()
            states[key] = row[0] if row else None
        return states

    def held_count(self, label: str, pipeline: str | None = None, stage: str | None = None) -> int:
        """Held items whose last label is `label` (a `retry` by label does not take them)."""
        where, params = f"state = 'held' AND {ASIDE} AND last_label = ?", [label]
        for column, value in (("pipeline", pipeline), ("stage", stage)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        return self._conn.execute(f"SELECT COUNT(*) FROM items WHERE {where}", params).fetchone()[0]

    def stuck_items(self, min_requeues: int) -> list[tuple[str, str, str, int]]:
        """(pipeline, stage, label, count): requeued by hand that often, and failing still."""
        return self._conn.execute(
            "SELECT pipeline, stage, last_label, COUNT(*) FROM items INDEXED BY items_requeues"
            " WHERE requeues > 0 AND requeues >= ? AND state IN ('failed', 'retrying')"
            " GROUP BY pipeline, stage, last_label",
            (min_requeues,),
        ).fetchall()
