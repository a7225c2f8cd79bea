"""pipewarden beside Huey on the same no-op work, and process mode beside its floor.

    nice .venv/bin/python bench/compare.py [--items 10000] [--process-items 2000] [--reps 3]
                                           [--only pool|process] [--baseline DIR]

Pool part: 10,000 no-op items through Huey 3.5.4 (`SqliteHuey`, results on — every
task's return value stored, `None` included, as pipewarden records a run row for each
—, one consumer thread) and through pipewarden in pool mode at concurrency 1 and 2.
Huey is installed into a venv of the bench's own (bench/.venv-huey, made on first use):
it is never a dependency of the project. Process part: `sed -n 1q` per item through
pipewarden at concurrency 1 and 2, against the floor, a plain synchronous loop of
`os.posix_spawn` + two pipes + `waitpid` running the same worker (bare, and through
util-linux's `setpriv --pdeathsig KILL` as pipewarden starts commands).

Every configuration runs once per rep, reps interleaved (the order rotates each rep), so
a neighbour's load falls on all of them alike; medians are printed, then each rep. The
rate counts from the first item seen done to the last (every 20 ms the store is asked
how many are done), so interpreter start-up is not in it; CPU per item is the daemon's
(or consumer's) and its workers' over the same span, from /proc (a reaped worker's time
is in its parent's cutime/cstime).

`--baseline DIR` runs every pipewarden configuration a second time with another version
of the package (DIR holds a `pipewarden` folder, e.g. `git archive REV daemon` unpacked
and renamed), interleaved with the rest, and prints the ratios of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ports import free_port

HUEY_VERSION = "3.5.4"
HUEY_VENV = Path(__file__).with_name(".venv-huey")
POLL_S = 0.02
RUN_LIMIT_S = 600.0  # one configuration taking longer than this is a failed bench
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

WORKER = "def noop(data):\n    return None\n"
HUEY_TASKS = """\
from huey import SqliteHuey

huey = SqliteHuey(filename="huey.db", results=True, store_none=True)


@huey.task()
def noop(n):
    return None
