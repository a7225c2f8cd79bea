"""Prometheus metrics at /metrics, through prometheus_client's own registry.

Item counts and active halts are read from the store when scraped; runs, their
durations and notifications are counted as they happen (counters restart with the
daemon, as Prometheus expects).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
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
        items = GaugeMetricFamily(
            "pipewarden_items", "Items by pipeline, stage and state",
            labels=["pipeline", "stage", "state"],
        )  # fmt: skip
        for (pipeline, stage, state), count in self.daemon.store.item_totals().items():
            items.add_metric([pipeline, stage, state], count)
        yield items
        halts = GaugeMetricFamily(
            "pipewarden_holds_active", "Active halts and pauses", labels=["kind", "scope", "target"]
        )
        for hold in self.daemon.store.active_holds():
            halts.add_metric([hold.kind, hold.scope, hold.target], 1)
        yield halts


class Metrics:
    def __init__(self, daemon: Daemon):
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(daemon))  # type: ignore[arg-type]
        self.runs = Counter(
            "pipewarden_runs", "Finished runs by outcome and label",
            ["pipeline", "stage", "status", "label"], registry=self.registry,
        )  # fmt: skip
        self.durations = Histogram(
            "pipewarden_run_duration_seconds", "Run durations per stage",
            ["pipeline", "stage"], buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.notifications = Counter(
            "pipewarden_notifications", "Notification deliveries by result", ["result"],
            registry=self.registry,
        )  # fmt: skip
        daemon.observers.append(self)

    def runs_finished(self, finished: list[FinishedRun]) -> None:
        for run in finished:
            self.runs.labels(run.pipeline, run.stage, run.status, run.label or "").inc()
            self.durations.labels(run.pipeline, run.stage).observe(run.duration_s)

    def notification(self, delivered: bool) -> None:
        self.notifications.labels("sent" if delivered else "failed").inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
