"""Prometheus metrics at /metrics, through prometheus_client's own registry.

Item counts, active halts, the age of each stage's oldest ready item and the unsent
notifications are read from the store when scraped (index seeks and trigger-kept counts:
cheap on a million items), in the API's reads thread with its own read-only store; runs,
their durations and notifications are counted as they happen (counters restart with the
daemon, as Prometheus expects), through children looked up once per stage and outcome, not
per run. No `_created` series: Prometheus keeps each as a series of its own, doubling what
every counter costs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pipewarden import __version__
from pipewarden.types import RunStatus
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from pipewarden.daemon import Daemon
    from pipewarden.loopshare import LoopBudget
    from pipewarden.reads import SnapshotCache
    from pipewarden.store import FinishedRun, Store

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800)


class _StoreCollector:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.store: Store = daemon.store  # the reads thread's, while it renders a scrape

    def collect(self) -> Iterator[GaugeMetricFamily]:
        store = self.store
        items = GaugeMetricFamily(
            "pipewarden_items", "Items by pipeline, stage and state",
            labels=["pipeline", "stage", "state"],
        )  # fmt: skip
        for (pipeline, stage, state), count in store.item_totals().items():
            items.add_metric([pipeline, stage, state], count)
        yield items
        halts = GaugeMetricFamily(
            "pipewarden_holds_active", "Active halts and pauses", labels=["kind", "scope", "target"]
        )
        for hold in store.active_holds():
            halts.add_metric([hold.kind, hold.scope, hold.target], 1)
        yield halts
        yield self._oldest_ready()
        yield GaugeMetricFamily(
            "pipewarden_outbox_unsent", "Notifications not yet delivered (the outbox backlog)",
            value=store.outbox_backlog(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "pipewarden_attempts_in_flight", "Attempts running now", value=self.daemon.in_flight
        )

    def _oldest_ready(self) -> GaugeMetricFamily:
        """Per stage, how long its oldest claimable item has waited (0 when none is due).

        Items a halt, a pause or a full stage holds back count: that wait is what to watch.
        """
        ages = GaugeMetricFamily(
            "pipewarden_oldest_ready_item_age_seconds",
            "Seconds since the stage's oldest claimable item became ready",
            labels=["pipeline", "stage"],
        )
        now = self.daemon.clock.now()
        for pipeline in self.daemon.config.pipelines.values():
            for stage in pipeline.stages:
                ready_at = self.store.next_ready_at([(pipeline.name, stage.name)])
                age = 0.0 if ready_at is None else max(0.0, now - ready_at)
                ages.add_metric([pipeline.name, stage.name], age)
        return ages


class Metrics:
    def __init__(self, daemon: Daemon):
        disable_created_metrics()  # process-wide: the daemon's only registry is this one
        self.registry = CollectorRegistry()
        self._collector = _StoreCollector(daemon)
        self.registry.register(self._collector)  # type: ignore[arg-type]
        ProcessCollector(registry=self.registry)  # process_* (CPU, memory, start time, fds)
        self.runs = Counter(
            "pipewarden_runs", "Finished runs by outcome and label",
            ["pipeline", "stage", "status", "label"], registry=self.registry,
        )  # fmt: skip
        self.durations = Histogram(
            "pipewarden_run_duration_seconds", "Durations of the runs that ran a worker",
            ["pipeline", "stage"], buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.notifications = Counter(
            "pipewarden_notifications", "Notification deliveries by result", ["result"],
            registry=self.registry,
        )  # fmt: skip
        self.reload_ok = Gauge(
            "pipewarden_config_last_reload_successful",
            "Whether the last load of the config and rules succeeded (1) or failed (0)",
            registry=self.registry,
        )
        self.reload_success_at = Gauge(
            "pipewarden_config_last_reload_success_timestamp_seconds",
            "When the config and rules were last loaded successfully (UNIX time)",
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}  # see runs_finished
        Info("pipewarden_build", "The running pipewarden", registry=self.registry).info(
            {"version": __version__}
        )
        last = daemon.store.get_meta("reload") or {}  # the load at start came before us
        if last.get("ok"):
            self.reloaded(True, last["at"])
        daemon.observers.append(self)

    def watch_snapshots(self, snapshots: SnapshotCache) -> None:
        """Show how many status snapshots were computed, whoever read them."""
        Gauge(
            "pipewarden_status_snapshots", "Status snapshots computed (shared by every reader)",
            registry=self.registry,
        ).set_function(lambda: snapshots.computed)  # fmt: skip

    def watch_loop_budget(self, budget: LoopBudget) -> None:
        """Show how many API requests waited for their share of a busy loop."""
        Gauge(
            "pipewarden_api_waits", "API requests that waited while the work had the loop",
            registry=self.registry,
        ).set_function(lambda: budget.waited)  # fmt: skip

    def runs_finished(self, finished: list[FinishedRun]) -> None:
        for run in finished:
            counter, duration = self._children_of(run)
            counter.inc()
            if duration is not None:
                duration.observe(run.duration_s)

    def _children_of(self, run: FinishedRun) -> tuple[Any, Any]:
        """The run's counter and duration children: `labels()` hashes and locks each time,
        so each (stage, outcome, label) is looked up once."""
        key = (run.pipeline, run.stage, run.status, run.label or "")
        children = self._children.get(key)
        if children is None:
            # A skipped run ran no worker: its 0 s would skew the stage's durations.
            skipped = run.status == RunStatus.SKIPPED
            children = self._children[key] = (
                self.runs.labels(*key),
                None if skipped else self.durations.labels(run.pipeline, run.stage),
            )
        return children

    def notification(self, delivered: bool) -> None:
        self.notifications.labels("sent" if delivered else "failed").inc()

    def reloaded(self, ok: bool, at: float) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_success_at.set(at)

    def render(self, store: Store) -> tuple[bytes, str]:
        """The exposition, store figures read through `store` (in the thread that owns it)."""
        self._collector.store = store
        try:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        finally:
            self._collector.store = self._collector.daemon.store
