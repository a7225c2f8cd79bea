"""The queue on PostgreSQL: claims that never wait on another daemon's, and wake-ups.

A claim locks the rows it takes with `FOR UPDATE SKIP LOCKED`, so two daemons claiming at
once take different items and neither waits for the other; the run rows and the items'
new state are written in one statement each, whatever the batch. Enqueues and finished
runs NOTIFY the fleet (see listen.py), so an idle daemon wakes without polling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from pipewarden.store.postgres.base import Connected
from pipewarden.store.postgres.history import EARLIER_SUCCESS_SQL
from pipewarden.store.records import Claimed, FinishedRun, NewRun, trace_id_of
from pipewarden.store.sqlite.queue import _RUN_END_COLUMNS, _channel_filter
from pipewarden.store.sqlite.queue import Queue as SqliteQueue
from pipewarden.types import CLAIMABLE_STATES, PENDING_STATES

# One statement per batch: the items marked running and their run rows, from one unnest;
# it returns each item's checkpoint, read in the same round trip (see history.py).
_CLAIM_WRITE_SQL = (
    "WITH v AS (SELECT * FROM unnest(%(run_ids)s::text[], %(ids)s::bigint[], %(keys)s::text[],"
    " %(attempts)s::int[], %(channels)s::text[], %(fingerprints)s::text[],"
    " %(code_refs)s::text[], %(config_hashes)s::text[], %(trace_ids)s::text[],"
    " %(forced)s::bool[]) AS v(id, item_id, item_key, attempt, channel, fingerprint, code_ref,"
    " config_hash, trace_id, forced)), claimed AS (UPDATE items SET state = 'running',"
    " attempt = v.attempt, channel = v.channel, last_run_id = v.id, updated_at = %(now)s"
    " FROM v WHERE items.id = v.item_id),"
    " started AS (INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, channel,"
    " status, started_at, input_fingerprint, code_ref, config_hash, rows_in, trace_id, daemon)"
    " SELECT v.id, %(pipeline)s, %(stage)s, v.item_id, v.item_key, v.attempt, v.channel,"
    " 'running', %(now)s, v.fingerprint, v.code_ref, v.config_hash, 1, v.trace_id, %(daemon)s"
    " FROM v)"
    " SELECT v.fingerprint, earlier.id, earlier.data_out FROM v LEFT JOIN LATERAL"
    f" ({EARLIER_SUCCESS_SQL.format(fingerprint='v.fingerprint')}) AS earlier ON true"
    " WHERE NOT v.forced"
)
_RUN_END_TYPES = (
    "text",
    "float8",
    "float8",
    "int",
    "int",
    "int",
    "int",
    "int8",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "int",
    "float8",
    "text",
    "int8",
    "float8",
    "text",
)  # fmt: skip  (as _RUN_END_COLUMNS)
_ITEM_END = (
    ("stage", "item_stage", "text"),
    ("state", "item_state", "text"),
    ("data", "item_data", "text"),
    ("attempt", "item_attempt", "int"),
    ("ready_at", "item_ready_at", "float8"),
    ("channel", "item_channel", "text"),
    ("force", "item_force", "int"),
    ("last_error", "error", "text"),
    ("last_label", "label", "text"),
    ("last_group", "group_name", "text"),
    ("updated_at", "finished_at", "float8"),
)  # fmt: skip  (items column, FinishedRun field, type)
_KEEP_IF_NULL = ("progress", "message")  # a finish without them keeps the last reported


def _finish_sql() -> str:
    """Finished runs and their items' next states in one statement, one unnest for all;
    only over runs still running (a recovered run keeps its end, its item is not moved).
    Returns the runs it ended: only those are counted (store/rollup.py); tells the fleet
    in the same round trip."""
    fields = [("run_id", "text"), ("item_id", "int8"),
              *zip(_RUN_END_COLUMNS, _RUN_END_TYPES, strict=True),
              *((f"item_{column}", kind) for column, _, kind in _ITEM_END)]  # fmt: skip
    arrays = ", ".join(f"%({name})s::{kind}[]" for name, kind in fields)
    names = ", ".join(name for name, _ in fields)
    runs = ", ".join(
        f"{c} = COALESCE(v.{c}, runs.{c})" if c in _KEEP_IF_NULL else f"{c} = v.{c}"
        for c in _RUN_END_COLUMNS
    )
    items = ", ".join(
        # no data from the worker (None): the item's data stays as stored
        f"{column} = COALESCE(v.item_{column}, items.{column})" if column == "data"
        else f"{column} = v.item_{column}"
        for column, _, _ in _ITEM_END
    )  # fmt: skip
    return (
        f"WITH v AS (SELECT * FROM unnest({arrays}) AS v({names})),"
        f" ended AS (UPDATE runs SET {runs} FROM v WHERE runs.id = v.run_id"
        " AND runs.status = 'running' RETURNING runs.id),"
        f" moved AS (UPDATE items SET {items} FROM v WHERE items.id = v.item_id"
        " AND items.last_run_id = v.run_id),"
        " told AS (SELECT pg_notify('pipewarden', %(payload)s))"  # the fleet, at commit
        " SELECT array(SELECT id FROM ended), (SELECT count(*) FROM told)"
    )


_FINISH_SQL = _finish_sql()


def _claim_sql(where: str) -> str:
    """The oldest ready items, locked, skipping those locked by another daemon's claim.

    One branch per claimable state, each an index range in ready_at order (an IN list of
    states made PostgreSQL sort every queued item on each claim); a branch may lock a few
    rows past the limit, left as they are and free again at this commit. Each item comes
    with its run's number (a claim a channel's cap leaves out leaves a gap: numbers are
    never given twice, not necessarily all given).
    """
    branches = [
        f"s{n} AS (SELECT id, key, data, attempt, force, channel, ready_at FROM items"
        f" WHERE pipeline = %(p)s AND stage = %(s)s AND state = '{state}'"
        f" AND ready_at <= %(now)s{where} ORDER BY ready_at, id LIMIT %(n)s"
        " FOR UPDATE SKIP LOCKED)"
        for n, state in enumerate(CLAIMABLE_STATES)
    ]
    union = " UNION ALL ".join(f"SELECT * FROM s{n}" for n in range(len(branches)))
    return (
        f"WITH {', '.join(branches)}, ready AS (SELECT * FROM ({union}) AS u"
        " ORDER BY ready_at, id LIMIT %(n)s)"
        " SELECT id, key, data, attempt, force, channel, nextval('run_numbers') FROM ready"
        " ORDER BY ready_at, id"
    )


class Queue(Connected, SqliteQueue):
    """The SQLite queue's statements where they are the same SQL; claims said again."""

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
        """Mark up to `limit` ready items running and write their run rows, atomically;
        rows another daemon is claiming right now are skipped, not waited for."""
        where, params = "", {"p": pipeline, "s": stage, "now": now, "n": limit}
        if blocked_channels:
            where += " AND channel <> ALL(%(blocked)s)"
            params["blocked"] = list(blocked_channels)
        if only_channel is not None:
            where += " AND channel = %(only)s"
            params["only"] = only_channel
        with self._write():
            limit = self._stage_room(pipeline, stage, limit)
            if limit <= 0:
                return []
            params["n"] = limit
            rows = self._within_channel_caps(self._pg.execute(_claim_sql(where), params).fetchall())
            if not rows:
                return []
            claimed = [self._described(row, describe, now) for row in rows]
            self._write_claims(pipeline, stage, now, claimed)
        return claimed

    def _stage_room(self, pipeline: str, stage: str, limit: int) -> int:
        """`limit`, cut to what the stage's global_concurrency leaves across the fleet. The
        count is read under a lock on the cap that only the claim that holds it may pass
        (to its commit): another daemon claiming the stage meanwhile is skipped, not waited
        for, and this daemon tries again on its next pass."""
        cap = self.global_caps.get(f"{pipeline}/{stage}")
        if cap is None:
            return limit
        if not self._try_cap_lock(f"{pipeline}/{stage}"):
            return 0
        running = self._pg.execute(
            "SELECT count(*) FROM items WHERE pipeline = %s AND stage = %s AND state = 'running'",
            (pipeline, stage),
        ).fetchone()[0]
        return min(limit, cap - running)

    def _within_channel_caps(self, rows: list[tuple]) -> list[tuple]:
        """The rows whose channel has room under its global_concurrency (in order)."""
        capped = {row[5] for row in rows if row[5] in self.global_caps}
        room = {}
        for channel in sorted(capped):
            if not self._try_cap_lock(channel):
                room[channel] = 0
                continue
            running = self._pg.execute(
                "SELECT count(*) FROM items WHERE channel = %s AND state = 'running'", (channel,)
            ).fetchone()[0]
            room[channel] = self.global_caps[channel] - running
        kept = []
        for row in rows:
            if row[5] in room:
                if room[row[5]] <= 0:
                    continue
                room[row[5]] -= 1
            kept.append(row)
        return kept

    def _try_cap_lock(self, name: str) -> bool:
        return self._pg.execute(
            "SELECT pg_try_advisory_xact_lock(hashtext('pipewarden cap ' || %s))", (name,)
        ).fetchone()[0]

    @staticmethod
    def _described(row: tuple, describe: Any, now: float) -> tuple[Claimed, NewRun]:
        """The claimed item and its run, named by the fleet's run number (as on SQLite: a
        number, in the order runs start, never given twice)."""
        import json

        item_id, key, data_json, attempt, force, _, number = row
        data = json.loads(data_json)
        run = replace(describe(item_id, key, data), run_id=str(number),
                      trace_id=trace_id_of(number, now))  # fmt: skip
        return Claimed(item_id, key, data, attempt + 1, bool(force)), run

    def _write_claims(
        self, pipeline: str, stage: str, now: float, claimed: list[tuple[Claimed, NewRun]]
    ) -> None:
        items, runs = [c for c, _ in claimed], [r for _, r in claimed]
        checkpoints = self._pg.execute(_CLAIM_WRITE_SQL, {
            "run_ids": [r.run_id for r in runs], "ids": [c.item_id for c in items],
            "keys": [c.key for c in items], "attempts": [c.attempt for c in items],
            "channels": [r.channel for r in runs],
            "fingerprints": [r.input_fingerprint for r in runs],
            "code_refs": [r.code_ref for r in runs], "config_hashes": [r.config_hash for r in runs],
            "trace_ids": [r.trace_id for r in runs], "now": now, "pipeline": pipeline,
            "stage": stage, "daemon": self.daemon, "forced": [c.force for c in items],
        }).fetchall()  # fmt: skip
        self._read_checkpoints(pipeline, stage, checkpoints)

    RUN_WHERE = "id = ?"  # the shared statements write a run by its id here

    @staticmethod
    def run_params(run_id: str) -> tuple[Any, ...]:
        return (run_id,)

    PROCESS_COLUMNS = "pid = ?, pgid = ?, proc_start = ?"

    @staticmethod
    def _process_values(pid: int, pgid: int, start: int) -> tuple[int, int | None, int]:
        return pid, pgid, start

    def unclaim(self, runs: Sequence[tuple[str, int]]) -> None:
        """As on SQLite: claims never sent to a worker, given back untouched."""
        SqliteQueue.unclaim(self, runs)  # type: ignore[arg-type]

    def finish(
        self, finished: Iterable[FinishedRun], progress: dict[str, tuple[float | None, str | None]]
    ) -> None:
        """As on SQLite, but only over runs still running: a run another daemon recovered
        (this one was found dead) keeps its end, and its item is not moved twice."""
        finished = list(finished)
        self._forget_checkpoints()  # a run ended ok is the next claim's checkpoint
        with self._write():
            if progress:
                self._conn.executemany(
                    "UPDATE runs SET progress = COALESCE(?, progress),"
                    " message = COALESCE(?, message) WHERE id = ? AND status = 'running'",
                    [(p, m, run_id) for run_id, (p, m) in progress.items()],
                )
            if not finished:
                return
            values: dict[str, Any] = {
                "run_id": [f.run_id for f in finished], "item_id": [f.item_id for f in finished],
            }  # fmt: skip
            for column in _RUN_END_COLUMNS:
                values[column] = [getattr(f, column) for f in finished]
            for column, field, _ in _ITEM_END:
                values[f"item_{column}"] = [getattr(f, field) for f in finished]
            values["item_force"] = [int(force) for force in values["item_force"]]
            values["payload"] = f"finished {self.daemon or ''}"
            ended = set(self._pg.execute(_FINISH_SQL, values).fetchone()[0])
            self._count_finished([f for f in finished if f.run_id in ended])

    def next_ready_at(
        self,
        stages: Sequence[tuple[str, str]],
        blocked_channels: Sequence[str] = (),
        only_channel: str | None = None,
    ) -> float | None:
        """As on SQLite, in one round trip: the loop asks it before it sleeps, each pass."""
        if not stages:
            return None
        where, channels = _channel_filter(blocked_channels, only_channel)
        seek = (
            "(SELECT MIN(ready_at) FROM items WHERE pipeline = ? AND stage = ? AND state = ?"
            f"{where})"
        )
        seeks, params = [], []
        for pipeline, stage in stages:
            for state in CLAIMABLE_STATES:  # one index seek each; an IN list made it a scan
                seeks.append(seek)
                params += [pipeline, stage, state, *channels]
        return self._conn.execute(f"SELECT LEAST({', '.join(seeks)})", params).fetchone()[0]

    def pending_count(
        self,
        blocked_channels: Iterable[str] = (),
        blocked_stages: Iterable[str] = (),
        blocked_pipelines: Iterable[str] = (),
    ) -> int:
        """Items with work still ahead: queued, running or retrying, and not held back."""
        where, params = "", [list(PENDING_STATES)]
        for expression, values in (
            ("COALESCE(channel, '')", list(blocked_channels)),
            ("pipeline || '/' || stage", list(blocked_stages)),
            ("pipeline", list(blocked_pipelines)),
        ):
            if values:
                where += f" AND {expression} <> ALL(%s)"
                params.append(values)
        return self._pg.execute(
            f"SELECT count(*) FROM items WHERE state = ANY(%s){where}", params
        ).fetchone()[0]
