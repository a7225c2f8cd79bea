"""Who may reach a daemon that runs as its own user: real users, made for the test.

The layout is the system unit's: the state dir (store, token) is the service user's, 0700;
the API's socket is in a folder of the service's group (RuntimeDirectoryMode=0750), mode
0660. A member of the group gets status, halts, pause and the tray's view through the
socket; anyone else one line saying how to join; the daemon names who changed what.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, free_port, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv"),
    reason="needs root with useradd and setpriv: the test makes real users and a group",
)


@dataclass(frozen=True)
class Users:
    group: str  # the service's group: who may use the socket
    service: str
    desktop: str  # in the group
    stranger: str  # not in it


@pytest.fixture
def users() -> Iterator[Users]:
    tag = secrets.token_hex(3)
    made = Users(f"pwg{tag}", f"pws{tag}", f"pwd{tag}", f"pwo{tag}")
    subprocess.run(["groupadd", "--system", made.group], check=True)
    try:
        for name, extra in ((made.service, ["-g", made.group]), (made.desktop, ["-G", made.group]),
                            (made.stranger, [])):  # fmt: skip
            subprocess.run(["useradd", "--no-create-home", "-s", "/bin/sh", *extra, name],
                           check=True)  # fmt: skip
        yield made
    finally:
        for name in (made.service, made.desktop, made.stranger):
            subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", made.group], capture_output=True, check=False)


class Service:
    """A daemon run as the service user on a layout like the unit's."""

    def __init__(self, users: Users):
        self.users = users
        self.root = Path(tempfile.mkdtemp(prefix="pw-access-"))
        self.root.chmod(0o755)  # everyone may read the config, as in /etc/pipewarden
        self.state_dir = self.root / "state"
        self.run_dir = self.root / "run"
        self.socket = self.run_dir / "api.sock"
        self.config = self.root / "config.yaml"
        (self.root / "w.py").write_text("import time\n\ndef work(data):\n    time.sleep(30)\n")
        self.config.write_text(
            f"state_dir: {self.state_dir}\nrules: [{REPO}/rules/*.yaml]\ndrain_grace: 1s\n"
            f"api: {{port: {free_port()}, socket: {self.socket}}}\n"
            "pipelines:\n  p:\n    stages:\n      - {name: s, python: 'w:work'}\n"
        )
        for folder, mode in ((self.state_dir, 0o700), (self.run_dir, 0o750)):
            folder.mkdir(mode=mode)
            shutil.chown(folder, users.service, users.group)
            folder.chmod(mode)
        self.daemon: subprocess.Popen[bytes] | None = None

    def command(self, user: str, *argv: str) -> list[str]:
        return ["setpriv", f"--reuid={user}", f"--regid={self._primary(user)}", "--init-groups",
                "--", *argv]  # fmt: skip

    @staticmethod
    def _primary(user: str) -> int:
        import pwd

        return pwd.getpwnam(user).pw_gid

    def run(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = self.command(user, sys.executable, "-m", "pipewarden", *args)
        env = {"PATH": os.environ["PATH"], "PIPEWARDEN_CONFIG": str(self.config), "HOME": "/"}
        return subprocess.run(
            argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=60
        )

    def python(self, user: str, code: str) -> subprocess.CompletedProcess[str]:
        argv = self.command(user, sys.executable, "-c", code)
        return subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        log = open(self.root / "daemon.log", "wb")  # noqa: SIM115
        env = {"PATH": os.environ["PATH"], "HOME": "/"}
        argv = self.command(self.users.service, sys.executable, "-m", "pipewarden", "run",
                            "--config", str(self.config))  # fmt: skip
        self.daemon = subprocess.Popen(argv, cwd=self.root, env=env, stdout=log, stderr=log)
        log.close()
        wait_until(lambda: self.socket.exists() or self.daemon.poll() is not None, "the socket")
        assert self.daemon.poll() is None, (self.root / "daemon.log").read_text()

    def stop(self) -> int | None:
        if self.daemon is None or self.daemon.poll() is not None:
            return None
        self.daemon.send_signal(signal.SIGTERM)
        try:
            return self.daemon.wait(15)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            return self.daemon.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def service(users: Users) -> Iterator[Service]:
    made = Service(users)
    if made.python(users.stranger, "import pipewarden").returncode != 0:
        made.close()
        pytest.skip(f"other users cannot import pipewarden from {sys.executable}")
    yield made
    made.close()


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_the_group_reaches_the_service_and_strangers_are_told_how_to_join(service: Service):
    users = service.users
    service.start()
    assert service.run(users.service, "enqueue", "p", "a").returncode == 0
    assert oct(service.socket.stat().st_mode & 0o777) == "0o660"

    # A desktop user in the group: status and the tray's view come through the socket.
    status = service.run(users.desktop, "status")
    assert status.returncode == 0, status.stderr
    assert f"daemon: running (pid {service.daemon.pid})" in status.stdout
    assert f"state {service.state_dir}" in status.stdout
    paused = service.run(users.desktop, "pause", "--channel", "sms", "--force")  # none yet
    assert paused.returncode == 0, paused.stderr
    halts = service.run(users.desktop, "halts")
    assert f"paused by {users.desktop} via cli (uid" in halts.stdout, halts.stdout + halts.stderr
    tray = service.python(
        users.desktop,
        "from pathlib import Path\nfrom pipewarden.tray.app import DaemonClient\n"
        "from pipewarden.tray.model import tray_state\n"
        f"client = DaemonClient('http://127.0.0.1:1', socket=Path('{service.socket}'))\n"
        "state = tray_state(client.status())\nprint(state.colour, '|', state.tooltip)\n",
    )
    assert tray.stdout.startswith("amber | pipewarden: 1 paused"), tray.stdout + tray.stderr

    # A stranger: one line naming the group, for status and for a command that changes things.
    for args in (("status",), ("halts", "clear", "sms"), ("runs", "tail")):
        refused = service.run(users.stranger, *args)
        assert refused.returncode == 1, refused.stdout
        line = one_line(refused.stderr)
        assert f"'{users.group}'" in line and f"usermod -aG {users.group} {users.stranger}" in line

    # The service's own user reads its store directly and through the socket alike.
    own = service.run(users.service, "status", "--json")
    assert own.returncode == 0 and json.loads(own.stdout)["daemon"]["running"] is True

    # With the service stopped, the desktop user is told to start it, not to join a group.
    assert service.stop() == 0
    stopped = service.run(users.desktop, "status")
    assert stopped.returncode == 1
    assert one_line(stopped.stderr) == (
        f"pipewarden: cannot read the store {service.state_dir}/pipewarden.db: it is the"
        f" daemon's own, and no daemon answers on {service.socket} — start it (`systemctl"
        " start pipewarden`), or run this as root"
    )
    doctor = service.run(users.desktop, "doctor")
    assert f"FAIL state dir: {service.state_dir} is not this user's (700)" in doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr


def test_the_daemon_checks_each_peer_even_when_the_socket_is_left_open(service: Service):
    """SO_PEERCRED: a socket someone made 0666 still lets no stranger in."""
    users = service.users
    service.start()
    service.run_dir.chmod(0o755)
    service.socket.chmod(0o666)
    refused = service.run(users.stranger, "pause", "--channel", "sms", "--force")
    assert refused.returncode == 1
    line = one_line(refused.stderr)
    assert f"{users.stranger} is not in the group '{users.group}'" in line
    assert f"usermod -aG {users.group} {users.stranger}" in line
    assert service.run(users.desktop, "halts").stdout.startswith("no halts or pauses")
