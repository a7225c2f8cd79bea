"""The daemon on PostgreSQL (`store: postgresql://…`): the same work as on SQLite, the
password never shown, a bad URL one clear line. Runs on the session's throwaway cluster."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Project, wait_until
from pipewarden import control
from pipewarden.clock import Clock
from pipewarden.config import load_config
from pipewarden.daemon import Daemon
from pipewarden.rules import load_rules
from pipewarden.store import open_store
from pipewarden.store.postgres.schema import SCHEMA_VERSION

FAST = "def work(data):\n    return {'seen': True}\n"


def configure(project: Project, url: str, extra: str = "") -> None:
    project.write("fast.py", FAST)
    project.configure(
        """
        sites:
          stages:
            - {name: one, python: "fast:work", concurrency: 2}
            - {name: two, python: "fast:work", concurrency: 2}
        """,
        extra=f"drain_grace: 5s\nstore: '{url}'\n{extra}",
    )


def test_the_daemon_runs_items_through_every_stage_on_postgresql(project: Project, pg_url: str):
    configure(project, pg_url)
    project.write("items.jsonl", "".join(f'{{"key": "k{n}"}}\n' for n in range(40)))
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    assert project.start_daemon("--until-idle").wait(60) == 0

    store = open_store(project.state_dir, url=pg_url)
    try:
        assert {item.state for item in store.Item.select()} == {"done"}
        assert store.Run.select().where(store.Run.status == "ok").count() == 80
    finally:
        store.close()
    assert not (project.state_dir / "pipewarden.db").exists()  # nothing went to SQLite
    status = project.cli("status").stdout
    assert "done" in status
    migrated = project.cli("migrate").stdout  # on a database too: already there
    assert migrated == f"store {pg_url}: schema {SCHEMA_VERSION} already\n"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_run_names_its_daemon_in_runs_show_and_export(
    project: Project, backend: str, request: pytest.FixtureRequest
):
    if backend == "postgresql":
        configure(project, request.getfixturevalue("pg_url"))
    else:
        project.write("fast.py", FAST)
        project.configure("""
            sites:
              stages:
                - {name: one, python: "fast:work"}
            """)  # fmt: skip
    project.cli("enqueue", "sites", "a")
    daemon = project.start_daemon("--until-idle")
    assert daemon.wait(60) == 0
    exported = [json.loads(line) for line in project.cli("export", "runs").stdout.splitlines()]
    assert {row["daemon"] for row in exported} == {f"{socket.gethostname()}:{daemon.pid}"}
    shown = project.cli("runs", "show", exported[0]["id"]).stdout
    assert f"daemon            {socket.gethostname()}:{daemon.pid}" in shown


def test_a_password_in_the_url_is_refused_in_one_line_naming_the_config(project: Project):
    configure(project, "postgresql://ann:hunter2@127.0.0.1:5432/pw")
    done = project.cli("status", expect=2)
    assert "holds a password" in done.stderr and "store_password_file" in done.stderr
    assert "config.yaml:" in done.stderr and "Traceback" not in done.stderr


def test_the_password_comes_from_a_file_and_is_never_shown(project: Project, pg_cluster, tmp_path):
    secret = tmp_path / "pg-password"
    secret.write_text("s3cret-pw\n")
    import psycopg

    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE ROLE fleet LOGIN PASSWORD 's3cret-pw'")
        conn.execute("CREATE DATABASE fleet OWNER fleet")
    url = pg_cluster.url("fleet").replace("pipewarden@", "fleet@")
    configure(project, url, extra=f"store_password_file: {secret}\n")
    project.cli("enqueue", "sites", "a")
    shown = project.cli("status", "-v").stdout + project.cli("status", "--json").stdout
    assert "s3cret" not in shown
    store = open_store(Path("unused"), url=url, password_file=secret)
    try:
        assert store.item("sites", "a") is not None  # the daemon's password let it in
    finally:
        store.close()


def test_an_unreachable_server_is_one_line_not_a_traceback(project: Project, pg_cluster):
    configure(project, f"postgresql://pipewarden@127.0.0.1:{pg_cluster.port + 1}/nothing")
    done = project.cli("enqueue", "sites", "a", expect=None)
    assert done.returncode != 0 and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_backup_is_a_pg_dump_and_vacuum_runs_outside_a_transaction(
    project: Project, pg_url: str, tmp_path: Path
):
    configure(project, pg_url)
    project.cli("enqueue", "sites", "a")
    target = tmp_path / "backups" / "pw.dump"
    done = project.cli("backup", str(target))
    assert f"backed up {pg_url} to {target}" in done.stdout and target.stat().st_size > 0
    listed = subprocess.run([shutil.which("pg_restore") or "pg_restore", "--list", str(target)],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "TABLE public items" in listed and "TABLE public run_slots" in listed
    assert project.cli("vacuum").stdout == f"vacuumed {pg_url} (VACUUM ANALYZE)\n"


def test_backup_without_pg_dump_says_what_to_install_in_one_line(project: Project, pg_url: str):
    configure(project, pg_url)
    project.cli("enqueue", "sites", "a")
    done = subprocess.run(  # a PATH without PostgreSQL's tools
        [sys.executable, "-m", "pipewarden", "backup", str(project.root / "pw.dump")],
        cwd=project.root, env={**project.env(), "PATH": str(project.root)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "pg_dump" in done.stderr and "postgresql-client" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


MINER = """
def work(data):
    raise RuntimeError(f"Widget {data['n']} refused by https://shop.example.com/w/{data['n']}")
