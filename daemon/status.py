"""The status snapshot: what is stuck and why, at a glance.

Per pipeline, in stage order: each stage's states with totals and how many items
entered them in the last 24 hours and the last hour; under retrying, failed and
ignored, the labels grouped as Retriable or Terminal (the largest shown, the rest
folded into "Other"); where a stage's channel comes from the item, the states per
channel; running items with their progress and an ETA for the queue. Plus the rules'
health, active halts and pauses, and items stuck on one error.

A plain dict, so the CLI prints it, `--json` dumps it, and the API and the web page
serve the same thing.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from typing import Any

from pipewarden.config import Config, Stage
from pipewarden.render import finite
from pipewarden.store import Store
from pipewarden.types import ItemState

NOT_IN_CONFIG = " (not in the config)"
STUCK_AFTER_REQUEUES = 3  # requeued by hand this often and failing still: a person must look
LABELS_SHOWN = 5  # per group; the rest are folded into "Other (k more)"
ETA_SAMPLE = 200  # recent runs whose median duration estimates a queue's ETA
HOUR_S, DAY_S = 3600.0, 86400.0
# The order states are listed in: the item's life, then where it ended.
STATE_ORDER = [
    ItemState.QUEUED, ItemState.RUNNING, ItemState.RETRYING, ItemState.DEFERRED,
    ItemState.HELD, ItemState.DONE, ItemState.FAILED, ItemState.IGNORED,
]  # fmt: skip
GROUP_NAMES = {"retriable": "Retriable", "unknown": "Retriable", "terminal": "Terminal"}


def _counts(total: int = 0, d24: int = 0, d1: int = 0) -> dict[str, int]:
    return {"total": total, "d24": d24, "d1": d1}


def _add(into: dict[str, int], total: int, d24: int, d1: int) -> None:
    into["total"] += total
    into["d24"] += d24 or 0
    into["d1"] += d1 or 0


def status_snapshot(
    config: Config,
    store: Store | None,
    now: float,
    only: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    states = store.state_counts(now - DAY_S, now - HOUR_S, only) if store else []
    labels = store.label_counts(now - DAY_S, now - HOUR_S, only) if store else []
    running = store.running_runs() if store else []
    names = [only] if only else list(config.pipelines)
    # Items may sit in a pipeline or at a stage the config no longer has: show them too.
    names += sorted({row[0] for row in states if row[0] not in names})
    pipelines = [
        _pipeline(config, name, states, labels, running, store, now, verbose) for name in names
    ]
    return {"generated_at": now, **daemon_health(store), "pipelines": pipelines}


def _pipeline(config, name, states, labels, running, store, now, verbose) -> dict[str, Any]:
    pipeline = config.pipelines.get(name)
    configured = [stage.name for stage in pipeline.stages] if pipeline else []
    stored = sorted({row[1] for row in states if row[0] == name and row[1] not in configured})
    stages = []
    totals = _counts()
    for stage_name in configured + stored:
        stage = pipeline.stage(stage_name) if stage_name in configured else None  # type: ignore[union-attr]
        entry = _stage(name, stage_name, stage, states, labels, running, store, now, verbose)
        _add(totals, entry["total"], entry["d24"], entry["d1"])
        stages.append(entry)
    shown = name if pipeline else name + NOT_IN_CONFIG
    return {"name": shown, **totals, "stages": stages}


def _stage(
    pipeline: str,
    name: str,
    stage: Stage | None,
    state_rows: list,
    label_rows: list,
    running: list,
    store: Store | None,
    now: float,
    verbose: bool,
) -> dict[str, Any]:
    per_channel = bool(stage and "{" in stage.channel)
    states: dict[str, dict[str, Any]] = {}
    totals = _counts()
    for p, s, state, channel, total, d24, d1 in state_rows:
        if (p, s) != (pipeline, name):
            continue
        entry = states.setdefault(state, {"state": state, **_counts(), "channels": {}})
        _add(entry, total, d24, d1)
        _add(totals, total, d24, d1)
        if per_channel:
            _add(entry["channels"].setdefault(channel or "unknown", _counts()), total, d24, d1)
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for p, s, state, group, label, total, d24, d1 in label_rows:
        if (p, s) == (pipeline, name):
            shown_group = (
                "Ignored" if state == ItemState.IGNORED else GROUP_NAMES.get(group, "Other")
            )
            groups[state][shown_group].append(
                {"label": label or "Unknown (no label)", **_counts(total, d24, d1)}
            )
    ordered = []
    for state in sorted(states, key=_state_rank):
        entry = states[state]
        entry["channels"] = [
            {"name": channel, **counts}
            for channel, counts in sorted(entry["channels"].items(), key=lambda kv: -kv[1]["total"])
        ]
        entry["groups"] = [_group(group, rows) for group, rows in sorted(groups[state].items())]
        ordered.append(entry)
    result: dict[str, Any] = {
        "name": name if stage else name + NOT_IN_CONFIG,
        **totals,
        "per_channel": per_channel,
        "concurrency": stage.concurrency if stage else None,
        "states": ordered,
        "running": [
            _running(run, now) for run in running if (run.pipeline, run.stage) == (pipeline, name)
        ],
        "eta_s": None,
    }
    if stage and store:
        queued = sum(
            states.get(s, {}).get("total", 0) for s in (ItemState.QUEUED, ItemState.RUNNING)
        )
        result["eta_s"] = _eta(store, stage, queued)
        if verbose:
            result["telemetry"] = telemetry(store, pipeline, name, now)
    return result


def _state_rank(state: str) -> int:
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)


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


def _running(run: Any, now: float) -> dict[str, Any]:
    return {
        "run_id": run.id, "key": run.item_key, "attempt": run.attempt, "channel": run.channel,
        "started_at": run.started_at, "elapsed_s": max(0.0, now - run.started_at),
        "progress": finite(run.progress), "message": run.message,
    }  # fmt: skip


def _eta(store: Store, stage: Stage, waiting: int) -> float | None:
    """Seconds until the stage's queue is through, from its median recent run time."""
    if not waiting:
        return None
    recent = store.recent_durations(stage.pipeline, stage.name, ETA_SAMPLE)
    if not recent:
        return None
    rounds = -(-waiting // stage.concurrency)
    return rounds * statistics.median(recent)


def telemetry(store: Store, pipeline: str, stage: str, now: float) -> dict[str, Any]:
    """Success rate and p50/p95 duration over the last hour and the last day."""
    result = {}
    for window, seconds in (("1h", HOUR_S), ("24h", DAY_S)):
        rows = store.stage_durations(pipeline, stage, now - seconds)
        durations = sorted(d for _, d in rows if d is not None)
        ok = sum(1 for status, _ in rows if status == "ok")
        result[window] = {
            "runs": len(rows),
            "success_rate": ok / len(rows) if rows else None,
            "p50_s": _percentile(durations, 0.50),
            "p95_s": _percentile(durations, 0.95),
        }
    return result


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def daemon_health(store: Store | None) -> dict[str, Any]:
    """The rules' last reload, the active halts and pauses, and items stuck on one error."""
    if store is None:
        return {"rules": None, "holds": [], "stuck": []}
    return {
        "rules": _rules_health(store),
        "holds": [hold_as_dict(hold) for hold in store.active_holds()],
        "stuck": [
            {"pipeline": p, "stage": s, "label": label, "items": n,
             "requeues": STUCK_AFTER_REQUEUES}
            for p, s, label, n in store.stuck_items(STUCK_AFTER_REQUEUES)
        ],
    }  # fmt: skip


def _rules_health(store: Store) -> dict[str, Any] | None:
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
