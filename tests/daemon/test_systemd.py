"""The daemon under systemd: the notify protocol on a socket the test binds, journald logs."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

from conftest import Project, wait_until


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
        first = notify.messages[0][1].split("\n")
        assert first[0] == "READY=1" and first[1].startswith("STATUS=0 running")

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
