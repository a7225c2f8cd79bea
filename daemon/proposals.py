"""Rules proposed for frequent templates of unmatched failures, for a person to approve.

A template seen at least `MIN_COUNT` times in the window gets one pending proposal: a regex
that matches every stored member (its first line, as mined) and no stored member of another
template, a label from the template's constant words, a group and category from the
exception type and the words (`429`, `rate` -> retriable; `suspended`, `banned` -> terminal
account...), and examples. A template whose text changed since (it took in more variety)
supersedes its pending proposal with a new one. States: pending, approved, rejected,
superseded, each decision with who and when.

Queries are functions taking a Store, over the tables of migration 8 (see template_feed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipewarden.errors import UsageError
from pipewarden.template_feed import mined_text
from pipewarden.templates import WILDCARD

if TYPE_CHECKING:
    from pipewarden.backtest import Replay
    from pipewarden.config import Config
    from pipewarden.store import Store

MIN_COUNT = 5  # members in the window before a template gets a proposal
WINDOW_S = 7 * 86400
EXAMPLES = 3
DAY_S = 86400
SAMPLE_TEMPLATES = 2000  # templates a proposed pattern is checked against, latest seen first
SAMPLE_MEMBERS = 20  # latest members of each
REFRESH_EVERY_S = 5.0  # the daemon proposes this often, when templates changed since
STATES = ("pending", "approved", "rejected", "superseded")
GROUPS = ("retriable", "terminal", "ignore", "defer")

# Words that say what kind of failure it is: (pattern over the template, group, category).
_KINDS = (
    (r"\b429\b|rate.?limit|too many requests|throttl", "retriable", "rate_limit"),
    (r"suspended|banned|disabled account|account (is )?(locked|disabled)", "terminal", "account"),
    (r"\b40[13]\b|unauthori[sz]ed|forbidden|permission denied|access denied", "terminal", "auth"),
    (r"\b404\b|not found|no such", "terminal", "not_found"),
    (r"time(d)?.?out|deadline exceeded", "retriable", "timeout"),
    (r"\b50[234]\b|unavailable|temporar|try again|reset|refused|closed|locked|busy",
     "retriable", "infrastructure"),
)  # fmt: skip
_EXCEPTION = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Refused|Disconnected|Timeout)):")
_LABEL_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


@dataclass(frozen=True)
class Proposal:
    id: int
    template_id: int
    template: str
    state: str
    pattern: str
    label: str
    group: str
    category: str
    examples: list[str]
    created_at: float
    decided_at: float | None
    decided_by: str | None
    rules_file: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pattern_of(template: str) -> str:
    """A regex (as rules read it: searched, case-insensitive) for a template's texts: its
    constant parts literal, each `<*>` one or more characters within its token, tokens
    apart by any run of spaces."""
    tokens = []
    for token in template.split():
        parts = token.split(WILDCARD)
        tokens.append(r"\S+?".join(re.escape(part) for part in parts))
    return r"\s+".join(tokens)


def suggested_kind(template: str) -> tuple[str, str]:
    lowered = template.lower()
    for words, group, category in _KINDS:
        if re.search(words, lowered):
            return group, category
    return "retriable", "unclassified"


def suggested_label(template: str) -> str:
    """The template's first constant words, after the exception type: a name to start from."""
    text = _EXCEPTION.sub("", template).strip()
    words = [
        w for token in text.split() if WILDCARD not in token for w in _LABEL_WORD.findall(token)
    ]
    label = " ".join(words[:6]) or "Unnamed failure"
    return label[:1].upper() + label[1:]


def refresh(store: Store, now: float, min_count: int = MIN_COUNT) -> int:
    """Propose a rule for each template frequent enough that has none pending or decided
    for its current text; supersede a pending one whose template has changed. Returns how
    many were proposed. Bounded on a large store: counting stops at `min_count` members, and
    a pattern is checked against a sample of each template's latest members."""
    wanted = []
    for template_id, template in store.frequent_templates(now - WINDOW_S, min_count):
        current = store.current_proposal(template_id)
        if current is not None and current[1] == template:
            continue  # proposed, approved or rejected as it is
        if current is not None and current[2] != "pending":
            continue  # a person decided on this template: its growth does not reopen it
        wanted.append((template_id, template, current[0] if current else None))
    if not wanted:
        return 0
    samples = _member_samples(store)
    proposed = 0
    with store.transaction():
        for template_id, template, pending in wanted:
            pattern = pattern_of(template)
            if _overlaps(samples, template_id, pattern):
                continue
            if pending is not None:
                store.update_proposal(pending, {
                    "state": "superseded", "decided_at": now, "decided_by": "pipewarden",
                })  # fmt: skip
            group, category = suggested_kind(template)
            store.add_proposal({
                "template_id": template_id, "template": template, "state": "pending",
                "pattern": pattern, "label": suggested_label(template), "group_name": group,
                "category": category, "examples": json.dumps(examples(store, template_id)),
                "created_at": now,
            })  # fmt: skip
            proposed += 1
    return proposed


