"""Random kill -9 of the daemon during a multi-stage run, then every invariant checked.

    python bench/chaos.py [--kills 20] [--items 400] [--seed N]

Runs the real daemon (`pipewarden run`) on a fresh state dir, with its API on a free port,
over M items through three stages: `fetch` (a command, a process per item, which now
and then leaves a child behind), `score` (a Python pool) and `send` (a Python pool with
`on_interrupt: hold`). It kills the daemon with SIGKILL N times, each at a random moment
after it is up, restarting it at once; the last start runs `--until-idle`. Every worker
appends its side effect (stage, key, run id, daemon pid, time) to a file. Then it checks,
from SQLite and /proc:

- every item is done, or held at `send` for a person after an interruption there;
- no run is left `running`, every interrupted run has an error text, and none failed
  (the workers never fail: a failed run is a worker the daemon killed by mistake);
- no process the daemon started is left (none carries its PIPEWARDEN_STATE_DIR);

and prints the figures, with the side effects that ran more than once and why:

- by a process of a dead daemon beside the requeued copy (written after the next
  daemon started): must be 0;
- a requeued interruption (delivery is at least once): expected, and 0 on `send`.

It also counts the side effects written after their daemon was gone at all, and how
long after: a Python worker dies with the daemon (PR_SET_PDEATHSIG), a command when
the daemon's sentinel kills it, which can be a fraction of a millisecond too late for
one that was just writing. Its run was interrupted and is requeued: a repeat of the
at-least-once kind, never beside the copy.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipewarden.containment import MARK_STATE_DIR, find_marked
from pipewarden.store import Store
from ports import free_port

WORKER = """
import json, os, random, subprocess, sys, time

DAEMON = os.getppid()  # the daemon that started this process


