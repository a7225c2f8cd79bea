r"""Turns an error into a classification with the compiled rules.

Message rules are tried first, in file order, then rules that name only an
exception type: the message is the more specific evidence ("TimeoutError: account
suspended" is an account problem, not a network one). The first match wins; no
match gives `unknown`, which is retried up to the stage's attempts and then fails.

For speed, each (pipeline, stage) gets a prefilter: Google's RE2 matches all its
message rules in one linear pass and says which may match (see `patterns.Prefilter`);
the winner is then confirmed with the rule's own regex, in rule order. A message no
rule matches costs one RE2 call; a match usually one more regex.

Classification never stalls and never raises. Each confirmation has a time budget
(`MATCH_BUDGET_S`): a rule that runs out of it, or fails, counts as no match for that
message, is logged once with its file:line and is reported to `on_trouble` (the daemon
records it for `status` and `doctor`). A worker that names only its exception's type
gets the type's bases too when it is one of Python's own (`ConnectionResetError` is a
`ConnectionError`), as the Python runner sends them.
"""

from __future__ import annotations

import builtins
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipewarden.patterns import MATCH_BUDGET_S, Prefilter
from pipewarden.rules import Rule, RuleSet
from pipewarden.types import Group

log = logging.getLogger("pipewarden.classifier")


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


class _Scope:
    """The message rules of one (pipeline, stage), with their prefilter."""

    def __init__(self, rules: list[Rule]):
        self.rules = rules
        self.prefilter = Prefilter([rule.source for rule in rules]) if rules else None


class Classifier:
    def __init__(
        self,
        ruleset: RuleSet,
        on_trouble: Callable[[Rule, str], None] | None = None,
        budget_s: float = MATCH_BUDGET_S,
    ):
        self.ruleset = ruleset
        self.on_trouble = on_trouble  # told each time a rule runs out of time or fails
        self.budget_s = budget_s
        self.trouble: dict[str, int] = {}  # rule id -> how many messages it gave up on
        self._scoped: dict[tuple[str | None, str | None], tuple[_Scope, list[Rule]]] = {}
        self._results = {rule.id: _from_rule(rule) for rule in ruleset.rules}
        self._broken = False

    @property
    def version(self) -> str:
        return self.ruleset.version

    def prepare(self, scopes: Iterable[tuple[str, str]]) -> None:
        """Build the prefilters of these (pipeline, stage) scopes now (e.g. off the loop)."""
        for pipeline, stage in scopes:
            self._scoped.get((pipeline, stage)) or self._scope(pipeline, stage)

    def classify(
        self,
        message: str,
        *,
        pipeline: str | None = None,
        stage: str | None = None,
        exception_types: tuple[str, ...] = (),
    ) -> Classification:
        try:
            types = exception_chain(tuple(exception_types)) if exception_types else ()
            return self._classify(message, pipeline, stage, types)
        except Exception:  # a fault here must not take the run down: it stays unknown
            if not self._broken:
                self._broken = True
                log.exception("classifier failed; failures are classified unknown until reload")
            return UNKNOWN

    def _classify(
        self, message: str, pipeline: str | None, stage: str | None, types: tuple[str, ...]
    ) -> Classification:
        scope, exception_rules = self._scoped.get((pipeline, stage)) or self._scope(pipeline, stage)
        if scope.prefilter is not None:
            rules = scope.rules
            for n in scope.prefilter.candidates(message):
                rule = rules[n]
                if rule.exceptions and not _any_in(types, rule.exceptions):
                    continue
                if self._confirm(rule, message):
                    return self._results[rule.id]
        if types:
            for rule in exception_rules:
                if _any_in(types, rule.exceptions):
                    return self._results[rule.id]
        return UNKNOWN

    def _confirm(self, rule: Rule, message: str) -> bool:
        """The rule's own regex, within the budget; out of time or failing is no match."""
        try:
            return rule.pattern.search(message, self.budget_s)  # type: ignore[union-attr]
        except TimeoutError:
            self._troubled(rule, f"ran out of its {self.budget_s * 1000:.0f} ms budget")
        except Exception as exc:
            self._troubled(rule, f"failed ({type(exc).__name__}: {exc})")
        return False

    def _troubled(self, rule: Rule, problem: str) -> None:
        count = self.trouble[rule.id] = self.trouble.get(rule.id, 0) + 1
        if count == 1:
            log.warning(
                "rules: %s ('%s') %s on a message: counted as no match for it"
                " (`pipewarden rules check` says why)", rule.id, rule.source, problem,
            )  # fmt: skip
        if self.on_trouble is not None:
            try:
                self.on_trouble(rule, problem)
            except Exception:
                log.exception("recording the trouble of rule %s failed", rule.id)

    def _scope(self, pipeline: str | None, stage: str | None) -> tuple[_Scope, list[Rule]]:
        applicable = [r for r in self.ruleset.rules if r.applies_to(pipeline, stage)]
        scoped = (
            _Scope([r for r in applicable if r.pattern is not None]),
            [r for r in applicable if r.pattern is None],
        )
        self._scoped[(pipeline, stage)] = scoped
        return scoped


@functools.lru_cache(maxsize=1024)
def exception_chain(types: tuple[str, ...]) -> tuple[str, ...]:
    """The exception types to match, most specific first.

    A worker's own chain (the Python runner sends the whole MRO) is taken as it is; a
    lone name of a Python builtin exception brings its bases, as the runner would.
    """
    if len(types) != 1:
        return types
    found = getattr(builtins, types[0], None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return exception_names(found)
    return types


def exception_names(cls: type[BaseException]) -> tuple[str, ...]:
    """A class and its bases by name, as the Python runner reports them."""
    return tuple(c.__name__ for c in cls.__mro__ if c not in (object, BaseException))


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
