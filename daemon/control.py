"""What a person can change: enqueue, pause, resume, clear a halt, requeue by label,
release or fail held items.

One implementation for both ways in: the API calls these inside the running daemon,
and the CLI calls them on the store directly when no daemon runs. Each change leaves
its audit line (`audit.py`) in the same transaction: who, when, what.
"""

from __future__ import annotations

import logging
from typing import Any

from pipewarden import audit
from pipewarden.config import Config
from pipewarden.errors import UsageError
from pipewarden.inputs import check_item, escape_controls, field, key_problem, shown
from pipewarden.known import check_channel, listed
from pipewarden.limits import KEY_MAX
from pipewarden.notifier import Notifier
from pipewarden.store import Enqueued, HeldChange, Hold, Storage

log = logging.getLogger("pipewarden.control")

SCOPES = ("channel", "stage", "pipeline")
REASON_MAX = KEY_MAX  # a reason to fail held items: one line, as long as any name the API takes
AUDIT_KEYS_NAMED = 10  # an audit line of a bulk release names this many keys, then counts


def enqueue(
    store: Storage,
    config: Config,
    pipeline: str,
    items: list[tuple[str, dict | None]],
    now: float,
    force: bool = False,
) -> Enqueued:
    """Add items at the pipeline's first stage (see `Storage.enqueue`).

    Every way in (a KEY, a file, the API) ends here, so every item is checked here:
    a bad key or data refuses the whole batch with the reason, before anything is added.
    Data None is none given: a known item keeps its own; data given replaces it.
    """
    first = config.pipeline(pipeline).stages[0]
    checked = [check_item(key, data) for key, data in items]
    return store.enqueue(pipeline, first.name, checked, now, first.channel_for, force)


def hold_target(
    config: Config, scope: str, target: str, store: Storage | None = None, known_only: bool = False
) -> str:
    """Check a pause/resume target against the config (and, with `known_only`, a channel
    against those the config and the store know: a typo is refused); returns its name."""
    if scope == "pipeline":
        return config.pipeline(target).name
    if scope == "stage":
        pipeline, _, stage = target.partition("/")
        try:
            return config.pipeline(pipeline).stage(stage).qualified_name
        except KeyError:
            raise UsageError(
                f"no stage '{target}': write pipeline/stage, e.g. sites/capture"
            ) from None
    if scope == "channel" and target:
        return check_channel(config, store, target) if known_only else target
    raise UsageError(f"scope must be one of {', '.join(SCOPES)}, with a target")


def pause(
    store: Storage, config: Config, scope: str, target: str, who: str, now: float,
    known_only: bool = False,
) -> bool:  # fmt: skip
    """Pause a channel, stage or pipeline; False if it was already paused. With `known_only`
    a channel no item has had yet is refused as a typo (see `hold_target`)."""
    target = hold_target(config, scope, target, store, known_only)
    with store.transaction():
        added = store.add_hold(
            {"scope": scope, "target": target, "kind": "pause", "reason": "paused by a person",
             "created_at": now, "created_by": who}
        )  # fmt: skip
        audit.record(store, who, "pause", f"{scope} {target}",
                     "" if added else "was paused already", now)  # fmt: skip
    return added is not None


def resume(
    store: Storage, config: Config, scope: str, target: str, who: str, now: float,
    known_only: bool = False,
) -> bool:  # fmt: skip
    """Resume a paused channel, stage or pipeline; False if it was not paused."""
    target = hold_target(config, scope, target, store, known_only)
    with store.transaction():
        was = bool(store.clear_holds(target, ("pause",), who, now))
        audit.record(store, who, "resume", f"{scope} {target}", "" if was else "was not paused",
                     now)  # fmt: skip
    return was


def clear_halt(store: Storage, notifier: Notifier, target: str, who: str, now: float) -> list[Hold]:
    """Clear the halts on `target` and tell the people who were told of them."""
    with store.transaction():
        cleared = store.clear_holds(target, ("halt",), who, now)
        if not cleared:
            halted = sorted({hold.target for hold in store.active_holds() if hold.kind == "halt"})
            raise UsageError(
                f"no active halt on '{shown(target)}' — {listed('halted now', halted)}"
            )
        labels = ", ".join(sorted({hold.label or hold.reason for hold in cleared}))
        audit.record(store, who, "clear halt", target, labels, now)
    for hold in cleared:
        notifier.halt_resolved(hold, f"Cleared by {who}", now)
    return cleared


