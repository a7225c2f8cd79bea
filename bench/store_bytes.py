"""Bytes the store grows per item: one stage, no-op items, every run recorded.

    python bench/store_bytes.py [--items 20000] [--mode pool|process] [--keep DIR]

Runs the real daemon (`pipewarden run --until-idle`) on a fresh state dir over N no-op
items, then checkpoints the WAL into the main file and measures it: the file's size
(page_count * page_size, no VACUUM) over N, the item rows and the run rows and every
index included; beside it every table and index from SQLite's `dbstat` table (bytes of
the pages each b-tree uses, and of the payload in them), each over N. Every item must
end `done` with one `ok` run, or the benchmark fails.
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
from ports import free_port

WORKER = "def noop(data):\n    return None\n"
COMMAND_WORKER = '["sed", "-n", "1q"]'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--mode", choices=("pool", "process"), default="pool")
    parser.add_argument("--keep", type=Path, help="copy the measured store file here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _run_daemon(root, args.items, args.mode)
        path = root / ".pipewarden" / STORE_FILE
        conn = sqlite3.connect(path)
        try:
            problem = _check(conn, args.items)
            if problem:
                print(f"FAILED: {problem}", file=sys.stderr)
                return 1
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            total = _file_bytes(conn)
            parts = _btree_bytes(conn)
        finally:
            conn.close()
        if args.keep:
            shutil.copy(path, args.keep)
    _report(args.items, args.mode, total, parts)
    return 0


def _run_daemon(root: Path, items: int, mode: str) -> None:
    (root / "bench_worker.py").write_text(WORKER)
    (root / "rules.yaml").write_text("rules: []\n")
    worker = 'python: "bench_worker:noop"' if mode == "pool" else f"command: {COMMAND_WORKER}"
    (root / "config.yaml").write_text(
        f"rules: [rules.yaml]\napi: {{port: {free_port()}}}\n"
        "pipelines:\n  bench:\n    stages:\n"
        f"      - {{name: noop, {worker}, mode: {mode}, concurrency: 2}}\n"
    )
    store = Store(root / ".pipewarden")
    store.enqueue("bench", "noop", [(f"item-{n}", {"n": n}) for n in range(items)], time.time())
    store.close()
    subprocess.run(
        [sys.executable, "-m", "pipewarden", "run", "--until-idle", "--config", "config.yaml"],
        cwd=root, check=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _check(conn: sqlite3.Connection, items: int) -> str | None:
    done = conn.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0]
    ok = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'ok'").fetchone()[0]
    return None if done == ok == items else f"{done} done, {ok} ok runs for {items} items"


def _file_bytes(conn: sqlite3.Connection) -> int:
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    return pages * size


def _btree_bytes(conn: sqlite3.Connection) -> list[tuple[str, str, int, int]]:
    """(name, table it belongs to, bytes of its pages, bytes of payload) per b-tree."""
    return conn.execute(
        "SELECT d.name, COALESCE(m.tbl_name, d.name), SUM(d.pgsize), SUM(d.payload)"
        " FROM dbstat d LEFT JOIN sqlite_schema m ON m.name = d.name"
        " GROUP BY d.name ORDER BY SUM(d.pgsize) DESC"
    ).fetchall()


def _report(items: int, mode: str, total: int, parts: list[tuple[str, str, int, int]]) -> None:
    print(
        f"{mode} mode, one no-op stage, {items:,} items: store file {total / 1e6:.2f} MB"
        f" = {total / items:.0f} bytes per item"
    )
    print(f"  {'b-tree':<28} {'of table':<16} {'B/item':>7} {'payload':>8}")
    for name, table, pages, payload in parts:
        if pages / items >= 0.5:
            print(f"  {name:<28} {table:<16} {pages / items:>7.1f} {payload / items:>8.1f}")


if __name__ == "__main__":
    sys.exit(main())
