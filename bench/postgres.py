"""pipewarden on PostgreSQL with 1, 2 and 3 daemons, beside SQLite and Procrastinate.

    nice .venv/bin/python bench/postgres.py [--items 5000] [--reps 3] [--latency 50]
                                            [--only throughput|latency] [--baseline DIR]

No-op items (pool mode, one stage, concurrency 1 per daemon) through: pipewarden on SQLite
(one daemon), pipewarden on PostgreSQL with 1, 2 and 3 daemons sharing the queue (each its
own state dir), and Procrastinate (a PostgreSQL task queue for Python, installed into a
venv of the bench's own, bench/.venv-procrastinate: never a project dependency) with one
worker of concurrency 1, its job rows kept (as pipewarden keeps a run row per attempt), on
the same throwaway server (tests/pg_cluster.py: Debian's postgresql-15, fsync off for all
alike). Reps are interleaved; medians are printed, then each rep. The rate counts from the
first item done to the last. Then the dispatch latency on PostgreSQL: an idle daemon, one
item enqueued at a time through the store, until its worker starts (the worker stamps the
time), so LISTEN/NOTIFY is what wakes the daemon. The first item starts the pool's worker
process: it is a warm-up, printed apart.

`--baseline DIR` runs every pipewarden configuration a second time with another version
of the package (DIR holds a `pipewarden` folder, e.g. `git archive REV daemon` unpacked
and renamed), interleaved with the rest: its daemons, its enqueues (the latency's
enqueue through the store is that version's too, in a process of its own), alternating
sample by sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from compare import POLL_S, RUN_LIMIT_S, tree_cpu
from ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pg_cluster  # the tests' throwaway cluster

PROCRASTINATE_VERSION = "3.10.0"
PROCRASTINATE_VENV = Path(__file__).with_name(".venv-procrastinate")
WORKER = "import time\n\ndef noop(data):\n    return None\n\ndef stamp(data):\n" \
         "    return {'started': time.time()}\n"  # fmt: skip
TASKS = """\
import os
import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["PG_URL"]))


@app.task(name="noop")
def noop(n):
    return None
