"""The tray end to end on a real X server: Xvfb, a tray host (trayer), the gtk backend.

A running daemon with a halted channel; the test right-clicks the icon with xdotool,
takes a screenshot of the open menu, opens the Halts submenu, clicks the halt's entry,
and checks that the daemon's halt is cleared.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, wait_until
from PIL import Image
from pipewarden.tray.icon import COLOURS

TOOLS = ("Xvfb", "trayer", "xdotool", "xwininfo", "dbus-run-session", "import")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
NO_GI = importlib.util.find_spec("gi") is None or importlib.util.find_spec("pystray") is None
pytestmark = pytest.mark.skipif(
    bool(MISSING) or NO_GI,
    reason=f"needs {', '.join(MISSING) or 'PyGObject and pystray in the venv'}"
    " (./dev test installs them where it runs as root with apt)",
)

WORKER = """
def work(data):
    raise RuntimeError("Cloudflare challenge blocked the form submit")
"""
HALT_RULES = "halts:\n  - {when: same_label, channels: [form], count: 1, within: 1h}\n"


def free_display() -> str:
    for number in range(90, 200):
        if (
            not Path(f"/tmp/.X11-unix/X{number}").exists()
            and not Path(f"/tmp/.X{number}-lock").exists()
        ):
            return f":{number}"
    raise RuntimeError("no free X display number")


@pytest.fixture
def x_session(tmp_path: Path) -> Iterator[dict[str, str]]:
    display = free_display()
    env = {**os.environ, "DISPLAY": display}
    started = [subprocess.Popen(["Xvfb", display, "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        wait_until(lambda: Path(f"/tmp/.X11-unix/X{display[1:]}").exists(), "Xvfb")
        trayer = ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel",
                  "--width", "200", "--height", "32", "--transparent", "false"]  # fmt: skip
        started.append(
            subprocess.Popen(trayer, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        wait_until(lambda: _windows(env, '"panel": ("panel" "trayer")'), "the tray host")
        yield env
    finally:
        for proc in reversed(started):
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def _windows(env: dict[str, str], needle: str) -> list[tuple[int, int, int, int, str]]:
    """(x, y, width, height, line) of every window whose xwininfo line holds `needle`."""
    # The xorg backend names its window in Latin-1: decode what cannot be UTF-8 as '?'.
    tree = subprocess.run(["xwininfo", "-root", "-tree"], env=env, capture_output=True,
                          text=True, errors="replace").stdout  # fmt: skip
    found = []
    for line in tree.splitlines():
        match = re.search(r"(\d+)x(\d+)[+-]-?\d+[+-]-?\d+\s+\+(-?\d+)\+(-?\d+)$", line.strip())
        if needle in line and match:
            width, height, x, y = map(int, match.groups())
            found.append((x, y, width, height, line))
    return found


def _menus(env: dict[str, str]) -> list[tuple[int, int, int, int, str]]:
    return [w for w in _windows(env, '"pipewarden": ("pipewarden" "Pipewarden")') if w[2] > 60]


def test_clicking_a_halt_in_the_tray_menu_clears_it_in_the_daemon(
    project: Project, x_session: dict[str, str], tmp_path: Path
):
    project.write("worker.py", WORKER)
    project.write("halts.yaml", HALT_RULES)
    project.configure(
        """
        outreach:
          stages:
            - {name: send, python: "worker:work", channel: "{data.contact_method}",
               retry: {max_attempts: 1}}
        """,
        rules=("halts.yaml",),
    )
    project.start_daemon()
    project.cli("enqueue", "outreach", "shop", "--data", '{"contact_method": "form"}')
    wait_until(lambda: _halted(project), "the form channel to halt")

    env = {**x_session, **project.env(), "PYSTRAY_BACKEND": "gtk"}
    tray = subprocess.Popen(
        ["dbus-run-session", "--", sys.executable, "-m", "pipewarden", "tray"],
        cwd=project.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        (x, y, width, height, _), *_ = wait_until(
            lambda: _windows(x_session, '"pipewarden: 1 halted (form)'), "the red tray icon"
        )
        right_click = [
            "xdotool", "mousemove", str(x + width // 2), str(y + height // 2), "click", "3",
        ]  # fmt: skip

        def open_menu() -> list:
            # A click that lands before GTK is ready for it is lost: click again until it opens.
            subprocess.run(right_click, env=x_session, check=True)
            return _wait_quietly(lambda: _menus(x_session), 1.0)

        wait_until(open_menu, "the menu to open")
        shot = tmp_path / "tray-menu.png"

        def icon_colour() -> tuple[int, int, int]:
            subprocess.run(["import", "-window", "root", str(shot)], env=x_session, check=True)
            with Image.open(shot) as screen:
                return screen.convert("RGB").getpixel((x + width // 2, y + 6))

        # The icon is drawn red (a channel is halted); the tray host may paint it a moment
        # after the window's title changed, so look until it shows.
        wait_until(lambda: icon_colour() == COLOURS["red"][:3], "the tray icon drawn red", 5.0)

        # Down selects "Halts" (the pipeline lines are not selectable), Right opens it.
        subprocess.run(["xdotool", "key", "Down", "Right"], env=x_session, check=True)
        submenu = wait_until(lambda: len(_menus(x_session)) == 2 and _menus(x_session), "Halts")
        sx, sy, swidth, sheight, _ = min(submenu, key=lambda w: w[2] * w[3])  # the one entry
        click = ["xdotool", "mousemove", str(sx + swidth // 2), str(sy + sheight // 2)]
        subprocess.run(click, env=x_session, check=True)
        subprocess.run(["xdotool", "click", "1"], env=x_session, check=True)

        wait_until(lambda: not _halted(project), "the daemon to clear the halt")
        store = project.store()
        (hold,) = store.Hold.select()
        store.close()
        assert hold.cleared_by.endswith("(api from 127.0.0.1)")  # the tray went through the API
        wait_until(lambda: _windows(x_session, '"pipewarden: 0 running'), "the icon to recover")

        project.stop_all()  # the daemon vanishes: the tray turns grey and keeps going
        wait_until(
            lambda: _windows(x_session, '"pipewarden: the daemon cannot be reached"'), "grey"
        )
        assert tray.poll() is None
    finally:
        tray.send_signal(signal.SIGTERM)
        tray.wait(10)


def _wait_quietly(predicate, seconds: float):
    try:
        return wait_until(predicate, "", timeout=seconds)
    except AssertionError:
        return None


def _halted(project: Project) -> bool:
    store = project.store()
    try:
        return bool(store.active_holds())
    finally:
        store.close()


def test_the_xorg_backend_shows_the_icon_and_says_menus_are_unavailable(
    project: Project, x_session: dict[str, str]
):
    project.write("worker.py", "def work(data):\n    return None\n")
    project.configure("p:\n  stages:\n    - {name: s, python: 'worker:work'}\n")
    project.start_daemon()
    wait_until(lambda: (project.state_dir / "api.token").exists(), "the API token")
    log = project.root / "tray.log"
    with log.open("w") as output:
        tray = subprocess.Popen(
            [sys.executable, "-m", "pipewarden", "tray"], cwd=project.root,
            env={**x_session, **project.env(), "PYSTRAY_BACKEND": "xorg"},
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: "has no menus" in log.read_text(), "the log to say so")
        wait_until(lambda: _windows(x_session, '"pipewarden: 0 running'), "the icon")
    finally:
        tray.send_signal(signal.SIGTERM)
        tray.wait(10)
