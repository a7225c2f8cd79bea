"""Shared fixtures: a temporary project (config, rules, workers), the CLI, a real daemon."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pipewarden.store import Store

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 20.0


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


class Project:
    """A folder with a config, the shipped rules and whatever workers a test writes."""

    def __init__(self, root: Path):
        self.root = root
        self.config_path = root / "config.yaml"
        self.state_dir = root / ".pipewarden"
        self.api_port = free_port()
        self._daemons: list[subprocess.Popen[bytes]] = []

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def configure(self, pipelines: str, extra: str = "", rules: tuple[str, ...] = ()) -> None:
        """Write config.yaml: the shipped rules (then `rules`), and the `pipelines:` body."""
        body = textwrap.indent(textwrap.dedent(pipelines).strip("\n"), "  ")
        rule_files = ", ".join((f"{REPO}/rules/*.yaml", *rules))
        self.write(
            "config.yaml",
            f"rules: [{rule_files}]\n{textwrap.dedent(extra) or 'drain_grace: 5s'}\n"
            f"api: {{port: {self.api_port}}}\n"
            f"pipelines:\n{body}\n",
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PIPEWARDEN_CONFIG"] = str(self.config_path)
        env.pop("NO_COLOR", None)
        env.setdefault("BROWSER", "true")  # `pipewarden open` prints its link, opens nothing
        return env

    def on_a_terminal(self, *args: str, columns: int | None = None) -> tuple[int, str]:
        """`pipewarden ARGS` on a terminal (a pty, `columns` wide if given): its exit code
        and all it showed there."""
        import fcntl
        import pty
        import struct
        import termios

        leader, follower = pty.openpty()
        env = {**self.env(), "NO_COLOR": "1"}
        if columns is not None:
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
            env.pop("COLUMNS", None)
        command = [sys.executable, "-m", "pipewarden", *args]
        proc = subprocess.Popen(command, cwd=self.root, env=env, stdin=follower,
                                stdout=follower, stderr=follower)  # fmt: skip
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        return proc.wait(30), b"".join(chunks).decode().replace("\r\n", "\n")

    def cli(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "pipewarden", *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if expect is not None:
            assert done.returncode == expect, (
                f"pipewarden {' '.join(args)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def start_daemon(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.root / f"daemon-{len(self._daemons)}.log", "wb")  # noqa: SIM115
        extra = env(log) if callable(env) else (env or {})
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipewarden", "run", *args],
            cwd=self.root,
            env={**self.env(), **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._daemons.append(proc)
        wait_until(lambda: (self.state_dir / "daemon.lock").exists(), "the daemon to start")
        return proc

    def daemon_log(self, index: int = -1) -> str:
        number = index if index >= 0 else len(self._daemons) + index
        return (self.root / f"daemon-{number}.log").read_text()

    def store(self) -> Store:
        return Store(self.state_dir)

    def item(self, pipeline: str, key: str) -> Any:
        store = self.store()
        try:
            return store.item(pipeline, key)
        finally:
            store.close()

    def runs(self, key: str | None = None) -> list[Any]:
        store = self.store()
        try:
            query = store.Run.select().order_by(store.Run.started_at)
            if key is not None:
                query = query.where(store.Run.item_key == key)
            return list(query)
        finally:
            store.close()

    def stop_all(self) -> None:
        for proc in self._daemons:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    proj = Project(tmp_path)
    yield proj
    proj.stop_all()


@pytest.fixture
def kill_leftovers() -> Iterator[list[int]]:
    """Process groups a test left behind on purpose (a kill -9'd daemon's workers)."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


class HttpReceiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it (Apprise json://)."""

    def __init__(self, port: int = 0):
        import http.server
        import json
        import threading

        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def titles(self) -> list[str]:
        return [body.get("title", "") for body in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


# -- PostgreSQL: one throwaway cluster per session, one new database per test ---------------
@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    import pg_cluster as clusters

    if (why := clusters.missing()) is not None:
        pytest.skip(why)
    cluster = clusters.Cluster().start()
    yield cluster
    cluster.stop()


_databases = iter(range(1, 1 << 30))


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """The URL of a new, empty database on the session's cluster."""
    import psycopg

    name = f"test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return pg_cluster.url(name)


class Followed:
    """`pipewarden runs tail -f` in the background, its lines collected as they come."""

    def __init__(self, project: Project, *args: str, env: dict[str, str] | None = None):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipewarden", "runs", "tail", "-f", *args],
            cwd=project.root, env={**project.env(), **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        self.reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code
