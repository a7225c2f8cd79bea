"""The HTTP/1.1 a command speaks to its own daemon's API: one request at a time on a kept
connection, over TCP to 127.0.0.1 or the daemon's Unix socket.

Not a general client: the peer is pipewarden's API (uvicorn), whose answers carry a
Content-Length (or, for a stream, chunks). The standard library's http.client would do, but
its import (email's parser, ssl) was a sixth of a one-item enqueue; the event stream, which
needs more, goes through httpx.
"""

from __future__ import annotations

import socket
from pathlib import Path

HEAD_MAX = 64 * 1024  # bytes of status line and headers an answer may have
TIMEOUT_S = 30.0


class ProtocolError(OSError):
    """What came back was not an HTTP answer this client reads."""


class Disconnected(ConnectionError):
    """The daemon closed the connection before answering (a kept one it let go of)."""


class Connection:
    """A connection to the API; `request` sends one request and reads its whole answer."""

    def __init__(self, sock: socket.socket, host: str):
        self._sock = sock
        self._host = host
        self._reader = sock.makefile("rb")
        self.closed = False

    @classmethod
    def tcp(cls, port: int, timeout: float = TIMEOUT_S) -> Connection:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle: a POST's body
        return cls(sock, f"127.0.0.1:{port}")  # goes out with its head

    @classmethod
    def unix(cls, path: Path, timeout: float = TIMEOUT_S) -> Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            raise
        return cls(sock, "localhost")

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:  # fmt: skip
        """(status, body) of the answer; OSError (Disconnected, ProtocolError) if none came."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        status, fields = self._read_head()
        content = self._read_body(fields)
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, content

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._reader.close()
            self._sock.close()

    def _read_head(self) -> tuple[int, dict[str, str]]:
        status_line = self._reader.readline(HEAD_MAX)
        if not status_line:
            raise Disconnected("the daemon closed the connection without answering")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP answer: {status_line[:80]!r}")
        fields: dict[str, str] = {}
        size = len(status_line)
        while (line := self._reader.readline(HEAD_MAX)) not in (b"\r\n", b"\n", b""):
            size += len(line)
            if size > HEAD_MAX:
                raise ProtocolError("the answer's headers are too long")
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        if not line:
            raise Disconnected("the daemon closed the connection in the middle of an answer")
        return int(parts[1]), fields

    def _read_body(self, fields: dict[str, str]) -> bytes:
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return self._read_chunks()
        length = fields.get("content-length")
        if length is None:  # the answer ends where the connection does
            content = self._reader.read()
            self.close()
            return content
        if not length.isdigit():
            raise ProtocolError(f"Content-Length is not a number: {length!r}")
        return self._read_exactly(int(length))

    def _read_chunks(self) -> bytes:
        content = bytearray()
        while True:
            size_line = self._reader.readline(HEAD_MAX).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ProtocolError(f"not a chunk's size: {size_line[:40]!r}") from None
            if size == 0:
                while self._reader.readline(HEAD_MAX) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(content)
            content += self._read_exactly(size)
            self._read_exactly(2)  # the chunk's CRLF

    def _read_exactly(self, size: int) -> bytes:
        content = self._reader.read(size)
        if len(content) < size:
            raise Disconnected("the daemon closed the connection in the middle of an answer")
        return content
