"""The daemon on PostgreSQL (`store: postgresql://…`): the same work as on SQLite, the
password never shown, a bad URL one clear line. Runs on the session's throwaway cluster."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import Project
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
