"""What the page looks up: runs by filter, page by page; one run's whole record; held items;
what the rules advise for a label.

The store's lookups (store/sqlite/lookups.py), shaped for the page; each is bounded by
its `limit` and walks an index.
"""

from __future__ import annotations

import json
from typing import Any

from pipewarden.render import RUN_FIELDS, finite, run_as_dict
from pipewarden.rules import RuleSet
from pipewarden.store import Store
from pipewarden.store.records import FAILURES, RunFilter

__all__ = ["FAILURES", "RunFilter", "advice_by_label", "find_runs", "held_items", "run_record"]

ERROR_SHOWN = 300  # characters of a run's error in a list; its record has the whole text
_LISTED = tuple(name for name in RUN_FIELDS if name != "id")


def find_runs(store: Store, wanted: RunFilter, limit: int) -> dict[str, Any]:
    """Runs newest first, `limit` at a time; `next` is the `before` of the next page."""
    rows = store.find_runs(wanted, ("id", *_LISTED, "error"), ERROR_SHOWN, limit + 1)
    names = ("id", *_LISTED, "error", "later_ok")
    runs = [
        {name: finite(value) for name, value in zip(names, row, strict=True)}
        for row in rows[:limit]
    ]
    for run in runs:
        run["later_ok"] = bool(run["later_ok"])
    more = len(rows) > limit
    return {"runs": runs, "next": [runs[-1]["started_at"], runs[-1]["id"]] if more else None}


def run_record(store: Store, rules: RuleSet, run_id: str) -> dict[str, Any] | None:
    """Everything about one run (by its id or a unique prefix), the item it ran on, whether
    a later attempt succeeded, and what the rules advise; None when no single run matches."""
    matches = store.runs_with_prefix(run_id, limit=2)
    if len(matches) != 1:
        return None
    run = matches[0]
    item = store.item(run.pipeline, run.item_key)
    return {
        **run_as_dict(run),
        "data_out": _json_or_text(run.data_out),
        "item": None if item is None else {
            "state": item.state, "stage": item.stage, "attempt": item.attempt,
            "data": _json_or_text(item.data),
        },
        "later_ok": store.later_ok(run.id),
        **advice_for(rules, run.rule_id, run.label),
    }  # fmt: skip


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def advice_for(rules: RuleSet, rule_id: str | None, label: str | None) -> dict[str, str]:
    """The advice and runbook of the rule that judged a run: by its id, or, when the rules
    have changed since (a rule's id is file:line), the first rule with the label that has any."""
    by_id = [rule for rule in rules.rules if rule.id == rule_id]
    by_label = [rule for rule in rules.rules if rule.label == label and rule.advice + rule.runbook]
    for rule in (*by_id, *by_label):
        if rule.advice or rule.runbook:
            return {"advice": rule.advice, "runbook": rule.runbook}
    return {"advice": "", "runbook": ""}


def advice_by_label(rules: RuleSet) -> dict[str, dict[str, str]]:
    """Each label's advice and runbook, from the first rule with the label that has any."""
    advised: dict[str, dict[str, str]] = {}
    for rule in rules.rules:
        if (rule.advice or rule.runbook) and rule.label not in advised:
            advised[rule.label] = {"advice": rule.advice, "runbook": rule.runbook}
    return advised


def held_items(store: Store, pipeline: str | None, limit: int) -> dict[str, Any]:
    """Items held for a person, oldest first (`limit` of them), and how many each pipeline has."""
    rows, counts = store.held_items(pipeline, limit)
    names = ("pipeline", "key", "stage", "attempt", "label", "since")
    return {"items": [dict(zip(names, row, strict=True)) for row in rows], "counts": counts}
