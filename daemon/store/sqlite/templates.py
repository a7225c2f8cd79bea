"""Issue 15's history operations: the stored failures grouped by their text, for a backtest
of rules, and re-bucketing them under the current rules (`pipewarden reclassify`).

A failure here is a run the rules judged: failed or timed out, and not for a reason of the
daemon's own (an interrupted or unrecordable run, category `daemon`). Stores repeat texts
(the same error over thousands of runs), so the rules see each distinct text once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipewarden.store.records import FailureText, Relabel
from pipewarden.store.sqlite.base import Connected

_FAILURES = (  # a recorded replay is no production failure: it keeps its own judgement
    "{at}status IN ('failed', 'timed_out') AND {at}status != 'ok' AND {started}"
    " AND {at}group_name IS NOT NULL AND coalesce({at}category, '') != 'daemon'"
    " AND {at}replay_of IS NULL"
)
_TEXT_KEY = "pipeline, stage, coalesce(error, ''), coalesce(error_type, ''), group_name, label"


class Reclassify(Connected):
    """Stored failures by text, and their classification changed in place."""

    def _failures(self, since: float | None, at: str = "") -> tuple[str, list[Any]]:
        """SQL (and its parameters) true of the stored failures started since `since`."""
        if since is None:
            return _FAILURES.format(at=at, started="TRUE"), []
        started, params = self._started_since(since, at)
        return _FAILURES.format(at=at, started=started), params

    def failure_texts(self, since: float | None) -> list[FailureText]:
        failures, params = self._failures(since)
        rows = self._conn.execute(
            f"SELECT {_TEXT_KEY}, count(*) FROM runs WHERE {failures} GROUP BY {_TEXT_KEY}",
            params,
        )
        return [
            FailureText(pipeline, stage, error, error_type or None, group, label or "", n)
            for pipeline, stage, error, error_type, group, label, n in rows
        ]

    def reclassify(
        self, changes: Sequence[Relabel], since: float | None, rules_version: str, now: float
    ) -> tuple[int, int]:
        """Give the failures since `since` of each changed text their new classification,
        keeping the first one beside it; the items they left relabelled too (the status
        tree counts them under the new label). Returns (runs, items) changed."""
        conn = self._conn
        failures, params = self._failures(since, "runs.")
        with self._write():
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS relabel (pipeline TEXT, stage TEXT, error TEXT,"
                " error_type TEXT, grp TEXT, label TEXT, new_group TEXT, new_label TEXT,"
                " new_category TEXT, new_type TEXT, new_rule_id TEXT,"
                " PRIMARY KEY (pipeline, stage, error, error_type, grp, label))"
            )
            conn.execute("DELETE FROM relabel")
            conn.executemany(  # both backends' SQL; a NULL and an empty label share a key,
                # and the rules judge both alike: the first is kept
                "INSERT INTO relabel VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(c.text.pipeline, c.text.stage, c.text.error, c.text.error_type or "",
                  c.text.group, c.text.label, c.group, c.label, c.category, c.type, c.rule_id)
                 for c in changes],
            )  # fmt: skip
            runs = conn.execute(
                f"""UPDATE {self.RUN_ROWS} AS runs SET {self._relabel_sql()}
                FROM relabel r WHERE {failures}
                    AND {self._of_stage("runs.", "r.")}
                    AND r.error = coalesce(runs.error, '')
                    AND r.error_type = coalesce(runs.error_type, '')
                    AND r.grp = runs.group_name AND r.label = coalesce(runs.label, '')""",
                (rules_version, now, *params),
            ).rowcount
            items = conn.execute(
                "UPDATE items SET last_group = r.group_name, last_label = r.label,"
                " relabelled_at = r.reclassified_at"
                f" FROM {self.RUN_ROWS} r INDEXED BY runs_reclassified WHERE r.reclassified_at = ?"
                " AND items.id = r.item_id AND items.last_run_id = r.id"
                " AND items.state IN ('retrying', 'failed')",
                (now,),
            ).rowcount
            conn.execute("DELETE FROM relabel")
        return runs, items

    def _relabel_sql(self) -> str:
        """The SET of a re-bucketed failure: its new classification (then the rules version
        and the time, as parameters), its first one kept beside it."""
        return f"""original_group = {first("group_name")},
            original_label = {first("label")},
            original_category = {first("category")},
            original_type = {first("type")},
            original_rule_id = {first("rule_id")},
            original_rules_version = {first("rules_version")},
            group_name = r.new_group, label = r.new_label, category = r.new_category,
            type = r.new_type, rule_id = r.new_rule_id, rules_version = ?,
            reclassified_at = ?"""

    def reclassified_counts(self) -> dict[tuple[str, str, str, str, str], int]:
        """(pipeline, stage, state, group, label) -> items a re-bucketing relabelled and
        that carry its label still (until their next run): the status tree says so."""
        rows = self._conn.execute(
            "SELECT pipeline, stage, state, last_group, last_label, count(*)"
            " FROM items INDEXED BY items_relabelled WHERE relabelled_at IS NOT NULL"
            " GROUP BY 1, 2, 3, 4, 5"
        )
        return {tuple(row[:5]): row[5] for row in rows}  # type: ignore[misc]


def first(column: str) -> str:
    """The column's value as the run was first judged: kept at its first re-bucketing."""
    kept = "original_" + column.removesuffix("_name")
    return f"CASE WHEN runs.reclassified_at IS NULL THEN runs.{column} ELSE runs.{kept} END"
