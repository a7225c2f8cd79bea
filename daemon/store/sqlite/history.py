"""Reading the runs: what the guard asks of the history, and what people look up."""

from __future__ import annotations

from collections.abc import Sequence

from peewee import SQL
from pipewarden.store.models import Item, Run
from pipewarden.store.records import RunningRun
from pipewarden.store.sqlite.base import Connected


class History(Connected):
    """Runs and items read back."""

    def count_runs(self, pipeline: str, stage: str, status: str, since: float) -> int:
        return self._conn.execute(
            "SELECT COUNT(*) FROM runs WHERE pipeline = ? AND stage = ? AND status = ?"
            " AND finished_at >= ? AND replay_of IS NULL",
            (pipeline, stage, status, since),
        ).fetchone()[0]

    def internal_failures_in_a_row(self, item_id: int, current_run: str, limit: int) -> int:
        """How many of the item's latest runs (up to `limit`, not `current_run`) in a row
        failed for an internal reason: an item the daemon cannot record stops there."""
        rows = self._conn.execute(
            f"SELECT category, type FROM {self.RUN_ROWS} INDEXED BY runs_by_item WHERE item_id = ?"
            " AND id != ? AND replay_of IS NULL ORDER BY started_at DESC LIMIT ?",
            (item_id, current_run, limit),
        ).fetchall()
        internal = ("daemon", "internal")  # as outcomes.INTERNAL classifies them
        return next((n for n, row in enumerate(rows) if row != internal), len(rows))

    def label_failures(
        self, channel: str, label: str, since: float, samples: int
    ) -> tuple[int, list[str]]:
        """How many runs failed with this label on this channel since `since`, and the
        latest few error texts."""
        where = (
            f"FROM {self.RUN_ROWS} INDEXED BY runs_by_channel_label WHERE channel = ? AND label = ?"
            " AND finished_at >= ? AND status IN ('failed', 'timed_out') AND replay_of IS NULL"
        )
        params = (channel, label, since)
        (count,) = self._conn.execute(f"SELECT COUNT(*) {where}", params).fetchone()
        texts = self._conn.execute(
            f"SELECT error {where} ORDER BY finished_at DESC LIMIT ?", (*params, samples)
        ).fetchall()
        return count, [row[0] for row in texts]

    def last_run_statuses(
        self, pipeline: str, stage: str, count: int, since: float | None = None
    ) -> list[tuple[str, str]]:
        """(status, error) of the stage's last `count` runs finished (after `since`),
        newest first."""
        return self._conn.execute(
            "SELECT status, error FROM runs WHERE pipeline = ? AND stage = ?"
            " AND finished_at IS NOT NULL AND finished_at > ? AND replay_of IS NULL"
            " ORDER BY finished_at DESC LIMIT ?",
            (pipeline, stage, float("-inf") if since is None else since, count),
        ).fetchall()

    def cost_since(self, pipeline: str, stages: Sequence[str], since: float) -> float:
        """The pipeline's summed run cost since `since`: one index range per stage."""
        total = 0.0
        for stage in stages:
            (cost,) = self._conn.execute(
                "SELECT COALESCE(SUM(cost), 0) FROM runs INDEXED BY runs_by_stage_end"
                " WHERE pipeline = ? AND stage = ? AND finished_at >= ?",
                (pipeline, stage, since),
            ).fetchone()
            total += cost
        return total

    def running_runs(self) -> list[RunningRun]:
        # `!= 'ok'` repeats the partial index's WHERE, so runs_by_status answers it.
        running = (self.Run.status == "running") & (self.Run.status != "ok")
        columns = [getattr(self.Run, name) for name in RunningRun._fields]
        query = self.Run.select(*columns).where(running).order_by(self.Run.started_at)
        return [RunningRun(*row) for row in query.tuples()]

    def recent_durations(self, pipeline: str, stage: str, count: int) -> list[float]:
        """Durations of the stage's last `count` successful runs."""
        return [
            row[0]
            for row in self._conn.execute(
                "SELECT duration_s FROM runs WHERE pipeline = ? AND stage = ? AND status = 'ok'"
                " AND finished_at IS NOT NULL AND replay_of IS NULL"
                " ORDER BY finished_at DESC LIMIT ?",
                (pipeline, stage, count),
            )
        ]

    def recent_runs(
        self, limit: int, stage: str | None = None, status: str | None = None,
        pipeline: str | None = None,
    ) -> list[Run]:  # fmt: skip
        query = self.Run.select().order_by(SQL(self._newest_first())).limit(limit)
        if stage:
            query = query.where(self.Run.stage == stage)
        if status:
            query = query.where(self.Run.status == status)
            if status != "ok":  # the partial index's WHERE, so runs_by_status answers it
                query = query.where(self.Run.status != "ok")
        if pipeline:
            query = query.where(self.Run.pipeline == pipeline)
        if (one_stage := self._one_stage(pipeline, stage))[0]:
            query = query.where(SQL(*one_stage))
        return list(query)

    def runs_with_prefix(self, prefix: str, limit: int = 20) -> list[Run]:
        """The run with this id, else those whose id starts with it. A run's id is a
        number since schema 13: run 12 is run 12, not also runs 120 to 129."""
        exact = self.Run.get_or_none(self.Run.id == prefix)
        if exact is not None:
            return [exact]
        # Bounds instead of LIKE, so the primary key's index answers it.
        return list(
            self.Run.select()
            .where((self.Run.id >= prefix) & (self.Run.id < prefix + "\uffff"))
            .order_by(self.Run.started_at.desc())
            .limit(limit)
        )

    def item(self, pipeline: str, key: str) -> Item | None:
        return self.Item.get_or_none((self.Item.pipeline == pipeline) & (self.Item.key == key))

    def item_runs(self, item_id: int) -> list[Run]:
        return list(
            self.Run.select().where(self.Run.item_id == item_id).order_by(self.Run.started_at)
        )

    def pipelines_of(self, key: str) -> list[str]:
        """The pipelines that have an item with this key."""
        return [row[0] for row in self._conn.execute(
            "SELECT pipeline FROM items WHERE key = ?", (key,))]  # fmt: skip

    def item_channels(self) -> list[str]:
        """Every channel an item has now, from the trigger-kept counts (items_by_channel
        holds only the claimable items)."""
        return [row[0] for row in self._conn.execute(
            "SELECT DISTINCT channel FROM item_counts WHERE n > 0 AND channel != ''"
            " ORDER BY channel")]  # fmt: skip

    def item_labels(self) -> list[str]:
        """The labels of the items retrying, failed or ignored, from the trigger-kept counts,
        which keep a label there only. No index leads with items.last_label: hopping from one
        label to the next walked every item (1.4 s at a million, for a tab completion)."""
        return [row[0] for row in self._conn.execute(
            "SELECT DISTINCT label FROM item_counts WHERE n > 0 AND label != ''"
            " ORDER BY label")]  # fmt: skip
