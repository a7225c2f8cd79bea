"""An idle daemon: its store commits and its memory, then a person's one-item enqueue.

    nice .venv/bin/python bench/idle.py [BIG_DIR] [--seconds 30] [--enqueues 12]

BIG_DIR is what `bench/make_store.py BIG_DIR` built; its store is copied and its pipelines
paused, as `store_size.py` does (without it: an empty store). Beside them a `bench`
pipeline with nothing queued, so nothing can run. The daemon starts; once its store has
been still for 3 s (start-up's passes done), the store's commits are counted for
`--seconds` from another connection (`PRAGMA data_version` moves at every commit of
another connection; read every 5 ms) and the daemon's RSS is read from /proc (and again
after three `pipewarden status` calls through it). Then `--enqueues` times a one-item
`pipewarden enqueue` through the running daemon, a fresh interpreter each time, as a
person types it: wall time and CPU (user + sys).
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from installed import shell_env
from store_size import project

STILL_FOR_S = 3.0
POLL_S = 0.005


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("big", type=Path, nargs="?", help="a folder bench/make_store.py built")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--enqueues", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pw-idle-") as folder:
        root = Path(folder) / "project"
        if args.big:
            project(root, args.big, 1, args.big)
        else:
            empty_project(root)
        return measure(root, args.seconds, args.enqueues, "1M/5M store" if args.big else "empty")


def empty_project(root: Path) -> None:
    """The bench pipeline alone, in the state dir `project()` uses."""
    from ports import free_port
    from store_size import BENCH_PIPELINE, WORKER

    root.mkdir(parents=True)
    (root / "bench_worker.py").write_text(WORKER)
    (root / "rules.yaml").write_text("rules: []\n")
    (root / "config.yaml").write_text(
        "rules: [rules.yaml]\nstate_dir: .pipewarden-example\n"
        f"api: {{port: {free_port()}}}\npipelines:{BENCH_PIPELINE.format(concurrency=1)}"
    )


def measure(root: Path, seconds: float, enqueues: int, which: str) -> int:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pipewarden", "run", "--config", "config.yaml"],
        cwd=root, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port = int(_config_port(root))
        _wait_for(lambda: _answers(port), 120, "the daemon's API")
        store = sqlite3.connect(root / ".pipewarden-example" / "pipewarden.db")
        try:
            _wait_until_still(store)
            commits = _commits_over(store, seconds)
        finally:
            store.close()
        rss = _rss_mb(daemon.pid)
        for _ in range(3):
            _cli(root, "status")
        rss_after = _rss_mb(daemon.pid)
        walls, cpus = _enqueue_times(root, enqueues)
    finally:
        daemon.terminate()
        daemon.wait(60)
    print(f"{which}, load average (1 min) {os.getloadavg()[0]:.1f}:")
    print(f"  store commits while idle: {commits} in {seconds:.0f} s")
    print(f"  daemon RSS idle: {rss:.1f} MB; after three `status` calls: {rss_after:.1f} MB")
    print(
        f"  one-item `enqueue` through it, {enqueues} runs: wall min {min(walls):.3f},"
        f" median {statistics.median(walls):.3f}, max {max(walls):.3f} s;"
        f" CPU median {statistics.median(cpus):.3f} s"
    )
    return 0


def _config_port(root: Path) -> str:
    text = (root / "config.yaml").read_text()
    return text.rsplit("api: {port: ", 1)[1].split("}", 1)[0]


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _wait_for(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: {what} did not come within {timeout:.0f} s")
        time.sleep(0.05)


def _data_version(store: sqlite3.Connection) -> int:
    return store.execute("PRAGMA data_version").fetchone()[0]


def _wait_until_still(store: sqlite3.Connection, timeout: float = 300) -> None:
    """Until no commit has come for STILL_FOR_S (the daemon's start-up passes are done)."""
    deadline = time.monotonic() + timeout
    seen, still_since = _data_version(store), time.monotonic()
    while time.monotonic() - still_since < STILL_FOR_S:
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: the store never stayed still for {STILL_FOR_S:.0f} s")
        time.sleep(POLL_S)
        now = _data_version(store)
        if now != seen:
            seen, still_since = now, time.monotonic()


def _commits_over(store: sqlite3.Connection, seconds: float) -> int:
    """Changes of data_version seen (each at least one commit), polled every POLL_S."""
    commits, seen = 0, _data_version(store)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(POLL_S)
        now = _data_version(store)
        commits += now != seen
        seen = now
    return commits


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"FAILED: no VmRSS for pid {pid}")


def _enqueue_times(root: Path, runs: int) -> tuple[list[float], list[float]]:
    _cli(root, "enqueue", "bench", "idle-warm")  # untimed: its bytecode cached (installed.py)
    walls, cpus = [], []
    for n in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        _cli(root, "enqueue", "bench", f"idle-{n}")
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def _cli(root: Path, *args: str) -> None:
    """The console script, as a person runs it (installed.py: its bytecode cached)."""
    executable = Path(sys.executable).with_name("pipewarden")
    subprocess.run(
        [str(executable), *args, "--config", "config.yaml"], cwd=root, check=True,
        stdout=subprocess.DEVNULL, env=shell_env(),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
