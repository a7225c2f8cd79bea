"""What a person can change: enqueue, pause, resume, clear a halt, requeue by label.

One implementation for both ways in: the API calls these inside the running daemon,
and the CLI calls them on the store directly when no daemon runs.
"""

from __future__ import annotations

from typing import Any

from pipewarden.config import Config
from pipewarden.errors import PipewardenError, UsageError
from pipewarden.inputs import check_item, field
from pipewarden.notifier import Notifier
from pipewarden.store import Enqueued, Hold, Store

SCOPES = ("channel", "stage", "pipeline")


def enqueue(
    store: Store,
    config: Config,
    pipeline: str,
    items: list[tuple[str, dict]],
    now: float,
    force: bool = False,
) -> Enqueued:
    """Add items at the pipeline's first stage (see `Store.enqueue`).

    Every way in (a KEY, a file, the API) ends here, so every item is checked here:
    a bad key or data refuses the whole batch with the reason, before anything is added.
    """
    first = config.pipeline(pipeline).stages[0]
    checked = [check_item(key, data) for key, data in items]
    return store.enqueue(pipeline, first.name, checked, now, first.channel_for, force)


def hold_target(config: Config, scope: str, target: str) -> str:
    """Check a pause/resume target against the config; returns its canonical name."""
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
        return target
    raise UsageError(f"scope must be one of {', '.join(SCOPES)}, with a target")


def pause(store: Store, config: Config, scope: str, target: str, who: str, now: float) -> bool:
    """Pause a channel, stage or pipeline; False if it was already paused."""
    target = hold_target(config, scope, target)
    added = store.add_hold(
        {"scope": scope, "target": target, "kind": "pause", "reason": "paused by a person",
         "created_at": now, "created_by": who}
    )  # fmt: skip
    return added is not None


def resume(store: Store, config: Config, scope: str, target: str, who: str, now: float) -> bool:
    """Resume a paused channel, stage or pipeline; False if it was not paused."""
    return bool(store.clear_holds(hold_target(config, scope, target), ("pause",), who, now))


def clear_halt(store: Store, notifier: Notifier, target: str, who: str, now: float) -> list[Hold]:
    """Clear the halts on `target` and tell the people who were told of them."""
    cleared = store.clear_holds(target, ("halt",), who, now)
    if not cleared:
        raise PipewardenError(f"no active halt on '{target}' (see `pipewarden halts`)")
    for hold in cleared:
        notifier.halt_resolved(hold, f"Cleared by {who}", now)
    return cleared


def retry(store: Store, config: Config, request: dict[str, Any], now: float) -> int:
    """Requeue failed and retrying items with a label (see `pipewarden retry`)."""
    label = field(request, "label", str)
    pipeline, stage = field(request, "pipeline", str, None), field(request, "stage", str, None)
    if pipeline:
        config.pipeline(pipeline)
    since_s = field(request, "since_s", float, None)
    return store.requeue_by_label(
        label, now, pipeline, stage, now - since_s if since_s else None,
        field(request, "dry_run", bool, False), field(request, "force", bool, False),
    )  # fmt: skip
