"""The status snapshot: what is stuck and why, at a glance.

Per pipeline, in stage order: each stage's states with totals and how many items
entered them in the last 24 hours and the last hour. Items are filed where a person
looks for them: retrying ones under Retriable or Unknown (no rule knows the error),
failed ones under their final reason (Retries exhausted, Terminal, Unknown), ignored
ones by label, each with its largest labels shown and the rest folded into "Other";
deferred ones by why they wait and when they wake. Where a stage's channel comes from
the item, the states per channel. Running attempts with their live progress and, from
its rate, the time they have left; the queue's ETA only where the queue can move
(a daemon runs, and neither a halt, a pause nor business hours keep it back), with
what it is based on. Plus the rules' health, active halts and pauses, and items stuck
on one error.

A plain dict, so the CLI prints it, `--json` dumps it, and the API and the web page
serve the same thing.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from pipewarden.config import Config, Stage
from pipewarden.render import finite
from pipewarden.store import Storage, rollup
from pipewarden.types import ItemState

NOT_IN_CONFIG = " (not in the config)"
STUCK_AFTER_REQUEUES = 3  # requeued by hand this often and failing still: a person must look
LABELS_SHOWN = 5  # per group; the rest are folded into "Other (k more)"
ETA_SAMPLE = 200  # recent runs whose median duration estimates a queue's ETA
# Running attempts listed per stage, the longest-running first: its concurrency's worth, or
# this many. A quick stage's items claimed ahead are running too (their rows are written
# before a worker takes them): hundreds of lines no one reads, which every status built.
RUNNING_SHOWN = 10
HOUR_S, DAY_S = 3600.0, 86400.0
# The order states are listed in: the item's life, then where it ended.
STATE_ORDER = [
    ItemState.QUEUED, ItemState.RUNNING, ItemState.RETRYING, ItemState.DEFERRED,
    ItemState.HELD, ItemState.DONE, ItemState.FAILED, ItemState.IGNORED,
]  # fmt: skip
# (state, the rule's group) -> the group a person reads; a failed item is filed under
# why it ended, not under what its last error would have allowed.
GROUP_NAMES = {
    (ItemState.RETRYING, "retriable"): "Retriable",
    (ItemState.RETRYING, "unknown"): "Unknown",
    (ItemState.FAILED, "retriable"): "Retries exhausted",
    (ItemState.FAILED, "terminal"): "Terminal",
    (ItemState.FAILED, "unknown"): "Unknown",
}
GROUP_ORDER = ["Retriable", "Retries exhausted", "Terminal", "Unknown", "Ignored", "Other"]
WORKER_DEFERRED = "Deferred by the worker"  # a worker's own `defer` carries no label


def _counts(total: int = 0, d24: int = 0, d1: int = 0) -> dict[str, int]:
    return {"total": total, "d24": d24, "d1": d1}


def _add(into: dict[str, int], total: int, d24: int, d1: int) -> None:
    into["total"] += total
    into["d24"] += d24 or 0
    into["d1"] += d1 or 0


@dataclass(frozen=True)
class _Seen:
    """What one snapshot reads from the store, once, for all its stages."""

    config: Config
    store: Storage | None
    now: float
    states: list
    labels: list
    running: list
    holds: list
    daemon_running: bool
    verbose: bool
    rebucketed: dict  # (pipeline, stage, state, group, label) -> items a reclassify relabelled


def status_snapshot(
    config: Config,
    store: Storage | None,
    now: float,
    only: str | None = None,
    verbose: bool = False,
    daemon_running: bool = False,
) -> dict[str, Any]:
    """The whole picture. Without a running daemon nothing moves, so nothing has an ETA."""
    seen = _Seen(
        config, store, now,
        store.state_counts(now - DAY_S, now - HOUR_S, only) if store else [],
        store.label_counts(now - DAY_S, now - HOUR_S, only) if store else [],
        store.running_runs() if store else [],
        store.active_holds() if store else [],
        daemon_running, verbose,
        store.reclassified_counts() if store else {},
    )  # fmt: skip
    names = [only] if only else list(config.pipelines)
    # Items may sit in a pipeline or at a stage the config no longer has: show them too.
    names += sorted({row[0] for row in seen.states if row[0] not in names})
    pipelines = [_pipeline(seen, name) for name in names]
    return {"generated_at": now, **daemon_health(store, seen.holds), "pipelines": pipelines}


def _pipeline(seen: _Seen, name: str) -> dict[str, Any]:
    pipeline = seen.config.pipelines.get(name)
    configured = [stage.name for stage in pipeline.stages] if pipeline else []
    stored = sorted({row[1] for row in seen.states if row[0] == name and row[1] not in configured})
    stages = []
    totals = _counts()
    for stage_name in configured + stored:
        stage = pipeline.stage(stage_name) if stage_name in configured else None  # type: ignore[union-attr]
        entry = _stage(seen, name, stage_name, stage)
        _add(totals, entry["total"], entry["d24"], entry["d1"])
        stages.append(entry)
    shown = name if pipeline else name + NOT_IN_CONFIG
    return {"name": shown, **totals, "stages": stages}


def _stage(seen: _Seen, pipeline: str, name: str, stage: Stage | None) -> dict[str, Any]:
    per_channel = bool(stage and "{" in stage.channel)
    states: dict[str, dict[str, Any]] = {}
    totals = _counts()
    queued: dict[str, int] = defaultdict(int)  # channel -> queued items
    for p, s, state, channel, total, d24, d1 in seen.states:
        if (p, s) != (pipeline, name):
            continue
        entry = states.setdefault(state, {"state": state, **_counts(), "channels": {}})
        _add(entry, total, d24, d1)
        _add(totals, total, d24, d1)
        if per_channel:
            _add(entry["channels"].setdefault(channel or "unknown", _counts()), total, d24, d1)
        if state == ItemState.QUEUED:
            queued[channel or ""] += total
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for p, s, state, group, label, total, d24, d1 in seen.labels:
        if (p, s) == (pipeline, name):
            row = {"label": label or "Unknown (no label)", **_counts(total, d24, d1)}
            if rebucketed := seen.rebucketed.get((p, s, state, group, label)):
                row["rebucketed"] = rebucketed  # of them, relabelled by `pipewarden reclassify`
            groups[state][_group_name(state, group)].append(row)
    ordered = []
    for state in sorted(states, key=_state_rank):
        entry = states[state]
        entry["channels"] = _by_total(entry["channels"])
        entry["groups"] = [
            _group(group, groups[state][group])
            for group in sorted(groups[state], key=GROUP_ORDER.index)
        ]
        if state == ItemState.DEFERRED and seen.store:
            entry["reasons"] = _deferred_reasons(seen, pipeline, name)
        ordered.append(entry)
    result: dict[str, Any] = {
        "name": name if stage else name + NOT_IN_CONFIG,
        **totals,
        "per_channel": per_channel,
        "concurrency": stage.concurrency if stage else None,
        "states": ordered,
        **_running_shown(seen, pipeline, name, stage),
        "queue": _queue(seen, stage, queued) if stage else None,
    }
    if stage and seen.store and seen.verbose:
        result["telemetry"] = telemetry(seen.store, pipeline, name, seen.now)
    return result


def _state_rank(state: str) -> int:
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)


def _group_name(state: str, group: str) -> str:
    if state == ItemState.IGNORED:
        return "Ignored"
    return GROUP_NAMES.get((state, group), "Other")


def _by_total(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    return [
        {"name": name, **entry}
        for name, entry in sorted(counts.items(), key=lambda kv: -kv[1]["total"])
    ]


def _group(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows.sort(key=lambda row: -row["total"])
    shown, rest = rows[:LABELS_SHOWN], rows[LABELS_SHOWN:]
    group = {"name": name, **_counts(), "labels": shown, "other": None}
    for row in rows:
        _add(group, row["total"], row["d24"], row["d1"])
    if rest:
        other = _counts()
        for row in rest:
            _add(other, row["total"], row["d24"], row["d1"])
        group["other"] = {"more": len(rest), **other}
    return group


def _deferred_reasons(seen: _Seen, pipeline: str, stage: str) -> list[dict[str, Any]]:
    """Why the stage's deferred items wait, and when the first of each reason wakes."""
    assert seen.store is not None
    rows = seen.store.deferred_reasons(pipeline, stage, seen.now - DAY_S, seen.now - HOUR_S)
    reasons = [
        {"reason": label or WORKER_DEFERRED, **_counts(total, d24, d1), "wakes_at": wakes_at,
         "wakes_in_s": _wait(wakes_at, seen.now)}
        for label, total, d24, d1, wakes_at in rows
    ]  # fmt: skip
    return sorted(reasons, key=lambda reason: -reason["total"])