"""


def count(url: str, sql: str) -> Callable[[], int]:
    import psycopg

    connection = psycopg.connect(url, autocommit=True)

    def done() -> int:
        try:
            return connection.execute(sql).fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0

    return done


def watch(processes: list[subprocess.Popen[bytes]], done: Callable[[], int], total: int):
    """(items/s, CPU µs per item over every process tree) from the first item done."""
    deadline = time.monotonic() + RUN_LIMIT_S
    start = None
    while time.monotonic() < deadline:
        n = done()
        now = time.monotonic()
        if start is None and n > 0:
            start = (now, n, sum(tree_cpu(p.pid) for p in processes))
        if start is not None and n >= total:
            cpu = sum(tree_cpu(p.pid) for p in processes) - start[2]
            return (total - start[1]) / (now - start[0]), cpu / (total - start[1]) * 1e6
        if all(p.poll() is not None for p in processes):
            raise SystemExit(f"FAILED: the daemons exited with {n} of {total} done")
        time.sleep(POLL_S)
    raise SystemExit(f"FAILED: not done within {RUN_LIMIT_S:g}s")


def _project(root: Path, store: str, function: str = "noop") -> Path:
    root.mkdir(parents=True)
    (root / "bench_worker.py").write_text(WORKER)
    (root / "rules.yaml").write_text("rules: []\n")
    (root / "config.yaml").write_text(
        f"rules: [rules.yaml]\napi: {{port: {free_port()}}}\n{store}"
        "pipelines:\n  bench:\n    stages:\n"
        f"      - {{name: noop, python: 'bench_worker:{function}', mode: pool}}\n"
    )
    return root


def _env(baseline: str | None) -> dict[str, str] | None:
    return {**os.environ, "PYTHONPATH": baseline} if baseline else None


def _enqueue(root: Path, items: int, baseline: str | None = None) -> None:
    lines = (json.dumps({"key": f"item-{n}", "data": {"n": n}}) for n in range(items))
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    subprocess.run([sys.executable, "-m", "pipewarden", "enqueue", "bench", "--file",
                    "items.jsonl", "--config", "config.yaml"], cwd=root, check=True,
                   stdout=subprocess.DEVNULL, env=_env(baseline))  # fmt: skip


def _daemon(root: Path, baseline: str | None = None, until_idle: bool = True):
    return subprocess.Popen([sys.executable, "-m", "pipewarden", "run",
                             *(["--until-idle"] if until_idle else []), "--config",
                             "config.yaml"], cwd=root, stderr=subprocess.DEVNULL,
                            env=_env(baseline))  # fmt: skip


def pipewarden(
    cluster: pg_cluster.Cluster | None, daemons: int, items: int, baseline: str | None = None
):
    with tempfile.TemporaryDirectory(prefix="pw-pg-bench-") as folder:
        if cluster is None:
            root = _project(Path(folder) / "d0", "")
            _enqueue(root, items, baseline)
            db = root / ".pipewarden" / "pipewarden.db"
            done = _sqlite_done(db)
            running = [_daemon(root, baseline)]
        else:
            url = cluster.create_database(f"pw_{time.monotonic_ns()}")
            roots = [_project(Path(folder) / f"d{n}", f"store: '{url}'\n") for n in range(daemons)]
            _enqueue(roots[0], items, baseline)
            done = count(url, "SELECT count(*) FROM items WHERE state = 'done'")
            running = [_daemon(root, baseline) for root in roots]
        try:
            return watch(running, done, items)
        finally:
            for process in running:
                process.wait(60)


def _sqlite_done(db: Path) -> Callable[[], int]:
    import sqlite3

    def done() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            try:
                return conn.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0]
            except sqlite3.OperationalError:
                return 0

    return done


def procrastinate_python() -> Path:
    python = PROCRASTINATE_VENV / "bin" / "python"
    probe = [str(python), "-c", "import procrastinate, sys; "
             "sys.exit(procrastinate.__version__ != sys.argv[1])"]  # fmt: skip
    if python.exists() and subprocess.run([*probe, PROCRASTINATE_VERSION]).returncode == 0:
        return python
    print(f"installing Procrastinate {PROCRASTINATE_VERSION} into {PROCRASTINATE_VENV} ...")
    subprocess.run([sys.executable, "-m", "venv", str(PROCRASTINATE_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"procrastinate=={PROCRASTINATE_VERSION}"], check=True)  # fmt: skip
    return python


def procrastinate(cluster: pg_cluster.Cluster, python: Path, items: int):
    with tempfile.TemporaryDirectory(prefix="procrastinate-bench-") as folder:
        root = Path(folder)
        (root / "tasks.py").write_text(TASKS)
        url = cluster.create_database(f"pc_{time.monotonic_ns()}")
        env = {**os.environ, "PYTHONPATH": str(root), "PG_URL": url}
        cli = [str(python), "-m", "procrastinate", "--app=tasks.app"]
        subprocess.run([*cli, "schema", "--apply"], cwd=root, env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        defer = (
            "import tasks\nwith tasks.app.open():\n"
            f"    tasks.noop.batch_defer(*[{{'n': n}} for n in range({items})])\n"
        )
        subprocess.run([str(python), "-c", defer], cwd=root, env=env, check=True)
        done = count(url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
        worker = subprocess.Popen([*cli, "worker", "--concurrency=1", "--one-shot"], cwd=root,
                                  env=env, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            return watch([worker], done, items)
        finally:
            worker.wait(60)


class Sampler:
    """An idle daemon on a database of its own, and a process that enqueues one item at a
    time through the store (of the same version) and says in how many ms its worker
    started."""

    def __init__(self, cluster: pg_cluster.Cluster, folder: Path, baseline: str | None):
        url = cluster.create_database(f"lat_{time.monotonic_ns()}")
        root = _project(folder, f"store: '{url}'\n", function="stamp")
        self.daemon = _daemon(root, baseline, until_idle=False)
        self.enqueuer = subprocess.Popen(
            [sys.executable, __file__, "--sample-for", url, str(root)], env=_env(baseline),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.ask("ready")

    def ask(self, what: str) -> str:
        assert self.enqueuer.stdin is not None and self.enqueuer.stdout is not None
        self.enqueuer.stdin.write(what + "\n")
        self.enqueuer.stdin.flush()
        if not (answer := self.enqueuer.stdout.readline().strip()):
            raise SystemExit("FAILED: the latency sampler stopped")
        return answer

    def close(self) -> None:
        self.enqueuer.terminate()
        self.daemon.terminate()
        self.enqueuer.wait(30)
        self.daemon.wait(30)


def latency(cluster: pg_cluster.Cluster, samples: int, baseline: str | None):
    """{version: (warm-up ms, [ms, ...])} from enqueue (through the store, as the API
    does) to the worker's start, the versions' samples alternating."""
    with tempfile.TemporaryDirectory(prefix="pw-pg-latency-") as folder:
        versions = {"pipewarden": None, **({"baseline": baseline} if baseline else {})}
        samplers = {}
        try:
            for name, path in versions.items():
                samplers[name] = Sampler(cluster, Path(folder) / name, path)
            found: dict[str, tuple[float, list[float]]] = {}
            for name, sampler in samplers.items():
                found[name] = (float(sampler.ask("k-warm")), [])
            for n in range(samples):
                for name, sampler in samplers.items():
                    found[name][1].append(float(sampler.ask(f"k{n}")))
            return found
        finally:
            for sampler in samplers.values():
                sampler.close()


def sample_for(url: str, root: Path) -> None:
    """The enqueuing side of a Sampler: a key per line in, ms to its worker's start out."""
    from pipewarden.store import open_store

    store = open_store(root, url=url)
    _wait(lambda: store.get_meta("stopped_cleanly") is False, "the daemon to start")
    for line in sys.stdin:
        key = line.strip()
        if key != "ready":
            time.sleep(0.05)  # idle: nothing but LISTEN/NOTIFY can wake the daemon
            sent = time.time()
            store.enqueue("bench", "noop", [(key, {})], sent)
            item = _wait(lambda key=key: _done(store, key), "the item")
            print(f"{(json.loads(item.data)['started'] - sent) * 1000:.3f}", flush=True)
        else:
            time.sleep(1.0)
            print("ready", flush=True)


