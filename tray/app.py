"""`pipewarden tray`: the icon and its menu, fed by the daemon's API every two seconds.

It keeps no state of its own: what it shows comes from /api/status, what it does goes
through the API. A daemon that vanishes turns the icon grey; the tray keeps polling
and comes back to colour when the daemon does.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any

import httpx
from pipewarden.client import CLIENT_HEADER
from pipewarden.errors import PipewardenError
from pipewarden.tray.icon import draw_icon
from pipewarden.tray.model import SEPARATOR, MenuEntry, tray_state

log = logging.getLogger("pipewarden.tray")

POLL_S = 2.0  # the menu follows the daemon's state within this long
TIMEOUT_S = 3.0


def check_display() -> None:
    """One clear line instead of an Xlib traceback when there is no graphical session."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise PipewardenError(
            "no display: `pipewarden tray` needs a graphical session (DISPLAY is not set)"
        )


class DaemonClient:
    """The daemon's API: on 127.0.0.1 with the token, or on its Unix socket (`socket`), where
    the socket's group, not a token, decides who may connect."""

    def __init__(self, base_url: str, token: str = "", socket: Path | None = None):
        self.base_url = base_url  # the page's address, for the browser
        transport = httpx.HTTPTransport(uds=str(socket)) if socket is not None else None
        headers = {CLIENT_HEADER: "tray"}  # for the audit: what a person used
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            base_url="http://localhost" if socket is not None else base_url,
            headers=headers,
            transport=transport,
            timeout=TIMEOUT_S,
        )

    def status(self) -> dict[str, Any] | None:
        try:
            response = self.http.get("/api/status")
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError):
            return None

    def post(self, path: str, body: dict[str, Any]) -> None:
        try:
            self.http.post(path, json=body).raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("the daemon did not take %s: %s", path, exc)

    def sign_in_url(self) -> str | None:
        """The page's address with a one-time code (never the token) that signs a browser in."""
        try:
            response = self.http.post("/api/login-codes", json={})
            response.raise_for_status()
            return f"{self.base_url}/#code={response.json()['code']}"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("the daemon gave no sign-in code: %s", exc)
            return None


class TrayApp:
    def __init__(self, client: DaemonClient, pipelines: list[str]):
        self.client = client
        self.pipelines = pipelines
        self.state = tray_state(None)
        self._stop = threading.Event()
        self._icon: Any = None

    def run(self) -> None:
        # GTK names the app (window class, notifications) after argv[0], which is
        # "__main__.py" under `python -m pipewarden`.
        sys.argv[0] = "pipewarden"
        import pystray  # needs a display; imported only here

        self._icon = pystray.Icon(
            "pipewarden", draw_icon("grey"), self.state.tooltip, pystray.Menu(self._menu_items)
        )
        if not self._icon.HAS_MENU:
            log.warning(
                "this pystray backend (%s) has no menus: the icon shows the health only;"
                " install PyGObject for the gtk or appindicator backend",
                type(self._icon).__module__,
            )
        self._icon.run(setup=self._start_polling)

    def _start_polling(self, icon: Any) -> None:
        icon.visible = True
        threading.Thread(target=self._poll, name="poll", daemon=True).start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(POLL_S)

    def refresh(self) -> None:
        previous = self.state
        self.state = tray_state(self.client.status())
        icon = self._icon
        icon.icon = draw_icon(self.state.colour, self.state.badge)
        icon.title = self.state.tooltip
        icon.update_menu()
        notes = dict(zip(self.state.halts, self.state.halt_notes, strict=True))
        for target in set(self.state.halts) - set(previous.halts):
            self._tell(f"{target} halted", notes[target])

    def _tell(self, title: str, message: str) -> None:
        try:
            self._icon.notify(message, title)
        except Exception as exc:  # no notification daemon on this desktop: the icon is enough
            log.info("desktop notification not shown: %s", exc)

    # -- the menu ---------------------------------------------------------------------
    def _menu_items(self) -> Any:
        import pystray

        return tuple(self._to_pystray(entry, pystray) for entry in self.state.menu)

    def _to_pystray(self, entry: MenuEntry, pystray: Any) -> Any:
        if entry is SEPARATOR or entry.text == "-":
            return pystray.Menu.SEPARATOR
        if entry.children:
            submenu = pystray.Menu(*(self._to_pystray(child, pystray) for child in entry.children))
            return pystray.MenuItem(entry.text, submenu)
        action = entry.action
        return pystray.MenuItem(
            entry.text, lambda icon, item: self.act(action), enabled=entry.enabled and bool(action)
        )

    def act(self, action: str | None) -> None:
        if action is None:
            return
        if action.startswith("clear:"):
            self.client.post("/api/halts/clear", {"target": action.removeprefix("clear:")})
        elif action in ("pause_all", "resume_all"):
            verb = "pause" if action == "pause_all" else "resume"
            for pipeline in self.pipelines:
                self.client.post(f"/api/{verb}", {"scope": "pipeline", "target": pipeline})
        elif action == "reload":
            self.client.post("/api/reload", {})
        elif action.startswith("runbook:"):
            webbrowser.open(action.removeprefix("runbook:"))
        elif action == "open":
            url = self.client.sign_in_url()
            if url:
                webbrowser.open(url)
        elif action == "quit":
            self._stop.set()
            self._icon.stop()
            return
        self.refresh()