def _wait(at: float | None, now: float) -> float | None:
    return None if at is None else max(0.0, at - now)


def _running_shown(seen: _Seen, pipeline: str, name: str, stage: Stage | None) -> dict[str, Any]:
    """The stage's running attempts (the store gives them oldest first), up to what is worth
    a line each, and how many more run (`running_more`)."""
    runs = [run for run in seen.running if (run.pipeline, run.stage) == (pipeline, name)]
    shown = max(RUNNING_SHOWN, stage.concurrency if stage else 0)
    return {
        "running": [_running(run, seen) for run in runs[:shown]],
        "running_more": max(0, len(runs) - shown),
    }


def _running(run: Any, seen: _Seen) -> dict[str, Any]:
    elapsed = max(0.0, seen.now - run.started_at)
    left = _time_left(finite(run.progress), elapsed) if seen.daemon_running else None
    return {
        "run_id": run.id, "key": run.item_key, "attempt": run.attempt, "channel": run.channel,
        "started_at": run.started_at, "elapsed_s": elapsed,
        "progress": finite(run.progress), "message": run.message, "eta_s": left,
    }  # fmt: skip


def _time_left(progress: float | None, elapsed: float) -> float | None:
    """Seconds an attempt has left at the rate its reported progress has moved so far."""
    if progress is None or progress <= 0 or elapsed <= 0:
        return None
    return elapsed * (1 - min(progress, 1.0)) / min(progress, 1.0)


