"""Turns an error into a classification with the compiled rules.

Message rules are tried first, in file order, then rules that name only an
exception type: the message is the more specific evidence ("TimeoutError: account
suspended" is an account problem, not a network one). The first match wins; no
match gives `unknown`, which is retried up to the stage's attempts and then fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipewarden.rules import Rule, RuleSet
from pipewarden.types import Group


@dataclass(frozen=True)
class Classification:
    group: Group
    label: str
    category: str
    type: str
    rule_id: str | None  # file:line of the rule that matched; None when nothing did
    max_attempts: int | None = None  # a rule's override of the stage's retry policy
    backoff_s: float | None = None
    defer_s: float | None = None


UNKNOWN = Classification(Group.UNKNOWN, "Unknown", "unknown", "unknown", None)


class Classifier:
    def __init__(self, ruleset: RuleSet):
        self.ruleset = ruleset
        self._scoped: dict[tuple[str | None, str | None], tuple[list[Rule], list[Rule]]] = {}

    @property
    def version(self) -> str:
        return self.ruleset.version

    def classify(
        self,
        message: str,
        *,
        pipeline: str | None = None,
        stage: str | None = None,
        exception_types: tuple[str, ...] = (),
    ) -> Classification:
        message_rules, exception_rules = self._rules_for(pipeline, stage)
        for rule in message_rules:
            if rule.pattern.search(message) and (  # type: ignore[union-attr]
                not rule.exceptions or _any_in(exception_types, rule.exceptions)
            ):
                return _from_rule(rule)
        if exception_types:
            for rule in exception_rules:
                if _any_in(exception_types, rule.exceptions):
                    return _from_rule(rule)
        return UNKNOWN

    def _rules_for(self, pipeline: str | None, stage: str | None) -> tuple[list[Rule], list[Rule]]:
        key = (pipeline, stage)
        scoped = self._scoped.get(key)
        if scoped is None:
            applicable = [r for r in self.ruleset.rules if r.applies_to(pipeline, stage)]
            scoped = (
                [r for r in applicable if r.pattern is not None],
                [r for r in applicable if r.pattern is None],
            )
            self._scoped[key] = scoped
        return scoped


def _any_in(names: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    return any(name in wanted for name in names)


def _from_rule(rule: Rule) -> Classification:
    return Classification(
        group=rule.group,
        label=rule.label,
        category=rule.category,
        type=rule.type,
        rule_id=rule.id,
        max_attempts=rule.max_attempts,
        backoff_s=rule.backoff_s,
        defer_s=rule.defer_s,
    )
