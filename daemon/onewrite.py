"""Each HTTP answer leaves in one write, not one for its head and one for its body.

uvicorn writes a response's status line and headers as soon as the app starts it, and its
body when the app sends that: two `send` calls on the socket for every answer, each of
which (on loopback, with TCP_NODELAY) wakes the reader. They were half of what the
loop spent on a `/api/status` answer. Here the writes a connection makes within one step
of the loop are joined and written once, at the loop's next turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a transport whose writes are joined per step."""

    def connection_made(self, transport: Any) -> None:  # an asyncio.Transport
        super().connection_made(transport)
        self.transport = JoinedWrites(transport, asyncio.get_running_loop())


class JoinedWrites:
    """A transport whose writes within one step of the loop go out as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending and not self._transport.is_closing():
            self._transport.write(b"".join(self._pending))
        self._pending.clear()

    def close(self) -> None:
        self._flush()  # what was written before the close still goes, as asyncio's would
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # reading, pausing, extra info: as they are
        return getattr(self._transport, name)