"""


def test_unmatched_failures_are_mined_and_proposed_on_postgresql(project: Project, pg_url: str):
    project.write("miner.py", MINER)
    project.configure(
        "sites:\n  stages:\n    - {name: one, python: 'miner:work', retry: {max_attempts: 1}}\n",
        extra=f"drain_grace: 5s\nstore: '{pg_url}'\n",
    )
    project.start_daemon()
    project.write("items.jsonl", "".join(f'{{"key": "k{n}", "data": {{"n": {n}}}}}\n'
                                         for n in range(6)))  # fmt: skip
    project.cli("enqueue", "sites", "--file", "items.jsonl")
    store = open_store(Path("unused"), url=pg_url)
    try:
        wait_until(lambda: [count for _, _, count in store.templates()] == [6], "6 in a template")
        wait_until(lambda: store.proposals("pending"), "a proposal made by the daemon", timeout=20)
        ((_, template, _),) = store.templates()
    finally:
        store.close()
    assert template == "RuntimeError: Widget <*> refused by <*>"
    assert "rule(s) proposed" in project.daemon_log()


async def _until(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_an_idle_daemon_is_woken_by_the_fleets_changes_and_polls_nothing(
    project: Project, pg_url: str
):
    """Another host pauses a stage, enqueues behind the pause, resumes: the idle daemon
    makes no transaction until told, never starts the paused stage's item, and runs it
    once the pause is gone (the holds it keeps between passes are told of each change)."""
    configure(project, pg_url)
    config = load_config(project.config_path)
    daemon = Daemon(config, load_rules(config.rule_paths, config.path.parent), Clock())
    other = open_store(Path("unused"), url=pg_url)  # another host's CLI, on the same store
    listening = False

    async def scenario() -> list[str]:
        nonlocal listening
        running = asyncio.create_task(daemon.run(watch_files=False))
        await _until(lambda: daemon._scheduler is not None and daemon.store.writes > 0, "a pass")
        await asyncio.sleep(0.3)  # the start's own writes settle
        before = daemon.store.writes
        await asyncio.sleep(1.0)
        idle = daemon.store.writes - before
        listening = daemon.store.holds_seen.listening  # so the holds read are kept
        control.pause(other, config, "stage", "sites/one", "someone", time.time())
        await _until(lambda: daemon._scheduler.halted_targets() == ["sites/one"], "the pause")
        seen = daemon.store.writes
        other.enqueue("sites", "one", [("a", {})], time.time())
        await _until(lambda: daemon.store.writes > seen, "the pass the enqueue woke")
        behind_the_pause = other.item("sites", "a").state
        control.resume(other, config, "stage", "sites/one", "someone", time.time())
        await _until(lambda: other.item("sites", "a").state == "done", "the item, resumed")
        daemon.request_stop("test done")
        assert await running == 0
        return [f"idle writes {idle}", behind_the_pause]

    try:
        assert asyncio.run(scenario()) == ["idle writes 0", "queued"]
    finally:
        other.close()
    assert listening


def test_status_counts_stay_exact_across_connections_and_after_a_fold(pg_url: str):
    """Two connections (two daemons) change items; one goes; a fold moves its counts and
    those older than a day's window: the status reads what grouping the items says."""
    from pipewarden.store.postgres import counts

    now = time.time()
    first, second = (open_store(Path("unused"), url=pg_url) for _ in range(2))
    first.enqueue("sites", "one", [(f"old{n}", {}) for n in range(3)], now - 30 * 3600)
    second.enqueue("sites", "one", [(f"new{n}", {}) for n in range(4)], now - 1800)
    first.enqueue("sites", "one", [("old0", {})], now)  # queued: unchanged
    gone, kept = first._pg.info.backend_pid, second._pg.info.backend_pid
    first.close()  # its connection, and so its shard's owner, is gone
    alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
    wait_until(lambda: second._pg.execute(alive, (gone,)).fetchone()[0] == 0, "its backend gone")
    try:
        grouped = _grouped_state_counts(second, now - 86400, now - 3600)
        assert sorted(second.state_counts(now - 86400, now - 3600)) == grouped
        with second.transaction():
            counts.fold(second._pg, now)
        shards = {row[0] for row in second._pg.execute("SELECT shard FROM item_counts")}
        assert gone not in shards and shards <= {0, kept}
        assert second.get_meta("item_counts_folded_before") is not None
        assert sorted(second.state_counts(now - 86400, now - 3600)) == grouped
        week = _grouped_state_counts(second, now - 7 * 86400, now - 3600)  # before the fold
        assert sorted(second.state_counts(now - 7 * 86400, now - 3600)) == week
        assert second.item_totals() == {("sites", "one", "queued"): 7}
    finally:
        second.close()


