"""Build a large store for measuring `pipewarden status`: 1,000,000 items, 5,000,000 runs.

    python bench/make_store.py DIR [--items 1000000] [--runs-per-item 5] [--url postgresql://…]
    pipewarden status --config DIR/config.yaml        # then time this

Items spread over the example's pipelines and stages, in every state, with labels on
the failures and timestamps over the last 30 days; each item gets its runs, and the last
day's ended runs are counted (run_slots) as the migration to the counts does. `--url`
builds the same store in an empty PostgreSQL database (COPY: its triggers keep the status
counts, folded at the end as a daemon folds them) and points DIR's config at it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipewarden.store import STORE_FILE, Store

REPO = Path(__file__).resolve().parent.parent
STAGES = [("sites", "find"), ("sites", "capture"), ("sites", "score"), ("outreach", "send")]
STATES = (
    ["queued"] * 2 + ["done"] * 10 + ["failed"] * 3 + ["ignored"] * 6 + ["retrying", "deferred"]
)
LABELS = {
    "failed": [("retriable", "Browser launch conflict"), ("retriable", "API bad request"),
               ("terminal", "Permanent HTTP error"), ("unknown", "Unknown")],
    "retrying": [("retriable", "Rate limited"), ("retriable", "Timeout")],
    "ignored": [("ignore", "Cross-border duplicate"), ("ignore", "Social media"),
                ("ignore", "Business directory"), ("ignore", "Franchise"),
                ("ignore", "Duplicate domain"), ("ignore", "Government domain"),
                ("ignore", "Non-commercial")],
}  # fmt: skip
CHANNELS = ["sms", "email", "form"]
BATCH = 50_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--runs-per-item", type=int, default=5)
    parser.add_argument("--url", help="an empty PostgreSQL database to build the store in")
    args = parser.parse_args()
    folder: Path = args.dir
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.example.yaml", "rules", "examples"):
        source, target = REPO / name, folder / name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy(source, folder / "config.yaml")
    state_dir = folder / ".pipewarden-example"
    if args.url:
        with open(folder / "config.yaml", "a") as config:
            config.write(f"store: '{args.url}'\n")
    started = time.monotonic()
    load = _copy_into_postgresql if args.url else _insert_into_sqlite
    run_number = load(args.url or state_dir, batches(args.items, args.runs_per_item))
    print(
        f"{args.items:,} items and {run_number:,} runs in {args.url or state_dir}"
        f" ({time.monotonic() - started:.0f}s)"
    )
    return 0


ITEM_COLUMNS = ("id, pipeline, key, stage, state, data, attempt, ready_at, channel,"
                " last_label, last_group, created_at, updated_at")  # fmt: skip
RUN_COLUMNS = ("id, pipeline, stage, item_id, item_key, attempt, channel, status, started_at,"
               " finished_at, duration_s, label, group_name, error")  # fmt: skip


def batches(count: int, runs_per_item: int) -> Iterator[tuple[list[tuple], list[tuple]]]:
    """(items, runs) rows, BATCH items at a time."""
    rng = random.Random(7)
    now = time.time()
    # Most activity is recent; items were added, and their runs numbered, in time order,
    # as a daemon numbers them (the SQLite store finds runs by start through their numbers).
    times = sorted(now - rng.random() ** 3 * 30 * 86400 for _ in range(count))
    run_number = 0
    for first in range(0, count, BATCH):
        items, runs = [], []
        for item_id in range(first + 1, min(first + BATCH, count) + 1):
            pipeline, stage = STAGES[item_id % len(STAGES)]
            state = rng.choice(STATES)
            group, label = rng.choice(LABELS[state]) if state in LABELS else (None, None)
            updated = times[item_id - 1]
            channel = rng.choice(CHANNELS) if pipeline == "outreach" else stage
            items.append((item_id, pipeline, f"item-{item_id}", stage, state, "{}", 1, updated,
                          channel, label, group, updated - 3600, updated))  # fmt: skip
            for attempt in range(1, runs_per_item + 1):
                run_number += 1
                begun = updated - (runs_per_item - attempt) * 600
                status = "ok" if attempt == runs_per_item and state == "done" else "failed"
                runs.append((f"{run_number:032x}", pipeline, stage, item_id, f"item-{item_id}",
                             attempt, channel, status, begun, begun + 1.5, 1.5, label, group,
                             "error text" if status == "failed" else None))  # fmt: skip
        yield items, runs


def _insert_into_sqlite(state_dir: Path, rows: Iterator[tuple[list, list]]) -> int:
    from pipewarden.store.sqlite.schema import MIGRATIONS

    Store(state_dir).close()  # the schema, at the current version
    conn = sqlite3.connect(state_dir / STORE_FILE)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.executemany("INSERT OR IGNORE INTO stages (pipeline, stage) VALUES (?, ?)", STAGES)
    numbers = {(p, s): n for n, p, s in conn.execute("SELECT no, pipeline, stage FROM stages")}
    count = 0
    for items, runs in rows:
        conn.executemany(f"INSERT INTO items ({ITEM_COLUMNS}) VALUES ({', '.join('?' * 13)})",
                         items)  # fmt: skip
        conn.executemany(SQLITE_RUN_INSERT, [_sqlite_run(run, numbers) for run in runs])
        conn.commit()
        count += len(runs)
    conn.execute(MIGRATIONS[11][1])  # step 12's backfill: the last day's runs counted
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return count


# A run as the SQLite store writes it (schema 21: into run_rows, which `runs` shows): its
# number (its id), its stage's number, its duration in microseconds, its classification in
# its failure object.
SQLITE_RUN_INSERT = (
    "INSERT INTO run_rows (run_no, stage_no, item_id, attempt, channel, status, started_at,"
    " finished_at, duration_us, error, failure) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _sqlite_run(run: tuple, stage_numbers: dict[tuple[str, str], int]) -> tuple:
    from pipewarden.store.sqlite.queue import microseconds
    from pipewarden.store.sqlite.runkeys import failure_json

    hex_id, pipeline, stage, item_id, _key, attempt, *kept, duration, label, group, error = run
    failure = failure_json({"label": label, "group_name": group})
    return (int(hex_id, 16), stage_numbers[pipeline, stage], item_id, attempt, *kept,
            microseconds(duration), error, failure)  # fmt: skip


def _copy_into_postgresql(url: str, rows: Iterator[tuple[list, list]]) -> int:
    import psycopg
    from pipewarden.store import open_store
    from pipewarden.store.postgres import counts
    from pipewarden.store.postgres.schema import STEPS

    open_store(Path("unused"), url=url).close()  # the schema, at the current version
    count = 0
    with psycopg.connect(url) as conn:
        for items, runs in rows:
            with conn.cursor() as cursor:
                for table, columns, batch in (("items", ITEM_COLUMNS, items),
                                              ("runs", RUN_COLUMNS, runs)):  # fmt: skip
                    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for row in batch:
                            copy.write_row(row)
            conn.commit()
            count += len(runs)
        conn.execute(STEPS[12][1])  # the last day's runs counted, as the migration does
        counts.fold(conn, time.time())  # the status counts' old slots, as a daemon folds them
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return count


if __name__ == "__main__":
    sys.exit(main())