"""
# A request line as long as pipewarden's for the same item, for the floor.
FLOOR_LINE = (
    json.dumps({"item": "item-1234", "run": "0" * 32, "attempt": 1, "data": {"n": 1234},
                "traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"}) + "\n"
).encode()  # fmt: skip


@dataclass(frozen=True)
class Figures:
    rate: float  # items/s
    cpu_us: float  # CPU µs per item, daemon (or consumer) and workers

    @property
    def per_item_ms(self) -> float:
        return 1000.0 / self.rate


# -- measuring ------------------------------------------------------------------------
def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants, reaped children's included."""
    total, pending, seen = 0.0, [pid], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            raw = Path(f"/proc/{current}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS
        pending += _children(current)
    return total


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return found


def watch(process: subprocess.Popen[bytes], done: Callable[[], int], total: int) -> Figures:
    """From the first item done to the last: the rate, and the process tree's CPU."""
    deadline = time.monotonic() + RUN_LIMIT_S
    start: tuple[float, int, float] | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None and done() < total:
            raise SystemExit(f"FAILED: {process.args} exited {process.returncode} early")
        count = done()
        now = time.monotonic()
        if start is None and count > 0:
            start = (now, count, tree_cpu(process.pid))
        if start is not None and count >= total:
            cpu = tree_cpu(process.pid) - start[2]
            items = total - start[1]
            return Figures(items / (now - start[0]), cpu / items * 1e6)
        time.sleep(POLL_S)
    raise SystemExit(f"FAILED: {process.args} not done within {RUN_LIMIT_S:g}s")


def counter(db: Path, sql: str) -> Callable[[], int]:
    def count() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            try:
                return conn.execute(sql).fetchone()[0]
            except sqlite3.OperationalError:  # not created yet
                return 0

    return count


# -- pipewarden -----------------------------------------------------------------------
def pipewarden(items: int, mode: str, concurrency: int, baseline: str | None = None) -> Figures:
    with tempfile.TemporaryDirectory(prefix="pw-compare-") as folder:
        root = Path(folder)
        (root / "bench_worker.py").write_text(WORKER)
        (root / "rules.yaml").write_text("rules: []\n")
        worker = 'python: "bench_worker:noop"' if mode == "pool" else 'command: ["sed", "-n", "1q"]'
        (root / "config.yaml").write_text(
            f"rules: [rules.yaml]\napi: {{port: {free_port()}}}\n"
            "pipelines:\n  bench:\n    stages:\n"
            f"      - {{name: noop, {worker}, mode: {mode}, concurrency: {concurrency}}}\n"
        )
        lines = (json.dumps({"key": f"item-{n}", "data": {"n": n}}) for n in range(items))
        (root / "items.jsonl").write_text("\n".join(lines) + "\n")
        cli = [sys.executable, "-m", "pipewarden"]
        enqueue = [*cli, "enqueue", "bench", "--file", "items.jsonl", "--config", "config.yaml"]
        env = {**os.environ, "PYTHONPATH": baseline} if baseline else None
        subprocess.run(enqueue, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
        db = root / ".pipewarden" / "pipewarden.db"
        done = counter(db, "SELECT COUNT(*) FROM items WHERE state = 'done'")
        daemon = subprocess.Popen([*cli, "run", "--until-idle", "--config", "config.yaml"],
                                  cwd=root, env=env, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            figures = watch(daemon, done, items)
            daemon.wait(60)
        finally:
            _stop(daemon)
        with sqlite3.connect(db) as conn:
            ok = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'ok'").fetchone()[0]
        if ok != items:
            raise SystemExit(f"FAILED: {ok} ok runs for {items} items")
        return figures


# -- Huey -----------------------------------------------------------------------------
def huey_python() -> Path:
    """The bench's own venv with Huey in it, made the first time."""
    python = HUEY_VENV / "bin" / "python"
    probe = [str(python), "-c", "import huey, sys; sys.exit(huey.__version__ != sys.argv[1])"]
    if python.exists() and subprocess.run([*probe, HUEY_VERSION]).returncode == 0:
        return python
    print(f"installing Huey {HUEY_VERSION} into {HUEY_VENV} (the bench's own venv) ...")
    subprocess.run([sys.executable, "-m", "venv", str(HUEY_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"huey=={HUEY_VERSION}"], check=True)  # fmt: skip
    return python


def huey(python: Path, items: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="huey-compare-") as folder:
        root = Path(folder)
        (root / "tasks.py").write_text(HUEY_TASKS)
        env = {**os.environ, "PYTHONPATH": str(root)}
        enqueue = f"import tasks\nfor n in range({items}):\n    tasks.noop(n)\n"
        subprocess.run([str(python), "-c", enqueue], cwd=root, env=env, check=True)
        done = counter(root / "huey.db", "SELECT COUNT(*) FROM kv")
        consumer = subprocess.Popen(
            [str(python), "-m", "huey.bin.huey_consumer", "tasks.huey", "-w", "1", "-k",
             "thread", "-n", "-q"],
            cwd=root, env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            return watch(consumer, done, items)
        finally:
            consumer.send_signal(signal.SIGINT)  # its graceful stop
            _stop(consumer)


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- the floor ------------------------------------------------------------------------
def floor(items: int, argv: list[str]) -> Figures:
    """A plain loop: posix_spawn, the item on one pipe, stdout read to EOF, waitpid."""
    program = shutil.which(argv[0])
    assert program is not None, f"{argv[0]} not found"
    env = dict(os.environ)
    cpu = _own_cpu()
    start = time.monotonic()
    for _ in range(items):
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        pid = os.posix_spawn(program, argv, env, file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin_r, 0), (os.POSIX_SPAWN_DUP2, stdout_w, 1),
        ])  # fmt: skip
        os.close(stdin_r)
        os.close(stdout_w)
        os.write(stdin_w, FLOOR_LINE)
        os.close(stdin_w)
        while os.read(stdout_r, 65536):
            pass
        os.close(stdout_r)
        os.waitpid(pid, 0)
    span = time.monotonic() - start
    return Figures(items / span, (_own_cpu() - cpu) / items * 1e6)


def _own_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# -- the report -----------------------------------------------------------------------
def configurations(args: argparse.Namespace) -> dict[str, Callable[[], Figures]]:
    runs: dict[str, Callable[[], Figures]] = {}
    if args.only in (None, "pool"):
        python = huey_python()
        runs["huey, 1 thread"] = lambda: huey(python, args.items)
        runs["pipewarden pool, concurrency 1"] = lambda: pipewarden(args.items, "pool", 1)
        runs["pipewarden pool, concurrency 2"] = lambda: pipewarden(args.items, "pool", 2)
    if args.only in (None, "process"):
        n = args.process_items
        runs["floor: posix_spawn loop"] = lambda: floor(n, ["sed", "-n", "1q"])
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            argv = [setpriv, "--pdeathsig", "KILL", "--", "sed", "-n", "1q"]
            runs["floor through setpriv"] = lambda: floor(n, argv)
        runs["pipewarden process, concurrency 1"] = lambda: pipewarden(n, "process", 1)
        runs["pipewarden process, concurrency 2"] = lambda: pipewarden(n, "process", 2)
    if args.baseline:
        for name in [name for name in runs if name.startswith("pipewarden ")]:
            mode, c = name.split()[1].rstrip(","), int(name.split()[-1])
            items = args.items if mode == "pool" else args.process_items
            runs[f"baseline {name[11:]}"] = lambda items=items, mode=mode, c=c: pipewarden(
                items, mode, c, args.baseline
            )
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10000, help="pool part (default 10000)")
    parser.add_argument("--process-items", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=("pool", "process"))
    parser.add_argument("--baseline", help="a folder holding another version's pipewarden")
    args = parser.parse_args()
    runs = configurations(args)
    names = list(runs)
    results: dict[str, list[Figures]] = {name: [] for name in names}
    load = [os.getloadavg()[0]]
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            results[name].append(runs[name]())
            print(f"  rep {rep + 1}: {name}: {_one(results[name][-1])}", flush=True)
    load.append(os.getloadavg()[0])
    medians = {name: _median(figures) for name, figures in results.items()}
    print(f"\nload average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end;"
          f" {os.cpu_count()} CPUs; medians of {args.reps} interleaved reps\n")  # fmt: skip
    for name in names:
        print(f"{name:36} {_one(medians[name])}")
    print()
    for line in ratios(medians):
        print(line)
    return 0


def ratios(m: dict[str, Figures]) -> list[str]:
    lines = []
    if (h := m.get("huey, 1 thread")) is not None:
        for c in (1, 2):
            pw = m[f"pipewarden pool, concurrency {c}"]
            lines.append(f"pool, concurrency {c} / Huey: {pw.rate / h.rate:.2f}x the rate,"
                         f" {pw.cpu_us / h.cpu_us:.2f}x the CPU per item")  # fmt: skip
    if (f := m.get("floor: posix_spawn loop")) is not None:
        p1, p2 = m["pipewarden process, concurrency 1"], m["pipewarden process, concurrency 2"]
        lines.append(f"process, concurrency 1: {p1.per_item_ms / f.per_item_ms:.2f}x the floor's"
                     " time per item")  # fmt: skip
        if (s := m.get("floor through setpriv")) is not None:
            lines.append(f"process, concurrency 1: {p1.per_item_ms / s.per_item_ms:.2f}x the"
                         " floor through setpriv")  # fmt: skip
        lines.append(f"process, concurrency 2 / concurrency 1: {p2.rate / p1.rate:.2f}x the rate")
    for name, before in m.items():
        if name.startswith("baseline "):
            now = m["pipewarden " + name[9:]]
            lines.append(f"{name[9:]}: {now.rate / before.rate:.2f}x the baseline's rate,"
                         f" {now.cpu_us / before.cpu_us:.2f}x its CPU per item")  # fmt: skip
    return lines


def _median(figures: list[Figures]) -> Figures:
    return Figures(
        statistics.median(f.rate for f in figures), statistics.median(f.cpu_us for f in figures)
    )


def _one(f: Figures) -> str:
    return f"{f.rate:8,.0f} items/s  {f.per_item_ms:6.3f} ms/item  {f.cpu_us:6.0f} µs CPU/item"


if __name__ == "__main__":
    sys.exit(main())
