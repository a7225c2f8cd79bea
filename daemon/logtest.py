"""`pipewarden rules test --file LOG`: a whole log through the rules (fail2ban-regex's habit).

Every non-blank line is one error text, classified exactly as the daemon classifies a
failed run. The summary counts each label and group, then lists the lines no rule
matched, most frequent first: the ones worth a rule of their own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pipewarden.classifier import Classifier
from pipewarden.types import Group

UNMATCHED_SHOWN = 50  # distinct unmatched lines in the summary; --json has every line


@dataclass(frozen=True)
class LineResult:
    line: int  # 1-based, in the input
    text: str
    group: str
    label: str
    rule: str | None

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "group": self.group, "label": self.label, "rule": self.rule}


def classify_lines(
    classifier: Classifier,
    lines: list[str],
    pipeline: str | None,
    stage: str | None,
    exception_types: tuple[str, ...] = (),
) -> list[LineResult]:
    results = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        c = classifier.classify(
            text, pipeline=pipeline, stage=stage, exception_types=exception_types
        )
        results.append(LineResult(number, text, c.group.value, c.label, c.rule_id))
    return results


def summary_lines(results: list[LineResult]) -> list[str]:
    if not results:
        return ["no error text in the input (one per line; blank lines are skipped)"]
    unmatched = Counter(r.text for r in results if r.group == Group.UNKNOWN)
    matched = len(results) - unmatched.total()
    out = [
        f"{len(results)} lines: {matched} labelled ({_share(matched, len(results))}), "
        f"{unmatched.total()} unmatched",
        "",
    ]
    by_label = Counter((r.group, r.label) for r in results if r.group != Group.UNKNOWN)
    by_group = Counter(r.group for r in results)
    for group in (g.value for g in Group):
        if not by_group[group]:
            continue
        out.append(f"{group:<10} {by_group[group]:>7}  ({_share(by_group[group], len(results))})")
        for (label_group, label), count in by_label.most_common():
            if label_group == group:
                out.append(f"  {count:>7}  {label}")
    if unmatched:
        out += ["", f"unmatched lines ({len(unmatched)} distinct), most frequent first:"]
        for text, count in unmatched.most_common(UNMATCHED_SHOWN):
            out.append(f"  {count:>7}× {text}")
        if len(unmatched) > UNMATCHED_SHOWN:
            hidden = len(unmatched) - UNMATCHED_SHOWN
            out.append(f"  … {hidden} more distinct lines (--json lists every line)")
    return out


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%"
