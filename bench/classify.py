"""Classification throughput: messages per second through the compiled rules.

    python bench/classify.py [--messages 200000] [--cpu]

Rule sets: the shipped rules (sites pipeline); 60 rules (the shipped ones plus generated
look-alikes placed before them, so most messages pass many rules first); and the shipped
rules with every rule pack after them (rules/packs/, as a config naming them all would).
The messages are the realistic examples from the tests plus unmatched ones, cycled; the
last row classifies the real error texts of tests/corpus/ instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from pipewarden import packs
from pipewarden.classifier import Classifier
from pipewarden.rules import load_rules
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent
MESSAGES = [
    "Social media platform: facebook.com",
    "Request failed with status code 429",
    "EACCES: permission denied, mkdir '/run/media/store'",
    "page.goto: Timeout 30000ms exceeded",
    "HTTP 503 Service Unavailable",
    "Target page, context or browser has been closed",
    "the flux capacitor overheated",  # matches nothing: tries every rule
    "SqliteError: database is locked",
    "Account suspended for unusual activity",
    "read ECONNRESET",
]


def extra_rules(count: int) -> str:
    lines = ["pipelines: [sites]", "rules:"]
    for n in range(count):
        lines.append(
            f'  - {{match: "vendor-{n} quota (exceeded|exhausted) for key \\\\w+",'
            f" group: retriable, label: Vendor {n} quota}}"
        )
    return "\n".join(lines) + "\n"


def corpus_messages() -> list[str]:
    return [
        message
        for path in sorted((REPO / "tests" / "corpus").glob("*.yaml"))
        for kind in YAML(typ="safe").load(path.read_text(encoding="utf-8"))
        for message in kind["messages"]
    ]


def measure(
    classifier: Classifier, total: int, sample: list[str] = MESSAGES, clock=time.perf_counter
) -> float:
    messages = (sample * (total // len(sample) + 1))[:total]
    classify = classifier.classify
    start = clock()
    for message in messages:
        classify(message, pipeline="sites", stage="capture")
    return total / (clock() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument(
        "--cpu", action="store_true",
        help="count this process's CPU time, not wall time (on a machine others load)",
    )  # fmt: skip
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    shipped = sorted((REPO / "rules").glob("*.yaml"))
    with tempfile.TemporaryDirectory() as folder:
        ruleset = load_rules(shipped, REPO)
        in_scope = sum(r.applies_to("sites", "capture") for r in ruleset.rules)
        extra = Path(folder) / "00-extra.yaml"
        extra.write_text(extra_rules(60 - in_scope))
        big = load_rules([extra, *shipped], REPO)
        every_pack = load_rules(
            [*shipped, *(packs.packs_dir() / f"{n}.yaml" for n in packs.pack_names())]
        )
        rows = [
            ("shipped rules", ruleset, MESSAGES),
            ("60 rules", big, MESSAGES),
            ("every pack", every_pack, MESSAGES),
            ("every pack, corpus", every_pack, corpus_messages()),
        ]
        for name, rules, sample in rows:
            count = sum(r.applies_to("sites", "capture") for r in rules.rules)
            rate = measure(Classifier(rules), args.messages, sample, clock)
            print(f"{name:<19} ({count:>3} in scope): {rate:>10,.0f} messages/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
