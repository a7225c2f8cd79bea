"""Rule files: regexes (and exception types) that classify a failure.

A rules file looks like::

    pipelines: [sites]          # default scope of every rule below (optional)
    rules:
      - match: "status code 429"
        group: retriable        # retriable | terminal | ignore | defer
        label: Rate limited
        category: api           # optional; type defaults to the label in snake_case
        retry: {max_attempts: 6, backoff: 1m}
        retry_after: from_text  # optional: wait as the message asks ("try again in 20s")
        advice: "slow the stage down (concurrency), or raise the plan's limit"
        runbook: https://wiki.example/rate-limits   # optional: where to read more
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
        labels: [Spam blocked]  # optional: only these labels count (a reputation halt)
      - when: all_failed        # the last N runs of a stage all failed -> the stage halts
        last: 20
      - when: budget            # a pipeline's summed `cost` today passes a cap
        pipelines: [outreach]
        budget: 50
        timezone: Europe/London # whose day (default: this host's); the halt lifts at midnight

Patterns are case-insensitive and mean what Python's `re` says; each is matched with a
time budget (see `patterns`), so no pattern can stall the daemon. A rule's id is
`file:line` (`pack:NAME:line` for a shipped pack, see packs.py), so `pipewarden rules
test` and every run can point at the line that decided it.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipewarden import packs
from pipewarden._yaml import Node, load_bytes, read_file
from pipewarden.errors import ConfigError
from pipewarden.patterns import MATCH_BUDGET_S, Matcher, Prefilter, compile_rule
from pipewarden.types import Group

_FILE_KEYS = {"pipelines", "stages", "rules", "halts"}
_HALT_KEYS = {"when", "channels", "stages", "pipelines", "count", "within", "last", "budget",
              "probe_after", "labels", "timezone"}  # fmt: skip
HALT_KINDS = ("same_label", "all_failed", "budget")
_RULE_KEYS = {
    "match", "exception", "group", "label", "category", "type", "pipelines", "stages",
    "retry", "defer", "advice", "runbook", "retry_after",
}  # fmt: skip
RETRY_AFTER_SOURCES = ("from_text",)  # where a rule's retry_after comes from
_RULE_GROUPS = tuple(g.value for g in Group if g is not Group.UNKNOWN)


@dataclass(frozen=True)
class Rule:
    id: str  # "rules/sites.yaml:14"
    source: str  # the pattern as written ("" for an exception-only rule)
    pattern: Matcher | None  # Python's meaning, searched within a time budget
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
    advice: str = ""  # what to do about it, in a line or two
    runbook: str = ""  # a URL with more
    retry_after_from_text: bool = False  # wait as long as the message asks (retry_after.py)

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
    labels: tuple[str, ...] = ()  # same_label: only these labels count (empty: every label)
    timezone: ZoneInfo | None = None  # budget: whose day it is (None: this host's local time)

    def watches_channel(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def watches_label(self, label: str) -> bool:
        return not self.labels or label in self.labels

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


def load_rules(
    paths: tuple[Path, ...] | list[Path], base: Path | None = None, lint: bool = True,
    patterns: bool = True,
) -> RuleSet:  # fmt: skip
    """Load, validate and compile rule files in order; the first error stops the load.
    Without `lint`, no warnings (their shadowing check builds the RE2 prefilter); without
    `patterns`, no regex is checked or compiled (each refuses to search): both for a
    command that only reads the rules' advice (`status` on a hundred rules: a third of its
    time went to parsing regexes)."""
    rules: list[Rule] = []
    halts: list[HaltRule] = []
    digest = hashlib.sha256()
    for path in paths:
        shown = _display_path(path, base)
        raw = read_file(path, shown)  # read once: what is hashed is what is loaded
        digest.update(str(path).encode() + b"\0")
        digest.update(raw)
        file_rules, file_halts = _load_rule_file(
            load_bytes(raw, shown), _compile if patterns else _unchecked
        )
        rules.extend(file_rules)
        halts.extend(file_halts)
    warnings = tuple(_lint(rules)) if lint else ()
    return RuleSet(tuple(rules), warnings, digest.hexdigest()[:12], tuple(halts))


def _display_path(path: Path, base: Path | None) -> str:
    """`pack:NAME` for a shipped pack; relative to the config's folder when the file lies
    inside it, else absolute."""
    if pack := packs.shown_name(path):
        return pack
    if base is not None and path.is_relative_to(base):
        return str(path.relative_to(base))
    return str(path)


PatternReader = Callable[[Node, str], Matcher]


def _load_rule_file(root: Node, read_pattern: PatternReader) -> tuple[list[Rule], list[HaltRule]]:
    top = root.mapping("a rules file", _FILE_KEYS)
    scope_pipelines = top["pipelines"].text_list("pipelines") if "pipelines" in top else ()
    scope_stages = top["stages"].text_list("stages") if "stages" in top else ()
    rule_nodes = top["rules"].items("rules") if "rules" in top else ()
    halt_nodes = top["halts"].items("halts") if "halts" in top else ()
    return (
        [_load_rule(node, scope_pipelines, scope_stages, read_pattern) for node in rule_nodes],
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
        labels=entries["labels"].text_list("labels") if "labels" in entries else (),
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


def _load_rule(
    node: Node, pipelines: tuple[str, ...], stages: tuple[str, ...], read_pattern: PatternReader
) -> Rule:
    entries = node.mapping("a rule", _RULE_KEYS, frozenset({"group", "label"}))
    if "match" not in entries and "exception" not in entries:
        raise node.error("a rule needs 'match: REGEX' or 'exception: TypeName' (or both)")
    source, pattern = "", None
    if "match" in entries:
        source = entries["match"].text("match")
        pattern = read_pattern(entries["match"], source)
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
        advice=entries["advice"].text("advice").strip() if "advice" in entries else "",
        runbook=_runbook(entries["runbook"]) if "runbook" in entries else "",
        retry_after_from_text=_retry_after(entries),
    )


def _runbook(node: Node) -> str:
    url = node.text("runbook").strip()
    if not url.startswith(("https://", "http://")):
        raise node.error(f"runbook must be a URL, not '{url}'", "write https://...")
    return url


def _retry_after(entries: dict[str, Node]) -> bool:
    """`retry_after: from_text`: a retriable rule waits as long as its message asks."""
    if "retry_after" not in entries:
        return False
    entries["retry_after"].choice("retry_after", RETRY_AFTER_SOURCES)
    if entries["group"].value != Group.RETRIABLE:
        raise entries["retry_after"].error(
            "retry_after applies to retriable rules only", "remove it, or make the rule retriable"
        )
    return True


class _Unread(Matcher):
    """A pattern loaded for its rule's advice only: never checked, never searched."""

    __slots__ = ()

    def search(self, text: str, timeout: float) -> bool:
        raise RuntimeError("rules loaded with patterns=False cannot classify")


