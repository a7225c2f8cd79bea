"""What the page looks up: runs by filter, page by page; one run's whole record; held items;
what the rules advise for a label.

Plain SQL on the store's connection (read only: nothing here writes). Each query is
bounded by its `limit` and walks an index (`runs_recent`, `runs_by_item`, `items_claim`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipewarden.render import RUN_FIELDS, finite, run_as_dict
from pipewarden.rules import RuleSet
from pipewarden.store import Store

FAILURES = "failures"  # the status filter for runs that failed or timed out
ERROR_SHOWN = 300  # characters of a run's error in a list; its record has the whole text
# A failed run "later succeeded" when an ok run of the same item at the same stage followed it.
_LATER_OK = (
    "(runs.status IN ('failed', 'timed_out') AND EXISTS (SELECT 1 FROM runs AS later"
    " WHERE later.item_id = runs.item_id AND later.stage = runs.stage"
    " AND later.status = 'ok' AND later.started_at > runs.started_at"
    " AND later.replay_of IS NULL))"
)
_LISTED = ", ".join(f"runs.{name}" for name in RUN_FIELDS if name != "id")


@dataclass(frozen=True)
class RunFilter:
    """Which runs to list; None is any. `before` = (started_at, id) of the last run seen."""

    pipeline: str | None = None
    stage: str | None = None
    status: str | None = None
    label: str | None = None
    since: float | None = None
    until: float | None = None
    before: tuple[float, str] | None = None


def find_runs(store: Store, wanted: RunFilter, limit: int) -> dict[str, Any]:
    """Runs newest first, `limit` at a time; `next` is the `before` of the next page."""
    where, params = _where(wanted)
    rows = store.db.execute_sql(
        f"SELECT runs.id, {_LISTED}, substr(runs.error, 1, {ERROR_SHOWN}), {_LATER_OK}"
        f" FROM runs WHERE {where} ORDER BY runs.started_at DESC, runs.id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    names = ("id", *(name for name in RUN_FIELDS if name != "id"), "error", "later_ok")
    runs = [
        {name: finite(value) for name, value in zip(names, row, strict=True)}
        for row in rows[:limit]
    ]
    for run in runs:
        run["later_ok"] = bool(run["later_ok"])
    more = len(rows) > limit
    return {"runs": runs, "next": [runs[-1]["started_at"], runs[-1]["id"]] if more else None}


def _where(wanted: RunFilter) -> tuple[str, list[Any]]:
    clauses, params = ["1"], []
    for column in ("pipeline", "stage", "label"):
        if (value := getattr(wanted, column)) is not None:
            clauses.append(f"runs.{column} = ?")
            params.append(value)
    if wanted.status == FAILURES:
        clauses.append("runs.status IN ('failed', 'timed_out')")
    elif wanted.status is not None:
        clauses.append("runs.status = ?")
        params.append(wanted.status)
    if wanted.since is not None:
        clauses.append("runs.started_at >= ?")
        params.append(wanted.since)
    if wanted.until is not None:
        clauses.append("runs.started_at < ?")
        params.append(wanted.until)
    if wanted.before is not None:
        at, run_id = wanted.before
        clauses.append("(runs.started_at < ? OR (runs.started_at = ? AND runs.id < ?))")
        params += [at, at, run_id]
    return " AND ".join(clauses), params


def run_record(store: Store, rules: RuleSet, run_id: str) -> dict[str, Any] | None:
    """Everything about one run (by its id or a unique prefix), the item it ran on, whether
    a later attempt succeeded, and what the rules advise; None when no single run matches."""
    matches = store.runs_with_prefix(run_id, limit=2)
    if len(matches) != 1:
        return None
    run = matches[0]
    item = store.Item.get_or_none(store.Item.id == run.item_id)
    later = store.db.execute_sql(
        f"SELECT {_LATER_OK} FROM runs WHERE id = ?", (run.id,)
    ).fetchone()[0]
    return {
        **run_as_dict(run),
        "data_out": _json_or_text(run.data_out),
        "item": None if item is None else {
            "state": item.state, "stage": item.stage, "attempt": item.attempt,
            "data": _json_or_text(item.data),
        },
        "later_ok": bool(later),
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
    where, params = ("state = 'held'", []) if pipeline is None else (
        "state = 'held' AND pipeline = ?", [pipeline])  # fmt: skip
    rows = store.db.execute_sql(
        f"SELECT pipeline, key, stage, attempt, last_label, updated_at FROM items WHERE {where}"
        " ORDER BY updated_at, id LIMIT ?",
        (*params, limit),
    ).fetchall()
    counts = store.db.execute_sql(
        f"SELECT pipeline, COUNT(*) FROM items WHERE {where} GROUP BY pipeline", params
    ).fetchall()
    names = ("pipeline", "key", "stage", "attempt", "label", "since")
    return {
        "items": [dict(zip(names, row, strict=True)) for row in rows],
        "counts": dict(counts),
    }
