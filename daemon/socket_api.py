"""The API on a Unix socket: the way in for a desktop user's tray and CLI, with no token.

The socket (`api: {socket: ...}`, /run/pipewarden/api.sock for the service) is mode
0660 and belongs to the daemon's group: the kernel lets only that group's members (and
root) connect. The daemon checks again with SO_PEERCRED, so a socket whose mode someone
loosened still lets no stranger in, and it names the person in what they changed.
A peer the check refuses gets 403 with the line that says how to join.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipewarden.errors import PipewardenError
from uvicorn.protocols.http.h11_impl import H11Protocol

PEER = "pipewarden.peer"  # the ASGI scope key of a request that came through the socket
SOCKET_MODE = 0o660
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a socket connection, as the kernel says."""

    pid: int
    uid: int
    name: str
    allowed: bool

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid}, api socket)"


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening socket at `path`, mode 0660, in the daemon's group; a stale one replaced."""
    if len(os.fsencode(path)) > 107:
        raise PipewardenError(f"api socket {path}: the path is too long — choose a shorter one")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            if _answers(path):
                raise PipewardenError(
                    f"another daemon serves its API on {path} — stop it, or give this one"
                    " another `api: {socket: ...}`"
                )
            path.unlink()  # left by a daemon that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)  # the umask (077) would keep the group out
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise PipewardenError(
            f"cannot serve the API on {path}: {exc.strerror} — the folder must exist and be"
            " the daemon's (RuntimeDirectory= under systemd)"
        ) from None
    return sock


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> tuple[str, int | None]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return f"uid {uid}", None
    return entry.pw_name, entry.pw_gid


def peer_of(sock: socket.socket, group: int) -> Peer:
    """The connected peer, and whether it may use the API: root, the daemon's own user, or a
    member of `group` (the socket's) as the user and group database says."""
    pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    name, primary = _user_name(uid)
    if uid in (0, os.getuid()):
        return Peer(pid, uid, name, True)
    groups = os.getgrouplist(name, primary) if primary is not None else []
    return Peer(pid, uid, name, group in groups)


def refusal(peer: Peer, group: int) -> str:
    group_text = group_name(group)
    return (
        f"{peer.name} is not in the group '{group_text}', which this socket is for — an admin"
        f" adds you with `usermod -aG {group_text} {peer.name}`; then log in again"
    )


def _answer_403(text: str) -> Any:
    body = json.dumps({"error": text}).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _with_peer(app: Any, peer: Peer) -> Any:
    async def with_peer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, PEER: peer}, receive, send)

    return with_peer


def protocol_for(group: int) -> type[H11Protocol]:
    """uvicorn's HTTP protocol, which learns each connection's peer once, when it connects."""

    class PeerCheckedProtocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            peer = peer_of(transport.get_extra_info("socket"), group)
            self.app = (
                _with_peer(self.app, peer) if peer.allowed else _answer_403(refusal(peer, group))
            )

    return PeerCheckedProtocol
