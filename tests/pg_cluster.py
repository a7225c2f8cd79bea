"""A throwaway PostgreSQL cluster for the tests and the benches: Debian's postgresql-15
binaries, a data dir in a temp folder, a free port on 127.0.0.1 and trust auth, run as
`nobody` when we are root (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path(os.environ.get("PIPEWARDEN_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "pipewarden"


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    if not (BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {BIN} (apt-get install postgresql-15)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """initdb'd on `start`, removed on `stop`; `restart` keeps its data (a server restart
    under a running fleet)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pipewarden-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "nobody")
            os.chmod(self.root, 0o755)
            self._as = ["runuser", "-u", "nobody", "--"]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, cwd=self.root)

    def start(self) -> Cluster:
        self._run(
            str(BIN / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
            "--no-sync", "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        settings = (
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.root}'\nfsync = off\n"
            "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(settings)
        self.up()
        return self

    def up(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-w", "-t", "30", "start")  # fmt: skip

    def down(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        self._run(str(BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.down("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
