"""How the SQLite store keys and packs its runs (schema 15), and the reads that follow.

A run's number is the table's INTEGER PRIMARY KEY and its id that number as a string; a
run recorded before schema 13 kept its uuid, found through `runs_by_old_id`. A 16-digit
hex hash (input fingerprint, config hash) is kept as the signed 64-bit integer of its bits:
9 bytes instead of 17, in the row and in every index entry. A stage is a number in the
stage indexes, and what only a failure writes is one JSON object (`failure_json`). The
shared parts (history, lookups, templates) ask the same by column on PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from operator import itemgetter
from typing import Any

from peewee import SQL
from pipewarden.store.models import Run
from pipewarden.store.records import FAILED_STATUSES, FAILURES, RunFilter
from pipewarden.store.sqlite.base import Connected
from pipewarden.store.sqlite.lookups import LATER_OK
from pipewarden.store.sqlite.schema import FAILURE_COLUMNS, MINUTE_OF
from pipewarden.store.sqlite.schema import STAGE_NO as STAGE_NO_OF_ROW
from pipewarden.store.sqlite.templates import first

_HEX64 = re.compile(r"[0-9a-f]{16}")
IDS_PER_QUERY = 400  # ids looked up at once: twice as many parameters, SQLite's limit far above

# The run with an id: the run whose older id it is (runs_by_old_id, empty but for runs of
# before schema 13 and rows written by hand), else the run it is the number of; one lookup
# of the primary key. Parameters: the id, its number (run_number: None if it is none).
NUMBER_OF_ID = "coalesce((SELECT run_no FROM run_rows WHERE id_kept = ?), ?)"
BY_ID = f"run_no = {NUMBER_OF_ID}"
# The same of the run whose id and number are the columns `id` and `no` of the rows `v`.
BY_ID_OF_VALUES = (
    "run_no = coalesce((SELECT o.run_no FROM run_rows o WHERE o.id_kept = v.id), v.no)"
)

# The runs whose id is one of some ids: by number where the id is one, by runs_by_old_id
# (whose WHERE this repeats) where the run kept an older id.
OLD_ID = "{at}id_kept IS NOT NULL"


# The lowest number a run started at or after ? may have (schema 18's marks; none: past
# every run), and the highest a run started before ? may have (none: below every run).
FIRST_RUN_SINCE = (
    "(SELECT coalesce(MIN(first_run), 1 << 62) FROM run_minutes"
    f" WHERE minute >= {MINUTE_OF.format('?')})"
)
LAST_RUN_UNTIL = (
    "max(coalesce((SELECT last_run FROM run_minutes"
    f" WHERE minute <= {MINUTE_OF.format('?')} ORDER BY minute DESC LIMIT 1), 0),"
    f" coalesce((SELECT MAX(last_run) FROM late_runs WHERE minute <= {MINUTE_OF.format('?')}),"
    " 0))"
)

# The number of the stage (pipeline = ?, stage = ?) in `stages`, which the stage indexes
# hold instead of the two names (NULL, and no run found, for a stage that never ran). Each
# writer of a run gives it: the claim (Queue._next_numbers), a replay, the migration.
STAGE_NO = "(SELECT no FROM stages WHERE pipeline = ? AND stage = ?)"


def pack_hex64(text: str | None) -> int | str | None:
    """16 lowercase hex digits as the integer of their bits; anything else as it is. The
    schema reads the text back (`printf('%016x', ...)`), and packs older rows the same."""
    if text is None or len(text) != 16 or not _HEX64.fullmatch(text):
        return text
    number = int(text, 16)
    return number - (1 << 64) if number >= 1 << 63 else number


def failure_json(values: dict[str, Any]) -> str | None:
    """The failure object of a run (schema 15's `failure`): the columns given that are not
    None, as JSON; None when every one is (an ok run's)."""
    kept = {name: value for name, value in values.items() if value is not None}
    return json.dumps(kept, ensure_ascii=False) if kept else None


def run_number(run_id: str) -> int | None:
    """The run number an id names, if it is one as the store writes them (no sign, no
    leading zero, within SQLite's integers)."""
    digits = run_id.isascii() and run_id.isdigit() and len(run_id) <= 18
    return int(run_id) if digits and str(int(run_id)) == run_id else None


def ids_where(run_ids: Sequence[str], table: str = "") -> tuple[str, list[object]]:
    """SQL (and its parameters) true of the runs whose id is one of `run_ids`, each branch
    on an index: the primary key, or runs_by_old_id."""
    at = f"{table}." if table else ""
    numbers = [n for n in map(run_number, run_ids) if n is not None]
    marks = ", ".join("?" * len(run_ids))
    clauses, params = [], []
    if numbers:
        clauses.append(f"({at}run_no IN ({', '.join('?' * len(numbers))}) AND {at}id IN ({marks}))")
        params += [*numbers, *run_ids]
    clauses.append(f"({at}id_kept IN ({marks}) AND {OLD_ID.format(at=at)})")
    params += list(run_ids)
    return "(" + " OR ".join(clauses) + ")", params


class RunKeys(Connected):
    """The reads and writes that find runs by id or fingerprint, on the SQLite keys (the
    shared parts ask the same by column on PostgreSQL)."""

    def _one_stage(self, pipeline: str | None, stage: str | None) -> tuple[str, list[Any]]:
        """A stage's runs by its number: runs_by_stage and runs_by_stage_end hold it."""
        if pipeline is None or stage is None:
            return "", []
        return f"stage_no = {STAGE_NO}", [pipeline, stage]

    def _of_stage(self, at: str, named: str) -> str:
        return f"{at}stage_no = {STAGE_NO_OF_ROW.format(at=named)}"

    # Runs by start, through their numbers (schema 18): numbers are given in the order runs
    # start, and `run_minutes` bounds the numbers of the runs started since a time.
    def _newest_first(self, at: str = "") -> str:
        return f"{at}run_no DESC"

    def _oldest_first(self, at: str = "") -> str:
        return f"{at}run_no"

    def _started_since(self, since: float, at: str = "") -> tuple[str, list[Any]]:
        return f"{at}run_no >= {FIRST_RUN_SINCE} AND {at}started_at >= ?", [since, since]

    def _started_before(self, before: float, at: str = "") -> tuple[str, list[Any]]:
        return f"{at}run_no <= {LAST_RUN_UNTIL} AND {at}started_at < ?", [before] * 3

    def _listed_before(self, started_at: float, run_id: str, at: str = "") -> tuple[str, list]:
        return f"{at}run_no < {NUMBER_OF_ID}", [run_id, run_number(run_id)]

    def find_runs(
        self, wanted: RunFilter, columns: Sequence[str], error_shown: int, limit: int
    ) -> list[tuple]:
        """As Lookups.find_runs; the failures (failed or timed out) one status at a time,
        each newest first from runs_by_status's end (schema 22), then the newest of both:
        one range of the index for two statuses would be sorted whole."""
        find = super().find_runs  # type: ignore[misc]
        if wanted.status != FAILURES:
            return find(wanted, columns, error_shown, limit)
        numbered = [*columns, "run_no"]
        rows = [
            row
            for status in FAILED_STATUSES
            for row in find(replace(wanted, status=status), numbered, error_shown, limit)
        ]
        rows.sort(key=itemgetter(len(columns)), reverse=True)
        return [(*row[: len(columns)], *row[len(numbered) :]) for row in rows[:limit]]

    def count_runs(self, pipeline: str, stage: str, status: str, since: float) -> int:
        return self._conn.execute(
            f"SELECT COUNT(*) FROM run_rows WHERE stage_no = {STAGE_NO} AND status = ?"
            " AND finished_at >= ? AND replay_of IS NULL",
            (pipeline, stage, status, since),
        ).fetchone()[0]

    def last_run_statuses(
        self, pipeline: str, stage: str, count: int, since: float | None = None
    ) -> list[tuple[str, str]]:
        """(status, error) of the stage's last `count` runs finished (after `since`),
        newest first."""
        return self._conn.execute(
            f"SELECT status, error FROM run_rows WHERE stage_no = {STAGE_NO}"
            " AND finished_at IS NOT NULL AND finished_at > ? AND replay_of IS NULL"
            " ORDER BY finished_at DESC LIMIT ?",
            (pipeline, stage, float("-inf") if since is None else since, count),
        ).fetchall()

    def recent_durations(self, pipeline: str, stage: str, count: int) -> list[float]:
        """Durations of the stage's last `count` successful runs."""
        return [
            row[0]
            for row in self._conn.execute(
                f"SELECT duration_s FROM run_rows WHERE stage_no = {STAGE_NO} AND status = 'ok'"
                " AND finished_at IS NOT NULL AND replay_of IS NULL"
                " ORDER BY finished_at DESC LIMIT ?",
                (pipeline, stage, count),
            )
        ]

    def cost_since(self, pipeline: str, stages: Sequence[str], since: float) -> float:
        """The pipeline's summed run cost since `since`: one index range per stage."""
        total = 0.0
        for stage in stages:
            (cost,) = self._conn.execute(
                "SELECT COALESCE(SUM(cost), 0) FROM run_rows INDEXED BY runs_by_stage_end"
                f" WHERE stage_no = {STAGE_NO} AND finished_at >= ?",
                (pipeline, stage, since),
            ).fetchone()
            total += cost
        return total

    def _relabel_sql(self) -> str:
        """The new classification of a re-bucketed failure, and its first one kept beside
        it, written into its failure object."""
        return f"""failure = json_set(coalesce(failure, '{{}}'),
            '$.original_group', {first("group_name")}, '$.original_label', {first("label")},
            '$.original_category', {first("category")}, '$.original_type', {first("type")},
            '$.original_rule_id', {first("rule_id")},
            '$.original_rules_version', {first("rules_version")},
            '$.group_name', r.new_group, '$.label', r.new_label, '$.category', r.new_category,
            '$.type', r.new_type, '$.rule_id', r.new_rule_id, '$.rules_version', ?),
            reclassified_at = ?"""

    def earlier_success(
        self, item_id: int, pipeline: str, stage: str, fingerprint: str
    ) -> tuple[str, str] | None:
        """(id, data it merged into its item) of the item's latest run that already
        succeeded at this stage on the same input. Runs recorded before runs kept their data
        (schema 7) do not count: what they produced cannot be given back."""
        # Among the item's runs (the fingerprint holds its key), since schema 17: an index
        # of the fingerprints took a random page per run. The packed fingerprint, or the 32
        # hex digits a run recorded before schema 13 kept (text), of which these are the first.
        row = self._conn.execute(
            "SELECT id, data_out FROM run_rows INDEXED BY runs_by_item WHERE item_id = ?"
            " AND (input_fp = ? OR (typeof(input_fp) = 'text' AND length(input_fp) = 32"
            f" AND substr(input_fp, 1, 16) = ?)) AND status = 'ok' AND stage_no = {STAGE_NO}"
            " AND data_out IS NOT NULL AND replay_of IS NULL"
            " ORDER BY finished_at DESC LIMIT 1",
            (item_id, pack_hex64(fingerprint), fingerprint, pipeline, stage),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def add_replay(self, run: dict[str, Any]) -> str:
        """A finished run that `pipewarden replay --record` ran: its fields as columns,
        `replay_of` among them, and its id the next run number; it keeps the replayed run's
        trace id (trace_id is derived here: a given one is kept in trace_kept). No item
        changes."""
        if not run.get("replay_of"):
            raise ValueError("a replay names the run it replayed (replay_of)")
        with self._write():
            (last,) = self._conn.execute("SELECT MAX(run_no) FROM run_rows").fetchone()
            number = (last or 0) + 1
            row = {**run, "run_no": number, "id": str(number)}
            row["trace_kept"] = row.pop("trace_id", None)
            row["input_fp"] = pack_hex64(row.pop("input_fingerprint", None))
            row["config_fp"] = pack_hex64(row.pop("config_hash", None))
            row["failure"] = failure_json({c: row.pop(c) for c in FAILURE_COLUMNS if c in row})
            row["stage_no"] = self._stage_number(row["pipeline"], row["stage"])
            self._conn.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
        return row["id"]

    def runs_by_id(self, run_ids: Sequence[str]) -> list[Run]:
        if not run_ids:
            return []
        where, params = ids_where(list(run_ids))
        return list(self.Run.select().where(SQL(where, params)))

    def runs_with_prefix(self, prefix: str, limit: int = 20) -> list[Run]:
        """The run with this id, else those whose id starts with it. A run's id is a
        number since schema 13: run 12 is run 12, not also runs 120 to 129."""
        exact = self.runs_by_id([prefix])
        if exact:
            return exact
        # Bounds instead of LIKE: the older ids that start with it (runs_by_old_id), and
        # the numbers that do, one range of the primary key per length up to the newest.
        started = [f"(id_kept >= ? AND id_kept < ? AND {OLD_ID.format(at='')})"]
        params: list[object] = [prefix, prefix + "\uffff"]
        if prefix.isascii() and prefix.isdigit() and not prefix.startswith("0"):
            (last,) = self._conn.execute("SELECT MAX(run_no) FROM run_rows").fetchone()
            low, width = int(prefix) * 10, 10
            while last is not None and low <= last:
                started.append("run_no BETWEEN ? AND ?")
                params += [low, low + width - 1]
                low, width = low * 10, width * 10
        return list(
            self.Run.select()
            .where(SQL(" OR ".join(started), params))
            .order_by(SQL(self._newest_first()))
            .limit(limit)
        )

    def later_ok(self, run_id: str) -> bool:
        """Whether the failed run `run_id` was followed by an ok run of its item's stage."""
        where, params = ids_where([run_id], "runs")
        found = self._conn.execute(f"SELECT {LATER_OK} FROM runs WHERE {where}", params)
        return any(row[0] for row in found)

    def run_facts(self, run_ids: Sequence[str]) -> dict[str, tuple[str, str, str, str, str]]:
        """run id -> (pipeline, stage, channel, label, item key), for the runs that exist."""
        facts: dict[str, tuple[str, str, str, str, str]] = {}
        for start in range(0, len(run_ids), IDS_PER_QUERY):
            where, params = ids_where(list(run_ids[start : start + IDS_PER_QUERY]))
            facts.update(
                (row[0], row[1:])
                for row in self._conn.execute(
                    f"SELECT id, pipeline, stage, channel, label, item_key FROM runs WHERE {where}",
                    params,
                )
            )
        return facts

    def template_errors(self, template_id: int, limit: int) -> list[str | None]:
        """The errors of the template's latest `limit` member runs still stored, newest first."""
        members = self._conn.execute(
            "SELECT run_id FROM template_runs WHERE template_id = ? ORDER BY seen_at DESC",
            (template_id,),
        )
        errors: list[str | None] = []
        for (run_id,) in members:  # a pruned member is gone from runs: the next one counts
            where, params = ids_where([run_id])
            found = self._conn.execute(f"SELECT error FROM run_rows WHERE {where}", params)
            errors += [error for (error,) in found]
            if len(errors) >= limit:
                break
        return errors[:limit]
