"""Enqueues on PostgreSQL: a whole batch in one statement, its NOTIFY included.

The SQLite part reads each item, then inserts or updates it: two round trips per item,
and a BEGIN, a NOTIFY and a COMMIT around them, which is most of an idle fleet's
enqueue → worker start. Here one statement locks the items already known, starts again
those that may start again, inserts the new ones and tells the fleet; outside a
transaction it is its own (one round trip). The SQLite part's loop is still what runs
where one statement cannot say the same: a key given twice in one batch (the second
finds the first queued), or an item restarted without data whose channel depends on the
data it keeps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pipewarden.store.postgres.base import Connected
from pipewarden.store.records import Enqueued
from pipewarden.store.sqlite.queue import Queue as SqliteQueue
from pipewarden.types import ItemState

_RESTARTABLE = ("done", "failed", "ignored")
_RESTARTABLE_FORCED = (*_RESTARTABLE, "queued", "retrying", "deferred", "held")

# One row per item given: its state before (NULL: not known), whether it started again,
# whether it is new. A key another enqueue inserts meanwhile is left to it (unchanged).
_ENQUEUE_SQL = """
WITH v AS (
  SELECT * FROM unnest(%(keys)s::text[], %(datas)s::text[], %(channels)s::text[])
    WITH ORDINALITY AS v(key, data, channel, n)
), was AS (
  SELECT items.id, items.key, items.state FROM items JOIN v ON items.key = v.key
  WHERE items.pipeline = %(pipeline)s ORDER BY items.id FOR UPDATE OF items
), restarted AS (
  UPDATE items SET stage = %(stage)s, state = 'queued', data = COALESCE(v.data, items.data),
    attempt = 0, ready_at = %(now)s, channel = v.channel, force = %(force)s,
    updated_at = %(now)s
  FROM was JOIN v ON v.key = was.key
  WHERE items.id = was.id AND items.state = ANY(%(restartable)s) RETURNING items.key
), added AS (
  INSERT INTO items (pipeline, key, stage, state, data, ready_at, channel, force, created_at,
    updated_at)
  SELECT %(pipeline)s, v.key, %(stage)s, 'queued', COALESCE(v.data, '{}'), %(now)s,
    v.channel, %(force)s, %(now)s, %(now)s
  FROM v WHERE NOT EXISTS (SELECT 1 FROM was WHERE was.key = v.key) ORDER BY v.n
  ON CONFLICT (pipeline, key) DO NOTHING RETURNING key
), told AS (
  SELECT pg_notify('pipewarden', %(payload)s) WHERE EXISTS (SELECT 1 FROM restarted)
    OR EXISTS (SELECT 1 FROM added)
)
SELECT v.key, was.state, restarted.key IS NOT NULL, added.key IS NOT NULL,
  (SELECT count(*) FROM told)
FROM v LEFT JOIN was ON was.key = v.key LEFT JOIN restarted ON restarted.key = v.key
  LEFT JOIN added ON added.key = v.key
ORDER BY v.n
"""


class Enqueue(Connected):
    ITEM_ROOM = None  # SQLite's room in an item's row (its schema 19) is not PostgreSQL's

    def enqueue(
        self,
        pipeline: str,
        stage: str,
        items: Sequence[tuple[str, dict[str, Any] | None]],
        now: float,
        channel_for: Any = None,  # Callable[[dict], str]: the stage's channel for an item
        force: bool = False,
    ) -> Enqueued:
        """As on SQLite (see sqlite.queue.Queue.enqueue), in one statement; the fleet is
        told when an item was added or started again."""
        keys = [key for key, _ in items]
        keeps_data = any(given is None for _, given in items)
        if len(set(keys)) < len(keys) or (channel_for is not None and keeps_data):
            with self._write():
                result = SqliteQueue.enqueue(
                    self,
                    pipeline,
                    stage,
                    items,
                    now,
                    channel_for,
                    force,  # type: ignore[arg-type]
                )
                if result.new or result.restarted:
                    self._notify("enqueue")
            return result
        channels = [channel_for(given) if channel_for else stage for _, given in items]
        if not self.db.in_transaction():
            self.writes += 1  # the statement is its own write transaction
        restartable = list(_RESTARTABLE_FORCED if force else _RESTARTABLE)
        rows = self._pg.execute(_ENQUEUE_SQL, {
            "keys": keys, "datas": [None if g is None else json.dumps(g) for _, g in items],
            "channels": channels, "pipeline": pipeline, "stage": stage, "now": now,
            "force": int(force), "restartable": restartable,
            "payload": f"enqueue {self.daemon or ''}",
        }).fetchall()  # fmt: skip
        result = Enqueued([], [], [], [], [])
        for (key, given), (_, state, restarted, added, _) in zip(items, rows, strict=True):
            if added:
                result.new.append(key)
            elif restarted:
                result.restarted.append(key)
                if given is not None:
                    result.data_replaced.append(key)
            elif state == ItemState.HELD:
                result.held.append(key)
            else:
                result.unchanged.append(key)
        return result
