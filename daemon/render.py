"""Text for people: the status tree, the runs table, one run in full.

Pure functions from plain data to lines, so tests assert exactly what a user sees.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from pipewarden.types import ItemState

# The order states are listed in: the item's life, then where it ended.
STATE_ORDER = [
    ItemState.QUEUED, ItemState.RUNNING, ItemState.RETRYING, ItemState.DEFERRED,
    ItemState.HELD, ItemState.DONE, ItemState.FAILED, ItemState.IGNORED,
]  # fmt: skip
LABELLED_STATES = {ItemState.RETRYING, ItemState.FAILED, ItemState.IGNORED}
TREE_WIDTH = 44


def status_tree(pipelines: list[dict[str, Any]]) -> list[str]:
    """The tree of items per pipeline, stage and state, with labels under the failures.

    pipelines: [{"name", "stages": [{"name", "states": {state: n},
                                     "labels": {state: [(group, label, n)]}}]}]
    """
    lines: list[str] = []
    for pipeline in pipelines:
        total = sum(sum(s["states"].values()) for s in pipeline["stages"])
        lines.append(_row(pipeline["name"], total))
        stages = pipeline["stages"]
        for index, stage in enumerate(stages):
            last_stage = index == len(stages) - 1
            lines.append(_row(("└─ " if last_stage else "├─ ") + stage["name"], None))
            stage_prefix = "   " if last_stage else "│  "
            states = [s for s in STATE_ORDER if stage["states"].get(s)]
            if not states:
                lines.append(stage_prefix + "└─ (empty)")
            for s_index, state in enumerate(states):
                last_state = s_index == len(states) - 1
                branch = "└─ " if last_state else "├─ "
                lines.append(_row(stage_prefix + branch + state, stage["states"][state]))
                labels = stage["labels"].get(state, [])
                label_prefix = stage_prefix + ("   " if last_state else "│  ")
                for l_index, (group, label, count) in enumerate(labels):
                    twig = "└─ " if l_index == len(labels) - 1 else "├─ "
                    shown = f"{label} ({group})" if state != ItemState.IGNORED else label
                    lines.append(_row(label_prefix + twig + shown, count))
        lines.append("")
    return lines


def health_lines(reload: dict | None, holds: list[Any], stuck: list[dict]) -> list[str]:
    """The lines above the tree: rules health, halts and pauses, stuck items."""
    lines = []
    if reload is None:
        lines.append("rules: not loaded by a daemon yet")
    elif reload["ok"]:
        restart = f" — needs restart: {', '.join(reload['needs_restart'])}" if reload.get(
            "needs_restart") else ""  # fmt: skip
        lines.append(
            f"rules: version {reload['version']} ({reload['rules']} rules),"
            f" loaded {format_time(reload['at'])}{restart}"
        )
    else:
        lines.append(
            f"rules: reload failed at {format_time(reload['at'])} — {reload['error']}"
            f" (version {reload['version']} still in force)"
        )
    for hold in holds:
        word = "halted" if hold.kind == "halt" else "paused"
        lines.append(f"{word}: {describe_hold(hold)}")
    for entry in stuck:
        lines.append(
            f"stuck: {entry['items']} item(s) of {entry['pipeline']}/{entry['stage']} requeued"
            f" {entry['requeues']}+ times still fail with '{entry['label']}' — look before"
            " requeueing again"
        )
    return lines


def _row(text: str, count: int | None) -> str:
    return text if count is None else f"{text:<{TREE_WIDTH}}{count:>10,}"


def runs_table(runs: Iterable[Any]) -> list[str]:
    header = f"{'RUN':<9}{'STARTED':<20}{'STAGE':<20}{'ITEM':<22}{'#':>2} " + (
        f"{'STATUS':<12}{'TIME':>8}  ERROR"
    )
    lines = [header]
    for run in runs:
        stage = f"{run.pipeline}/{run.stage}"
        lines.append(
            f"{run.id[:8]:<9}{format_time(run.started_at):<20}{_cut(stage, 19):<20}"
            f"{_cut(run.item_key, 21):<22}{run.attempt:>2} {run.status:<12}"
            f"{format_duration(run.duration_s):>8}  {_cut(_label_and_error(run), 60)}"
        )
    return lines


def item_detail(item: Any, now: float) -> list[str]:
    lines = [
        f"{'item':<12}{item.pipeline}/{item.key}",
        f"{'state':<12}{item.state} at stage {item.stage} ({item.attempt} attempt(s) made there)",
    ]
    if item.state in (ItemState.RETRYING, ItemState.DEFERRED, ItemState.QUEUED) and item.ready_at:
        wait = item.ready_at - now
        when = "now" if wait <= 0 else f"in {format_duration(wait)}"
        verb = "retry" if item.state == ItemState.RETRYING else "runs"
        lines.append(f"{'next':<12}{verb} at {format_time(item.ready_at)} ({when})")
    if item.last_label:
        lines.append(f"{'last label':<12}{item.last_label} ({item.last_group})")
    if item.last_error:
        lines.append(f"{'last error':<12}{item.last_error.strip().splitlines()[0]}")
    return lines


def _label_and_error(run: Any) -> str:
    if not run.error:
        return ""
    first = run.error.strip().splitlines()[0] if run.error.strip() else ""
    return f"[{run.label}] {first}" if run.label else first


RUN_FIELDS: Sequence[str] = (
    "id", "pipeline", "stage", "item_key", "attempt", "channel", "status", "started_at",
    "finished_at", "duration_s", "exit_code", "signal", "pid", "group_name", "label",
    "category", "type", "rule_id", "rules_version", "error_type", "progress", "message",
    "input_fingerprint", "code_ref", "config_hash", "rows_in", "rows_out", "cost", "trace_id",
)  # fmt: skip
_BLOCK_FIELDS = ("error", "traceback", "output")


def run_detail(run: Any) -> list[str]:
    lines = []
    for name in RUN_FIELDS:
        value = getattr(run, name)
        if value is None:
            continue
        if name.endswith("_at"):
            value = format_time(value, seconds=True)
        elif name == "duration_s":
            value = format_duration(value)
        lines.append(f"{name:<18}{value}")
    for name in _BLOCK_FIELDS:
        value = getattr(run, name)
        if value:
            lines.append("")
            lines.append(f"{name}:")
            lines.extend("  " + line for line in str(value).rstrip().splitlines())
    return lines


def format_time(epoch: float | None, seconds: bool = False) -> str:
    if epoch is None:
        return "-"
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    return text + (f".{int(epoch % 1 * 1000):03d}" if seconds else "")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_hold(hold: Any) -> str:
    """One line a person reads: 'sms — 25× Rate limited within 2h since 14:02'."""
    since = time.strftime("%H:%M", time.localtime(hold.created_at))
    what = "paused" if hold.kind == "pause" else hold.reason
    by = f" by {hold.created_by}" if hold.kind == "pause" and hold.created_by else ""
    return f"{hold.target} — {what}{by} since {since}"
