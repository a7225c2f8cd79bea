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

    halts:
      - when: same_label        # the same label N times on a channel within a window
        channels: [sms, email]
        count: 25
        within: 2h
        probe_after: 30m        # optional: then let one item through to test the water
      - when: all_failed        # the last N runs of a stage all failed -> the stage halts
        last: 20
      - when: budget            # a pipeline's summed `cost` today passes a cap
        pipelines: [outreach]
        budget: 50
        timezone: Europe/London # whose day (default: this host's); the halt lifts at midnight

Patterns are case-insensitive. A rule's id is `file:line`, so `pipewarden rules test`
and every run can point at the line that decided it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipewarden._yaml import Node, load_file
from pipewarden.errors import ConfigError
from pipewarden.types import Group

_FILE_KEYS = {"pipelines", "stages", "rules", "halts"}
_HALT_KEYS = {"when", "channels", "stages", "pipelines", "count", "within", "last", "budget",
              "probe_after", "timezone"}  # fmt: skip
HALT_KINDS = ("same_label", "all_failed", "budget")
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
class HaltRule:
    """When to stop a channel, a stage or a pipeline (see the module's docstring)."""

    id: str  # file:line
    when: str  # one of HALT_KINDS
    channels: tuple[str, ...] = ()  # same_label: the channels it watches (empty: all)
    stages: tuple[str, ...] = ()  # all_failed: "pipeline/stage" names (empty: all)
    pipelines: tuple[str, ...] = ()  # budget (and a scope for the others; empty: all)
    count: int = 0  # same_label: how many; all_failed: the last how many runs
    within_s: float = 0.0  # same_label: the window
    budget: float = 0.0  # budget: the cap on a day's summed cost
    probe_after_s: float | None = None
    timezone: ZoneInfo | None = None  # budget: whose day it is (None: this host's local time)

    def watches_channel(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def watches_stage(self, pipeline: str, stage: str) -> bool:
        return (not self.stages or f"{pipeline}/{stage}" in self.stages) and (
            not self.pipelines or pipeline in self.pipelines
        )


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...]
    version: str  # a hash of the files' bytes: runs record which rules judged them
    halts: tuple[HaltRule, ...] = ()


def load_rules(paths: tuple[Path, ...] | list[Path], base: Path | None = None) -> RuleSet:
    """Load, validate and compile rule files in order; the first error stops the load."""
    rules: list[Rule] = []
    halts: list[HaltRule] = []
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"")
        file_rules, file_halts = _load_rule_file(path, _display_path(path, base))
        rules.extend(file_rules)
        halts.extend(file_halts)
    return RuleSet(tuple(rules), tuple(_lint(rules)), digest.hexdigest()[:12], tuple(halts))


def _display_path(path: Path, base: Path | None) -> str:
    """Relative to the config's folder when the file lies inside it, else absolute."""
    if base is not None and path.is_relative_to(base):
        return str(path.relative_to(base))
    return str(path)


def _load_rule_file(path: Path, shown: str) -> tuple[list[Rule], list[HaltRule]]:
    root = load_file(path)
    root.path = shown
    top = root.mapping("a rules file", _FILE_KEYS)
    scope_pipelines = top["pipelines"].text_list("pipelines") if "pipelines" in top else ()
    scope_stages = top["stages"].text_list("stages") if "stages" in top else ()
    rule_nodes = top["rules"].items("rules") if "rules" in top else ()
    halt_nodes = top["halts"].items("halts") if "halts" in top else ()
    return (
        [_load_rule(node, scope_pipelines, scope_stages) for node in rule_nodes],
        [_load_halt(node, scope_pipelines) for node in halt_nodes],
    )


def _load_halt(node: Node, pipelines: tuple[str, ...]) -> HaltRule:
    entries = node.mapping("a halt", _HALT_KEYS, frozenset({"when"}))
    when = entries["when"].choice("when", HALT_KINDS)
    needed = {"same_label": ("count", "within"), "all_failed": ("last",), "budget": ("budget",)}
    for key in needed[when]:
        if key not in entries:
            raise node.error(f"a '{when}' halt needs '{key}'", f"add '{key}: ...'")
    stages = entries["stages"].text_list("stages") if "stages" in entries else ()
    for stage in stages:
        if "/" not in stage:
            raise entries["stages"].error(f"stages are written 'pipeline/stage', not '{stage}'")
    if "timezone" in entries and when != "budget":
        raise entries["timezone"].error("only a 'budget' halt has a timezone (its day's)")
    if "probe_after" in entries and when == "budget":
        raise entries["probe_after"].error(
            "a 'budget' halt lifts itself when its day is over", "remove 'probe_after'"
        )
    count = 0
    if "count" in entries:
        count = entries["count"].integer("count", 1)
    elif "last" in entries:
        count = entries["last"].integer("last", 1)
    return HaltRule(
        id=f"{node.path}:{node.line}",
        when=when,
        channels=entries["channels"].text_list("channels") if "channels" in entries else (),
        stages=stages,
        pipelines=entries["pipelines"].text_list("pipelines")
        if "pipelines" in entries
        else pipelines,
        count=count,
        within_s=entries["within"].duration("within") if "within" in entries else 0.0,
        budget=entries["budget"].number("budget", 0.0) if "budget" in entries else 0.0,
        probe_after_s=(
            entries["probe_after"].duration("probe_after") if "probe_after" in entries else None
        ),
        timezone=_zone(entries["timezone"]) if "timezone" in entries else None,
    )


def _zone(node: Node) -> ZoneInfo:
    name = node.text("timezone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise node.error(
            f"unknown time zone '{name}'", "write an IANA name such as Europe/London"
        ) from None


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
