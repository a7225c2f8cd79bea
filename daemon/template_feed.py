"""The daemon's template miner: each failure no rule matched joins its template as the
scheduler records it, and the templates, their counts and members live in the store.

An observer (the scheduler tells it of every committed batch, as it tells the metrics), so
the run path gains nothing but a call after the commit; the templates' own write is one
small transaction per batch that held an unmatched failure. At start the stored templates
are given back to the miner: a restart continues the same templates, ids and counts.
Templates are a help, not a record: a store fault while writing them is logged and the
batch's members are left out, never a reason to stop the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import peewee as pw
from pipewarden.templates import Cluster, Miner
from pipewarden.types import Group

if TYPE_CHECKING:
    from pipewarden.store import FinishedRun, Store

log = logging.getLogger(__name__)

TEXT_MAX = 2000  # characters of an error's first line the miner reads


def mined_text(error: str) -> str:
    """What the miner reads of an error: its first non-empty line (a Playwright error's
    "Call log:" and a traceback's frames follow it and vary far more)."""
    for line in error.splitlines():
        if line.strip():
            return line.strip()[:TEXT_MAX]
    return ""


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a failed store statement raises: psycopg's own errors on PostgreSQL too."""
    psycopg = sys.modules.get("psycopg")  # loaded only by the PostgreSQL store
    return (sqlite3.Error, pw.PeeweeException, *((psycopg.Error,) if psycopg else ()))


def is_unmatched(run: FinishedRun) -> bool:
    return run.group_name == Group.UNKNOWN.value and bool(run.error and run.error.strip())


class TemplateFeed:
    """Feeds the store's templates from unmatched failures; `daemon.observers` holds it."""

    def __init__(self, store: Store):
        self.store = store
        self.miner = Miner()
        self._stored: dict[int, int] = {}  # miner cluster id -> templates.id
        self.changed = True  # templates written since proposals were last refreshed
        for template_id, template, count in store.templates():
            self._stored[self.miner.restore(template, count).id] = template_id

    def runs_finished(self, finished: list[FinishedRun]) -> None:
        unmatched = [run for run in finished if is_unmatched(run)]
        if not unmatched:
            return
        placed = [(run, self.miner.add(mined_text(run.error or ""))) for run in unmatched]
        stored = dict(self._stored)
        try:
            with self.store.transaction():
                self._save(placed)
            self.changed = True
        except _store_errors() as exc:
            # rolled back: the ids given in it do not exist (the counts in memory may run
            # ahead of the store's, which is harmless)
            self._stored = stored
            log.warning("templates: %d unmatched failure(s) not recorded: %s", len(placed), exc)

    async def keep_proposing(self, now: Callable[[], float]) -> None:
        """Refresh the proposals every REFRESH_EVERY_S while templates change (so they wait
        on the page and in `pipewarden check` without anyone listing them); an idle daemon
        writes nothing. A store fault is logged and tried again at the next change."""
        from pipewarden import proposals

        while True:
            await asyncio.sleep(proposals.REFRESH_EVERY_S)
            if not self.changed or self.store.unwritable() is not None:
                continue
            self.changed = False
            try:
                if made := proposals.refresh(self.store, now()):
                    log.info("templates: %d rule(s) proposed (`pipewarden proposals`)", made)
            except _store_errors() as exc:
                self.changed = True
                log.warning("templates: proposals not refreshed: %s", exc)

    def notification(self, delivered: bool) -> None:
        """Deliveries are not templates' business (observers hear of them all)."""

    def reloaded(self, ok: bool, at: float) -> None:
        """Nor are reloads."""

    def _save(self, placed: list[tuple[FinishedRun, Cluster]]) -> None:
        for gone in self.miner.take_merges():
            into = self._stored.get(gone.current().id)
            was = self._stored.pop(gone.id, None)
            if was is not None and into is not None:
                self.store.merge_template(into, was)
        touched: dict[int, tuple[Cluster, float]] = {}
        for run, cluster in placed:
            cluster = cluster.current()
            seen = touched[cluster.id][1] if cluster.id in touched else 0.0
            touched[cluster.id] = (cluster, max(seen, run.finished_at))
        for cluster, seen in touched.values():
            template_id = self._stored.get(cluster.id)
            if template_id is None:
                self._stored[cluster.id] = self.store.add_template(
                    cluster.template, cluster.count, seen
                )
            else:
                self.store.update_template(template_id, cluster.template, cluster.count, seen)
        self.store.add_template_runs([
            (run.run_id, self._stored[cluster.current().id], run.pipeline, run.stage,
             run.finished_at) for run, cluster in placed
        ])  # fmt: skip
