"""The status snapshot: items per pipeline, stage and state, with failure labels.

Built from the store's grouped counts and the config's stage order; the CLI prints
it (`render.status_tree`) or dumps it as JSON.
"""

from __future__ import annotations

from typing import Any

from pipewarden.config import Config
from pipewarden.store import Store

NOT_IN_CONFIG = " (not in the config)"


def status_snapshot(config: Config, store: Store | None, only: str | None = None) -> list[dict]:
    counts = store.state_counts(only) if store else []
    labels = store.label_counts(only) if store else []
    names = [only] if only else list(config.pipelines)
    # Items may sit in a pipeline or at a stage the config no longer has: show them too.
    names += sorted({p for p, _, _, _ in counts if p not in names})
    return [_pipeline(config, name, counts, labels) for name in names]


def _pipeline(config: Config, name: str, counts: list, labels: list) -> dict[str, Any]:
    pipeline = config.pipelines.get(name)
    configured = [stage.name for stage in pipeline.stages] if pipeline else []
    stored = sorted({s for p, s, _, _ in counts if p == name and s not in configured})
    stages = []
    for stage in configured + stored:
        states = {state: n for p, s, state, n in counts if (p, s) == (name, stage)}
        by_state: dict[str, list[tuple[str, str, int]]] = {}
        for p, s, state, group, label, n in sorted(labels, key=lambda row: -row[5]):
            if (p, s) == (name, stage):
                by_state.setdefault(state, []).append((group or "unknown", label or "Unknown", n))
        shown = stage if stage in configured else stage + NOT_IN_CONFIG
        stages.append({"name": shown, "states": states, "labels": by_state})
    return {"name": name if pipeline else name + NOT_IN_CONFIG, "stages": stages}


STUCK_AFTER_REQUEUES = 3  # requeued by hand this often and failing still: a person must look


def daemon_health(store: Store | None) -> dict[str, Any]:
    """The rules' last reload, the active halts and pauses, and items stuck on one error."""
    if store is None:
        return {"reload": None, "holds": [], "stuck": []}
    return {
        "reload": store.get_meta("reload"),
        "holds": store.active_holds(),
        "stuck": [
            {"pipeline": p, "stage": s, "label": label, "items": n,
             "requeues": STUCK_AFTER_REQUEUES}
            for p, s, label, n in store.stuck_items(STUCK_AFTER_REQUEUES)
        ],
    }  # fmt: skip
