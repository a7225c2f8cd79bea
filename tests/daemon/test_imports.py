"""Commands people type often start cheaply: they do not load what only the daemon, the
tray, the browser or another backend needs (each such import is tens of milliseconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import Project, wait_until

HEAVY = {"psycopg", "httpx", "apprise", "playwright", "pystray", "uvicorn", "starlette", "re2",
         "asyncio", "watchfiles", "prometheus_client"}  # fmt: skip


def imported(project: Project, *args: str) -> set[str]:
    """The top-level modules loaded once `pipewarden ARGS` has run."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['pipewarden', *{list(args)!r}]\n"
        "try:\n    runpy.run_module('pipewarden', run_name='__main__')\n"
        "except SystemExit as stop:\n    assert not stop.code, stop.code\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=project.root, env=project.env(),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(done.stdout.splitlines()[-1].split())


@pytest.fixture
def sites(project: Project) -> Project:
    project.configure("sites:\n  stages:\n    - {name: find, command: 'true'}\n")
    project.cli("pause", "--pipeline", "sites")
    project.cli("enqueue", "sites", "first")
    return project


@pytest.mark.parametrize("args", [["--help"], ["status"], ["status", "-v"], ["status", "--json"]])
def test_reading_commands_on_the_sqlite_store_load_nothing_heavy(sites: Project, args: list):
    assert imported(sites, *args) & HEAVY == set()


def test_an_enqueue_through_a_running_daemon_loads_nothing_heavy(sites: Project):
    sites.start_daemon()
    wait_until(lambda: (sites.state_dir / "api.token").exists(), "the daemon's token")
    wait_until(lambda: sites.cli("status").stdout.startswith("daemon: running"), "the daemon")
    loaded = imported(sites, "enqueue", "sites", "second")
    assert loaded & HEAVY == set()
    assert loaded & {"http", "email", "ssl"} == set()  # http.client: a sixth of the command
    assert sites.item("sites", "second") is not None
