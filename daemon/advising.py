"""What the rules tell a person to do, where a label is shown: a rule's `advice:` and
`runbook:` beside the runs, halts and labels it judged (`why`, `runs show`, `status -v`,
the tray, notifications).

The rules in force decide: a run judged by a rule since edited finds its advice by label
(see finds.advice_for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipewarden.config import Config
    from pipewarden.rules import RuleSet


def current_rules(config: Config) -> RuleSet | None:
    """The config's rules as they are on disk; None when they do not load (advice is a
    help: a broken rule file is `rules check`'s to report, not every command's)."""
    from pipewarden.errors import PipewardenError
    from pipewarden.rules import load_rules

    try:
        return load_rules(config.rule_paths, config.path.parent, lint=False, patterns=False)
    except PipewardenError:
        return None


def advice_of(rules: RuleSet | None, rule_id: str | None, label: str | None) -> dict[str, str]:
    from pipewarden.finds import advice_for

    if rules is None or (rule_id is None and label is None):
        return {"advice": "", "runbook": ""}
    return advice_for(rules, rule_id, label)


def advice_lines(advice: dict[str, str], indent: str = "") -> list[str]:
    """'advice: ...' and 'runbook: ...', each line of the advice under the first."""
    lines = []
    for name in ("advice", "runbook"):
        text = (advice.get(name) or "").strip()
        for number, line in enumerate(text.splitlines()):
            lines.append(f"{indent}{name + ':' if number == 0 else '':<9}{line}")
    return lines


def advise_snapshot(snapshot: dict[str, Any], rules: RuleSet | None) -> dict[str, Any]:
    """The status snapshot with each halt's advice and runbook, and `advice`: those of each
    label its tree shows that has any."""
    for hold in snapshot["holds"]:
        if hold["kind"] == "halt":
            hold.update(advice_of(rules, hold.get("rule"), hold.get("label")))
    shown = {
        row["label"]
        for pipeline in snapshot["pipelines"]
        for stage in pipeline["stages"]
        for state in stage["states"]
        for group in state.get("groups") or []
        for row in group["labels"]
    }
    advised = {label: advice_of(rules, None, label) for label in sorted(shown)}
    snapshot["advice"] = {label: a for label, a in advised.items() if a["advice"] or a["runbook"]}
    return snapshot
