"""The daemon's HTTP API over real HTTP on 127.0.0.1: auth, Host checks, control, SSE, metrics."""

from __future__ import annotations

import json
import stat
import threading

import httpx
from conftest import Project, wait_until
from prometheus_client.parser import text_string_to_metric_families

WORKER = """
import time

def work(data, ctx):
    ctx.progress(0.5, "halfway")
    time.sleep(data.get("sleep", 0))
    if data.get("fail"):
        raise RuntimeError("HTTP 404 Not Found. Cannot capture")
    return {"done": True}
"""


def start(project: Project) -> tuple[str, dict[str, str]]:
    project.write("worker.py", WORKER)
    project.configure(
        """
        sites:
          stages:
            - {name: work, python: "worker:work", concurrency: 2, retry: {max_attempts: 1}}
        """
    )
    project.start_daemon()
    token_file = project.state_dir / "api.token"
    base = f"http://127.0.0.1:{project.api_port}"
    wait_until(lambda: _up(base), "the API")
    return base, {"Authorization": f"Bearer {token_file.read_text().strip()}"}


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_token_file_is_0600_and_every_endpoint_but_health_needs_it(project: Project):
    base, auth = start(project)
    mode = stat.S_IMODE((project.state_dir / "api.token").stat().st_mode)
    assert mode == 0o600

    assert httpx.get(f"{base}/health").json() == {"ok": True}
    for path in ("/api/status", "/api/runs", "/api/halts", "/metrics", "/api/events"):
        assert httpx.get(base + path).status_code == 401, path
        assert httpx.get(base + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{base}/api/pause", json={}).status_code == 401
    assert httpx.get(f"{base}/api/status", headers=auth).status_code == 200


def test_a_foreign_host_header_is_refused(project: Project):
    base, auth = start(project)
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example"):
        answer = httpx.get(f"{base}/api/status", headers={**auth, "Host": host})
        assert answer.status_code == 400, host
    assert (
        httpx.get(f"{base}/api/status", headers={**auth, "Host": "localhost:1"}).status_code == 200
    )


def test_state_changes_through_the_api_reach_the_store_and_the_cli_uses_them(project: Project):
    base, auth = start(project)
    answer = httpx.post(
        f"{base}/api/pause", headers=auth, json={"scope": "channel", "target": "work"}
    )
    assert answer.json() == {"paused": "work", "already": False}
    store = project.store()
    (hold,) = store.active_holds()
    store.close()
    assert (hold.kind, hold.scope, hold.target) == ("pause", "channel", "work")
    assert hold.created_by.endswith("(api from 127.0.0.1)")

    enqueued = project.cli("enqueue", "sites", "a", "--json")  # through the API: daemon runs
    assert json.loads(enqueued.stdout)["new"] == ["a"]
    assert project.item("sites", "a").state == "queued"  # paused: it waits
    resumed = project.cli("resume", "--channel", "work")
    assert resumed.stdout == "resumed channel work; the running daemon has been told\n"
    store = project.store()
    assert store.active_holds() == []
    (cleared,) = store.Hold.select()
    store.close()
    assert cleared.cleared_by.endswith("(api from 127.0.0.1)")  # it went through the API
    wait_until(lambda: project.item("sites", "a").state == "done", "the item to run")


def test_a_forwarded_for_header_cannot_name_someone_else_in_the_audit(project: Project):
    """The daemon listens on 127.0.0.1 behind no proxy: every client is local, and uvicorn
    trusted any local client's X-Forwarded-For, so a program could pause a channel and have
    the hold, the audit and the notice say it came from another address."""
    base, auth = start(project)
    forged = {**auth, "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    answer = httpx.post(
        f"{base}/api/pause", headers=forged, json={"scope": "channel", "target": "work"}
    )
    assert answer.status_code == 200
    store = project.store()
    (hold,) = store.active_holds()
    store.close()
    assert hold.created_by.endswith("(api from 127.0.0.1)"), hold.created_by


def test_the_event_stream_delivers_run_events_in_order(project: Project):
    base, auth = start(project)
    received: list[tuple[int, str, dict]] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{base}/api/events", headers=auth, timeout=30) as stream:
            event_id, event_type = 0, ""
            for line in stream.iter_lines():
                connected.set()
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("event: "):
                    event_type = line[7:]
                elif line.startswith("data: "):
                    received.append((event_id, event_type, json.loads(line[6:])))
                    if sum(1 for _, t, _ in received if t == "run_finished") == 3:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10)
    for key in ("one", "two", "three"):
        project.cli("enqueue", "sites", key, "--data", json.dumps({"sleep": 0.2, "key": key}))
    listener.join(30)

    ids = [event_id for event_id, _, _ in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for key in ("one", "two", "three"):
        kinds = [t for _, t, d in received if d.get("key") == key or _run_of(received, key, d)]
        assert kinds == ["run_started", "run_progress", "run_finished"], key
    finished = [d for _, t, d in received if t == "run_finished"]
    assert {(d["key"], d["status"], d["item_state"]) for d in finished} == {
        ("one", "ok", "done"), ("two", "ok", "done"), ("three", "ok", "done"),
    }  # fmt: skip


def _run_of(received: list, key: str, data: dict) -> bool:
    """A progress event names only its run: find the run's key from its start."""
    starts = {d["run_id"]: d["key"] for _, t, d in received if t == "run_started"}
    return "key" not in data and starts.get(data.get("run_id")) == key


def test_metrics_parse_with_the_client_librarys_own_parser(project: Project):
    base, auth = start(project)
    project.cli("enqueue", "sites", "ok")
    project.cli("enqueue", "sites", "bad", "--data", '{"fail": true}')
    wait_until(lambda: project.item("sites", "bad").state == "failed", "the runs")

    text = httpx.get(f"{base}/metrics", headers=auth).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    items = {
        (s.labels["stage"], s.labels["state"]): s.value
        for s in families["pipewarden_items"].samples
    }
    assert items[("work", "done")] == 1 and items[("work", "failed")] == 1
    runs = {
        (s.labels["status"], s.labels["label"]): s.value
        for s in families["pipewarden_runs"].samples
        if s.name == "pipewarden_runs_total"
    }
    assert runs == {("ok", ""): 1.0, ("failed", "Permanent HTTP error"): 1.0}
    durations = families["pipewarden_run_duration_seconds"].samples
    assert any(s.name.endswith("_count") and s.value == 2 for s in durations)
    assert "pipewarden_holds_active" in families and "pipewarden_notifications" in families


def test_why_tells_an_items_whole_story(project: Project):
    start(project)
    project.cli("enqueue", "sites", "bad", "--data", '{"fail": true}')
    wait_until(lambda: project.item("sites", "bad").state == "failed", "the run")

    story = project.cli("why", "bad").stdout.splitlines()
    assert story[0] == "sites/bad: failed at work (channel work)"
    assert "      RuntimeError: HTTP 404 Not Found. Cannot capture" in story
    assert any(line.startswith("      classified by ") and "sites.yaml:" in line for line in story)
    assert "retry policy at work: 1 attempts, waits" not in story  # one attempt: no backoff
    assert story[-1] == (
        "next: nothing: failed (Permanent HTTP error); to try again:"
        ' pipewarden retry --label "Permanent HTTP error"'
    )
    as_json = json.loads(project.cli("why", "bad", "--json").stdout)
    assert as_json["runs"][0]["label"] == "Permanent HTTP error" and as_json["state"] == "failed"


def test_a_taken_port_is_one_clear_line(project: Project):
    import socket

    project.write("worker.py", WORKER)
    project.configure("sites:\n  stages:\n    - {name: work, python: 'worker:work'}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", project.api_port))
        taken.listen()
        done = project.cli("run", expect=1)
    last = done.stderr.splitlines()[-1]  # after the daemon's own log lines
    assert last == (
        f"pipewarden: cannot serve the API on 127.0.0.1:{project.api_port}: Address already in"
        " use — choose another port with `api: {port: N}` in the config"
    )
    assert "Traceback" not in done.stderr