def _side_effect(stage, key, run):
    line = {"stage": stage, "key": key, "run": run, "daemon": DAEMON, "t": time.time()}
    fd = os.open(os.environ["CHAOS_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (json.dumps(line) + "\\n").encode())  # one write: whole lines only
    os.close(fd)


def score(data, ctx):
    time.sleep(random.uniform(0.01, 0.05))
    _side_effect("score", ctx.key, ctx.run)


def send(data, ctx):
    time.sleep(random.uniform(0.01, 0.05))
    _side_effect("send", ctx.key, ctx.run)


if __name__ == "__main__":  # fetch: a command, a fresh process per item
    item = json.loads(sys.stdin.readline())
    if random.random() < 0.1:  # a careless script leaves a child running
        subprocess.Popen(["sleep", "30"], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.uniform(0.02, 0.1))
    _side_effect("fetch", item["item"], item["run"])
    print(json.dumps({"ok": True}))
"""

CONFIG = """\
rules: [rules.yaml]
api: {{port: {port}}}
drain_grace: 5s
pipelines:
  chaos:
    stages:
      - {{name: fetch, command: [{python}, chaos_worker.py], concurrency: 4, {env}}}
      - {{name: score, python: "chaos_worker:score", concurrency: 2, {env}}}
      - {{name: send, python: "chaos_worker:send", concurrency: 2, on_interrupt: hold, {env}}}
"""
UP_S = (0.3, 1.5)  # how long the daemon runs between being up and the next kill
READY_TIMEOUT_S = 30.0
GONE_TIMEOUT_S = 5.0


@dataclass
class Life:
    """One start of the daemon."""

    pid: int
    started_at: float = field(default_factory=time.time)
    gone_at: float | None = None  # when it was killed and reaped
    cleanup_s: float | None = None  # how long until none of its processes was left


@dataclass
class Figures:
    lives: list[Life] = field(default_factory=list)
    leftovers_killed_at_start: int = 0
    failures: list[str] = field(default_factory=list)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the folder (store, logs)")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    root = Path(tempfile.mkdtemp(prefix="pipewarden-chaos-"))
    try:
        state_dir = (root / ".pipewarden").resolve()
        effects = root / "side-effects.jsonl"
        _write_project(root, effects)
        store = Store(state_dir)
        store.enqueue("chaos", "fetch", [(f"item-{n:05d}", {}) for n in range(args.items)], 0.0)
        store.close()

        figures = Figures()
        started = time.monotonic()
        for _ in range(args.kills):
            _live_and_die(root, state_dir, figures, rng)
        final = _start(root, len(figures.lives), until_idle=True)
        figures.lives.append(Life(final.pid))
        if final.wait(600) != 0:
            figures.failures.append(f"the last daemon exited {final.returncode}")
        took = time.monotonic() - started
        figures.leftovers_killed_at_start = _leftovers_killed(root)
        _check(state_dir, effects, figures, args.items, took)
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root)
    return 1 if figures.failures else 0


def _write_project(root: Path, effects: Path) -> None:
    (root / "chaos_worker.py").write_text(WORKER)
    (root / "rules.yaml").write_text("rules: []\n")
    env = f"env: {{CHAOS_EFFECTS: '{effects}'}}"
    (root / "config.yaml").write_text(
        CONFIG.format(port=free_port(), python=json.dumps(sys.executable), env=env)
    )


def _start(root: Path, number: int, until_idle: bool = False) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "pipewarden", "run", "--config", "config.yaml"]
    with open(root / f"daemon-{number}.log", "wb") as log:
        return subprocess.Popen(
            [*argv, "--until-idle"] if until_idle else argv,
            cwd=root, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _live_and_die(root: Path, state_dir: Path, figures: Figures, rng: random.Random) -> None:
    """Start the daemon, let it work a random while, kill -9 it, time its cleanup."""
    number = len(figures.lives)
    daemon = _start(root, number)
    life = Life(daemon.pid)
    figures.lives.append(life)
    log = root / f"daemon-{number}.log"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while b"pipewarden running" not in log.read_bytes():
        if daemon.poll() is not None or time.monotonic() > deadline:
            figures.failures.append(f"start {number} did not come up: see {log.name}")
            daemon.kill()
            daemon.wait()
            return
        time.sleep(0.01)
    time.sleep(rng.uniform(*UP_S))
    daemon.kill()
    daemon.wait()
    life.gone_at = time.time()
    gone = time.monotonic()
    while find_marked(MARK_STATE_DIR, str(state_dir)):
        if time.monotonic() - gone > GONE_TIMEOUT_S:
            break
        time.sleep(0.002)
    life.cleanup_s = time.monotonic() - gone


def _leftovers_killed(root: Path) -> int:
    total = 0
    for log in root.glob("daemon-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "after an unclean stop: killed" in line:
                total += int(line.split("killed ")[1].split()[0])
    return total


def _check(state_dir: Path, effects: Path, figures: Figures, items: int, took: float) -> None:
    store = Store(state_dir)
    conn = store.db.connection()
    states = dict(conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
    held_ok = conn.execute(
        "SELECT COUNT(*) FROM items WHERE state = 'held' AND stage = 'send'"
        " AND last_label = 'Interrupted'"
    ).fetchone()[0]
    running = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0]
    interrupted, silent = conn.execute(
        "SELECT COUNT(*), SUM(error IS NULL OR TRIM(error) = '') FROM runs"
        " WHERE status = 'interrupted'"
    ).fetchone()
    by_status = dict(conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    interrupted_at = {
        (stage, key)
        for stage, key in conn.execute(
            "SELECT stage, item_key FROM runs WHERE status = 'interrupted'"
        ).fetchall()
    }
    store.close()
    scan = time.monotonic()
    leftovers = find_marked(MARK_STATE_DIR, str(state_dir))
    scan = time.monotonic() - scan

    done, held = states.get("done", 0), states.get("held", 0)
    if done + held_ok != items or held != held_ok:
        figures.failures.append(f"items not all done or held at send: {states}")
    if running:
        figures.failures.append(f"{running} run(s) left running")
    if silent:
        figures.failures.append(f"{silent} interrupted run(s) without an error text")
    if by_status.get("failed"):
        figures.failures.append(f"{by_status['failed']} run(s) failed; the workers never fail")
    if leftovers:
        figures.failures.append(f"{len(leftovers)} process(es) of the daemon left: {leftovers}")
    duplicates, reasons, late = _side_effects(effects, figures.lives, interrupted_at)
    if reasons[BESIDE_COPY]:
        figures.failures.append("side effects by a dead daemon's process beside the copy")
    if duplicates.get("send"):
        figures.failures.append("side effects repeated on the on_interrupt: hold stage")

    kills = [life for life in figures.lives if life.gone_at is not None]
    cleanups = sorted(life.cleanup_s or 0.0 for life in kills)
    print(f"{len(kills)} kill -9 and restarts over {items} items in {took:.1f}s")
    print(f"items: {done} done, {held} held at send for a person (interrupted there)")
    print(f"runs: {sum(by_status.values())} ({_counts(by_status)}); {running} left running;")
    print(f"  {interrupted} interrupted, {silent or 0} of them without an error text")
    if cleanups:
        print(
            f"a dead daemon's processes all gone: median {_ms(cleanups[len(cleanups) // 2])},"
            f" slowest {_ms(cleanups[-1])} after it was reaped (one look through /proc"
            f" for them takes {_ms(scan)})"
        )
    print(f"leftovers killed at a start: {figures.leftovers_killed_at_start}")
    print(f"processes of the daemon left at the end: {len(leftovers)}")
    late_by_stage = collections.Counter(stage for stage, _ in late)
    print(
        f"side effects written after their daemon was gone: {len(late)}"
        f" ({', '.join(f'{s}: {late_by_stage[s]}' for s in ('fetch', 'score', 'send'))})"
        + (f", at most {max(d for _, d in late) * 1000:.2f} ms after" if late else "")
    )
    print(f"(stage, key) side effects done more than once: {sum(duplicates.values())}")
    for stage in ("fetch", "score", "send"):
        print(f"  {stage}: {duplicates.get(stage, 0)}")
    for reason, count in reasons.items():
        print(f"  why: {reason}: {count}")
    for failure in figures.failures:
        print(f"FAILED: {failure}", file=sys.stderr)


BESIDE_COPY = "a process of a dead daemon, beside the requeued copy"
REQUEUED = "a requeued interruption"


def _side_effects(
    effects: Path, lives: list[Life], interrupted_at: set[tuple[str, str]]
) -> tuple[collections.Counter[str], dict[str, int], list[tuple[str, float]]]:
    """Per stage, the (stage, key) done more than once, and why; and for each side effect
    written after its daemon was gone, how long after."""
    records = collections.defaultdict(list)
    for line in effects.read_text().splitlines():
        record = json.loads(line)
        records[(record["stage"], record["key"])].append(record)
    late = [
        (r["stage"], delay) for done in records.values() for r in done if (delay := _late(r, lives))
    ]
    duplicates: collections.Counter[str] = collections.Counter()
    reasons = dict.fromkeys((BESIDE_COPY, REQUEUED, "neither (a bug)"), 0)
    for (stage, key), done in records.items():
        if len(done) < 2:
            continue
        duplicates[stage] += 1
        if any(_beside_the_copy(record, lives) for record in done):
            reasons[BESIDE_COPY] += 1
        elif (stage, key) in interrupted_at:
            reasons[REQUEUED] += 1
        else:
            reasons["neither (a bug)"] += 1
    return duplicates, reasons, late


def _life_of(record: dict, lives: list[Life]) -> int | None:
    """The start of the daemon that started the record's process (a pid may come back
    for a later start: the last one begun before the record counts)."""
    pid, at = record["daemon"], record["t"]
    found = [n for n, life in enumerate(lives) if life.pid == pid and life.started_at <= at]
    return found[-1] if found else None


def _late(record: dict, lives: list[Life]) -> float:
    """Seconds after its daemon was gone that a side effect was written (0: it was not)."""
    number = _life_of(record, lives)
    gone_at = lives[number].gone_at if number is not None else None
    return record["t"] - gone_at if gone_at is not None and record["t"] > gone_at else 0.0


def _beside_the_copy(record: dict, lives: list[Life]) -> bool:
    """Written by a dead daemon's process after the next daemon had started."""
    number = _life_of(record, lives)
    return (
        number is not None
        and number + 1 < len(lives)
        and (lives[number].gone_at is not None and record["t"] > lives[number + 1].started_at)
    )


def _counts(by_status: dict[str, int]) -> str:
    return ", ".join(f"{count} {status}" for status, count in sorted(by_status.items()))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


if __name__ == "__main__":
    os.environ.pop("PIPEWARDEN_CONFIG", None)
    sys.exit(main())
