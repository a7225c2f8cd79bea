"""Ended runs counted per stage, slot, outcome and duration bucket (see store/rollup.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pipewarden.store import rollup
from pipewarden.store.records import FinishedRun
from pipewarden.store.sqlite.base import Connected

_ADD_SQL = (
    "INSERT INTO run_slots (pipeline, stage, slot, outcome, bucket, runs)"
    " VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (pipeline, stage, slot, outcome, bucket)"
    " DO UPDATE SET runs = run_slots.runs + excluded.runs"  # qualified: PostgreSQL asks
)


class Rollup(Connected):
    """Counts added in the transaction that ends the runs; read by status -v and charts."""

    def _count_finished(self, finished: Sequence[FinishedRun]) -> None:
        self._add_counts(rollup.counted(
            (f.pipeline, f.stage, f.finished_at,
             rollup.outcome(f.status, f.item_state, f.item_stage, f.stage), f.duration_s)
            for f in finished
        ))  # fmt: skip

    def _add_counts(self, counts: Counter[rollup.Key]) -> None:
        if counts:
            self._conn.executemany(_ADD_SQL, [(*key, n) for key, n in counts.items()])

    def ended_runs(
        self, pipeline: str, stage: str, since: float
    ) -> list[tuple[int, str, int, int]]:
        """(slot, outcome, bucket, runs) of the stage's runs ended in the slots from `since`'s."""
        return self._conn.execute(
            "SELECT slot, outcome, bucket, runs FROM run_slots"
            " WHERE pipeline = ? AND stage = ? AND slot >= ?",
            (pipeline, stage, rollup.slot(since)),
        ).fetchall()

    def _forget_slots_before(self, when: float) -> None:
        self._conn.execute("DELETE FROM run_slots WHERE slot < ?", (rollup.slot(when),))
