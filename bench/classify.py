"""Classification throughput: messages per second through the compiled rules.

    python bench/classify.py [--messages 200000] [--repeats 5] [--cpu] [--check-rules 8000]

Rule sets: the shipped rules (sites pipeline); 60 rules (the shipped ones plus generated
look-alikes placed before them, so most messages pass many rules first); and the shipped
rules with every rule pack after them (rules/packs/, as a config naming them all would).
The messages are the realistic examples from the tests plus unmatched ones, cycled; the
last row classifies the real error texts of tests/corpus/ instead.

Then `pipewarden rules check` on a file of --check-rules generated rules (a mix of
regexes and literals, a shadowed literal and a nested repeat among them), timed end
to end as a person runs it: the process starting, loading, checking and printing
(wall and CPU time).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
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


def many_rules(count: int) -> str:
    lines = ["rules:"]
    for n in range(count - 2):
        if n % 2:
            lines.append(f"  - {{match: 'vendor {n} quota (exceeded|exhausted) for \\w+',"
                         f" group: retriable, label: Vendor {n}}}")  # fmt: skip
        else:
            lines.append(f"  - {{match: 'message {n} from the batch job', group: terminal,"
                         f" label: Message {n}}}")  # fmt: skip
    lines.append("  - {match: 'vendor 17 quota exceeded for key', group: terminal, label: Late}")
    lines.append("  - {match: '(x+)+y', group: terminal, label: Nested}")
    return "\n".join(lines) + "\n"


def time_rules_check(folder: Path, count: int) -> tuple[float, float, int]:
    """`pipewarden rules check` on `count` rules: wall and CPU seconds, warnings printed."""
    path = folder / "many.yaml"
    path.write_text(many_rules(count))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipewarden", "rules", "check", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, done.stdout.count("warning:")


def measure(
    classifier: Classifier,
    total: int,
    repeats: int,
    sample: list[str] = MESSAGES,
    clock=time.perf_counter,
) -> float:
    """Messages per second (of `clock`), from the fastest of `repeats` passes."""
    messages = (sample * (total // len(sample) + 1))[:total]
    classify = classifier.classify
    fastest = float("inf")
    for _ in range(repeats):
        start = clock()
        for message in messages:
            classify(message, pipeline="sites", stage="capture")
        fastest = min(fastest, clock() - start)
    return total / fastest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5, help="passes; the fastest counts")
    parser.add_argument("--check-rules", type=int, default=8000, help="rules for `rules check`")
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
            rate = measure(Classifier(rules), args.messages, args.repeats, sample, clock)
            print(f"{name:<19} ({count:>3} in scope): {rate:>10,.0f} messages/s")
        if args.check_rules:
            wall, cpu, warnings = time_rules_check(Path(folder), args.check_rules)
            print(f"rules check, {args.check_rules} rules: {wall:.2f} s ({cpu:.2f} s CPU),"
                  f" {warnings} warnings")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