def retry(store: Storage, config: Config, request: dict[str, Any], who: str, now: float) -> int:
    """Requeue failed and retrying items with a label (see `pipewarden retry`)."""
    label = field(request, "label", str)
    pipeline, stage = field(request, "pipeline", str, None), field(request, "stage", str, None)
    if pipeline:
        config.pipeline(pipeline)
    since_s = field(request, "since_s", float, None)
    dry_run = field(request, "dry_run", bool, False)
    # A big retry comes in chunks (`limit`), each its own transaction, all of one `before`.
    before, limit = field(request, "before", float, None), field(request, "limit", int, None)
    with store.transaction():
        count = store.requeue_by_label(
            label, now, pipeline, stage, now - since_s if since_s else None, dry_run,
            field(request, "force", bool, False), before, limit,
        )  # fmt: skip
        if not dry_run:  # a chunk of a big retry: a line for what it requeued
            where = "/".join(part for part in (pipeline, stage) if part) or "every pipeline"
            audit.record(store, who, "retry", f"label {label!r} in {where}",
                         f"{count:,} item(s) requeued", now)  # fmt: skip
    return count


def note_reload(store: Storage, result: dict[str, Any], who: str, now: float) -> None:
    """The audit line of a reload a person asked for (the daemon reloads; this records it)."""
    if result["ok"]:
        detail = f"rules version {result['version']} ({result['rules']} rules)"
    else:
        detail = f"failed: {result['error']}; version {result['version']} stays in force"
    audit.record(store, who, "reload", "config and rules", detail, now)


def release(
    store: Storage, config: Config, pipeline: str, keys: list[str] | None, who: str, now: float,
    dry_run: bool = False,
) -> HeldChange:  # fmt: skip
    """Held items (`keys`, or None for all of the pipeline's) back in the queue, at the
    attempt they were held at: a person has decided their side effects may happen again."""
    with store.transaction():
        change = store.change_held(_pipeline(config, pipeline), _keys(keys), now,
                                   dry_run=dry_run)  # fmt: skip
        if not dry_run:
            _audit_held(store, who, "release", pipeline, change, "", now)
    if change.changed and not dry_run:
        log.info("%s released %d held item(s) of %s", who, len(change.changed), pipeline)
    return change


def fail(
    store: Storage, config: Config, pipeline: str, keys: list[str] | None, reason: str,
    who: str, now: float, dry_run: bool = False,
) -> HeldChange:  # fmt: skip
    """Held items (`keys`, or None for all of the pipeline's) end failed with `reason`."""
    text = fail_reason(reason)
    with store.transaction():
        change = store.change_held(
            _pipeline(config, pipeline), _keys(keys), now, fail_reason=text, dry_run=dry_run
        )
        if not dry_run:
            _audit_held(store, who, "fail", pipeline, change, f": {text}", now)
    if change.changed and not dry_run:
        log.info("%s failed %d held item(s) of %s: %s", who, len(change.changed), pipeline, text)
    return change


def fail_reason(reason: str) -> str:
    """The reason held items fail with, as kept: one line of text, or UsageError."""
    text = reason.strip()
    if not text:
        raise UsageError("--reason must say why they fail (nothing fails without a text)")
    if escape_controls(text) != text:
        raise UsageError(f"--reason holds a control character ('{shown(text)}'): write one line")
    if len(text.encode("utf-8", errors="surrogateescape")) > REASON_MAX:
        raise UsageError(f"--reason is over {REASON_MAX:,} bytes: say it shorter")
    return text


def held_count(store: Storage, request: dict[str, Any]) -> int:
    """Held items with a `retry` request's label, which `retry` leaves to a person."""
    return store.held_count(
        field(request, "label", str), field(request, "pipeline", str, None),
        field(request, "stage", str, None),
    )  # fmt: skip


def _audit_held(
    store: Storage, who: str, action: str, pipeline: str, change: HeldChange, why: str, now: float
) -> None:
    names = ", ".join(change.changed[:AUDIT_KEYS_NAMED])
    more = len(change.changed) - AUDIT_KEYS_NAMED
    names += f" and {more:,} more" if more > 0 else ""
    detail = f"{len(change.changed):,} held item(s){' (' + names + ')' if names else ''}{why}"
    audit.record(store, who, action, pipeline, detail, now)


def _pipeline(config: Config, name: str) -> str:
    return config.pipeline(name).name


def _keys(keys: list[str] | None) -> list[str] | None:
    if keys is None:
        return None
    if not keys:
        raise UsageError("name the items' keys, or take every held item with --all-held")
    for key in keys:
        if problem := key_problem(key):
            where = f"key '{shown(key)}'" if isinstance(key, str) else "key"
            raise UsageError(f"{where} {problem}")
    return keys
