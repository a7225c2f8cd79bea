"""Leases: which daemon of the fleet runs what, and who recovers a dead one's runs.

Each daemon has a row (host:pid, its start time) whose heartbeat it renews; times are the
server's clock, so hosts whose clocks differ still agree on who is silent. A daemon silent
for `lease_s` is dead: the first daemon to mark it so (one UPDATE: the row lock makes it
exactly one) ends its `running` runs as interrupted and requeues or holds their items, in
the same transaction. A live daemon's runs are never touched: every recovery is scoped to
the daemons it marked.
"""

from __future__ import annotations

import time

from pipewarden.store import rollup
from pipewarden.store.postgres import counts
from pipewarden.store.postgres.base import Connected
from pipewarden.store.records import Recovered
from pipewarden.store.sqlite.rollup import Rollup
from pipewarden.types import ItemState, RunStatus

_NOW = "extract(epoch from clock_timestamp())::float8"


class Leases(Connected, Rollup):
    host: str = ""
    _started_at: float = 0.0
    _fold_at: float = 0.0  # monotonic: when a heartbeat next folds the status counts

    def join_fleet(self, host: str, pid: int, started_at: float, lease_s: float) -> None:
        """Run as `host:pid`. A lease left by an earlier daemon with this host and pid is a
        dead one's (this process has its pid): it ends now, and `recover_interrupted`
        recovers its runs before this daemon takes its own lease."""
        self.daemon, self.host, self.lease_s = f"{host}:{pid}", host, lease_s
        self._started_at = started_at
        with self._write():
            self._pg.execute(
                "UPDATE daemons SET heartbeat_at = 0 WHERE id = %s AND stopped_at IS NULL",
                (self.daemon,),
            )

    def _take_lease(self) -> None:
        host, pid = self.daemon.rsplit(":", 1) if self.daemon else ("", "0")
        self._pg.execute(
            "INSERT INTO daemons (id, host, pid, started_at, heartbeat_at)"
            f" VALUES (%s, %s, %s, %s, {_NOW}) ON CONFLICT (id) DO UPDATE SET"
            " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
            " stopped_at = NULL, recovered_by = NULL",
            (self.daemon, host, int(pid), self._started_at),
        )

    def heartbeat(self) -> bool:
        """Renew the lease; False when another daemon already found this one dead (its
        runs were recovered: it must stop, not finish them twice)."""
        with self._write():
            row = self._pg.execute(
                f"UPDATE daemons SET heartbeat_at = {_NOW} WHERE id = %s AND stopped_at IS NULL"
                " RETURNING id",
                (self.daemon,),
            ).fetchone()
            if time.monotonic() >= self._fold_at:  # the status counts kept small
                counts.fold(self._pg, time.time())
                self._fold_at = time.monotonic() + counts.FOLD_EVERY_S
        return row is not None

    def leave_fleet(self) -> None:
        """A clean stop: the lease ends now, so runs left unrecorded are recovered at once."""
        with self._write():
            self._pg.execute("UPDATE daemons SET heartbeat_at = 0 WHERE id = %s", (self.daemon,))

    def recover_dead(
        self, now: float, hold_stages: set[tuple[str, str]], reason: str
    ) -> list[Recovered]:
        """Mark the daemons silent past their lease dead and recover their runs, once."""
        with self._write():
            dead = self._pg.execute(
                f"UPDATE daemons SET stopped_at = {_NOW}, recovered_by = %s"
                f" WHERE stopped_at IS NULL AND heartbeat_at < {_NOW} - %s"
                " RETURNING id",
                (self.daemon, self.lease_s),
            ).fetchall()
            ids = [row[0] for row in dead]
            if not ids:
                return []
            return self._recover_runs_of(ids, now, hold_stages, reason)

    def _recover_runs_of(
        self, daemons: list[str], now: float, hold_stages: set[tuple[str, str]], reason: str
    ) -> list[Recovered]:
        rows = self._pg.execute(
            "SELECT id, pipeline, stage, item_key, item_id, attempt, started_at, daemon"
            " FROM runs WHERE status = 'running' AND daemon = ANY(%s)",
            (daemons,),
        ).fetchall()
        recovered = []
        ended: list[tuple[str, str, float, str, float]] = []
        for run_id, pipeline, stage, key, item_id, attempt, started_at, daemon in rows:
            why = reason or f"daemon {daemon} stopped heartbeating"
            held = (pipeline, stage) in hold_stages
            self._pg.execute(
                "UPDATE runs SET status = %s, finished_at = %s, duration_s = %s, error = %s,"
                " group_name = 'retriable', label = 'Interrupted', category = 'daemon',"
                " type = 'interrupted' WHERE id = %s AND status = 'running'",
                (RunStatus.INTERRUPTED, now, max(0.0, now - started_at), why, run_id),
            )
            self._pg.execute(
                "UPDATE items SET state = %s, attempt = %s, ready_at = %s, last_error = %s,"
                " last_label = 'Interrupted', updated_at = %s"
                " WHERE id = %s AND state = 'running' AND last_run_id = %s",
                (ItemState.HELD if held else ItemState.QUEUED, attempt - 1, now, why, now,
                 item_id, run_id),
            )  # fmt: skip
            self._pg.execute(
                "UPDATE holds SET probe_run_id = NULL WHERE probe_run_id = %s", (run_id,)
            )
            recovered.append(Recovered(run_id, pipeline, stage, key, held))
            ended.append((pipeline, stage, now, "interrupted", max(0.0, now - started_at)))
        self._add_counts(rollup.counted(ended))
        if recovered:
            self._holds_changed("recovered")  # their probes are due again
        return recovered

    def recover_interrupted(
        self, now: float, hold_stages: set[tuple[str, str]], reason: str
    ) -> list[Recovered]:
        """At start: the runs of dead daemons (this host's earlier one among them), and of
        none (a store used before leases); never those of a live daemon."""
        with self._write():
            recovered = self.recover_dead(now, hold_stages, "")
            orphans = self._pg.execute(
                "SELECT count(*) FROM runs WHERE status = 'running' AND daemon IS NULL"
            ).fetchone()[0]
            if orphans:
                recovered += self._recover_runs_of_none(now, hold_stages, reason)
            if self.daemon is not None:
                self._take_lease()
        return recovered

    def _recover_runs_of_none(
        self, now: float, hold_stages: set[tuple[str, str]], reason: str
    ) -> list[Recovered]:
        self._pg.execute("UPDATE runs SET daemon = '-' WHERE status = 'running' AND daemon IS NULL")
        return self._recover_runs_of(["-"], now, hold_stages, reason)

    def running_processes(self) -> list[tuple[int, int, int]]:
        """Worker processes on this host of runs whose daemon is dead or gone: the ones a
        start may kill before their items are requeued. A live daemon's are not among them."""
        return self._pg.execute(
            "SELECT r.pid, r.pgid, r.proc_start FROM runs r LEFT JOIN daemons d"
            " ON d.id = r.daemon WHERE r.status = 'running' AND r.pgid IS NOT NULL"
            " AND r.proc_start IS NOT NULL AND (d.id IS NULL OR (d.host = %s AND"
            f" (d.stopped_at IS NOT NULL OR d.heartbeat_at < {_NOW} - %s)))",
            (self.host, self.lease_s),
        ).fetchall()