def _member_samples(store: Store) -> dict[int, set[str]]:
    """The distinct texts (as mined) of the latest members of the most recently seen
    templates: what a proposed pattern is checked against, in a time that does not grow
    with the store (at most SAMPLE_TEMPLATES x SAMPLE_MEMBERS texts)."""
    return {
        template_id: {
            mined_text(error or "") for error in store.template_errors(template_id, SAMPLE_MEMBERS)
        }
        for template_id in store.latest_templates(SAMPLE_TEMPLATES)
    }


def _overlaps(samples: dict[int, set[str]], template_id: int, pattern: str) -> bool:
    """Whether the pattern misses a sampled member of its template or catches another's."""
    compiled = re.compile(pattern, re.IGNORECASE)
    for member_of, texts in samples.items():
        for text in texts:
            if (compiled.search(text) is not None) != (member_of == template_id):
                return True
    return False


def examples(store: Store, template_id: int, limit: int = EXAMPLES) -> list[str]:
    found: list[str] = []
    for error in store.template_errors(template_id, 200):
        text = mined_text(error or "")
        if text not in found:
            found.append(text)
        if len(found) == limit:
            break
    return found


def counts(store: Store, template_id: int, now: float) -> dict[str, Any]:
    """Members in all (still stored), in the last 24 h, and per pipeline/stage."""
    total, day, stages = store.template_counts(template_id, now - DAY_S)
    return {"all": total, "last_24h": day, "per_stage": stages}


def listed(store: Store, state: str | None = None) -> list[Proposal]:
    return [_proposal(row) for row in store.proposals(state)]


def get(store: Store, proposal_id: int) -> Proposal:
    row = store.proposal(proposal_id)
    if row is None:
        raise UsageError(f"no proposal {proposal_id} — `pipewarden proposals` lists them")
    return _proposal(row)


def decide(
    store: Store, proposal_id: int, state: str, who: str, now: float, **changes: str | None
) -> Proposal:
    """Approve or reject a pending proposal (with the label, group, pattern, file chosen)."""
    proposal = get(store, proposal_id)
    if proposal.state != "pending":
        raise UsageError(
            f"proposal {proposal_id} is {proposal.state} (by {proposal.decided_by}), not pending"
        )
    fields = {"state": state, "decided_at": now, "decided_by": who}
    fields |= {("group_name" if k == "group" else k): v for k, v in changes.items() if v}
    with store.transaction():
        store.update_proposal(proposal_id, fields)
    return get(store, proposal_id)


def approve(
    store: Store,
    config: Config,
    proposal_id: int,
    who: str,
    now: float,
    rules_file: str | None = None,
    **edits: str | None,
) -> tuple[Path, list[str], Replay]:
    """Write the proposal's rule (with a person's `edits`: label, group, category, pattern)
    into a rules file the config reads, then mark it approved; the file, the lines added and
    the backtest of the rules with it over the window's stored failures (replayed before the
    file is written)."""
    from pipewarden.backtest import replay_edited
    from pipewarden.rule_writer import replace, with_rule

    proposal = get(store, proposal_id)
    if proposal.state != "pending":
        raise UsageError(f"proposal {proposal_id} is {proposal.state}, not pending")
    target = rules_file_for(config, rules_file)
    chosen = {k: v for k, v in edits.items() if v}
    rule = {
        "match": chosen.get("pattern", proposal.pattern),
        "group": chosen.get("group", proposal.group),
        "label": chosen.get("label", proposal.label),
        "category": chosen.get("category", proposal.category),
    }
    text, added = with_rule(target, rule)
    tried = replay_edited(store, config, {target: text}, now - WINDOW_S)
    replace(target, text)
    decide(store, proposal_id, "approved", who, now, label=rule["label"], group=rule["group"],
           category=rule["category"], pattern=rule["match"], rules_file=str(target))  # fmt: skip
    return target, added, tried


def rules_file_for(config: Config, given: str | None) -> Path:
    """The rules file an approved rule goes into: one the config reads, so the daemon's
    hot reload sees it; by default the config's last one in its own folder."""
    read = [path.resolve() for path in config.rule_paths]
    if given is not None:
        path = (config.path.parent / given).resolve()
        if path not in read:
            raise UsageError(
                f"--file {given}: the config's rules do not include it, so the daemon would"
                " never read the rule — name one of: " + ", ".join(str(p) for p in read)
            )
        return path
    own = [path for path in read if path.is_relative_to(config.path.parent.resolve())]
    if not own:
        raise UsageError("no rules file of the config is in its folder — pass --file FILE")
    return own[-1]


def _proposal(row: tuple) -> Proposal:
    values = list(row)
    values[8] = json.loads(values[8])
    return Proposal(*values)
