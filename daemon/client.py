"""How a command finds the daemon and its store, or says in one line why it cannot.

The daemon is reached through its Unix socket when the config names one (`api: {socket:
...}`; the system service's is /run/pipewarden/api.sock): the socket's group decides who
may connect, and no token is needed. Otherwise through 127.0.0.1 with the token in the
state dir, which only the daemon's user can read. A store that is missing where a
service keeps its state elsewhere, or that this user may not read, is one line that says
what to pass or which group to join, never an empty tree or a traceback.

Kept free of heavy imports: requests go through http11.py (a few lines of HTTP/1.1 on a
kept connection); httpx is imported only to follow the event stream.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pipewarden.errors import PipewardenError, UsageError
from pipewarden.http11 import Connection, Disconnected
from pipewarden.lock import running_daemon_pid

if TYPE_CHECKING:
    from pipewarden.config import Config

SERVICE_SOCKET = Path("/run/pipewarden/api.sock")  # the system unit's RuntimeDirectory=
TOKEN_FILE = "api.token"
PROBE_TIMEOUT_S = 2.0
API_START_WAIT_S = 5.0  # how long a command waits for a daemon that is starting its API
# Says what a token holder is ("cli", "tray") for the audit line of what it does; grants nothing.
CLIENT_HEADER = "x-pipewarden-client"


def owning_group(path: Path) -> str:
    """The group of `path`, or of its nearest folder this user may look at."""
    import grp

    for candidate in (path, *path.parents):
        try:
            gid = candidate.stat().st_gid
        except (PermissionError, FileNotFoundError):
            continue
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)
    return "?"


def join_the_group(group: str) -> str:
    user = getpass.getuser()
    return f"an admin adds you with `sudo usermod -aG {group} {user}`; then log in again"


def socket_answers(path: Path) -> bool:
    """True when a daemon listens on the socket at `path` and this user may connect; False
    when nothing does. A socket this user may not use is one line naming the group to join."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(PROBE_TIMEOUT_S)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return False
    except PermissionError:
        group = owning_group(path)
        raise PipewardenError(
            f"the daemon's socket {path} is for the group '{group}', and you"
            f" ({getpass.getuser()}) are not in it — {join_the_group(group)}"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise PipewardenError(f"cannot connect to the daemon's socket {path}: {exc}") from None
    finally:
        sock.close()
    return True


class DaemonApi:
    """The running daemon's API, as this user may reach it: its socket, else 127.0.0.1."""

    def __init__(self, config: Config):
        self.config = config
        self._connection: Connection | None = None  # made at the first request
        self.socket = config.api.socket if config.api.enabled else None
        if self.socket is not None and socket_answers(self.socket):
            self.running, self.token = True, ""
            return
        self.socket = None
        self.running = running_daemon_pid(config.state_dir) is not None and config.api.enabled
        self.token = self._read_token() if self.running else ""

    @property
    def via_socket(self) -> bool:
        return self.socket is not None

    @property
    def page(self) -> str:
        """Where a browser finds the page (a browser cannot use the socket)."""
        return f"http://127.0.0.1:{self.config.api.port}"

    @property
    def base(self) -> str:
        return "http://localhost" if self.socket else self.page

    @property
    def where(self) -> str:
        return str(self.socket) if self.socket else self.base

    def http(self, timeout: float = 30) -> Any:
        """An httpx client for the API (over the socket when there is one)."""
        import httpx

        # Plain HTTP to this host only: no TLS, so no CA bundle to load (40-140 ms a start);
        # no Nagle on TCP, so a POST's body is not held back behind its head.
        if self.socket:
            transport = httpx.HTTPTransport(uds=str(self.socket), verify=False)
        else:
            nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            transport = httpx.HTTPTransport(verify=False, socket_options=nodelay)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers[CLIENT_HEADER] = "cli"  # for the audit: what a person used
        return httpx.Client(
            base_url=self.base, transport=transport, headers=headers, timeout=timeout
        )

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._request("GET", path + (f"?{urlencode(params)}" if params else ""))

    def post(self, path: str, body: dict[str, Any], refusal_ok: bool = False) -> dict[str, Any]:
        """The answer; a refusal (400) raises with its reason unless `refusal_ok`."""
        return self._request("POST", path, refusal_ok, json.dumps(body).encode())

    def _request(
        self, method: str, path: str, refusal_ok: bool = False, body: bytes | None = None
    ) -> Any:
        status, content = self._send(method, path, body)
        try:
            answer = json.loads(content)
        except ValueError:  # not JSON: a fault in the daemon (its log says which)
            text = content[:200].decode(errors="replace")
            answer = {"error": f"the API answered {status}: {text}"}
        if status >= 400 and not (refusal_ok and status == 400):
            error = answer.get("error", f"the API answered {status}")
            # 400: the request was refused as it was asked (a typo, a bad value): exit 2
            raise UsageError(error) if status == 400 else PipewardenError(error)
        return answer

    def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """One request on the kept connection (one for every request: a bulk enqueue sends
        many)."""
        # A daemon that has just taken its lock may not serve its API (or have written its
        # token) yet: give it a moment before saying it does not answer.
        deadline = time.monotonic() + API_START_WAIT_S
        while True:
            if not self.token and not self.socket:
                self.token = self._read_token()
            reused = self._connection is not None
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = self._connect()
                return self._connection.request(method, path, body, self._headers(body))
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                self._close_connection()
                if time.monotonic() > deadline:
                    raise self._no_answer(exc) from None
                time.sleep(0.05)
            except (Disconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._close_connection()
                if not reused:  # a kept connection the daemon closed meanwhile: once more
                    raise self._no_answer(exc) from None
            except OSError as exc:
                self._close_connection()
                raise self._no_answer(exc) from None

    def _connect(self) -> Connection:
        if self.socket is None:
            return Connection.tcp(self.config.api.port)
        return Connection.unix(self.socket)

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {CLIENT_HEADER: "cli"}  # for the audit: what a person used
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _no_answer(self, exc: Exception) -> PipewardenError:
        return PipewardenError(f"the daemon's API at {self.where} did not answer: {exc}")

    def _read_token(self) -> str:
        with contextlib.suppress(OSError):  # unreadable: the API will say a token is needed
            return (self.config.state_dir / TOKEN_FILE).read_text().strip()
        return ""


def store_exists(config: Config, path: Path, look_elsewhere: bool = True) -> bool:
    """Whether the config's store (at `path`) is there. A store this user may not read is
    one line; so is a missing one while a service keeps its state elsewhere, when
    `look_elsewhere` (a command that reads: one that writes makes the store here)."""
    try:
        os.stat(path)
    except PermissionError:
        raise PipewardenError(_unreadable(config, path)) from None
    except FileNotFoundError:
        if (
            look_elsewhere
            and running_daemon_pid(config.state_dir) is None
            and (elsewhere := _service_elsewhere(config))
        ):
            raise PipewardenError(f"no store at {path}; {elsewhere}") from None
        return False
    if not os.access(path, os.R_OK):
        raise PipewardenError(_unreadable(config, path))
    return True


def _unreadable(config: Config, path: Path) -> str:
    socket_path = config.api.socket
    if socket_path is not None and socket_answers(socket_path):  # a stranger: the group line
        return (
            f"cannot read the store {path}: it is the daemon's own — `pipewarden status`,"
            f" `halts` and the commands that change things reach it through {socket_path};"
            " this one reads the store itself: run it as root or as the daemon's user"
        )
    if socket_path is not None:
        return (
            f"cannot read the store {path}: it is the daemon's own, and no daemon answers on"
            f" {socket_path} — start it (`systemctl start pipewarden`), or run this as root"
        )
    group = owning_group(path)
    return (
        f"cannot read the store {path}: permission denied — it is the daemon's (group"
        f" '{group}'): run this as the daemon's user, or name its socket in the config"
        f" (`api: {{socket: ...}}`) and join the group: {join_the_group(group)}"
    )


def _service_elsewhere(config: Config) -> str | None:
    """What to say when another daemon, not one on this config's state dir, is running."""
    for path in {p for p in (config.api.socket, SERVICE_SOCKET) if p is not None}:
        if socket_answers(path):
            state = _state_dir_behind(path)
            return (
                f"the service's state is {state}: pass --state-dir {state}"
                f" or set `state_dir: {state}` in {config.path}"
            )
    if config.api.enabled and health_answers(config.api.port):
        return (
            f"a pipewarden daemon answers on 127.0.0.1:{config.api.port} with another state"
            f" dir: pass --state-dir or set state_dir in {config.path}"
        )
    return None


def _state_dir_behind(path: Path) -> str:
    try:
        connection = Connection.unix(path, timeout=PROBE_TIMEOUT_S)
    except OSError:
        return "?"
    try:
        _, content = connection.request("GET", "/api/status")
        return str(json.loads(content or b"{}").get("daemon", {}).get("state_dir", "?"))
    except (OSError, ValueError):
        return "?"
    finally:
        connection.close()


def health_answers(port: int) -> bool:
    """True when a pipewarden daemon's /health answers on 127.0.0.1:`port`."""
    try:
        connection = Connection.tcp(port, timeout=PROBE_TIMEOUT_S)
    except OSError:
        return False
    try:
        status, content = connection.request("GET", "/health")
        return status == 200 and json.loads(content or b"{}").get("ok") is True
    except (OSError, ValueError):
        return False
    finally:
        connection.close()
