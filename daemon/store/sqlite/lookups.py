"""What the page, the CLI and the dry runs look up, and the audit lines: bounded reads, each
on an index (the runs by start as the backend finds them, `runs_by_item`, `items_claim`,
`holds`).

The same SQL on both backends (PostgreSQL runs it through its translated connection);
nothing here writes but `add_audit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peewee import SQL
from pipewarden.store.models import Run
from pipewarden.store.records import FAILURES, RunFilter
from pipewarden.store.sqlite.base import Connected
from pipewarden.store.sqlite.schema import ASIDE

KEYS_PER_QUERY = 500  # keys looked up at once (SQLite's variable limit is far above)
# A failed run "later succeeded" when an ok run of the same item at the same stage followed it.
LATER_OK = (
    "(runs.status IN ('failed', 'timed_out') AND EXISTS (SELECT 1 FROM runs AS later"
    " WHERE later.item_id = runs.item_id AND later.stage = runs.stage"
    " AND later.status = 'ok' AND later.started_at > runs.started_at"
    " AND later.replay_of IS NULL))"
)
# The runs `prune` deletes (as Books.prune_batch picks them), of those started before the
# cutoff (the backend's `_started_before`): ended before it, and not the item's latest.
# `{rows}` is the backend's table of run rows (Connected.RUN_ROWS), named `runs` outside.
PRUNABLE = (
    "finished_at IS NOT NULL AND finished_at < ? AND status != 'running'"
    " AND EXISTS (SELECT 1 FROM {rows} AS newer WHERE newer.item_id = runs.item_id"
    " AND newer.started_at > runs.started_at AND newer.replay_of IS NULL)"
)


class Lookups(Connected):
    def add_audit(self, who: str, action: str, target: str, detail: str, now: float) -> None:
        """One audit line, inside the caller's transaction when there is one."""
        with self._write():
            self._conn.execute(
                "INSERT INTO audit (at, who, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                (now, who, action, target, detail),
            )

    def audit_lines(self, limit: int) -> list[tuple[int, float, str, str, str, str]]:
        """(id, at, who, action, target, detail) of the newest `limit` lines, newest first."""
        return self._conn.execute(
            "SELECT id, at, who, action, target, detail FROM audit ORDER BY at DESC, id DESC"
            " LIMIT ?",
            (limit,),
        ).fetchall()

    def find_runs(
        self, wanted: RunFilter, columns: Sequence[str], error_shown: int, limit: int
    ) -> list[tuple]:
        """`columns` of the runs `wanted` picks, newest first, then whether a later attempt
        succeeded (0/1); `limit` rows at most, each `error` cut at `error_shown` characters."""
        where, params = self._where(wanted)
        if (one_stage := self._one_stage(wanted.pipeline, wanted.stage))[0]:
            where, params = f"{where} AND runs.{one_stage[0]}", [*params, *one_stage[1]]
        listed = ", ".join(
            f"substr(runs.error, 1, {int(error_shown)})" if name == "error"
            else f"runs.{name}" for name in columns
        )  # fmt: skip
        return self._conn.execute(
            f"SELECT {listed}, {LATER_OK} FROM runs{where}"
            f" ORDER BY {self._newest_first('runs.')} LIMIT ?",
            (*params, limit),
        ).fetchall()

    def later_ok(self, run_id: str) -> bool:
        """Whether the failed run `run_id` was followed by an ok run of its item's stage."""
        row = self._conn.execute(f"SELECT {LATER_OK} FROM runs WHERE id = ?", (run_id,))
        found = row.fetchone()
        return bool(found and found[0])

    def held_items(
        self, pipeline: str | None, limit: int
    ) -> tuple[list[tuple[str, str, str, int, str | None, float]], dict[str, int]]:
        """(pipeline, key, stage, attempt, label, since) of held items, oldest first, and
        how many each pipeline holds."""
        # ASIDE repeats the partial index's WHERE, so items_label_recent answers it.
        where, params = (f"state = 'held' AND {ASIDE}", []) if pipeline is None else (
            f"state = 'held' AND {ASIDE} AND pipeline = ?", [pipeline])  # fmt: skip
        rows = self._conn.execute(
            f"SELECT pipeline, key, stage, attempt, last_label, updated_at FROM items"
            f" WHERE {where} ORDER BY updated_at, id LIMIT ?",
            (*params, limit),
        ).fetchall()
        counts = self._conn.execute(
            f"SELECT pipeline, COUNT(*) FROM items WHERE {where} GROUP BY pipeline", params
        ).fetchall()
        return rows, dict(counts)

    def halts_between(
        self, targets: set[str], any_channel: bool, start: float
    ) -> list[tuple[str, str | None, str | None, float, float | None]]:
        """(target, label, reason, created_at, cleared_at) of the halts on `targets` (and on
        every channel, `any_channel`) active at some time since `start`, oldest first."""
        marks = ", ".join("?" * len(targets))
        channels = " OR scope = 'channel'" if any_channel else ""
        return self._conn.execute(
            "SELECT target, label, reason, created_at, cleared_at FROM holds WHERE kind = 'halt'"
            f" AND (target IN ({marks}){channels}) AND (cleared_at IS NULL OR cleared_at >= ?)"
            " ORDER BY created_at",
            (*sorted(targets), start),
        ).fetchall()

    def labelled_failures(
        self, label: str, pipeline: str | None, stage: str | None, since: float | None,
        sample: int,
    ) -> tuple[int, list[tuple[str, str, str, str]]]:  # fmt: skip
        """How many failed or retrying items have `label` (as requeue_by_label picks them),
        and (pipeline, stage, key, state) of the first `sample`."""
        where = f"last_label = ? AND state IN ('failed', 'retrying') AND {ASIDE}"
        params: list[Any] = [label]
        for column, value in (("pipeline", pipeline), ("stage", stage)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        if since is not None:
            where += " AND updated_at >= ?"
            params.append(since)
        total = self._conn.execute(f"SELECT COUNT(*) FROM items WHERE {where}", params)
        rows = self._conn.execute(
            f"SELECT pipeline, stage, key, state FROM items WHERE {where} ORDER BY id LIMIT ?",
            (*params, sample),
        ).fetchall()
        return total.fetchone()[0], rows

    def prunable_runs(
        self, older_than: float, sample: int
    ) -> tuple[int, list[tuple[str, str, str, str, str]]]:
        """How many runs `prune` would delete, and (id, pipeline, stage, key, status) of the
        first `sample`."""
        started, params = self._started_before(older_than)
        where = f"{started} AND {PRUNABLE.format(rows=self.RUN_ROWS)}"
        params = [*params, older_than]
        total = self._conn.execute(
            f"SELECT COUNT(*) FROM {self.RUN_ROWS} AS runs WHERE {where}", params
        )
        rows = self._conn.execute(
            f"SELECT id, pipeline, stage, item_key, status FROM runs WHERE {where}"
            f" ORDER BY {self._oldest_first()} LIMIT ?",
            (*params, sample),
        ).fetchall()
        return total.fetchone()[0], rows

    def known_keys(self, pipeline: str, keys: Sequence[str]) -> dict[str, str]:
        """Of `keys`, those the pipeline has an item for, with the item's state."""
        known: dict[str, str] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), KEYS_PER_QUERY):
            chunk = unique[start : start + KEYS_PER_QUERY]
            known |= dict(self._conn.execute(
                f"SELECT key, state FROM items WHERE pipeline = ? AND key IN"
                f" ({', '.join('?' * len(chunk))})", (pipeline, *chunk),
            ).fetchall())  # fmt: skip
        return known

    def runs_matching(
        self, limit: int | None, pipeline: str | None, stage: str | None, status: str | None,
        since: float | None,
    ) -> list[Run]:  # fmt: skip
        """The latest `limit` runs (None: every one since `since`) of a pipeline, stage or
        status if given, newest first."""
        run = self.Run
        query = run.select().order_by(SQL(self._newest_first()))
        if limit is not None:
            query = query.limit(limit)
        for column, value in (("pipeline", pipeline), ("stage", stage), ("status", status)):
            if value:
                query = query.where(getattr(run, column) == value)
        if since is not None:
            query = query.where(self._in_peewee(*self._started_since(since)))
        if (one_stage := self._one_stage(pipeline, stage))[0]:
            query = query.where(SQL(*one_stage))
        return list(query)

    def runs_started_from(self, after: float) -> list[Run]:
        """Runs started at or after `after`, by start (a few: the runs since a poll)."""
        run = self.Run
        started = self._in_peewee(*self._started_since(after))
        return list(run.select().where(started).order_by(run.started_at, run.id))

    def runs_by_id(self, run_ids: Sequence[str]) -> list[Run]:
        return list(self.Run.select().where(self.Run.id.in_(list(run_ids)))) if run_ids else []

    def runs_started_since(self, since: float) -> int:
        started, params = self._started_since(since)
        (count,) = self._conn.execute(
            f"SELECT COUNT(*) FROM {self.RUN_ROWS} WHERE {started}", params
        )
        return count[0]

    def _where(self, wanted: RunFilter) -> tuple[str, list[Any]]:
        clauses, params = _where_columns(wanted)
        ranges: list[tuple[str, list[Any]]] = []
        if wanted.since is not None:
            ranges.append(self._started_since(wanted.since, "runs."))
        if wanted.until is not None:
            ranges.append(self._started_before(wanted.until, "runs."))
        if wanted.before is not None:
            ranges.append(self._listed_before(*wanted.before, "runs."))
        for sql, values in ranges:
            clauses.append(sql)
            params += values
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _where_columns(wanted: RunFilter) -> tuple[list[str], list[Any]]:
    clauses, params = [], []
    for column in ("pipeline", "stage", "label"):
        if (value := getattr(wanted, column)) is not None:
            clauses.append(f"runs.{column} = ?")
            params.append(value)
    if wanted.status == FAILURES:
        clauses.append("runs.status IN ('failed', 'timed_out') AND runs.status != 'ok'")
    elif wanted.status is not None:
        clauses.append("runs.status = ?")
        params.append(wanted.status)
        if wanted.status != "ok":  # the partial index's WHERE, so runs_by_status answers it
            clauses.append("runs.status != 'ok'")
    return clauses, params
