"""The CLI's HTTP/1.1 (daemon/http11.py) against a server on 127.0.0.1 that answers as told:
the answers uvicorn gives, and the ways a connection ends early."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import closing

import pytest
from pipewarden.http11 import Connection, Disconnected, ProtocolError


class CannedServer:
    """Answers each request on one connection with the next of `answers`, then closes it."""

    def __init__(self, answers: list[bytes]):
        self.answers = answers
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn, conn.makefile("rb") as reader:
            for answer in self.answers:
                head = b""
                while (line := reader.readline()) not in (b"\r\n", b""):
                    head += line
                length = [int(h.split(b":")[1]) for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-length")]  # fmt: skip
                self.requests.append(head + (reader.read(length[0]) if length else b""))
                conn.sendall(answer)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def serve() -> Iterator:
    servers: list[CannedServer] = []

    def start(*answers: bytes) -> CannedServer:
        servers.append(CannedServer(list(answers)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_kept_connection_carries_requests_with_their_bodies_and_reads_lengths(serve):
    server = serve(
        b'HTTP/1.1 200 OK\r\ncontent-length: 9\r\ncontent-type: application/json\r\n\r\n{"ok": 1}',
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno",
    )
    connection = Connection.tcp(server.port)

    assert connection.request("POST", "/api/enqueue", b'{"a": 1}', {"X-A": "b"}) == (
        200, b'{"ok": 1}'
    )  # fmt: skip
    assert connection.request("GET", "/health") == (400, b"no")
    first = server.requests[0]
    assert first.startswith(b"POST /api/enqueue HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"X-A: b\r\n" in first and first.endswith(b'\r\n{"a": 1}')
    connection.close()


def test_chunked_and_until_close_answers_are_read_whole(serve):
    chunked = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
                    b"3;x=y\r\nefg\r\n0\r\n\r\n")  # fmt: skip
    with closing(Connection.tcp(chunked.port)) as connection:
        assert connection.request("GET", "/") == (200, b"abcdefg")

    until_close = serve(b"HTTP/1.0 200 OK\r\n\r\nall of it")
    connection = Connection.tcp(until_close.port)
    assert connection.request("GET", "/") == (200, b"all of it")
    assert connection.closed


def test_a_connection_the_server_ends_is_disconnected_and_garbage_is_refused(serve):
    ends = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    connection = Connection.tcp(ends.port)
    assert connection.request("GET", "/") == (200, b"ok")
    with pytest.raises(ConnectionError):  # Disconnected, or the reset of a write to it
        connection.request("GET", "/")
    connection.close()

    cut = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with (
        closing(Connection.tcp(cut.port)) as connection,
        pytest.raises(Disconnected, match="in the middle of an answer"),
    ):
        connection.request("GET", "/")

    garbage = serve(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    with closing(Connection.tcp(garbage.port)) as connection, pytest.raises(ProtocolError):
        connection.request("GET", "/")
