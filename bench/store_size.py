"""Throughput on an empty store beside the same on the 1M-item / 5M-run store.

    nice .venv/bin/python bench/store_size.py BIG_DIR [--items 5000] [--reps 3] [--concurrency 2]

BIG_DIR is what `bench/make_store.py BIG_DIR` built (its config and store). Its store is
copied once into a temporary folder; an empty store is made beside it. Both get the same
config: BIG_DIR's pipelines, paused (their queued items stay queued), and a one-stage
pipeline `bench` of no-op items (pool mode). Each rep enqueues N new `bench` items into
each store and runs `pipewarden run --until-idle` on it, the two interleaved (the order
rotates each rep); the rate counts from the rep's first `bench` run's start to its last
run's end. Medians are printed, then each rep, then the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port

WORKER = "def noop(data):\n    return None\n"
BENCH_PIPELINE = """
  bench:
    stages:
      - {{name: noop, python: "bench_worker:noop", mode: pool, concurrency: {concurrency}}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("big", type=Path, help="a folder bench/make_store.py built")
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pw-store-size-") as folder:
        projects = {
            "empty store": project(Path(folder) / "empty", args.big, args.concurrency, None),
            "1M/5M store": project(Path(folder) / "big", args.big, args.concurrency, args.big),
        }
        rates: dict[str, list[float]] = {name: [] for name in projects}
        names = list(projects)
        for rep in range(args.reps):
            for name in names[rep % 2 :] + names[: rep % 2]:
                rate = run_rep(projects[name], f"r{rep}", args.items)
                rates[name].append(rate)
                print(f"  rep {rep + 1}: {name}: {rate:,.0f} items/s", flush=True)
    print(f"\nload average (1 min) {os.getloadavg()[0]:.1f} at the end; medians of {args.reps}")
    medians = {name: statistics.median(found) for name, found in rates.items()}
    for name, median in medians.items():
        print(f"{name:<14} {median:>8,.0f} items/s")
    print(f"1M/5M / empty: {medians['1M/5M store'] / medians['empty store']:.2f}x")
    return 0


def project(root: Path, big: Path, concurrency: int, store_from: Path | None) -> Path:
    """A folder with BIG's config (state dir `.pipewarden-example`), its rules and
    examples, the bench pipeline, a free port, and BIG's store copied in (or none)."""
    root.mkdir(parents=True)
    config = (big / "config.yaml").read_text()
    for name in ("rules", "examples"):
        if (big / name).is_dir():
            shutil.copytree(big / name, root / name)
    (root / "bench_worker.py").write_text(WORKER)
    config = config.replace("pipelines:\n", "pipelines:" + BENCH_PIPELINE.format(
        concurrency=concurrency), 1)  # fmt: skip
    (root / "config.yaml").write_text(config + f"\napi: {{port: {free_port()}}}\n")
    if store_from is not None:
        (root / ".pipewarden-example").mkdir()
        print(f"copying {store_from}'s store ...", flush=True)
        shutil.copy(
            store_from / ".pipewarden-example" / "pipewarden.db",
            root / ".pipewarden-example" / "pipewarden.db",
        )
    for pipeline in pipelines_of(config):
        if pipeline != "bench":
            cli(root, "pause", "--pipeline", pipeline)
    return root


def pipelines_of(config: str) -> list[str]:
    text = config.split("\npipelines:", 1)[1]
    names = []
    for line in text.splitlines()[1:]:
        if line and not line.startswith(" "):
            break
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            names.append(line.strip().rstrip(":"))
    return names


def run_rep(root: Path, tag: str, items: int) -> float:
    lines = "".join(f'{{"key": "{tag}-{n}"}}\n' for n in range(items))
    (root / "items.jsonl").write_text(lines)
    cli(root, "enqueue", "bench", "--file", "items.jsonl")
    since = time.time()
    cli(root, "run", "--until-idle")
    db = sqlite3.connect(root / ".pipewarden-example" / "pipewarden.db")
    try:
        count, first, last = db.execute(
            "SELECT COUNT(*), MIN(started_at), MAX(finished_at) FROM runs"
            " WHERE pipeline = 'bench' AND status = 'ok' AND started_at >= ?",
            (since,),
        ).fetchone()
    finally:
        db.close()
    if count != items:
        raise SystemExit(f"FAILED: {count} ok runs for {items} items in {root}")
    return items / (last - first)


def cli(root: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pipewarden", *args], cwd=root, check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
