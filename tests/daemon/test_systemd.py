"""The daemon under systemd: the notify protocol on a socket the test binds, journald logs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, Project, wait_until


class NotifySocket:
    """A datagram socket standing in for systemd's; keeps (time, message) pairs."""

    def __init__(self, folder: Path):
        self.path = str(folder / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def with_field(self, field: str) -> list[float]:
        return [at for at, text in self.messages if field in text.split("\n")]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def configure(project: Project) -> None:
    project.write("w.py", "def work(data):\n    return None\n")
    project.configure("p:\n  stages:\n    - {name: s, python: 'w:work'}\n")


def test_ready_watchdog_pings_reload_and_stopping(project: Project):
    configure(project)
    notify = NotifySocket(project.root)
    try:
        daemon = project.start_daemon(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
        wait_until(lambda: notify.with_field("READY=1"), "READY=1")
        # Before the store opens (a migration may take minutes), a longer start timeout.
        opening = notify.messages[0][1].split("\n")
        assert opening[0] == "EXTEND_TIMEOUT_USEC=900000000", opening
        ready = [text.split("\n") for _, text in notify.messages if "READY=1" in text]
        assert ready[0][0] == "READY=1" and ready[0][1].startswith("STATUS=0 running")

        start = time.monotonic()
        wait_until(lambda: time.monotonic() - start > 1.2, "a second of pings")
        pings = [t for t in notify.with_field("WATCHDOG=1") if t >= start]
        assert 4 <= len(pings) <= 8  # every 0.2s: half of WATCHDOG_USEC

        daemon.send_signal(signal.SIGHUP)
        wait_until(lambda: notify.with_field("RELOADING=1"), "RELOADING=1")
        reloading = notify.with_field("RELOADING=1")[0]
        wait_until(
            lambda: [t for t in notify.with_field("READY=1") if t > reloading], "READY again"
        )

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        assert notify.with_field("STOPPING=1")
    finally:
        notify.close()


def test_a_wedged_loop_misses_its_watchdog_pings(project: Project):
    configure(project)
    notify = NotifySocket(project.root)
    try:
        daemon = project.start_daemon(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
        wait_until(lambda: len(notify.with_field("WATCHDOG=1")) >= 2, "pings")
        # Hold the store's write lock: the daemon's next pass blocks inside SQLite, and
        # with it the whole event loop, as a wedged daemon would.
        blocker = sqlite3.connect(project.state_dir / "pipewarden.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        wedged = time.monotonic()
        daemon.send_signal(signal.SIGUSR1)  # wake it: its pass now waits for the lock
        wait_until(lambda: time.monotonic() - wedged > 2.0, "two seconds of a wedged loop")
        blocker.execute("ROLLBACK")
        blocker.close()
        released = time.monotonic()
        wait_until(lambda: [t for t in notify.with_field("WATCHDOG=1") if t > released], "pings")

        during = [t for t in notify.with_field("WATCHDOG=1") if wedged + 0.3 < t < released]
        assert during == []  # systemd would have restarted it
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    finally:
        notify.close()


def test_under_journald_lines_carry_syslog_priorities_and_no_timestamp(project: Project):
    configure(project)
    project.configure(  # every run gets its line: an ok one is the line looked at here
        "p:\n  stages:\n    - {name: s, python: 'w:work'}\n",
        extra="drain_grace: 5s\nlog_runs: info",
    )

    def journal(log_file) -> dict[str, str]:
        stat = os.fstat(log_file.fileno())
        return {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}

    daemon = project.start_daemon(env=journal)
    project.cli("enqueue", "p", "a")
    wait_until(lambda: "p/s a#1" in project.daemon_log(), "a run line")
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(15)
    lines = project.daemon_log().splitlines()
    assert lines[0].startswith("<6>pipewarden running: 1 pipeline(s)")
    run_line = next(line for line in lines if "p/s a#1" in line)
    assert run_line.startswith("<6>p/s a#1 run=") and run_line.endswith("ok done")
    assert all(line.startswith("<") for line in lines)


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (REPO / "systemd" / "pipewarden.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            settings.setdefault(name, []).append(value)
    return settings


def test_the_shipped_config_names_the_units_state_dir_and_socket_so_the_unit_overrides_nothing(
    tmp_path: Path,
):
    from pipewarden.config import load_config

    unit = unit_settings()
    assert unit["SyslogIdentifier"] == ["pipewarden"]  # not env[PID] in the journal
    assert "--state-dir" not in unit["ExecStart"][0]
    # /etc/pipewarden as the README's systemd section lays it out
    shutil.copy(REPO / "systemd" / "config.yaml", tmp_path)
    shutil.copytree(REPO / "systemd" / "workers", tmp_path / "workers")
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    config = load_config(tmp_path / "config.yaml")
    assert config.state_dir == Path("/var/lib") / unit["StateDirectory"][0]
    assert config.api.socket == Path("/run") / unit["RuntimeDirectory"][0] / "api.sock"
    assert config.rule_paths  # the rules the README copies beside it
    for stage in (s for p in config.pipelines.values() for s in p.stages):
        assert stage.command and (stage.cwd / stage.command[1]).is_file()
    # Chromium's own sandbox: namespaces and the two calls it needs; no MemoryDenyWriteExecute.
    assert unit["RestrictNamespaces"] == ["user pid net"]
    assert "capset chroot" in unit["SystemCallFilter"]
    assert "MemoryDenyWriteExecute" not in unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_unit_verifies_and_keeps_its_exposure_at_most_2_5():
    unit = str(REPO / "systemd" / "pipewarden.service")
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", unit],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert verify.stdout + verify.stderr == ""
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=25", unit],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert security.returncode == 0, security.stdout[-400:]
    exposure = float(re.search(r"exposure level for \S+: ([\d.]+)", security.stdout).group(1))
    assert exposure <= 2.5


def test_a_config_that_misses_the_services_state_dir_says_so_instead_of_an_empty_tree(
    project: Project, tmp_path_factory: pytest.TempPathFactory
):
    configure(project)
    project.start_daemon()
    project.cli("enqueue", "p", "a")
    # The same config copied elsewhere without its state dir, as an old README had it.
    other = tmp_path_factory.mktemp("etc") / "config.yaml"
    other.write_text(project.config_path.read_text())
    for args in (("status",), ("runs", "tail")):  # a command that reads: told where to look
        done = project.cli(*args, "--config", str(other), expect=1)
        assert done.stdout == "" and "Traceback" not in done.stderr
        assert done.stderr.strip() == (
            f"pipewarden: no store at {other.parent}/.pipewarden/pipewarden.db; a pipewarden"
            f" daemon answers on 127.0.0.1:{project.api_port} with another state dir: pass"
            f" --state-dir or set state_dir in {other}"
        )
    assert not (other.parent / ".pipewarden").exists()  # no stray empty store
    # One that writes makes its store here: another project's daemon may hold the port
    # (two projects on the default port), and its item must not be refused for that.
    project.cli("enqueue", "p", "b", "--config", str(other))


def test_a_config_that_names_the_daemons_socket_finds_its_state_wherever_it_is(
    project: Project, tmp_path_factory: pytest.TempPathFactory
):
    socket_path = tmp_path_factory.mktemp("run") / "api.sock"
    configure(project)
    project.config_path.write_text(
        project.config_path.read_text().replace(
            f"api: {{port: {project.api_port}}}",
            f"api: {{port: {project.api_port}, socket: {socket_path}}}",
        )
    )
    daemon = project.start_daemon()
    wait_until(socket_path.exists, "the socket")
    project.cli("enqueue", "p", "a")
    other = tmp_path_factory.mktemp("etc") / "config.yaml"
    other.write_text(project.config_path.read_text())  # no state_dir: it is elsewhere
    status = project.cli("status", "--config", str(other))
    assert f"daemon: running (pid {daemon.pid}) · state {project.state_dir}" in status.stdout
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert not socket_path.exists()  # removed at a clean stop


def test_a_second_daemon_never_takes_over_a_socket_another_one_serves(
    project: Project, tmp_path_factory: pytest.TempPathFactory
):
    socket_path = tmp_path_factory.mktemp("run") / "api.sock"
    configure(project)
    api_line = f"api: {{port: {project.api_port}}}"
    first = project.config_path.read_text()
    project.config_path.write_text(
        first.replace(api_line, f"api: {{port: {project.api_port}, socket: {socket_path}}}")
    )
    project.start_daemon()
    wait_until(socket_path.exists, "the socket")
    other = Project(tmp_path_factory.mktemp("other"))
    configure(other)
    other.config_path.write_text(
        other.config_path.read_text().replace(
            f"api: {{port: {other.api_port}}}",
            f"api: {{port: {other.api_port}, socket: {socket_path}}}",
        )
    )
    try:
        second = other.start_daemon()
        assert second.wait(15) == 1
    finally:
        other.stop_all()
    assert (
        other.daemon_log()
        .strip()
        .endswith(
            f"pipewarden: another daemon serves its API on {socket_path} — stop it, or give this"
            " one another `api: {socket: ...}`"
        )
    )
    assert project.cli("status").stdout.startswith("daemon: running")
