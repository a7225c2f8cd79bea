"""An HTTP answer's head and body leave in one write to the socket (see onewrite.py)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import uvicorn
from pipewarden.onewrite import JoinedWrites, OneWriteProtocol
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


class _Writes:
    """asyncio's transport, its writes seen on their way."""

    def __init__(self, transport: asyncio.Transport, write: object):
        self._transport, self.write = transport, write

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def test_an_answers_head_and_body_are_one_send_and_all_of_it_arrives():
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello " * 1000)

    async def serve() -> tuple[list[int], list[str]]:
        protocols: list[OneWriteProtocol] = []

        class Counted(OneWriteProtocol):
            def connection_made(self, transport: asyncio.Transport) -> None:
                super().connection_made(transport)
                protocols.append(self)
                self.writes: list[int] = []

                def write(data: bytes) -> None:  # each a `send` on the socket, or its buffer
                    self.writes.append(len(data))
                    transport.write(data)

                self.transport._transport = _Writes(transport, write)

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            Starlette(routes=[Route("/", hello)]), http=Counted, log_level="warning",
            lifespan="off",
        )  # fmt: skip
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        port = sock.getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            bodies = [(await client.get("/")).text for _ in range(3)]
        server.should_exit = True
        await task
        return [len(p.writes) for p in protocols], bodies

    writes, bodies = asyncio.run(serve())
    assert bodies == ["hello " * 1000] * 3
    assert writes == [3]  # three answers on one kept connection: one write each


def test_a_close_sends_what_was_written_before_it():
    async def pair() -> bytes:
        received = asyncio.get_running_loop().create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            joined = JoinedWrites(writer.transport, asyncio.get_running_loop())
            joined.write(b"last ")
            joined.write(b"words")
            joined.close()  # in the same step: nothing written yet

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        received.set_result(await reader.read())  # to the end: the server closed
        writer.close()
        server.close()
        return received.result()

    assert asyncio.run(pair()) == b"last words"