def _grouped_state_counts(store, since_24h: float, since_1h: float) -> list[tuple]:
    return sorted(store._pg.execute(
        "SELECT pipeline, stage, state, COALESCE(channel, ''), count(*),"
        " count(*) FILTER (WHERE updated_at >= %s), count(*) FILTER (WHERE updated_at >= %s)"
        " FROM items GROUP BY 1, 2, 3, 4", (since_24h, since_1h),
    ).fetchall())  # fmt: skip


def test_the_upgrade_to_kept_counts_counts_the_items_there_already(pg_url: str):
    """A store of schema 14 with items, old and recent: once upgraded, status says what
    grouping its items says."""
    now = time.time()
    store = open_store(Path("unused"), url=pg_url)
    store.enqueue("sites", "one", [(f"old{n}", {}) for n in range(3)], now - 40 * 3600)
    store.enqueue("sites", "one", [(f"new{n}", {}) for n in range(2)], now - 600)
    with store.transaction():  # back to schema 14, its items kept
        kinds = ("insert", "update", "delete")
        for statement in (
            "DROP TABLE item_counts", "DROP INDEX items_recent", "DROP INDEX items_deferred",
            *(f"DROP TRIGGER pipewarden_count_{kind} ON items" for kind in kinds),
            *(f"DROP FUNCTION pipewarden_count_{kind}()" for kind in kinds),
            "DELETE FROM pipewarden_schema WHERE version > 14",
        ):  # fmt: skip
            store._pg.execute(statement)
    store.close()
    upgraded = open_store(Path("unused"), url=pg_url)
    try:
        assert upgraded.found_schema == 14
        for since in (now - 86400, now - 7 * 86400):  # within the counts, and before them
            grouped = _grouped_state_counts(upgraded, since, now - 3600)
            assert sorted(upgraded.state_counts(since, now - 3600)) == grouped
        assert upgraded.item_totals() == {("sites", "one", "queued"): 5}
    finally:
        upgraded.close()
