"""`pipewarden tray` without a display: one clear line, never an Xlib traceback."""

from __future__ import annotations

from conftest import Project


def test_no_display_is_one_clear_line(project: Project, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    project.write("worker.py", "def work(data):\n    return None\n")
    project.configure("p:\n  stages:\n    - {name: s, python: 'worker:work'}\n")
    project.state_dir.mkdir()
    (project.state_dir / "api.token").write_text("t\n")
    done = project.cli("tray", expect=1)
    assert done.stderr.splitlines()[-1] == (
        "pipewarden: no display: `pipewarden tray` needs a graphical session (DISPLAY is not set)"
    )
    assert "Traceback" not in done.stderr


def test_without_a_daemon_ever_started_it_says_what_to_do(project: Project):
    project.write("worker.py", "def work(data):\n    return None\n")
    project.configure("p:\n  stages:\n    - {name: s, python: 'worker:work'}\n")
    done = project.cli("tray", expect=1)
    assert "no API token at" in done.stderr and "start the daemon once" in done.stderr
