"""Keeping the books: checkpoints, prune, backup while the daemon writes, export."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

from conftest import Project, wait_until

STEPS = """
import pathlib

def fetch(data):
    with open("fetched.log", "a") as log:
        log.write(data["url"] + "\\n")
    return {"page": "<html>"}

def publish(data):
    if pathlib.Path("publish-broken").exists():
        raise RuntimeError("HTTP 404 Not Found. Cannot capture")
    return {"published": True}
"""


def test_a_checkpoint_skips_work_already_done_and_force_redoes_it(project: Project):
    project.write("steps.py", STEPS)
    project.configure(
        """
        sites:
          stages:
            - {name: fetch, python: "steps:fetch"}
            - {name: publish, python: "steps:publish", retry: {max_attempts: 1}}
        """
    )
    (project.root / "publish-broken").touch()
    item = ("enqueue", "sites", "a.example", "--data", '{"url": "https://a.example/"}')
    project.cli(*item)
    project.start_daemon("--until-idle").wait(30)
    assert project.item("sites", "a.example").state == "failed"

    (project.root / "publish-broken").unlink()
    again = project.cli(*item)
    assert "1 known item(s) started again (stages already done are skipped)" in again.stdout
    project.start_daemon("--until-idle").wait(30)

    assert project.item("sites", "a.example").state == "done"
    fetches = [(r.stage, r.status) for r in project.runs("a.example")]
    assert fetches == [("fetch", "ok"), ("publish", "failed"), ("fetch", "skipped"),
                       ("publish", "ok")]  # fmt: skip
    assert (project.root / "fetched.log").read_text().count("\n") == 1  # not fetched twice

    forced = project.cli(*item, "--force")
    assert "(every stage redone: --force)" in forced.stdout
    project.start_daemon("--until-idle").wait(30)
    assert [r.status for r in project.runs("a.example")][-2:] == ["ok", "ok"]
    assert (project.root / "fetched.log").read_text().count("\n") == 2  # done again


def test_prune_never_removes_runs_in_flight_or_an_items_latest(project: Project):
    project.configure("sites:\n  stages:\n    - {name: s, command: [x]}\n")
    store = project.store()
    store.enqueue("sites", "s", [("done", {}), ("busy", {})], 1.0)
    conn = store.db.connection()
    rows = [  # (id, item, started, finished, status): all long before the cut-off
        ("old1", 1, 1000.0, 1001.0, "failed"),
        ("old2", 1, 2000.0, 2001.0, "failed"),
        ("last", 1, 3000.0, 3001.0, "ok"),  # item 1's latest run
        ("b-old", 2, 1500.0, 1501.0, "failed"),
        ("b-now", 2, 2500.0, None, "running"),  # in flight
    ]
    for run_id, item_id, started, finished, status in rows:
        conn.execute(
            "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status,"
            " started_at, finished_at) VALUES (?, 'sites', 's', ?, 'k', 1, ?, ?, ?)",
            (run_id, item_id, status, started, finished),
        )
    conn.execute("UPDATE items SET last_run_id = 'last' WHERE id = 1")
    conn.execute("UPDATE items SET last_run_id = 'b-now', state = 'running' WHERE id = 2")
    conn.commit()
    store.close()

    done = project.cli("prune", "--older-than", "1d", "--json")
    assert json.loads(done.stdout) == {"pruned_runs": 3}
    store = project.store()
    left = {run.id for run in store.Run.select()}
    store.close()
    assert left == {"last", "b-now"}


WORKER = "def work(data):\n    return {'n': data['n']}\n"


def test_a_backup_taken_while_the_daemon_writes_is_whole(project: Project):
    project.write("w.py", WORKER)
    project.configure("p:\n  stages:\n    - {name: s, python: 'w:work', concurrency: 2}\n")
    project.write(
        "items.jsonl", "".join(f'{{"key": "k{n}", "data": {{"n": {n}}}}}\n' for n in range(3000))
    )
    project.cli("enqueue", "p", "--file", "items.jsonl")
    project.start_daemon()
    wait_until(lambda: len(project.runs()) > 200, "the daemon to be busy")

    for number in range(3):
        live = sqlite3.connect(project.state_dir / "pipewarden.db")
        committed = {row[0] for row in live.execute("SELECT id FROM runs WHERE status = 'ok'")}
        live.close()
        target = project.root / f"backup-{number}.db"
        done = project.cli("backup", str(target))
        assert "(integrity check: ok)" in done.stdout
        copy = sqlite3.connect(target)
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        copied = {row[0] for row in copy.execute("SELECT id FROM runs")}
        copy.close()
        assert committed <= copied  # every run committed before the backup is in it

    again = project.cli("backup", str(project.root / "backup-0.db"), expect=2)
    assert "exists: choose a new path" in again.stderr


def test_export_runs_as_jsonl_and_csv(project: Project):
    project.write("w.py", WORKER)
    project.configure("p:\n  stages:\n    - {name: s, python: 'w:work'}\n")
    for n in range(3):
        project.cli("enqueue", "p", f"k{n}", "--data", json.dumps({"n": n}))
    project.start_daemon("--until-idle").wait(30)

    lines = project.cli("export", "runs").stdout.splitlines()
    assert [json.loads(line)["item_key"] for line in lines] == ["k0", "k1", "k2"]
    table = list(
        csv.DictReader(io.StringIO(project.cli("export", "runs", "--format", "csv").stdout))
    )
    assert [(row["item_key"], row["status"]) for row in table] == [
        ("k0", "ok"), ("k1", "ok"), ("k2", "ok"),
    ]  # fmt: skip
    assert project.cli("export", "runs", "--since", "1h").stdout.count("\n") == 3


def test_the_daemon_prunes_by_its_retention_setting_and_vacuum_reports(project: Project):
    project.write("w.py", WORKER)
    project.configure("p:\n  stages:\n    - {name: s, python: 'w:work'}\n", extra="retention: 1d\n")
    store = project.store()
    store.enqueue("p", "s", [("old", {"n": 1})], 1.0)
    conn = store.db.connection()
    for run_id, started in (("ancient", 10.0), ("latest", 20.0)):
        conn.execute(
            "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, status,"
            " started_at, finished_at) VALUES (?, 'p', 's', 1, 'old', 1, 'failed', ?, ?)",
            (run_id, started, started + 1),
        )
    conn.execute("UPDATE items SET state = 'failed', last_run_id = 'latest' WHERE id = 1")
    conn.commit()
    store.close()

    daemon = project.start_daemon()
    wait_until(lambda: "pruned 1 run(s) older than the retention" in project.daemon_log(), "prune")
    assert [run.id for run in project.runs()] == ["latest"]
    daemon.terminate()
    daemon.wait(15)
    assert project.cli("vacuum").stdout.startswith(f"vacuumed {project.state_dir}")
