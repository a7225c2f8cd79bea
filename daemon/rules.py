"""Rule files: regexes (and exception types) that classify a failure.

A rules file looks like::

    pipelines: [sites]          # default scope of every rule below (optional)
    rules:
      - match: "status code 429"
        group: retriable        # retriable | terminal | ignore | defer
        label: Rate limited
        category: api           # optional; type defaults to the label in snake_case
        retry: {max_attempts: 6, backoff: 1m}
      - exception: TimeoutError
        group: retriable
        label: Timeout
        category: infrastructure
        type: timeout

Patterns are case-insensitive. A rule's id is `file:line`, so `pipewarden rules test`
and every run can point at the line that decided it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pipewarden._yaml import Node, load_file
from pipewarden.errors import ConfigError
from pipewarden.types import Group

_FILE_KEYS = {"pipelines", "stages", "rules"}
_RULE_KEYS = {
    "match", "exception", "group", "label", "category", "type", "pipelines", "stages",
    "retry", "defer",
}  # fmt: skip
_RULE_GROUPS = tuple(g.value for g in Group if g is not Group.UNKNOWN)


@dataclass(frozen=True)
class Rule:
    id: str  # "rules/sites.yaml:14"
    source: str  # the pattern as written ("" for an exception-only rule)
    pattern: re.Pattern[str] | None
    exceptions: tuple[str, ...]
    group: Group
    label: str
    category: str
    type: str
    pipelines: tuple[str, ...]  # empty: every pipeline
    stages: tuple[str, ...]  # empty: every stage
    max_attempts: int | None = None
    backoff_s: float | None = None
    defer_s: float | None = None

    def applies_to(self, pipeline: str | None, stage: str | None) -> bool:
        return (not self.pipelines or pipeline is None or pipeline in self.pipelines) and (
            not self.stages or stage is None or stage in self.stages
        )

    def covers_scope_of(self, other: Rule) -> bool:
        def wider(mine: tuple[str, ...], theirs: tuple[str, ...]) -> bool:
            return not mine or (bool(theirs) and set(theirs) <= set(mine))

        return wider(self.pipelines, other.pipelines) and wider(self.stages, other.stages)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...]
    version: str  # a hash of the files' bytes: runs record which rules judged them


def load_rules(paths: tuple[Path, ...] | list[Path], base: Path | None = None) -> RuleSet:
    """Load, validate and compile rule files in order; the first error stops the load."""
    rules: list[Rule] = []
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"")
        rules.extend(_load_rule_file(path, _display_path(path, base)))
    return RuleSet(tuple(rules), tuple(_lint(rules)), digest.hexdigest()[:12])


def _display_path(path: Path, base: Path | None) -> str:
    """Relative to the config's folder when the file lies inside it, else absolute."""
    if base is not None and path.is_relative_to(base):
        return str(path.relative_to(base))
    return str(path)


def _load_rule_file(path: Path, shown: str) -> list[Rule]:
    root = load_file(path)
    root.path = shown
    top = root.mapping("a rules file", _FILE_KEYS)
    scope_pipelines = top["pipelines"].text_list("pipelines") if "pipelines" in top else ()
    scope_stages = top["stages"].text_list("stages") if "stages" in top else ()
    if "rules" not in top:
        return []
    return [_load_rule(node, scope_pipelines, scope_stages) for node in top["rules"].items("rules")]


def _load_rule(node: Node, pipelines: tuple[str, ...], stages: tuple[str, ...]) -> Rule:
    entries = node.mapping("a rule", _RULE_KEYS, frozenset({"group", "label"}))
    if "match" not in entries and "exception" not in entries:
        raise node.error("a rule needs 'match: REGEX' or 'exception: TypeName' (or both)")
    source, pattern = "", None
    if "match" in entries:
        source = entries["match"].text("match")
        pattern = _compile(entries["match"], source)
    label = entries["label"].text("label")
    retry = _load_retry_override(entries.get("retry"))
    return Rule(
        id=f"{node.path}:{node.line}",
        source=source,
        pattern=pattern,
        exceptions=entries["exception"].text_list("exception") if "exception" in entries else (),
        group=Group(entries["group"].choice("group", _RULE_GROUPS)),
        label=label,
        category=entries["category"].text("category") if "category" in entries else "general",
        type=entries["type"].text("type") if "type" in entries else _snake(label),
        pipelines=entries["pipelines"].text_list("pipelines")
        if "pipelines" in entries
        else pipelines,
        stages=entries["stages"].text_list("stages") if "stages" in entries else stages,
        max_attempts=retry[0],
        backoff_s=retry[1],
        defer_s=entries["defer"].duration("defer") if "defer" in entries else None,
    )


def _compile(node: Node, source: str) -> re.Pattern[str]:
    try:
        return re.compile(source, re.IGNORECASE)
    except re.error as exc:
        position = exc.pos or 0
        raise ConfigError(
            node.path,
            node.line,
            node.text_column(position),
            f"invalid regex '{source}'",
            f"{_explain_regex_error(exc.msg)} at position {position}",
        ) from None


def _explain_regex_error(message: str) -> str:
    if message.startswith("missing ), unterminated subpattern"):
        return "missing ')'"
    return message


def _load_retry_override(node: Node | None) -> tuple[int | None, float | None]:
    if node is None:
        return None, None
    entries = node.mapping("retry of a rule", {"max_attempts", "backoff"})
    return (
        entries["max_attempts"].integer("max_attempts", 1) if "max_attempts" in entries else None,
        entries["backoff"].duration("backoff") if "backoff" in entries else None,
    )


def _snake(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "unknown"


def _lint(rules: list[Rule]) -> list[str]:
    """Warnings that do not stop a load: ambiguous labels, rules that can never match."""
    warnings: list[str] = []
    first_group: dict[str, Rule] = {}
    for index, rule in enumerate(rules):
        earlier = first_group.setdefault(rule.label, rule)
        if earlier.group != rule.group:
            warnings.append(
                f"{rule.id}: label '{rule.label}' is {rule.group} here but {earlier.group} "
                f"at {earlier.id} — give one of them another label"
            )
        if shadow := _shadowing_rule(rule, rules[:index]):
            warnings.append(
                f"{rule.id}: pattern '{rule.source}' can never match — "
                f"{shadow.id} ('{shadow.source}') matches every such message first"
            )
    return warnings


def _shadowing_rule(rule: Rule, earlier: list[Rule]) -> Rule | None:
    """An earlier rule that matches every message this one could match, if any.

    Exact only for the cases that can be decided cheaply: the same pattern, or a
    literal pattern that an earlier regex already finds.
    """
    if rule.pattern is None or rule.exceptions:
        return None
    is_literal = re.escape(rule.source).replace("\\ ", " ") == rule.source
    for other in earlier:
        if other.pattern is None or other.exceptions or not other.covers_scope_of(rule):
            continue
        if other.source == rule.source or (is_literal and other.pattern.search(rule.source)):
            return other
    return None
