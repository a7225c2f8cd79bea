"""A worker's stdout and stderr, read in bounded memory whatever the worker writes.

Pipes are read in chunks as they come; what is not kept is counted and dropped, never
gathered first. The daemon holds at most one protocol line (REPLY_LINE_MAX), the kept
output (OUTPUT_KEPT) and the stderr tail (STDERR_KEPT) per worker. A stdout line is a
protocol message only if it starts with "{" (see protocol.py); any other line streams
straight into the kept output. A "{" line over REPLY_LINE_MAX is a protocol error for
the attempt, never an ok. A long line is parsed in a thread, with reading paused. A
progress message is kept to MESSAGE_KEPT.

Undecodable bytes are kept readable as backslash escapes (`\\xff`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from pipewarden.limits import MESSAGE_KEPT, MIB, OUTPUT_KEPT, REPLY_LINE_MAX, STDERR_KEPT, cut
from pipewarden.protocol import Progress, Verdict, WorkerReport, parse_line

PARSE_ON_LOOP_MAX = 1 * MIB  # longer lines are parsed in a thread (a dense 16 MiB: ~0.2 s)

ProgressCallback = Callable[[Progress], None]
Parsed = WorkerReport | Progress | None


class Tail:
    """The last `limit` bytes of a stream, and how many bytes it carried in all."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self._kept = bytearray()

    def add(self, data: bytes | bytearray | memoryview) -> None:
        self.total += len(data)
        self._kept += data[-self.limit :]
        excess = len(self._kept) - self.limit
        if excess > 0:
            del self._kept[:excess]

    def text(self, since: int = 0) -> str | None:
        """What came after byte `since`, as text of at most `limit` bytes (None: nothing)."""
        wanted = self.total - since
        if wanted <= 0:
            return None
        kept = bytes(self._kept[-wanted:])
        dropped = wanted - len(kept)
        if dropped:  # the cut may have split a character: start at the next whole one
            whole = next((i for i, b in enumerate(kept[:4]) if b & 0xC0 != 0x80), 0)
            kept, dropped = kept[whole:], dropped + whole
        text = kept.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
        return cut(text, self.limit, dropped) or None


def last_line(text: str | None) -> str:
    """The last line with something on it, for an error text."""
    return next((line.strip() for line in reversed((text or "").splitlines()) if line.strip()), "")


