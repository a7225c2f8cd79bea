"""A loopback TCP proxy in front of PostgreSQL that can lose the answer to a COMMIT: the
server commits, the client's connection drops before it hears so (as when a server stops
or the network breaks at that moment). The client cannot tell whether its commit landed."""

from __future__ import annotations

import contextlib
import socket
import threading

# The wire protocol's simple query "COMMIT" and the server's CommandComplete for it.
_COMMIT_QUERY = b"Q\x00\x00\x00\x0bCOMMIT\x00"
_COMMIT_DONE = b"C\x00\x00\x00\x0bCOMMIT\x00"


class LostReplyProxy:
    def __init__(self, port: int):
        self._server_port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lose_next = threading.Event()  # armed: the next COMMIT's answer is lost
        self.lost = threading.Event()  # set once it was
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str, user: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def lose_next_commit_answer(self) -> None:
        self.lost.clear()
        self._lose_next.set()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self._server_port))
            committing = threading.Event()  # this connection sent the armed COMMIT
            threading.Thread(target=self._to_server, args=(client, server, committing),
                             daemon=True).start()  # fmt: skip
            threading.Thread(target=self._to_client, args=(server, client, committing),
                             daemon=True).start()  # fmt: skip

    def _to_server(self, client: socket.socket, server: socket.socket, committing: threading.Event
                   ) -> None:  # fmt: skip
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if _COMMIT_QUERY in data and self._lose_next.is_set():
                    self._lose_next.clear()
                    committing.set()
                server.sendall(data)
        _close(client, server)

    def _to_client(self, server: socket.socket, client: socket.socket, committing: threading.Event
                   ) -> None:  # fmt: skip
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if committing.is_set() and _COMMIT_DONE in data:  # committed: not told
                    self.lost.set()
                    break
                client.sendall(data)
        _close(client, server)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
