"""Items per second through one stage, every run recorded in the store.

    python bench/throughput.py [--items 20000] [--mode pool|process] [--concurrency 2]

Runs the real daemon (`pipewarden run --until-idle`) on a fresh state dir over no-op
items, then reads the store: the rate counts from the first run's start to the last
run's end, so interpreter start-up is not in it. Every item must end `done` with one
`ok` run, or the benchmark fails. The CPU time per item (the daemon's and its workers',
start-up included) is printed too: on a busy machine it varies far less than the rate.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipewarden.store import Store
from ports import free_port

WORKER = "def noop(data):\n    return None\n"
# Process mode: a native worker that reads the item line and exits 0 (= ok), so the
# figure is pipewarden's own cost per item (spawn, watchdog, pipes, records), not
# an interpreter's start-up.
COMMAND_WORKER = '["sed", "-n", "1q"]'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--mode", choices=("pool", "process"), default="pool")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "bench_worker.py").write_text(WORKER)
        (root / "rules.yaml").write_text("rules: []\n")
        worker = (
            'python: "bench_worker:noop"' if args.mode == "pool" else f"command: {COMMAND_WORKER}"
        )
        (root / "config.yaml").write_text(
            f"rules: [rules.yaml]\napi: {{port: {free_port()}}}\n"
            "pipelines:\n  bench:\n    stages:\n"
            f"      - {{name: noop, {worker}, mode: {args.mode},"
            f" concurrency: {args.concurrency}}}\n"
        )
        store = Store(root / ".pipewarden")
        store.enqueue("bench", "noop", [(f"item-{n}", {"n": n}) for n in range(args.items)], 0.0)
        store.close()

        wall = time.monotonic()
        cpu = _children_cpu()
        subprocess.run(
            [sys.executable, "-m", "pipewarden", "run", "--until-idle", "--config", "config.yaml"],
            cwd=root, check=True, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wall = time.monotonic() - wall
        cpu = _children_cpu() - cpu

        store = Store(root / ".pipewarden")
        conn = store.db.connection()
        done = conn.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0]
        ok_runs, first, last = conn.execute(
            "SELECT COUNT(*), MIN(started_at), MAX(finished_at) FROM runs WHERE status = 'ok'"
        ).fetchone()
        store.close()

    if done != args.items or ok_runs != args.items:
        print(f"FAILED: {done} done, {ok_runs} ok runs for {args.items} items", file=sys.stderr)
        return 1
    span = last - first
    print(
        f"{args.mode} mode, concurrency {args.concurrency}: {args.items} items in {span:.2f}s"
        f" = {args.items / span:,.0f} items/s ({span / args.items * 1000:.3f} ms/item;"
        f" {wall:.2f}s wall with start-up; CPU {cpu / args.items * 1000:.3f} ms/item)"
    )
    return 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main())
