"""An item's whole story for `pipewarden why`: every run, what judged it, what held it,
and what happens next."""

from __future__ import annotations

import shlex
from typing import Any

from pipewarden.config import Config
from pipewarden.errors import PipewardenError
from pipewarden.outcomes import backoff_schedule
from pipewarden.render import describe_hold, finite, format_duration, format_time, valid_time
from pipewarden.status import hold_as_dict
from pipewarden.store import Storage
from pipewarden.types import ItemState, RunStatus

PROBE_FAILED = (RunStatus.FAILED, RunStatus.TIMED_OUT)


def item_story(config: Config, store: Storage, pipeline: str, key: str, now: float) -> dict:
    item = store.item(pipeline, key)
    if item is None:
        raise PipewardenError(f"no item '{key}' in pipeline '{pipeline}'")
    runs = store.item_runs(item.id)
    work = [run for run in runs if run.replay_of is None]  # a replay is not the item's work
    stage = config.pipelines.get(pipeline) and _stage_or_none(config, pipeline, item.stage)
    targets = {item.channel, f"{pipeline}/{item.stage}", pipeline} - {None}
    holds = [hold_as_dict(h) for h in store.holds_on(targets, since=item.created_at)]
    return {
        "pipeline": pipeline,
        "key": key,
        "stage": item.stage,
        "state": item.state,
        "channel": item.channel,
        "attempt": item.attempt,
        "ready_at": finite(item.ready_at),
        "created_at": finite(item.created_at),
        "updated_at": finite(item.updated_at),
        "last_error": item.last_error,
        "last_label": item.last_label,
        "runs": [_run(run) for run in runs],
        "backoff_s": backoff_schedule(stage.retry) if stage else [],
        "max_attempts": stage.retry.max_attempts if stage else None,
        "holds": holds,
        "next": _next_step(item, holds, stage, now, work[-1] if work else None),
    }


def _run(run: Any) -> dict[str, Any]:
    return {
        "id": run.id, "stage": run.stage, "attempt": run.attempt, "status": run.status,
        "started_at": finite(run.started_at), "duration_s": finite(run.duration_s),
        "error": run.error,
        "group": run.group_name, "label": run.label, "rule": run.rule_id,
        "progress": finite(run.progress), "message": run.message, "probe_of": run.probe_of,
        "rebucketed": _rebucketed(run), "replay_of": run.replay_of,
    }  # fmt: skip


def _rebucketed(run: Any) -> dict[str, Any] | None:
    """What first judged a run that `pipewarden reclassify` re-bucketed since; None if not."""
    if run.reclassified_at is None:
        return None
    return {
        "at": run.reclassified_at, "group": run.original_group, "label": run.original_label,
        "rule": run.original_rule_id, "rules_version": run.original_rules_version,
    }  # fmt: skip


def _stage_or_none(config: Config, pipeline: str, stage: str) -> Any:
    try:
        return config.pipeline(pipeline).stage(stage)
    except KeyError:
        return None


def _next_step(item: Any, holds: list[dict], stage: Any, now: float, last_run: Any) -> str:
    waiting = item.state in (ItemState.QUEUED, ItemState.RETRYING, ItemState.DEFERRED)
    active = [h for h in holds if h["cleared_at"] is None]
    if waiting and active:
        return _behind_hold(item, active[0], last_run)
    if stage is None and item.state not in (ItemState.DONE, ItemState.FAILED, ItemState.IGNORED):
        return f"waits: stage '{item.stage}' is not in the config"
    if waiting and not valid_time(item.ready_at):  # a bad value an older version stored
        return f"never runs by itself: its ready time ({item.ready_at}) is not a valid time"
    wait = item.ready_at - now if waiting else 0.0
    when = "now" if wait <= 0 else f"at {format_time(item.ready_at)} (in {format_duration(wait)})"
    attempts = stage.retry.max_attempts if stage else "?"
    steps = {
        ItemState.QUEUED: f"runs {item.stage} at the next free slot",
        ItemState.RUNNING: f"running {item.stage} now",
        ItemState.RETRYING: f"attempt {item.attempt + 1} of {attempts} at {item.stage} {when}",
        ItemState.DEFERRED: f"runs {item.stage} {when} (deferred, not failed)",
        ItemState.HELD: f"held for a person ({item.last_label or 'Interrupted'}) at"
        f" {item.stage}, whose side effects must not repeat: `{_held_command(item, 'release')}`"
        f" runs it again (attempt {item.attempt + 1}), or"
        f" `{_held_command(item, 'fail')} --reason TEXT` ends it",
        ItemState.DONE: "nothing: done",
        ItemState.IGNORED: f"nothing: ignored ({item.last_label or 'expected filter'})",
        ItemState.FAILED: f"nothing: failed ({item.last_label or 'Unknown'}); to try again:"
        f' pipewarden retry --label "{item.last_label or "Unknown"}"',
    }
    return steps.get(item.state, item.state)


def _held_command(item: Any, command: str) -> str:
    return f"pipewarden {command} {shlex.quote(item.pipeline)} {shlex.quote(item.key)}"


def _behind_hold(item: Any, hold: dict, last_run: Any) -> str:
    """What keeps a waiting item back, and what a failed probe did with it."""
    text = f"waits: {describe_hold(hold)}; nothing runs until it is cleared"
    if hold["kind"] == "halt" and hold["scope"] != "pipeline" and valid_time(hold["probe_at"]):
        text += f" or a probe passes (the next at {format_time(hold['probe_at'])})"
    if last_run is not None and last_run.probe_of is not None and last_run.status in PROBE_FAILED:
        text += (
            f"; its last run was a probe of the halt and failed: it waits in the queue,"
            f" attempt {last_run.attempt} not spent"
        )
    return text