def _unchecked(_node: Node, source: str) -> Matcher:
    return _Unread(source, re.IGNORECASE, repeats=False)


def _compile(node: Node, source: str) -> Matcher:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "possible nested set": `re` reads on
        try:
            return compile_rule(source, re.IGNORECASE)
        except re.error as exc:
            position = exc.pos or 0
            raise ConfigError(
                node.path,
                node.line,
                node.text_column(position),
                f"invalid regex '{source}'",
                f"{_explain_regex_error(exc.msg)} at position {position}",
            ) from None
        except (OverflowError, RecursionError):
            raise node.error(
                f"invalid regex '{source}'", "a repeat count or a nesting of groups is too large"
            ) from None
        except ValueError as exc:
            raise node.error(f"regex '{source}' cannot be matched safely: {exc.args[0]}",
                             exc.args[1]) from None  # fmt: skip


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
    """Warnings that do not stop a load: ambiguous labels, rules that can never match,
    patterns that can backtrack for ever, patterns RE2 cannot prefilter."""
    found: list[str] = []
    first_group: dict[str, Rule] = {}
    matching = [rule for rule in rules if rule.pattern is not None]
    prefilter = Prefilter([rule.source for rule in matching]) if matching else None
    shadows = _shadowing_rules(matching, prefilter) if prefilter else {}
    refused = {matching[n].id: why for n, why in prefilter.refused.items()} if prefilter else {}
    for rule in rules:
        earlier = first_group.setdefault(rule.label, rule)
        if earlier.group != rule.group:
            found.append(
                f"{rule.id}: label '{rule.label}' is {rule.group} here but {earlier.group} "
                f"at {earlier.id} — give one of them another label"
            )
        if shadow := shadows.get(rule.id):
            found.append(
                f"{rule.id}: pattern '{rule.source}' can never match — "
                f"{shadow.id} ('{shadow.source}') matches every such message first"
            )
        if rule.pattern is not None and rule.pattern.repeats_a_repeat:
            found.append(
                f"{rule.id}: pattern '{rule.source}' repeats a part that itself repeats (like"
                f" '(a+)+'), which can backtrack for ever on some messages; it gets"
                f" {MATCH_BUDGET_S * 1000:.0f} ms a message and counts as no match past that —"
                " rewrite it so no text can be matched two ways (e.g. '(a+)+' as 'a+')"
            )
        if why := refused.get(rule.id):
            found.append(
                f"{rule.id}: pattern '{rule.source}' is not one RE2 can read ({why}), so Python"
                " alone tries it on every message in its scope (slower) — write it in syntax"
                " RE2 shares with Python to make it fast"
            )
    return found


def _shadowing_rules(matching: list[Rule], prefilter: Prefilter) -> dict[str, Rule]:
    """For each rule an earlier one matches every message of: {rule id: that rule}.

    Exact only for the cases that can be decided cheaply: the same pattern, or a
    literal pattern that an earlier regex already finds. Near-linear: the same
    pattern is found by a dict, and the earlier regexes that may find a literal by
    one pass of the RE2 prefilter over it.
    """
    found: dict[str, Rule] = {}
    same_source: dict[str, list[int]] = {}
    for index, rule in enumerate(matching):
        if rule.exceptions:
            continue
        earliest = next(
            (n for n in same_source.get(rule.source, ()) if matching[n].covers_scope_of(rule)),
            index,
        )
        if re.escape(rule.source).replace("\\ ", " ") == rule.source:  # a literal
            earliest = _earliest_finder(matching, prefilter, rule, earliest)
        if earliest < index:
            found[rule.id] = matching[earliest]
        same_source.setdefault(rule.source, []).append(index)
    return found


def _earliest_finder(matching: list[Rule], prefilter: Prefilter, rule: Rule, before: int) -> int:
    """The first rule before index `before` whose regex finds the literal `rule`."""
    for n in prefilter.candidates(rule.source):
        if n >= before:
            break
        other = matching[n]
        if not other.exceptions and other.covers_scope_of(rule) and _finds(other, rule.source):
            return n
    return before


def _finds(rule: Rule, text: str) -> bool:
    try:
        return rule.pattern.search(text, MATCH_BUDGET_S)  # type: ignore[union-attr]
    except (TimeoutError, ValueError):
        return False
