"""Every change a person makes leaves an audit line saying who, through what, when and what:
the page, the CLI (through a running daemon or on the store), the tray, a script."""

from __future__ import annotations

import httpx
from conftest import Project, wait_until

STAGE = """
sites:
  stages:
    - {name: fetch, command: [python3, -c, "import sys; sys.exit('Widget quota spent')"],
       channel: web, retry: {max_attempts: 1}}
"""


def lines(project: Project) -> list[tuple[str, str, str, str]]:
    store = project.store()
    try:
        rows = store.db.execute_sql("SELECT who, action, target, detail FROM audit ORDER BY id")
        return [tuple(row) for row in rows.fetchall()]
    finally:
        store.close()


def test_the_cli_without_a_daemon_leaves_its_lines_on_the_store(project: Project):
    project.configure(STAGE)
    project.cli("enqueue", "sites", "a")
    project.cli("pause", "--channel", "web")
    project.cli("retry", "--label", "Widget quota spent", "--dry-run")  # changes nothing
    project.cli("retry", "--label", "Widget quota spent")
    project.cli("resume", "--channel", "web")
    assert [(who.endswith(" (cli)"), action, target, detail)
            for who, action, target, detail in lines(project)] == [
        (True, "pause", "channel web", ""),
        (True, "retry", "label 'Widget quota spent' in every pipeline", "0 item(s) requeued"),
        (True, "resume", "channel web", ""),
    ]  # fmt: skip


def test_through_the_daemon_the_line_names_the_cli_the_tray_or_a_plain_script(project: Project):
    from pipewarden.tray.app import DaemonClient

    project.configure(STAGE)
    project.start_daemon()
    base = f"http://127.0.0.1:{project.api_port}"
    token = (
        wait_until(lambda: (project.state_dir / "api.token").exists(), "the token")
        and (project.state_dir / "api.token").read_text().strip()
    )
    wait_until(lambda: project.cli("pause", "--channel", "web", expect=None).returncode == 0,
               "the CLI to pause through the daemon")  # fmt: skip
    tray = DaemonClient(base, token)
    tray.post("/api/resume", {"scope": "channel", "target": "web"})
    tray.http.close()
    auth = {"Authorization": f"Bearer {token}"}
    httpx.post(f"{base}/api/pause", headers=auth, json={"scope": "stage", "target": "sites/fetch"})
    # A token holder may say it is the CLI or the tray, never the page: that is a session's.
    httpx.post(f"{base}/api/resume", headers={**auth, "X-Pipewarden-Client": "page"},
               json={"scope": "stage", "target": "sites/fetch"})  # fmt: skip
    whos = [who for who, *_ in lines(project)]
    assert [who.split(" ", 1)[1] for who in whos] == [
        "via cli (api from 127.0.0.1)", "via tray (api from 127.0.0.1)",
        "(api from 127.0.0.1)", "(api from 127.0.0.1)",
    ]  # fmt: skip
    store = project.store()
    (pause, *_) = store.Hold.select().order_by(store.Hold.id)
    store.close()
    assert pause.created_by == whos[0] and pause.cleared_by == whos[1]  # the holds say so too