class StderrReader(asyncio.Protocol):
    """Keeps a worker's stderr tail; `tail.text(mark)` gives one item's share of it."""

    def __init__(self) -> None:
        self.tail = Tail(STDERR_KEPT)
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.tail.add(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


_START, _MESSAGE, _TEXT, _OVERSIZE = range(4)  # where the reader is in the current line


class StdoutReader(asyncio.Protocol):
    """Splits a worker's stdout into protocol messages for the attempt listening and kept
    output. `closed` is set once every byte has been read and handled."""

    def __init__(self) -> None:
        self.output = Tail(OUTPUT_KEPT)
        self.closed = asyncio.Event()
        self.out_of_step = False  # a line over the limit: later replies may be misattributed
        self._state = _START
        self._line = bytearray()
        self._oversize = 0
        self._transport: asyncio.ReadTransport | None = None
        self._backlog = b""  # read but not yet split while a long line is parsed
        self._parsing = False
        self._lost = False
        # The attempts listening, in the order their items were sent: the first gets the
        # messages until its result line, then the next (a pool worker may be sent its next
        # item before it replies to the one it works on).
        self._listening: deque[tuple[asyncio.Future[WorkerReport], ProgressCallback]] = deque()
        self._output_mark = 0

    # -- the attempt's side ---------------------------------------------------------
    def begin(self, on_progress: ProgressCallback) -> asyncio.Future[WorkerReport]:
        """Listen for one attempt's messages, after those listening already; the future
        gets its result line."""
        reply: asyncio.Future[WorkerReport] = asyncio.get_running_loop().create_future()
        self._listening.append((reply, on_progress))
        return reply

    def end(self, reply: asyncio.Future[WorkerReport] | None = None) -> str | None:
        """Stop listening for `reply` (every attempt, if None); returns the output kept
        since the previous attempt ended."""
        if reply is None:
            self._listening.clear()
        else:
            self._listening = deque(pair for pair in self._listening if pair[0] is not reply)
        text = self.output.text(self._output_mark)
        self._output_mark = self.output.total
        return text

    # -- the pipe's side ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if (  # the usual read: one whole message, nothing pending
            self._state == _START
            and data[:1] == b"{"
            and data.find(b"\n") == len(data) - 1
            and len(data) <= PARSE_ON_LOOP_MAX
        ):
            self._handle(data, _parse(data))
        else:
            self._split(data, 0)

    def eof_received(self) -> None:
        if self._state != _START:  # a last line without its newline
            self._end_line()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self._parsing:
            self.closed.set()

    # -- splitting ------------------------------------------------------------------
    def _split(self, data: bytes, pos: int) -> None:
        view = memoryview(data)
        while pos < len(data):
            if self._state == _START:
                self._state = _MESSAGE if data[pos] == 0x7B else _TEXT  # "{"
            newline = data.find(b"\n", pos)
            end = len(data) if newline < 0 else newline + 1
            self._take(view[pos:end])
            pos = end
            if newline >= 0 and not self._end_line():
                self._backlog = data[pos:]  # split once the long line is parsed
                return

    def _take(self, piece: memoryview) -> None:
        if self._state == _TEXT:
            self.output.add(piece)
        elif self._state == _MESSAGE and len(self._line) + len(piece) <= REPLY_LINE_MAX + 1:
            self._line += piece  # + 1: the line's own newline
        elif self._state == _MESSAGE:
            self._oversize = len(self._line) + len(piece)
            self._line = bytearray()
            self._state = _OVERSIZE
        else:
            self._oversize += len(piece)

    def _end_line(self) -> bool:
        """Handle the line just ended; False when it went to be parsed in a thread."""
        state, self._state = self._state, _START
        if state == _OVERSIZE:
            self.out_of_step = True
            if not self._deliver(_too_long(self._oversize)):
                self.output.add(f"[a line of {self._oversize} bytes was dropped]\n".encode())
            return True
        if state != _MESSAGE:
            return True
        line, self._line = self._line, bytearray()
        if len(line) <= PARSE_ON_LOOP_MAX:
            self._handle(line, _parse(line))
            return True
        self._parsing = True
        if self._transport is not None:
            self._transport.pause_reading()
        parsing = asyncio.get_running_loop().run_in_executor(None, _parse, line)
        parsing.add_done_callback(lambda done: self._parsed(line, done.result()))
        return False

    def _parsed(self, line: bytearray, parsed: Parsed) -> None:
        self._parsing = False
        self._handle(line, parsed)
        backlog, self._backlog = self._backlog, b""
        self._split(backlog, 0)
        if self._parsing:
            return
        if self._lost:
            self.closed.set()
        elif self._transport is not None:
            self._transport.resume_reading()

    def _handle(self, line: bytes | bytearray, parsed: Parsed) -> None:
        if isinstance(parsed, Progress):
            if self._listening:
                on_progress = self._listening[0][1]
                on_progress(Progress(parsed.fraction, cut(parsed.message, MESSAGE_KEPT)))
        elif parsed is None or not self._deliver(parsed):
            self.output.add(line)  # plain output, or a reply nobody is waiting for

    def _deliver(self, report: WorkerReport) -> bool:
        while self._listening:
            reply, _ = self._listening.popleft()
            if not reply.done():  # one cancelled meanwhile listens no more
                reply.set_result(report)
                return True
        return False


def _parse(line: bytes | bytearray) -> Parsed:
    try:
        parsed = parse_line(line)  # type: ignore[arg-type]
    except Exception as exc:  # e.g. RecursionError on a line nested too deep: a bad reply
        return WorkerReport(
            Verdict.ERROR,
            error=f"invalid worker reply: {type(exc).__name__}",
            error_type="ProtocolError",
        )
    return None if isinstance(parsed, str) else parsed


def _too_long(size: int) -> WorkerReport:
    return WorkerReport(
        Verdict.ERROR,
        error=f"invalid worker reply: a line of {size} bytes, over the limit of"
        f" {REPLY_LINE_MAX} bytes",
        error_type="ProtocolError",
    )