def _queue(seen: _Seen, stage: Stage, queued: dict[str, int]) -> dict[str, Any] | None:
    """The stage's queued items: how many can move, what keeps the rest back, an ETA."""
    total = sum(queued.values())
    if not total:
        return None
    waiting: dict[str, int] = defaultdict(int)  # why -> items
    for channel, count in queued.items():
        if why := _kept_back(seen, stage, channel):
            waiting[why] += count
    ready = total - sum(waiting.values())
    return {
        "queued": total,
        "ready": ready,
        "waiting": [{"why": why, "items": n} for why, n in sorted(waiting.items())],
        "eta": _eta(seen, stage, ready) if seen.daemon_running else None,
    }


def _kept_back(seen: _Seen, stage: Stage, channel: str) -> str | None:
    """Why items of `channel` at `stage` cannot be claimed now; None if they can."""
    targets = {("pipeline", stage.pipeline), ("stage", stage.qualified_name)}
    if channel:
        targets.add(("channel", channel))
    for hold in seen.holds:
        if (hold.scope, hold.target) in targets:
            return f"{hold.target} {'halted' if hold.kind == 'halt' else 'paused'}"
    hours = seen.config.channels.get(channel)
    if hours is not None and not hours.is_open(seen.now):
        return f"{channel} outside business hours"
    return None


def _eta(seen: _Seen, stage: Stage, ready: int) -> dict[str, Any] | None:
    """When the ready queue is through: rounds of `concurrency` at the median run time."""
    if not ready or seen.store is None:
        return None
    recent = seen.store.recent_durations(stage.pipeline, stage.name, ETA_SAMPLE)
    if not recent:
        return None
    median = statistics.median(recent)
    rounds = -(-ready // stage.concurrency)
    return {"seconds": rounds * median, "items": ready, "concurrency": stage.concurrency,
            "median_s": median, "runs": len(recent)}  # fmt: skip


def telemetry(store: Storage, pipeline: str, stage: str, now: float) -> dict[str, Any]:
    """Success rate and p50/p95 duration over the last hour and the last day.

    From the runs counted per five-minute slot as they ended (store/rollup.py): a window
    starts at its first slot's start, and a duration is read back within 5 %. Skipped runs
    count as successes with no duration; interrupted ones are left out.
    """
    rows = store.ended_runs(pipeline, stage, now - DAY_S)
    result = {}
    for window, seconds in (("1h", HOUR_S), ("24h", DAY_S)):
        first = rollup.slot(now - seconds)
        runs = ok = 0
        durations: Counter[int] = Counter()
        for slot, outcome, bucket, count in rows:
            if slot < first or outcome == "interrupted":
                continue
            runs += count
            ok += count if outcome in ("ok", "skipped") else 0
            if outcome != "skipped":
                durations[bucket] += count
        result[window] = {
            "runs": runs,
            "success_rate": ok / runs if runs else None,
            "p50_s": rollup.percentile(durations, 0.50),
            "p95_s": rollup.percentile(durations, 0.95),
        }
    return result


def daemon_health(store: Storage | None, holds: list) -> dict[str, Any]:
    """The rules' last reload, the active halts and pauses, and items stuck on one error."""
    if store is None:
        return {"rules": None, "holds": [], "stuck": []}
    return {
        "rules": _rules_health(store),
        "holds": [hold_as_dict(hold) for hold in holds],
        "stuck": [
            {"pipeline": p, "stage": s, "label": label, "items": n,
             "requeues": STUCK_AFTER_REQUEUES}
            for p, s, label, n in store.stuck_items(STUCK_AFTER_REQUEUES)
        ],
    }  # fmt: skip


def _rules_health(store: Storage) -> dict[str, Any] | None:
    """The last reload, and the rules in force that gave up on a message (`trouble`)."""
    reload = store.get_meta("reload")
    if reload is not None:
        trouble = store.get_meta("rules_trouble") or {}
        current = trouble.get("version") == reload["version"]
        reload["trouble"] = trouble.get("rules", []) if current else []
    return reload


def hold_as_dict(hold: Any) -> dict[str, Any]:
    fields = ("id", "scope", "target", "kind", "rule", "reason", "label", "count", "created_at",
              "created_by", "probe_at", "cleared_at", "cleared_by")  # fmt: skip
    return {
        **{name: getattr(hold, name) for name in fields},
        "samples": json.loads(hold.samples or "[]"),
    }
