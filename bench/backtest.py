"""How long `pipewarden rules backtest` and `pipewarden reclassify --dry-run` take on a big
store: N stored failures (default 1,000,000) over D distinct error texts.

    .venv/bin/python bench/backtest.py [--failures N] [--texts D] [--dir DIR]

The store is built once in DIR (default: a temporary folder; given, it is kept and reused):
the example's config and rules, the failures spread over the example's stages and the last
7 days, texts like a browser pipeline's (a URL or an id in each, so a text repeats about
N/D times), half of them matching a shipped rule. Then the command runs as a user would run it,
in a fresh process, 3 times; the wall times are printed.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipewarden.store import STORE_FILE, Store

REPO = Path(__file__).resolve().parent.parent
STAGES = [("sites", "find"), ("sites", "capture"), ("sites", "score"), ("outreach", "send")]
SHAPES = [
    "page.goto: net::ERR_NAME_NOT_RESOLVED at https://site-{n}.example.com/",
    "Widget {n} refused by https://shop.example.com/w/{n} after {n}ms",
    "sqlite3.OperationalError: no such table: shard_{n}",
    "SMTP 550 5.1.1 <user{n}@example.org>: Recipient address rejected",
    "KeyError: 'field_{n}'",
    "HTTP 429 Too Many Requests (request {n})",  # a shipped rule knows this one
    "ValueError: cannot parse price '{n},00 EUR'",
    "ConnectionResetError: [Errno 104] Connection reset by peer (socket {n})",
    "Target page, context or browser has been closed (tab {n})",
    "TypeError: object of type 'NoneType' has no len() (row {n})",
]
BATCH = 100_000


def build(folder: Path, failures: int, texts: int) -> None:
    for name in ("rules", "examples"):
        shutil.copytree(REPO / name, folder / name, dirs_exist_ok=True)
    shutil.copy(REPO / "config.example.yaml", folder / "config.yaml")
    state_dir = folder / ".pipewarden-example"
    Store(state_dir).close()  # the schema, at the current version
    conn = sqlite3.connect(state_dir / STORE_FILE)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    now = time.time()
    conn.executemany("INSERT OR IGNORE INTO stages (pipeline, stage) VALUES (?, ?)", STAGES)
    numbers = {(p, s): no for no, p, s in conn.execute("SELECT no, pipeline, stage FROM stages")}
    for first in range(0, failures, BATCH):
        items, runs = [], []
        for n in range(first, min(first + BATCH, failures)):
            pipeline, stage = STAGES[n % len(STAGES)]
            distinct = n % texts
            error = SHAPES[distinct % len(SHAPES)].format(n=distinct)
            at = now - (1 - n / failures) * 6.9 * 86400  # run numbers in time order
            items.append((n + 1, pipeline, f"item-{n}", stage, "failed", str(n + 1), error,
                          "Unknown", "unknown", at, at))  # fmt: skip
            kind = error.partition(":")[0] if ":" in error else None
            runs.append((n + 1, numbers[pipeline, stage], n + 1, "failed", at, at + 1, error,
                         kind))  # fmt: skip
        conn.executemany(
            "INSERT INTO items (id, pipeline, key, stage, state, attempt, last_run_id,"
            " last_error, last_label, last_group, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            items,
        )
        conn.executemany(  # as the store writes a run (schema 21: run_rows, shown by `runs`)
            "INSERT INTO run_rows (run_no, stage_no, item_id, attempt, status, started_at,"
            " finished_at, error, error_type, failure) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?,"
            " json_object('group_name', 'unknown', 'label', 'Unknown', 'category', 'unknown',"
            " 'type', 'unknown'))",
            runs,
        )
        conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def timed(folder: Path, *command: str) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipewarden", *command, "--config", str(folder / "config.yaml")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return time.monotonic() - started, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failures", type=int, default=1_000_000)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="pipewarden-backtest-"))
    try:
        if not (folder / "config.yaml").exists():
            started = time.monotonic()
            folder.mkdir(parents=True, exist_ok=True)
            build(folder, args.failures, args.texts)
            print(f"built {args.failures:,} failures, {args.texts:,} distinct texts"
                  f" ({time.monotonic() - started:.0f} s)")  # fmt: skip
        for command in (("rules", "backtest"), ("reclassify", "--since", "7d", "--dry-run")):
            times = []
            for _ in range(3):
                took, out = timed(folder, *command)
                times.append(took)
            print(f"pipewarden {' '.join(command)}: " + ", ".join(f"{t:.2f} s" for t in times))
            print("  " + "\n  ".join(out.splitlines()[:4]))
    finally:
        if args.dir is None:
            shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