def _done(store, key: str):
    item = store.item("bench", key)
    return item if item is not None and item.state == "done" else None


def _wait(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while (value := predicate()) in (None, False):
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: waiting for {what}")
        time.sleep(0.002)
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency", type=int, default=50, help="samples (0: skip)")
    parser.add_argument("--only", choices=["throughput", "latency"])
    parser.add_argument("--baseline", help="a folder holding another version's pipewarden")
    parser.add_argument("--sample-for", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sample_for:
        sample_for(args.sample_for[0], Path(args.sample_for[1]))
        return 0
    if (why := pg_cluster.missing()) is not None:
        raise SystemExit(why)
    print(f"load average {os.getloadavg()[0]:.1f} at the start")
    cluster = pg_cluster.Cluster().start()
    try:
        if args.only != "latency":
            throughput(cluster, args)
        if args.latency and args.only != "throughput":
            for name, (warm, found) in latency(cluster, args.latency, args.baseline).items():
                found.sort()
                p50 = found[len(found) // 2]
                p99 = found[min(len(found) - 1, len(found) * 99 // 100)]
                print(f"dispatch enqueue → worker start, {name} (PostgreSQL, LISTEN/NOTIFY):"
                      f" p50 {p50:.1f} ms, p90 {found[len(found) * 9 // 10]:.1f} ms,"
                      f" p99 {p99:.1f} ms ({len(found)} samples; the warm-up item, which"
                      f" starts the pool's worker: {warm:.0f} ms)")  # fmt: skip
    finally:
        cluster.stop()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


def throughput(cluster: pg_cluster.Cluster, args: argparse.Namespace) -> None:
    python = procrastinate_python()
    runs = {
        "sqlite, 1 daemon": lambda: pipewarden(None, 1, args.items),
        "postgresql, 1 daemon": lambda: pipewarden(cluster, 1, args.items),
        "postgresql, 2 daemons": lambda: pipewarden(cluster, 2, args.items),
        "postgresql, 3 daemons": lambda: pipewarden(cluster, 3, args.items),
        "procrastinate, 1 worker": lambda: procrastinate(cluster, python, args.items),
    }
    if args.baseline:
        runs["baseline postgresql, 1 daemon"] = lambda: pipewarden(
            cluster, 1, args.items, args.baseline
        )
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            results[name].append(runs[name]())
    print(f"{args.items:,} no-op items, pool mode, concurrency 1 per daemon; "
          f"medians of {args.reps} (each rep)")  # fmt: skip
    medians = {}
    for name, figures in results.items():
        rate = statistics.median(f[0] for f in figures)
        cpu = statistics.median(f[1] for f in figures)
        medians[name] = rate
        each = ", ".join(f"{f[0]:,.0f}" for f in figures)
        print(f"  {name:<30} {rate:>7,.0f}/s  {cpu:>6,.0f} µs CPU/item  ({each})")
    base = medians["procrastinate, 1 worker"]
    for name in [n for n in names if "postgresql" in n or "sqlite" in n]:
        print(f"  {name:<30} {medians[name] / base:.2f}× Procrastinate")


if __name__ == "__main__":
    raise SystemExit(main())
