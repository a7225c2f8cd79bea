"""Runs and items read back on PostgreSQL: as on SQLite, but for what SQLite reads from
its trigger-kept counts, which PostgreSQL does not keep (see schema.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from pipewarden.store.sqlite.history import History as SqliteHistory

# The latest run of a stage (%(pipeline)s, %(stage)s) that already succeeded on the same
# input, as sqlite.runkeys.RunKeys.earlier_success reads it; {fingerprint} is an SQL
# expression (a claim's reads it for each item it writes).
EARLIER_SUCCESS_SQL = (
    "SELECT id, data_out FROM runs WHERE input_fingerprint >= {fingerprint}"
    " AND input_fingerprint <= {fingerprint} || '~' AND (input_fingerprint = {fingerprint}"
    " OR length(input_fingerprint) = 32) AND status = 'ok' AND pipeline = %(pipeline)s"
    " AND stage = %(stage)s AND data_out IS NOT NULL AND replay_of IS NULL"
    " ORDER BY finished_at DESC LIMIT 1"
)


class History(SqliteHistory):
    _pg: Any  # the psycopg connection (postgres/base.py), in the store this joins
    _write: Any
    _claim_reads: threading.local  # per thread: the checkpoints the last claim read
    writes: int
    db: Any

    def _read_checkpoints(self, pipeline: str, stage: str, rows: Iterable[tuple]) -> None:
        """What a claim's write returned: for each item not forced, its checkpoint (or
        none), kept for the earlier_success that the scheduler asks next, on this thread,
        within the transaction that claimed (`writes` counts each begun)."""
        self._claim_reads.checkpoints = (self.writes, {
            (pipeline, stage, fingerprint): None if run_id is None else (run_id, data_out)
            for fingerprint, run_id, data_out in rows
        })  # fmt: skip

    def _forget_checkpoints(self) -> None:
        self._claim_reads.checkpoints = (-1, {})

    def earlier_success(
        self, item_id: int, pipeline: str, stage: str, fingerprint: str
    ) -> tuple[str, str] | None:
        """As on SQLite, found by the fingerprint's index (the item's id is not needed); for
        an item just claimed in this transaction, what its claim read (no round trip)."""
        serial, read = getattr(self._claim_reads, "checkpoints", (-1, {}))
        key = (pipeline, stage, fingerprint)
        if serial == self.writes and key in read and self.db.in_transaction():
            return read.pop(key)
        return self._pg.execute(
            EARLIER_SUCCESS_SQL.format(fingerprint="%(fingerprint)s"),
            {"pipeline": pipeline, "stage": stage, "fingerprint": fingerprint},
        ).fetchone()

    def item_channels(self) -> list[str]:
        """Every channel an item has now (items_by_channel holds every item here)."""
        return [row[0] for row in self._pg.execute(
            "SELECT DISTINCT channel FROM items WHERE channel IS NOT NULL ORDER BY channel"
        )]  # fmt: skip

    def item_labels(self) -> list[str]:
        """The labels of the items retrying, failed or ignored (the counts' rows per
        connection are no set of them here), hopping from one label to the next."""
        return [row[0] for row in self._pg.execute(
            "WITH RECURSIVE hop(v) AS (SELECT MIN(last_label) FROM items"
            " WHERE state IN ('retrying', 'failed', 'ignored') UNION ALL"
            " SELECT (SELECT MIN(last_label) FROM items WHERE last_label > hop.v"
            " AND state IN ('retrying', 'failed', 'ignored')) FROM hop WHERE hop.v IS NOT NULL)"
            " SELECT v FROM hop WHERE v IS NOT NULL"
        )]  # fmt: skip

    def add_replay(self, run: dict[str, Any]) -> str:
        """As on SQLite, its id from the fleet's run numbers; the trace id stored as given."""
        if not run.get("replay_of"):
            raise ValueError("a replay names the run it replayed (replay_of)")
        with self._write():
            (number,) = self._pg.execute("SELECT nextval('run_numbers')").fetchone()
            row = {**run, "id": str(number)}
            self._pg.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
                list(row.values()),
            )
        return row["id"]
