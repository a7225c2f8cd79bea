"""What test_service_container checks inside the booted container, as root, after the
README's systemd section has installed and started the service (stdlib only: it runs on
the container's own python3).

Each check is a person's question with the answer they would see; the results go to the
JSON file named by argv[1], one {"check", "ok", "detail"} per check.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG = "/etc/pipewarden/config.yaml"
STATE = "/var/lib/pipewarden"
PAGE = b"<!doctype html><title>captured</title><h1 style='font-size:80px'>pipewarden</h1>"
DEADLINE_S = 90.0
WATCHDOG_HELD_S = 35.0  # past the unit's WatchdogSec=30s: a missed ping would have restarted it

results: list[dict[str, Any]] = []
started = time.monotonic()


def sh(*argv: str, user: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
    if user is not None:
        argv = ("runuser", "-u", user, "--", *argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-800:]}")
    return done


def pw(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    return sh("pipewarden", *args, "--config", CONFIG, user=user)


def unit(*properties: str) -> dict[str, str]:
    done = sh("systemctl", "show", "pipewarden", *(f"--property={p}" for p in properties))
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def register(function: Callable[[], str]) -> Callable[[], str]:
        if results and not results[0]["ok"]:  # not READY: nothing else can pass, do not wait
            results.append({"check": name, "ok": False, "detail": "not run: no service"})
            return function
        try:
            detail = function()
            results.append({"check": name, "ok": True, "detail": detail})
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            results.append({"check": name, "ok": False, "detail": detail})
        return function

    return register


class PageServer:
    """Pages for Chromium on 127.0.0.1 (the container's own loopback): /page, /slow?s=N."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/slow"):
                    time.sleep(float(self.path.rpartition("=")[2]))
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"


def item(key: str) -> dict[str, Any]:
    done = pw("item", "pages", key, "--json")
    return json.loads(done.stdout) if done.returncode == 0 else {}


def enqueue(key: str, url: str) -> None:
    done = pw("enqueue", "pages", key, "--data", json.dumps({"url": url}))
    assert done.returncode == 0, done.stderr


def journal(*args: str) -> list[dict[str, Any]]:
    done = sh("journalctl", "-u", "pipewarden", "-o", "json", "--no-pager", *args)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


pages = PageServer()
key_number = iter(range(1, 1000))


def new_key(what: str) -> str:
    return f"{what}-{next(key_number)}-{int(time.time())}"  # a new item key per case


@check("READY: the unit is active and says what runs in STATUS=")
def ready() -> str:
    state = unit("ActiveState", "SubState", "StatusText", "Type", "NRestarts")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert "running" in state["StatusText"], state
    return json.dumps(state)


@check("the journal names the daemon (SyslogIdentifier=), not env[PID]")
def journal_names_it() -> str:
    entries = journal()
    started_line = [e for e in entries if "pipewarden running:" in str(e.get("MESSAGE"))]
    assert started_line, [e.get("MESSAGE") for e in entries][-10:]
    tags = {e.get("SYSLOG_IDENTIFIER") for e in entries if e.get("_PID") != "1"}
    assert tags == {"pipewarden"}, tags
    return started_line[0]["MESSAGE"]


@check("`pipewarden status --config /etc/pipewarden/config.yaml` shows the running service")
def status_finds_the_service() -> str:
    main_pid = unit("MainPID")["MainPID"]
    done = pw("status")
    assert done.returncode == 0, done.stderr
    assert f"daemon: running (pid {main_pid}) · state {STATE}" in done.stdout, done.stdout
    return done.stdout.splitlines()[0]


@check("headless Chromium, with its own sandbox, captures a page under the unit")
def browser_captures_a_page() -> str:
    key = new_key("page")
    enqueue(key, f"{pages.base}/page")
    story = wait_for(lambda: item(key).get("state") in ("done", "failed") and item(key), "capture")
    assert story["state"] == "done", story["last_error"]
    shot = Path(story["data"]["screenshot"])
    assert shot.parent == Path(STATE) / "captures", shot
    content = shot.read_bytes()
    Path("/pw-test/capture.png").write_bytes(content)  # for a person to look at
    assert content[:8] == b"\x89PNG\r\n\x1a\n" and len(content) > 2000, len(content)
    errors = " ".join(str(run.get("error")) for run in story["runs"])
    assert "sandbox" not in errors.lower(), errors
    return f"{shot} ({len(content)} bytes)"


@check("a desktop user in the group pipewarden gets status and pauses through the socket")
def desktop_user_in_the_group() -> str:
    sh("useradd", "--create-home", "--groups", "pipewarden", "alice", check=True)
    done = pw("status", user="alice")
    assert done.returncode == 0 and "daemon: running" in done.stdout, done.stdout + done.stderr
    paused = pw("pause", "--stage", "pages/capture", user="alice")
    assert paused.returncode == 0, paused.stderr
    halts = pw("halts", user="alice")
    assert "paused by alice via cli (uid" in halts.stdout, halts.stdout + halts.stderr
    resumed = pw("resume", "--stage", "pages/capture", user="alice")
    assert resumed.returncode == 0, resumed.stderr
    return halts.stdout.strip()


@check("a user outside the group is refused with one line that says how to join")
def stranger_is_refused() -> str:
    sh("useradd", "--create-home", "mallory", check=True)
    lines = []
    for args in (("status",), ("halts", "clear", "capture"), ("runs", "tail")):
        done = pw(*args, user="mallory")
        text = done.stderr.strip()
        assert done.returncode == 1 and "\n" not in text and "Traceback" not in text, text
        assert "usermod -aG pipewarden mallory" in text, text
        lines.append(text)
    return lines[0]


@check("a config without the service's state dir says where it is, not an empty tree")
def old_config_is_told() -> str:
    old = Path("/root/old")
    old.mkdir()
    text = Path(CONFIG).read_text().replace(f"state_dir: {STATE}", "")
    text = "\n".join(line for line in text.splitlines() if "socket:" not in line)
    (old / "config.yaml").write_text(text)
    sh("cp", "-r", "/etc/pipewarden/rules", "/etc/pipewarden/workers", str(old), check=True)
    done = sh("pipewarden", "status", "--config", str(old / "config.yaml"))
    expected = (
        f"pipewarden: no store at {old}/.pipewarden/pipewarden.db; the service's state is"
        f" {STATE}: pass --state-dir {STATE} or set `state_dir: {STATE}` in {old}/config.yaml"
    )
    assert done.returncode == 1 and done.stderr.strip() == expected, done.stdout + done.stderr
    return expected


@check("`systemctl reload` reloads the rules in place (same pid, READY again)")
def reload_in_place() -> str:
    before = unit("MainPID")["MainPID"]
    sh("systemctl", "reload", "pipewarden", check=True)
    wait_for(lambda: any("reloaded (SIGHUP)" in str(e.get("MESSAGE")) for e in journal()), "reload")
    after = unit("MainPID", "ActiveState", "SubState")
    assert after["MainPID"] == before and after["SubState"] == "running", after
    return f"pid {before} kept"


@check("the watchdog holds: past WatchdogSec=30s, pinged and never restarted")
def watchdog_holds() -> str:
    entered = int(unit("ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
    uptime = lambda: time.clock_gettime(time.CLOCK_MONOTONIC) - entered / 1e6  # noqa: E731
    wait_for(lambda: uptime() > WATCHDOG_HELD_S, "the watchdog interval to pass", timeout=60)
    state = unit("NRestarts", "WatchdogTimestampMonotonic", "WatchdogUSec", "SubState")
    assert state["NRestarts"] == "0" and state["SubState"] == "running", state
    assert int(state["WatchdogTimestampMonotonic"]) > entered + 14_000_000, state  # a fresh ping
    return json.dumps(state)


@check("a stop with a capture running lets it finish, exits 0, kills nothing")
def clean_stop_with_work_running() -> str:
    key = new_key("slow")
    enqueue(key, f"{pages.base}/slow?s=4")
    wait_for(lambda: item(key).get("state") == "running", "the slow capture to start")
    time.sleep(1.0)  # Chromium is waiting for the page
    stopping = time.monotonic()
    sh("systemctl", "stop", "pipewarden", check=True)
    took = time.monotonic() - stopping
    state = unit("ActiveState", "Result", "ExecMainStatus")
    assert state["ActiveState"] == "inactive" and state["Result"] == "success", state
    assert state["ExecMainStatus"] == "0", state
    messages = [str(e.get("MESSAGE")) for e in journal()]
    assert any("stopped cleanly" in m for m in messages), messages[-8:]
    assert not [m for m in messages if "Killing process" in m or "SIGKILL" in m], messages[-8:]
    done = item(key)  # the store, read by root with the service stopped
    assert done["state"] == "done" and done["runs"][-1]["status"] == "ok", done["last_error"]
    return f"stopped in {took:.1f}s with the capture done"


Path(sys.argv[1]).write_text(json.dumps(results, indent=2))
os.sync()
