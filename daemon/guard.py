"""The guard: halts a channel, a stage or a pipeline when its halt rules say so.

Its windows are queries over the recorded runs (indexed by channel and label, and by
stage and end time), not counters in memory: a restart forgets nothing, and a halt
is a row in the store that survives it. A halt never fails or loses an item; the
halted items simply stay queued until a person, or a successful probe, clears it. A
budget's halt lifts itself when its day is over in the budget's time zone: the new
day's budget is fresh. A window starts again where a halt on its target was last
cleared: a cleared halt comes back only after the rule's whole threshold of new
failures (or new cost), not on the next failure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from pipewarden.config import Config
from pipewarden.rules import HaltRule
from pipewarden.store import FinishedRun, Hold, Storage
from pipewarden.types import RunStatus

log = logging.getLogger("pipewarden.guard")

FAILED = (RunStatus.FAILED, RunStatus.TIMED_OUT)
SAMPLES_KEPT = 3


def stages_by_pipeline(config: Config) -> dict[str, list[str]]:
    return {name: [stage.name for stage in p.stages] for name, p in config.pipelines.items()}


class Guard:
    def __init__(self, store: Storage, rules: tuple[HaltRule, ...], stages: dict[str, list[str]]):
        self.store = store
        self.rules = rules
        self.stages = stages  # pipeline -> its stage names: a budget sums its costs per stage
        # (pipeline, the budget's zone) -> (start of its day, cost spent that day): read
        # from the store once a day (or after a reload), then kept up batch by batch.
        self._spent: dict[tuple[str, ZoneInfo | None], tuple[float, float]] = {}

    def check(self, finished: Iterable[FinishedRun], now: float, active: list[Hold]) -> list[Hold]:
        """Halts the newly recorded runs call for; returns the ones raised now."""
        held = {(hold.scope, hold.target) for hold in active if hold.kind == "halt"}
        finished = list(finished)
        self._add_costs(finished, now)
        raised: list[Hold] = []
        failures = [run for run in finished if run.status in FAILED]
        seen: set[tuple[str, str, str]] = set()
        for rule in self.rules:
            candidates = self._candidates(rule, failures, finished)
            for scope, target, detail in candidates:
                if (scope, target) in held or (rule.id, target, detail) in seen:
                    continue
                seen.add((rule.id, target, detail))
                if hold := self._evaluate(rule, scope, target, detail, now):
                    held.add((scope, target))
                    raised.append(hold)
                    log.warning("HALT %s %s: %s (rule %s)", scope, target, hold.reason, rule.id)
        return raised

    def budget_lifts_at(self, hold: Hold) -> float | None:
        """When a budget's halt lifts itself (None: not a budget's halt)."""
        if hold.kind != "halt" or hold.scope != "pipeline":
            return None
        if hold.probe_at is not None:
            return hold.probe_at
        # Raised before halts knew when they lift: by its rule's zone, if the rule is known.
        zones = [rule.timezone for rule in self.rules if rule.id == hold.rule]
        return end_of_day(hold.created_at, zones[0] if zones else None)

    def _add_costs(self, finished: list[FinishedRun], now: float) -> None:
        budgets = [rule for rule in self.rules if rule.when == "budget"]
        batch: dict[str, float] = {}
        for run in finished:
            if run.cost:
                batch[run.pipeline] = batch.get(run.pipeline, 0.0) + run.cost
        kept = {(pipeline, rule.timezone) for rule in budgets for pipeline in batch
                if not rule.pipelines or pipeline in rule.pipelines}  # fmt: skip
        for pipeline, zone in kept:
            start = self._budget_start(pipeline, zone, now)
            known = self._spent.get((pipeline, zone))
            if known is None or known[0] != start:  # the store already holds this batch
                total = self.store.cost_since(pipeline, self.stages.get(pipeline, []), start)
            else:
                total = known[1] + batch[pipeline]
            self._spent[(pipeline, zone)] = (start, total)

    def _budget_start(self, pipeline: str, zone: ZoneInfo | None, now: float) -> float:
        """Where the budget's count starts: its day's midnight, or a later clear of its halt."""
        return max(start_of_day(now, zone), self.store.halt_cleared_at("pipeline", pipeline) or 0)

    def _candidates(
        self, rule: HaltRule, failures: list[FinishedRun], finished: Iterable[FinishedRun]
    ) -> list[tuple[str, str, str]]:
        if rule.when == "same_label":
            return [
                ("channel", run.channel, run.label)
                for run in failures
                if run.channel and run.label and rule.watches_channel(run.channel)
                and rule.watches_label(run.label)
                and (not rule.pipelines or run.pipeline in rule.pipelines)
            ]  # fmt: skip
        if rule.when == "all_failed":
            return [
                ("stage", f"{run.pipeline}/{run.stage}", "")
                for run in failures
                if rule.watches_stage(run.pipeline, run.stage)
            ]
        return [
            ("pipeline", run.pipeline, "")
            for run in finished
            if run.cost and (not rule.pipelines or run.pipeline in rule.pipelines)
        ]

    def _evaluate(
        self, rule: HaltRule, scope: str, target: str, detail: str, now: float
    ) -> Hold | None:
        cleared = self.store.halt_cleared_at(scope, target)  # failures before it are answered
        if rule.when == "same_label":
            since = max(now - rule.within_s, cleared or float("-inf"))
            count, errors = self.store.label_failures(target, detail, since, SAMPLES_KEPT)
            if count < rule.count:
                return None
            reason = f"{count}× {detail} within {_duration(rule.within_s)}"
            return self._raise(rule, scope, target, reason, now, detail, count, errors)
        if rule.when == "all_failed":
            pipeline, stage = target.split("/", 1)
            last = self.store.last_run_statuses(pipeline, stage, rule.count, since=cleared)
            if len(last) < rule.count or any(status not in FAILED for status, _ in last):
                return None
            reason = f"the last {rule.count} runs all failed"
            errors = [error or "" for _, error in last]
            return self._raise(rule, scope, target, reason, now, None, rule.count, errors)
        start, spent = self._spent.get((target, rule.timezone), (0.0, 0.0))
        if spent <= rule.budget:
            return None
        zone = f" ({rule.timezone.key})" if rule.timezone else ""
        cleared = start != start_of_day(now, rule.timezone)
        when = "since its halt was cleared" if cleared else "today"
        reason = f"budget spent: {spent:.2f} of {rule.budget:.2f} {when}{zone}"
        return self._raise(rule, scope, target, reason, now, None, None, [])

    def _raise(
        self,
        rule: HaltRule,
        scope: str,
        target: str,
        reason: str,
        now: float,
        label: str | None,
        count: int | None,
        errors: list[str],
    ) -> Hold | None:
        probe = rule.probe_after_s
        if rule.when == "budget":  # looked at again when its day is over, and lifted then
            probe_at = end_of_day(now, rule.timezone)
        else:
            probe_at = now + probe if probe else None
        return self.store.add_hold(
            {
                "scope": scope,
                "target": target,
                "kind": "halt",
                "rule": rule.id,
                "reason": reason,
                "label": label,
                "count": count,
                "samples": errors[:SAMPLES_KEPT],
                "created_at": now,
                "created_by": f"rule {rule.id}",
                "probe_at": probe_at,
                "cooldown_s": probe,
            }
        )


def start_of_day(now: float, zone: ZoneInfo | None) -> float:
    """Midnight before `now` in `zone` (None: this host's local time)."""
    local = datetime.fromtimestamp(now, zone)
    return datetime.combine(local.date(), time(), zone).timestamp()


def end_of_day(now: float, zone: ZoneInfo | None) -> float:
    """The midnight after `now` in `zone`: when a budget's day rolls over."""
    local = datetime.fromtimestamp(now, zone)
    return datetime.combine(local.date() + timedelta(days=1), time(), zone).timestamp()


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
