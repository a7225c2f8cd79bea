"""Grouping accuracy and speed of the template miner on the Loghub-2k datasets.

    .venv/bin/python bench/templates.py [--data DIR] [--only HDFS,Apache] [--json]

DIR holds one folder per system with `<D>_2k.log_structured.csv` (and the corrected
`<D>_2k.log_structured_corrected.csv`), as in ../shared/loghub2k (the data is Loghub's, under
its own licence: read the LICENSE there; it is not copied into this repository). Each system's
`Content` column goes through one fresh miner, in `LineId` order, with the one configuration
daemon/templates.py ships. Grouping accuracy (GA) is Zhu et al.'s (ICSE-SEIP 2019): a message
counts only if its predicted group holds exactly the messages of its true group. The mean is
the unweighted mean over the systems. `--json` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from pipewarden.templates import Miner

SYSTEMS = (
    "HDFS", "Hadoop", "Spark", "Zookeeper", "OpenStack", "BGL", "HPC", "Thunderbird",
    "Windows", "Linux", "Mac", "Android", "HealthApp", "Apache", "OpenSSH", "Proxifier",
)  # fmt: skip
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "loghub2k"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return sorted(rows, key=lambda row: int(row["LineId"]))


def grouping_accuracy(predicted: list[object], truth: list[str]) -> float:
    """Share of messages whose predicted group equals their true group, as sets."""
    by_predicted: dict[object, set[int]] = defaultdict(set)
    by_truth: dict[str, set[int]] = defaultdict(set)
    for i, (p, t) in enumerate(zip(predicted, truth, strict=True)):
        by_predicted[p].add(i)
        by_truth[t].add(i)
    correct = sum(
        len(group)
        for group in by_truth.values()
        if by_predicted[predicted[next(iter(group))]] == group
    )
    return correct / len(truth)


def run_system(data: Path, system: str) -> dict[str, object]:
    rows = read_rows(data / system / f"{system}_2k.log_structured.csv")
    texts = [row["Content"] for row in rows]
    miner = Miner()
    started = time.process_time()
    clusters = [miner.add(text) for text in texts]
    elapsed = time.process_time() - started
    # The final grouping: each message's cluster as it is at the end (merged ones followed).
    predicted = [cluster.current().id for cluster in clusters]
    result: dict[str, object] = {
        "system": system,
        "messages": len(texts),
        "templates_true": len({row["EventId"] for row in rows}),
        "templates_found": len(set(predicted)),
        "ga": round(grouping_accuracy(predicted, [row["EventId"] for row in rows]), 4),
        "seconds": round(elapsed, 4),
    }
    corrected = data / system / f"{system}_2k.log_structured_corrected.csv"
    if corrected.exists():
        truth = [row["EventTemplate"] for row in read_rows(corrected)]
        result["ga_corrected"] = round(grouping_accuracy(predicted, truth), 4)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the loghub2k folder")
    parser.add_argument("--only", help="comma-separated systems (default: all 16)")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = parser.parse_args(argv)
    systems = args.only.split(",") if args.only else list(SYSTEMS)
    missing = [s for s in systems if not (args.data / s / f"{s}_2k.log_structured.csv").exists()]
    if missing:
        where = "pass --data DIR (the folder with one sub-folder per system)"
        print(f"{args.data}: no Loghub-2k data for {', '.join(missing)}; {where}", file=sys.stderr)
        return 2
    results = [run_system(args.data, system) for system in systems]
    messages = sum(r["messages"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    summary = {
        "mean_ga": round(sum(r["ga"] for r in results) / len(results), 4),
        "mean_ga_corrected": round(
            sum(r.get("ga_corrected", 0) for r in results) / len(results), 4
        ),
        "messages_per_second": round(messages / seconds),
        "systems": results,
    }
    print(f"{'system':<12} {'GA':>6} {'GA corr':>8} {'true':>5} {'found':>6} {'msg/s':>9}")
    for r in results:
        rate = r["messages"] / r["seconds"]
        print(f"{r['system']:<12} {r['ga']:>6.3f} {r.get('ga_corrected', 0):>8.3f} "
              f"{r['templates_true']:>5} {r['templates_found']:>6} {rate:>9,.0f}")  # fmt: skip
    print(f"{'mean':<12} {summary['mean_ga']:>6.3f} {summary['mean_ga_corrected']:>8.3f} "
          f"{'':>5} {'':>6} {summary['messages_per_second']:>9,}")  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
