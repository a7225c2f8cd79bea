"""The queue: enqueue, the scheduler's claims and finishes, and recovery after a crash.

The hot path (claim and finish) is plain SQL run in batches inside one transaction,
because per-row ORM saves cannot keep up with a busy pool.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any

from pipewarden.store import rollup
from pipewarden.store.records import (
    Claimed,
    Enqueued,
    FinishedRun,
    NewRun,
    Recovered,
    trace_id_of,
)
from pipewarden.store.sqlite.batches import execute_rows
from pipewarden.store.sqlite.counts import CountKey, add_moves, count_key, current_keys
from pipewarden.store.sqlite.rollup import Rollup
from pipewarden.store.sqlite.runkeys import (
    BY_ID,
    BY_ID_OF_VALUES,
    STAGE_NO,
    failure_json,
    pack_hex64,
    run_number,
)
from pipewarden.store.sqlite.schema import FAILURE_COLUMNS
from pipewarden.types import CLAIMABLE_STATES, PENDING_STATES, ItemState, RunStatus

_RUN_END_COLUMNS = (
    "status", "finished_at", "duration_s", "exit_code", "signal", "pid", "pgid", "proc_start",
    "error", "error_type",
    "traceback", "output", "group_name", "label", "category", "type", "rule_id",
    "rules_version", "rows_out", "cost", "data_out", "probe_of", "progress", "message",
)  # fmt: skip
# An ended run's columns in its row, and those kept in its failure object (schema 15).
_ROW_END_COLUMNS = tuple(c for c in _RUN_END_COLUMNS[:-2] if c not in FAILURE_COLUMNS)
_FAILURE_END_COLUMNS = tuple(c for c in _RUN_END_COLUMNS if c in FAILURE_COLUMNS)
_failure_values = attrgetter(*_FAILURE_END_COLUMNS)
_row_end_values = attrgetter(*_ROW_END_COLUMNS)
# The columns of run_rows that keep these otherwise (schema 21), and where they are.
_KEPT_IN = {"duration_s": "duration_us", "pgid": "pgid_off", "data_out": "data_kept"}
_DURATION_AT, _PID_AT, _PGID_AT, _DATA_AT = map(
    _ROW_END_COLUMNS.index, ("duration_s", "pid", "pgid", "data_out")
)
# A pass's run ends, and its items' next states, as chunks of VALUES (sqlite/batches.py).
_FINISH_RUN_SQL = (
    f"WITH v(id, no, {', '.join(_KEPT_IN.get(c, c) for c in _ROW_END_COLUMNS)}, failure,"
    " progress, message) AS (VALUES {rows}) UPDATE run_rows SET "
    + ", ".join(f"{_KEPT_IN.get(c, c)} = v.{_KEPT_IN.get(c, c)}" for c in _ROW_END_COLUMNS)
    + ", failure = v.failure, progress = COALESCE(v.progress, run_rows.progress),"
    " message = COALESCE(v.message, run_rows.message), room = NULL"
    f" FROM v WHERE run_rows.{BY_ID_OF_VALUES}"
)
# The bytes an ok run's end adds to its row, reserved at its claim (see schema 15's `room`):
# finished_at 8, duration_us, pid and proc_start 3 or 4 each, less the shorter status (5).
_END_ROOM = 14
_END_ROOM_BLOB = bytes(_END_ROOM)  # what zeroblob(_END_ROOM) makes
# The bytes a new item's first claim adds to its row, reserved by its enqueue (schema 19's
# `room`): 'running' for 'queued', and its run's id, of as many digits as the larger of the
# last run's number and the item's own (a store's items are claimed about in their order).
_CLAIM_ROOM = (
    "zeroblob(1 + length(max(coalesce((SELECT MAX(run_no) FROM run_rows), 0),"
    " coalesce((SELECT MAX(id) FROM items), 0) + 1)))"
)
_FINISH_ITEM_SQL = (
    "WITH v(id, stage, state, data, attempt, ready_at, channel, force, last_error, last_label,"
    " last_group, updated_at) AS (VALUES {rows}) UPDATE items SET stage = v.stage,"
    " state = v.state, data = COALESCE(v.data, items.data), attempt = v.attempt,"
    " ready_at = v.ready_at, channel = v.channel, force = v.force, last_error = v.last_error,"
    " last_label = v.last_label, last_group = v.last_group, updated_at = v.updated_at,"
    " tally = 1 - tally FROM v WHERE items.id = v.id"  # counted by the finish (sqlite/counts.py)
)
_CLAIM_ITEM_SQL = (
    "WITH v(id, attempt, channel, run_id, now) AS (VALUES {rows}) UPDATE items"
    " SET state = 'running', attempt = v.attempt, channel = v.channel, last_run_id = v.run_id,"
    " updated_at = v.now, tally = 1 - tally, room = NULL FROM v WHERE items.id = v.id"
)
_CLAIM_RUN_SQL = (
    "INSERT INTO run_rows (run_no, stage_no, item_id, attempt, channel, status, started_at,"
    " input_fp, code_ref, config_no, rows_in, daemon_no, room) VALUES {rows}"
)
_CLAIMABLE = ", ".join(f"'{s}'" for s in CLAIMABLE_STATES)
_PENDING = ", ".join(f"'{s}'" for s in PENDING_STATES)


class Queue(Rollup):
    """Items in, claims out, runs ended: what the scheduler does on every pass."""

    # The run a write is of, by its id, and the parameters for one id: by number here, or
    # an older id (runkeys.BY_ID); by the id on PostgreSQL.
    RUN_WHERE = BY_ID
    ITEM_ROOM: str | None = _CLAIM_ROOM  # a new item's room for its first claim (schema 19)

    @staticmethod
    def run_params(run_id: str) -> tuple[Any, ...]:
        return (run_id, run_number(run_id))

    # A worker process's columns in its run's row, and their values: its group as the
    # difference from its pid here (schema 21).
    PROCESS_COLUMNS = "pid = ?, pgid_off = ?, proc_start = ?"

    @staticmethod
    def _process_values(pid: int, pgid: int, start: int) -> tuple[int, int | None, int]:
        return pid, pgid_offset(pid, pgid), start

    def enqueue(
        self,
        pipeline: str,
        stage: str,
        items: Sequence[tuple[str, dict[str, Any] | None]],
        now: float,
        channel_for: Any = None,  # Callable[[dict], str]: the stage's channel for an item
        force: bool = False,
    ) -> Enqueued:
        """Add items at `stage`, by key: new ones are queued, finished ones start again.

        An item that is done, failed or ignored starts again at `stage`; data given (not
        None) replaces its data, and without it the item keeps the data it has. The stages
        its input already passed are skipped (checkpoints). One still queued, running or
        waiting (held for a person included) is left as it is, data and all. With
        `force`, every item not running starts again and its work is done again,
        checkpoints or not.
        """
        restartable = "('done', 'failed', 'ignored')" if not force else "('done', 'failed',"
        restartable += "" if not force else " 'ignored', 'queued', 'retrying', 'deferred', 'held')"
        result = Enqueued([], [], [], [], [])
        room_column, room = (", room", f", {self.ITEM_ROOM}") if self.ITEM_ROOM else ("", "")
        with self.db.atomic("IMMEDIATE"):
            for key, given in items:
                row = self._conn.execute(
                    "SELECT state, data FROM items WHERE pipeline = ? AND key = ?", (pipeline, key)
                ).fetchone()
                data = given if given is not None else json.loads(row[1]) if row else {}
                channel = channel_for(data) if channel_for else stage
                if row is None:
                    self._conn.execute(
                        "INSERT INTO items (pipeline, key, stage, state, data, ready_at, channel,"
                        f" force, created_at, updated_at{room_column})"
                        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?{room})",
                        (pipeline, key, stage, ItemState.QUEUED, json.dumps(data), now, channel,
                         int(force), now, now),
                    )  # fmt: skip
                    result.new.append(key)
                elif self._conn.execute(
                    "UPDATE items SET stage = ?, state = 'queued', data = COALESCE(?, data),"
                    " attempt = 0, ready_at = ?, channel = ?, force = ?, updated_at = ?"
                    f" WHERE pipeline = ? AND key = ? AND state IN {restartable}",
                    (stage, None if given is None else json.dumps(given), now, channel,
                     int(force), now, pipeline, key),
                ).rowcount:  # fmt: skip
                    result.restarted.append(key)
                    if given is not None:
                        result.data_replaced.append(key)
                elif row[0] == ItemState.HELD:
                    result.held.append(key)
                else:
                    result.unchanged.append(key)
        return result

    def claim(
        self,
        pipeline: str,
        stage: str,
        limit: int,
        now: float,
        describe: Any,  # Callable[[int, str, dict], NewRun]: fills a run's fields per item
        blocked_channels: Sequence[str] = (),
        only_channel: str | None = None,
    ) -> list[tuple[Claimed, NewRun]]:
        """Mark up to `limit` ready items running and write their run rows, atomically.

        The run rows are committed before any worker starts, so a crash at any later
        point leaves a `running` row for `recover_interrupted` to find. Items of a
        blocked (halted, paused) channel are left queued; `only_channel` picks a probe.
        """
        where, channels = _channel_filter(blocked_channels, only_channel)
        params = [pipeline, stage, now, *channels]
        with self._write():
            rows = self._conn.execute(
                "SELECT id, key, data, attempt, force, state, channel, last_group, last_label"
                f" FROM items WHERE pipeline = ? AND stage = ? AND state IN ({_CLAIMABLE})"
                f" AND ready_at <= ?{where} ORDER BY ready_at, id LIMIT ?",
                (*params, limit),
            ).fetchall()
            if not rows:
                return []
            claimed: list[tuple[Claimed, NewRun]] = []
            moves: list[tuple[CountKey, CountKey]] = []
            number, stage_no, daemon_no = self._next_numbers(pipeline, stage)
            for item_id, key, data_json, attempt, force, *was in rows:
                data = json.loads(data_json)
                item = Claimed(item_id, key, data, attempt + 1, bool(force))
                new_run = replace(
                    describe(item_id, key, data),
                    run_id=str(number), trace_id=trace_id_of(number, now),
                )  # fmt: skip
                claimed.append((item, new_run))
                running = count_key(pipeline, stage, "running", new_run.channel, None, None)
                moves.append((count_key(pipeline, stage, *was), running))
                number += 1
            execute_rows(  # flips tally: counted here, not by the trigger
                self._conn,
                _CLAIM_ITEM_SQL,
                [(c.item_id, c.attempt, r.channel, r.run_id, now) for c, r in claimed],
            )
            add_moves(self._conn, moves)
            config_no = self._config_numbers({r.config_hash for _, r in claimed})
            execute_rows(
                self._conn,
                _CLAIM_RUN_SQL,
                [
                    (int(r.run_id), stage_no, c.item_id, c.attempt, r.channel, "running", now,
                     pack_hex64(r.input_fingerprint), r.code_ref, config_no[r.config_hash],
                     1, daemon_no, _END_ROOM_BLOB)
                    for c, r in claimed
                ],
            )  # fmt: skip
        return claimed

    def _next_numbers(self, pipeline: str, stage: str) -> tuple[int, int, int | None]:
        """The next run's number, the number of its stage and that of this daemon's name.

        A run's id is its row number, as a string: short, in the order runs start, and
        appended at the end of every index that holds it (a random id dirtied a random
        page per insert). The newest run is never pruned (it is its item's latest), so a
        number is not given twice, but for a claim taken back before its worker started
        (`unclaim`): nobody saw that run. Asked inside the write lock: no other writer races.
        The stage's and the daemon's numbers are asked in the same statement; the first run
        of each makes it."""
        last, stage_no, daemon_no = self._conn.execute(
            f"SELECT MAX(run_no), {STAGE_NO}, (SELECT no FROM daemon_names WHERE name = ?)"
            " FROM run_rows",
            (pipeline, stage, self.daemon),
        ).fetchone()
        if daemon_no is None and self.daemon is not None:
            daemon_no = self._number_of("daemon_names", "name", self.daemon)
        return (last or 0) + 1, stage_no or self._stage_number(pipeline, stage), daemon_no

    def _config_numbers(self, hashes: set[str | None]) -> dict[str | None, int | None]:
        """The number of each config hash (packed, as the runs kept it); a claim's runs
        share one or a few."""
        numbers: dict[str | None, int | None] = {None: None}
        for config_hash in hashes - {None}:
            numbers[config_hash] = self._number_of("config_hashes", "fp", pack_hex64(config_hash))
        return numbers

    def _number_of(self, table: str, column: str, value: Any) -> int:
        """The number `table` (`daemon_names`, `config_hashes`: schema 21) gives `value`,
        made if it has none yet."""
        found = self._conn.execute(f"SELECT no FROM {table} WHERE {column} = ?", (value,))
        if (row := found.fetchone()) is not None:
            return row[0]
        return self._conn.execute(f"INSERT INTO {table} ({column}) VALUES (?)", (value,)).lastrowid

    def _stage_number(self, pipeline: str, stage: str) -> int:
        """The stage's number in `stages` (schema 15), made if it has none yet."""
        self._conn.execute(
            "INSERT OR IGNORE INTO stages (pipeline, stage) VALUES (?, ?)", (pipeline, stage)
        )
        return self._conn.execute(
            "SELECT no FROM stages WHERE pipeline = ? AND stage = ?", (pipeline, stage)
        ).fetchone()[0]

    def unclaim(self, runs: Sequence[tuple[str, int]]) -> None:
        """(run id, item id) of claims never sent to a worker, given back untouched: the run
        rows go, the items are queued again with their attempts unspent."""
        with self._write():
            self._conn.executemany(
                "UPDATE items SET state = 'queued', attempt = attempt - 1,"
                f" last_run_id = (SELECT id FROM {self.RUN_ROWS} INDEXED BY runs_by_item"
                " WHERE item_id = ?"
                " AND id != ? ORDER BY started_at DESC LIMIT 1)"
                " WHERE id = ? AND state = 'running' AND last_run_id = ?",
                [(item_id, run_id, item_id, run_id) for run_id, item_id in runs],
            )
            self._conn.executemany(
                f"DELETE FROM {self.RUN_ROWS} WHERE {self.RUN_WHERE} AND status = 'running'",
                [self.run_params(r) for r, _ in runs],
            )

    def finish(
        self, finished: Iterable[FinishedRun], progress: dict[str, tuple[float | None, str | None]]
    ) -> None:
        """Write finished runs, their items' next states and live progress in one commit."""
        finished = list(finished)
        with self._write():
            if progress:
                self._conn.executemany(
                    f"UPDATE {self.RUN_ROWS} SET progress = COALESCE(?, progress),"
                    f" message = COALESCE(?, message) WHERE {self.RUN_WHERE}"
                    " AND status = 'running'",
                    [(p, m, *self.run_params(run_id)) for run_id, (p, m) in progress.items()],
                )
            if not finished:
                return
            execute_rows(
                self._conn,
                _FINISH_RUN_SQL,
                [
                    (*self.run_params(f.run_id), *_row_end_of(f), _failure_of(f), f.progress,
                     f.message)
                    for f in finished
                ],
            )  # fmt: skip
            was = current_keys(self._conn, [f.item_id for f in finished])
            execute_rows(
                self._conn,
                _FINISH_ITEM_SQL,
                [
                    (f.item_id, f.item_stage, f.item_state, f.item_data, f.item_attempt,
                     f.item_ready_at, f.item_channel, int(f.item_force), f.error, f.label,
                     f.group_name, f.finished_at)
                    for f in finished
                ],
            )  # fmt: skip
            add_moves(self._conn, (
                (was[f.item_id], count_key(was[f.item_id][0], f.item_stage, f.item_state,
                                           f.item_channel, f.group_name, f.label))
                for f in finished if f.item_id in was
            ))  # fmt: skip
            self._count_finished(finished)

    def record_processes(self, started: Sequence[tuple[str, int, int, int]]) -> None:
        """(run id, pid, pgid, start time) of worker processes just started, in one commit:
        if the daemon dies, the next one can still find them."""
        with self._write():
            self._conn.executemany(
                f"UPDATE {self.RUN_ROWS} SET {self.PROCESS_COLUMNS}"
                f" WHERE {self.RUN_WHERE} AND status = 'running'",
                [(*self._process_values(pid, pgid, start), *self.run_params(r))
                 for r, pid, pgid, start in started],
            )  # fmt: skip

    def running_processes(self) -> list[tuple[int, int, int]]:
        """(pid, pgid, start time) of the worker processes of runs left `running`."""
        return self._conn.execute(
            f"SELECT pid, pgid, proc_start FROM {self.RUN_ROWS} INDEXED BY runs_by_status"
            " WHERE status = 'running' AND status != 'ok' AND pgid IS NOT NULL"
            " AND proc_start IS NOT NULL"
        ).fetchall()

    def recover_interrupted(
        self, now: float, hold_stages: set[tuple[str, str]], reason: str
    ) -> list[Recovered]:
        with self._write():
            # A probe cut short by the stop is simply due again.
            self._conn.execute(
                "UPDATE holds SET probe_run_id = NULL WHERE cleared_at IS NULL"
                " AND probe_run_id IS NOT NULL"
            )
            return self._recover_runs(now, hold_stages, reason)

    def _recover_runs(
        self, now: float, hold_stages: set[tuple[str, str]], reason: str
    ) -> list[Recovered]:
        """After an unclean stop: end orphaned runs as interrupted and put their items back.

        The attempt is not counted against the item; a stage marked `on_interrupt: hold`
        holds its items for a person instead, since its side effects must not repeat.
        """
        recovered: list[Recovered] = []
        ended: list[tuple[str, str, float, str, float]] = []
        with self._write():
            rows = self._conn.execute(
                "SELECT r.run_no, r.id, r.pipeline, r.stage, r.item_key, r.item_id, r.attempt,"
                " r.started_at FROM runs r WHERE r.status = 'running' AND r.status != 'ok'"
            ).fetchall()
            for run_no, run_id, pipeline, stage, key, item_id, attempt, started_at in rows:
                held = (pipeline, stage) in hold_stages
                self._conn.execute(
                    "UPDATE runs SET status = ?, finished_at = ?, duration_s = ?, error = ?,"
                    " failure = json_patch(coalesce(failure, '{}'), json_object("
                    "'group_name', 'retriable', 'label', 'Interrupted', 'category', 'daemon',"
                    " 'type', 'interrupted')), room = NULL WHERE run_no = ?",
                    (RunStatus.INTERRUPTED, now, max(0.0, now - started_at), reason, run_no),
                )
                self._conn.execute(
                    "UPDATE items SET state = ?, attempt = ?, ready_at = ?, last_error = ?,"
                    " last_label = 'Interrupted', updated_at = ?"
                    " WHERE id = ? AND state = 'running' AND last_run_id = ?",
                    (ItemState.HELD if held else ItemState.QUEUED, attempt - 1, now, reason, now,
                     item_id, run_id),
                )  # fmt: skip
                recovered.append(Recovered(run_id, pipeline, stage, key, held))
                ended.append((pipeline, stage, now, "interrupted", max(0.0, now - started_at)))
            self._add_counts(rollup.counted(ended))
        return recovered

    def next_ready_at(
        self,
        stages: Sequence[tuple[str, str]],
        blocked_channels: Sequence[str] = (),
        only_channel: str | None = None,
    ) -> float | None:
        """The earliest time an item of these stages becomes claimable, leaving out the
        items of blocked channels (or, with `only_channel`, those of any other)."""
        where, params = _channel_filter(blocked_channels, only_channel)
        soonest: float | None = None
        for pipeline, stage in stages:
            for state in CLAIMABLE_STATES:  # one index seek each; an IN list made it a scan
                (ready_at,) = self._conn.execute(
                    "SELECT MIN(ready_at) FROM items INDEXED BY items_claim"
                    f" WHERE pipeline = ? AND stage = ? AND state = ?"
                    f" AND state IN ({_CLAIMABLE}){where}",
                    (pipeline, stage, state, *params),
                ).fetchone()
                if ready_at is not None and (soonest is None or ready_at < soonest):
                    soonest = ready_at
        return soonest

    def pending_count(
        self,
        blocked_channels: Iterable[str] = (),
        blocked_stages: Iterable[str] = (),
        blocked_pipelines: Iterable[str] = (),
    ) -> int:
        """Items with work still ahead: queued, running or retrying, and not held back.

        Deferred items and those of halted or paused channels, stages and pipelines wait
        for a time or a person, so they do not count.
        """
        where, params = "", []
        for expression, values in (
            ("channel", list(blocked_channels)),
            ("pipeline || '/' || stage", list(blocked_stages)),
            ("pipeline", list(blocked_pipelines)),
        ):
            if values:
                where += f" AND {expression} NOT IN ({', '.join('?' * len(values))})"
                params += values
        # From the trigger-kept counts: a few hundred rows, however large the store.
        return self._conn.execute(
            f"SELECT COALESCE(SUM(n), 0) FROM item_counts WHERE state IN ({_PENDING}){where}",
            params,
        ).fetchone()[0]


def _channel_filter(blocked: Sequence[str], only: str | None) -> tuple[str, list[str]]:
    """The SQL (and its values) that leaves out blocked channels' items, or keeps one's."""
    where, params = "", list(blocked)
    if blocked:
        where += f" AND channel NOT IN ({', '.join('?' * len(blocked))})"
    if only is not None:
        where += " AND channel = ?"
        params.append(only)
    return where, params


def _failure_of(run: FinishedRun) -> str | None:
    """The run's failure object (schema 15): None for a run that ended without one."""
    values = _failure_values(run)
    if values.count(None) == len(values):  # an ok run's, at once
        return None
    return failure_json(dict(zip(_FAILURE_END_COLUMNS, values, strict=True)))


def _row_end_of(run: FinishedRun) -> list[Any]:
    """The values of the run's end as its row keeps them (schema 21)."""
    values = list(_row_end_values(run))
    values[_DURATION_AT] = microseconds(values[_DURATION_AT])
    values[_PGID_AT] = pgid_offset(values[_PID_AT], values[_PGID_AT])
    if values[_DATA_AT] == "{}":
        values[_DATA_AT] = ""
    return values


def microseconds(seconds: float | None) -> float | int | None:
    """A duration as run_rows keeps it (schema.MICROSECONDS)."""
    if seconds is None:
        return None
    return round(seconds * 1_000_000) if abs(seconds) < 1e12 else seconds * 1_000_000


def pgid_offset(pid: int | None, pgid: int | None) -> int | None:
    """A process group as run_rows keeps it: its difference from the pid, when both are."""
    return pgid if pid is None or pgid is None else pgid - pid
