r"""Turns an error into a classification with the compiled rules.

Message rules are tried first, in file order, then rules that name only an
exception type: the message is the more specific evidence ("TimeoutError: account
suspended" is an account problem, not a network one). The first match wins; no
match gives `unknown`, which is retried up to the stage's attempts and then fails.

For speed, each (pipeline, stage) gets a prefilter: Google's RE2 matches all its
message rules in one linear pass (an RE2 `Set`) and says which may match. Each rule
goes into the set in a relaxed form (shorthand classes widened to any character,
word boundaries dropped), so RE2 can report too much but never too little; the
winner is then confirmed with the rule's own Python regex, in rule order. A rule in
syntax RE2 lacks (lookarounds, backreferences, ...) is always confirmed directly.
A message no rule matches costs one RE2 call; a match usually one more regex.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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
    retry_after_from_text: bool = False  # the decision waits as the message asks
    advice: str = ""
    runbook: str = ""


UNKNOWN = Classification(Group.UNKNOWN, "Unknown", "unknown", "unknown", None)


# Python regex syntax RE2 does not have (or reads differently): such rules skip RE2.
_PYTHON_ONLY = re.compile(r"\(\?(?:[=!]|<[=!]|P=|\(|>)|\\[1-9uUN]|\\Z|[*+?}]\+|\{,")
# Shorthand classes whose RE2 meaning is narrower (ASCII) than Python's (Unicode).
_SHORTHAND = re.compile(r"\\[dwsDWS]|\\[bB]")


def _relaxed(source: str) -> str:
    """The rule widened for RE2: it may match more than Python would, never less."""
    return _SHORTHAND.sub(lambda m: "" if m.group()[1] in "bB" else r"\p{Any}", source)


def _re2_set(patterns: list[str]) -> Any:
    import re2  # google-re2: imported when a classifier is first used, not by the CLI's start

    if not patterns:
        return None
    options = re2.Options()
    options.case_sensitive = False
    # RE2's default 8 MiB leaves its DFA cache too small for a scope with every rule pack:
    # it thrashes and each match falls back to the NFA (100x slower). The cache grows only
    # as states are met; a corpus of 700 real error texts needs well under 1 MiB of it.
    options.max_mem = 64 << 20
    compiled = re2.Set.SearchSet(options)
    for pattern in patterns:
        compiled.Add(pattern)
    compiled.Compile()
    return compiled


class _Prefilter:
    """Which rules may match a message, from one RE2 pass, then confirmed in order."""

    def __init__(self, rules: list[Rule]):
        self.rules = rules
        self._always = [n for n, rule in enumerate(rules) if _PYTHON_ONLY.search(rule.source)]
        self._index = [n for n in range(len(rules)) if n not in self._always]
        self._set = _re2_set([_relaxed(rules[n].source) for n in self._index])

    def first_match(self, message: str, exception_types: tuple[str, ...]) -> Rule | None:
        hits = self._set.Match(message) if self._set is not None else None  # None: no match
        if not hits and not self._always:
            return None
        candidates = [self._index[i] for i in hits or ()]
        for n in sorted(candidates + self._always):
            rule = self.rules[n]
            if rule.pattern.search(message) and (  # type: ignore[union-attr]
                not rule.exceptions or _any_in(exception_types, rule.exceptions)
            ):
                return rule
        return None


class Classifier:
    def __init__(self, ruleset: RuleSet):
        self.ruleset = ruleset
        self._scoped: dict[tuple[str | None, str | None], tuple[_Prefilter, list[Rule]]] = {}
        self._results = {rule.id: _from_rule(rule) for rule in ruleset.rules}

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
        scoped = self._scoped.get((pipeline, stage)) or self._scope(pipeline, stage)
        prefilter, exception_rules = scoped
        if rule := prefilter.first_match(message, exception_types):
            return self._results[rule.id]
        if exception_types:
            for rule in exception_rules:
                if _any_in(exception_types, rule.exceptions):
                    return self._results[rule.id]
        return UNKNOWN

    def _scope(self, pipeline: str | None, stage: str | None) -> tuple[_Prefilter, list[Rule]]:
        applicable = [r for r in self.ruleset.rules if r.applies_to(pipeline, stage)]
        scoped = (
            _Prefilter([r for r in applicable if r.pattern is not None]),
            [r for r in applicable if r.pattern is None],
        )
        self._scoped[(pipeline, stage)] = scoped
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
        retry_after_from_text=rule.retry_after_from_text,
        advice=rule.advice,
        runbook=rule.runbook,
    )
