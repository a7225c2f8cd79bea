"""Prometheus metrics at /metrics, through prometheus_client's own registry.

Item counts, active halts, the age of each stage's oldest ready item and the unsent
notifications are read from the store when scraped (index seeks and trigger-kept counts:
cheap on a million items); runs, their durations and notifications are counted as they
happen (counters restart with the daemon, as Prometheus expects). No `_created` series:
Prometheus keeps each as a series of its own, doubling what every counter costs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

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
    from pipewarden.store import FinishedRun

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800)


class _StoreCollector:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def collect(self) -> Iterator[GaugeMetricFamily]:
        store = self.daemon.store
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
                ready_at = self.daemon.store.next_ready_at([(pipeline.name, stage.name)])
                age = 0.0 if ready_at is None else max(0.0, now - ready_at)
                ages.add_metric([pipeline.name, stage.name], age)
        return ages


class Metrics:
    def __init__(self, daemon: Daemon):
        disable_created_metrics()  # process-wide: the daemon's only registry is this one
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(daemon))  # type: ignore[arg-type]
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
        Info("pipewarden_build", "The running pipewarden", registry=self.registry).info(
            {"version": __version__}
        )
        last = daemon.store.get_meta("reload") or {}  # the load at start came before us
        if last.get("ok"):
            self.reloaded(True, last["at"])
        daemon.observers.append(self)

    def runs_finished(self, finished: list[FinishedRun]) -> None:
        for run in finished:
            self.runs.labels(run.pipeline, run.stage, run.status, run.label or "").inc()
            if run.status != RunStatus.SKIPPED:  # no worker ran: its 0 s would skew the stage
                self.durations.labels(run.pipeline, run.stage).observe(run.duration_s)

    def notification(self, delivered: bool) -> None:
        self.notifications.labels("sent" if delivered else "failed").inc()

    def reloaded(self, ok: bool, at: float) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_success_at.set(at)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
