"""The daemon's HTTP API on 127.0.0.1: status, runs, items, halts, control, events, metrics.

Starlette for routing and uvicorn to serve, inside the daemon's own event loop (so
every handler runs on the loop's thread, like the scheduler). Reads go to a thread with a
read-only connection of its own (`reads.py`), so they never hold up a dispatch; the
status snapshot is computed at most once per `reads.FRESH_S` and shared by every reader,
and the event stream is written in batches (`events.py`): watching costs almost nothing.
Who may call it is `auth.py`'s part: every endpoint but the page's HTML, /health and the
code exchange needs the token kept in `api.token` (0600) in the state dir, or a session
of the page's, in an `Authorization: Bearer` header; a browser's request from another
site is refused. What each endpoint takes is declared in `schema.py`'s terms above its
handler; anything else is a 400 with the reason. Requests whose Host is not localhost or
127.0.0.1 are refused, so a page on another site cannot reach the API through DNS
rebinding.
With `api: {socket: PATH}` the same app also answers on a Unix socket, where the
peer's credentials (SO_PEERCRED, the socket's group) stand in for the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import secrets
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import peewee
import uvicorn
from pipewarden import audit, charts, control, faults, finds
from pipewarden.advising import advise_snapshot
from pipewarden.auth import (
    LOGIN_CODE_TTL_S,
    SESSION_TTL_S,
    Gate,
    GateMiddleware,
    client_of,
    own_origins,
)
from pipewarden.errors import PipewardenError, UsageError
from pipewarden.inputs import items_field
from pipewarden.limits import API_RUNS_MAX
from pipewarden.loopshare import LoopBudget, LoopShare
from pipewarden.metrics import Metrics
from pipewarden.onewrite import OneWriteProtocol
from pipewarden.proposals_api import proposal_routes
from pipewarden.reads import Reader, SnapshotAnswers, SnapshotCache
from pipewarden.render import run_as_dict
from pipewarden.schema import Param, RequestTooLarge, Schema, body, query
from pipewarden.socket_api import PEER, bind_unix_socket, protocol_for
from pipewarden.status import hold_as_dict, status_snapshot
from pipewarden.store import HeldChange, Store
from pipewarden.story import item_story
from pipewarden.types import RunStatus
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from pipewarden.daemon import Daemon

TOKEN_FILE = "api.token"
OLD_COOKIE = "pipewarden_token"  # what versions before sessions kept the token in
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and browsers from timing out
PAGE = Path(__file__).with_name("page.html")


def load_or_create_token(state_dir: Path) -> str:
    """The API token, created once with mode 0600; readable only by the daemon's user."""
    path = state_dir / TOKEN_FILE
    if not path.exists():
        # Written whole under another name, then linked in: a CLI reading at the same
        # moment sees either no token file or the whole token, never an empty one.
        draft = state_dir / f".{TOKEN_FILE}.{os.getpid()}"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        with contextlib.suppress(FileExistsError):  # another daemon start won the race
            os.link(draft, path)
        draft.unlink()
    os.chmod(path, 0o600)
    return path.read_text().strip()


async def _serving(server: uvicorn.Server, sock: socket.socket) -> asyncio.Task[None]:
    """Serve on `sock` in the background, once it has started (or raise why it could not)."""
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start (port in use, ...)
        await asyncio.sleep(0.01)
    return task


class _QuietServer(uvicorn.Server):
    """uvicorn inside our loop: the daemon, not uvicorn, handles SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    def __init__(self, daemon: Daemon, port: int):
        self.daemon = daemon
        self.port = port
        self.token = load_or_create_token(daemon.config.state_dir)
        self.gate = Gate(self.token, own_origins(port), daemon.clock.now)
        self.closing = asyncio.Event()  # set when the API stops: the event streams end
        self.metrics = Metrics(daemon)
        self.reads = Reader(daemon.config.state_dir, daemon.config)
        self.snapshots = SnapshotCache(self._status_answer)
        self.metrics.watch_snapshots(self.snapshots)
        self.loop_budget = LoopBudget(busy=lambda: daemon.working)
        self.metrics.watch_loop_budget(self.loop_budget)
        self.app = _build_app(self)
        # No proxy stands in front (127.0.0.1 only): uvicorn's default trusted a local
        # client's X-Forwarded-For, so any program could name another address in the audit.
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, http=OneWriteProtocol, log_level="warning",
            access_log=False, lifespan="off", proxy_headers=False,
        )  # fmt: skip
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None
        self.socket_path = daemon.config.api.socket
        self._socket_server: _QuietServer | None = None
        self._socket_task: asyncio.Task[None] | None = None

    async def _status_answer(self, only: str | None, verbose: bool) -> bytes:
        """The status snapshot as its JSON body, read and encoded in the reads thread."""
        daemon = self.daemon
        config, now, fault = daemon.config, daemon.clock.now(), daemon.outage.fault
        health = {"running": True, "pid": os.getpid(), "state_dir": str(config.state_dir),
                  "store_fault": str(fault) if fault else None}  # fmt: skip

        def answer(store: Store) -> bytes:
            snapshot = status_snapshot(config, store, now, only, verbose, daemon_running=True)
            snapshot["daemon"] = health
            advise_snapshot(snapshot, daemon.rules)  # the rules in force: halts and labels
            return _json_body(snapshot)

        return await self.reads.run(answer)

    async def start(self) -> None:
        """Bind 127.0.0.1:port (an OSError says why not), then serve on that socket."""
        # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it each answer's body waited for the client's delayed ACK (40 ms a request
        # on a kept-alive connection: the page, the tray and every poller).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            raise
        self._task = await _serving(self._server, sock)
        if self.socket_path is not None:
            await self._serve_socket(self.socket_path)

    async def _serve_socket(self, path: Path) -> None:
        """The same app on a Unix socket, where SO_PEERCRED and the socket's group stand in
        for the token (see socket_api)."""
        sock = bind_unix_socket(path)
        config = uvicorn.Config(
            self.app, http=protocol_for(path.stat().st_gid), log_level="warning",
            access_log=False, lifespan="off", proxy_headers=False,
        )  # fmt: skip
        self._socket_server = _QuietServer(config)
        self._socket_task = await _serving(self._socket_server, sock)

    async def stop(self) -> None:
        self.closing.set()
        for server, task in ((self._server, self._task),
                             (self._socket_server, self._socket_task)):  # fmt: skip
            if server is not None and task is not None:
                server.should_exit = True
                await task
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        self.reads.close()


# What each endpoint takes, in schema.py's terms; the route's path parameters are
# Starlette's. An endpoint that reads no query or body takes NOTHING and refuses extras.
NOTHING: Schema = {}
STATUS_QUERY: Schema = {"pipeline": Param(str, None), "verbose": Param(bool, False)}
RUNS_QUERY: Schema = {
    "limit": Param(int, 50, clamp=(1, API_RUNS_MAX)),
    "stage": Param(str, None),
    "status": Param(str, None, choices=tuple(status.value for status in RunStatus)),
    "pipeline": Param(str, None),
}
CLEAR_BODY: Schema = {"target": Param(str)}
HOLD_BODY: Schema = {
    "scope": Param(str, choices=control.SCOPES), "target": Param(str),
    "known_only": Param(bool, False),  # a channel no item has had: refused as a typo (the CLI)
}  # fmt: skip
ENQUEUE_BODY: Schema = {"pipeline": Param(str), "items": Param(list), "force": Param(bool, False)}
RETRY_BODY: Schema = {
    "label": Param(str), "pipeline": Param(str, None), "stage": Param(str, None),
    "since_s": Param(float, None, above=0), "dry_run": Param(bool, False),
    "force": Param(bool, False), "before": Param(float, None), "limit": Param(int, None, above=0),
}  # fmt: skip
RELEASE_BODY: Schema = {
    "pipeline": Param(str), "keys": Param(list, None), "all_held": Param(bool, False),
    "dry_run": Param(bool, False),
}  # fmt: skip
FAIL_BODY: Schema = {**RELEASE_BODY, "reason": Param(str)}
SESSION_BODY: Schema = {"code": Param(str)}
# A page that shows the latest runs asks for no more of them a batch (`events.py`).
EVENTS_QUERY: Schema = {"latest_runs": Param(int, None, clamp=(1, 1000))}

# The page is public (it holds no data and no secret), but no other site may frame it.
PAGE_HEADERS = {
    "Cache-Control": "no-store", "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
}  # fmt: skip
SIGN_IN_REFUSED = (
    "this sign-in link is unknown, used already or older than"
    f" {LOGIN_CODE_TTL_S:.0f} s: run `pipewarden open` again"
)


def _build_app(api: ApiServer) -> Starlette:
    daemon = api.daemon

    def who(request: Request) -> str:
        """By whom and through what, for the audit and the holds: "alice via page (api
        from 127.0.0.1)"; a client that does not say what it is is left at "alice (api …)"."""
        via = client_of(request.headers, api.token)
        named = f" via {via}" if via else ""
        if (peer := request.scope.get(PEER)) is not None:
            return f"{peer.name}{named} (uid {peer.uid}, api socket)"
        host = request.client.host if request.client else "?"
        return f"{getpass.getuser()}{named} (api from {host})"

    def changed() -> None:
        api.snapshots.invalidate()  # who changed something sees it in the next status
        daemon.wake()

    async def health(request: Request) -> Response:
        query(request, NOTHING)
        return JSONResponse({"ok": True})

    async def status(request: Request) -> Response:
        q = query(request, STATUS_QUERY)
        body = await api.snapshots.get(q["pipeline"], q["verbose"])
        return Response(body, media_type="application/json")

    async def runs(request: Request) -> Response:
        q = query(request, RUNS_QUERY)

        def read(store: Store) -> list[dict]:
            rows = store.recent_runs(q["limit"], q["stage"], q["status"], q["pipeline"])
            return [run_as_dict(run) for run in rows]

        return JSONResponse(await api.reads.run(read))

    async def run_detail(request: Request) -> Response:
        query(request, NOTHING)
        prefix = request.path_params["run_id"]
        matches = await api.reads.run(
            lambda store: [run_as_dict(run) for run in store.runs_with_prefix(prefix)]
        )
        if len(matches) != 1:
            return JSONResponse({"error": "no such run", "matches": len(matches)}, status_code=404)
        return JSONResponse(matches[0])

    async def item(request: Request) -> Response:
        query(request, NOTHING)
        p, config, now = request.path_params, daemon.config, daemon.clock.now()
        story = await api.reads.run(
            lambda store: item_story(config, store, p["pipeline"], p["key"], now)
        )
        return JSONResponse(story)

    async def halts(request: Request) -> Response:
        query(request, NOTHING)
        holds = await api.reads.run(lambda store: store.active_holds())
        return JSONResponse([hold_as_dict(hold) for hold in holds])

    async def clear_halt(request: Request) -> Response:
        target = (await body(request, CLEAR_BODY))["target"]
        cleared = control.clear_halt(
            daemon.store, daemon.notifier, target, who(request), daemon.clock.now()
        )
        daemon.events.publish("halt_cleared", target=target, by=who(request))
        changed()
        return JSONResponse({"cleared": [hold_as_dict(hold) for hold in cleared]})

    async def pause(request: Request) -> Response:
        data = await body(request, HOLD_BODY)
        added = control.pause(daemon.store, daemon.config, data["scope"], data["target"],
                              who(request), daemon.clock.now(), data["known_only"])  # fmt: skip
        changed()
        return JSONResponse({"paused": data["target"], "already": not added})

    async def resume(request: Request) -> Response:
        data = await body(request, HOLD_BODY)
        was = control.resume(daemon.store, daemon.config, data["scope"], data["target"],
                             who(request), daemon.clock.now(), data["known_only"])  # fmt: skip
        changed()
        return JSONResponse({"resumed": data["target"], "was_paused": was})

    async def reload(request: Request) -> Response:
        result = await daemon.reload(f"api ({who(request)})")  # a bad edit: 400 with why
        api.snapshots.invalidate()
        control.note_reload(daemon.store, result, who(request), daemon.clock.now())
        return JSONResponse(result, status_code=200 if result["ok"] else 400)

    async def enqueue(request: Request) -> Response:
        data = await body(request, ENQUEUE_BODY)
        # Off the loop (its own connection, its own transaction): the CLI sends a big file in
        # chunks, and the loop serves /health and runs workers between and during them.
        result = await asyncio.to_thread(
            control.enqueue, daemon.store, daemon.config, data["pipeline"], items_field(data),
            daemon.clock.now(), data["force"],
        )  # fmt: skip
        changed()
        return JSONResponse(asdict(result))

    async def retry(request: Request) -> Response:
        data = await body(request, RETRY_BODY)
        # Off the loop, as an enqueue: the CLI sends a big retry in chunks.
        count = await asyncio.to_thread(
            control.retry, daemon.store, daemon.config, data, who(request), daemon.clock.now()
        )
        changed()
        return JSONResponse({"label": data["label"], "items": count, "dry_run": data["dry_run"],
                             "held": control.held_count(daemon.store, data)})  # fmt: skip

    def held_keys(data: dict) -> list[str] | None:
        if data["all_held"] == (data["keys"] is not None):
            raise UsageError("give 'keys' or 'all_held': true (one of them)")
        return data["keys"]

    def held_answer(data: dict, change: HeldChange, verb: str) -> Response:
        if change.changed and not data["dry_run"]:
            changed()
        return JSONResponse(
            {"pipeline": data["pipeline"], verb: change.changed, "dry_run": data["dry_run"],
             "not_held": change.not_held}
        )  # fmt: skip

    async def release(request: Request) -> Response:
        data = await body(request, RELEASE_BODY)
        change = control.release(daemon.store, daemon.config, data["pipeline"], held_keys(data),
                                 who(request), daemon.clock.now(), data["dry_run"])  # fmt: skip
        return held_answer(data, change, "released")

    async def fail(request: Request) -> Response:
        data = await body(request, FAIL_BODY)
        change = control.fail(daemon.store, daemon.config, data["pipeline"], held_keys(data),
                              data["reason"], who(request), daemon.clock.now(),
                              data["dry_run"])  # fmt: skip
        return held_answer(data, change, "failed")

    async def events(request: Request) -> Response:
        subscription = daemon.events.subscribe(query(request, EVENTS_QUERY)["latest_runs"])

        async def stream() -> AsyncIterator[bytes]:
            # Ends when the API stops: uvicorn waits for open responses, and a page left
            # open would otherwise hold up the daemon's stop.
            closing = asyncio.ensure_future(api.closing.wait())
            try:
                yield b": connected\n\n"
                while not closing.done():
                    # One write per batch: several frames, as the page's reader expects them.
                    batch = await subscription.next(closing, KEEPALIVE_S)
                    if not closing.done():
                        yield batch or b": keep-alive\n\n"
            finally:
                closing.cancel()
                daemon.events.unsubscribe(subscription)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})  # fmt: skip

    async def metrics(request: Request) -> Response:
        query(request, NOTHING)
        content, media_type = await api.reads.run(api.metrics.render)
        return Response(content, media_type=media_type)

    async def page(request: Request) -> Response:
        response = HTMLResponse(PAGE.read_text(), headers=PAGE_HEADERS)
        if OLD_COOKIE in request.cookies:  # it holds the token: stop it going to every port
            response.delete_cookie(OLD_COOKIE, path="/")
        return response

    async def login_code(request: Request) -> Response:
        query(request, NOTHING)
        return JSONResponse({"code": api.gate.login_code(), "expires_in_s": LOGIN_CODE_TTL_S})

    async def session(request: Request) -> Response:
        minted = api.gate.sign_in((await body(request, SESSION_BODY))["code"])
        if minted is None:
            return JSONResponse({"error": SIGN_IN_REFUSED}, status_code=401)
        return JSONResponse({"session": minted, "expires_in_s": SESSION_TTL_S})

    routes = [
        Route("/health", health),
        Route("/", page),
        Route("/metrics", metrics),
        Route("/api/login-codes", login_code, methods=["POST"]),
        Route("/api/session", session, methods=["POST"]),
        Route("/api/status", status),
        Route("/api/runs", runs),
        Route("/api/runs/{run_id}", run_detail),
        Route("/api/items/{pipeline}/{key:path}", item),
        Route("/api/halts", halts),
        Route("/api/halts/clear", clear_halt, methods=["POST"]),
        Route("/api/pause", pause, methods=["POST"]),
        Route("/api/resume", resume, methods=["POST"]),
        Route("/api/reload", reload, methods=["POST"]),
        Route("/api/enqueue", enqueue, methods=["POST"]),
        Route("/api/retry", retry, methods=["POST"]),
        Route("/api/release", release, methods=["POST"]),
        Route("/api/fail", fail, methods=["POST"]),
        Route("/api/events", events),
        *proposal_routes(daemon, who),  # issue 15: /api/proposals...
        *_console_routes(api, who),
    ]
    middleware = [
        Middleware(LoopShare, budget=api.loop_budget),  # the work keeps its pace
        Middleware(TrustedHostMiddleware, allowed_hosts=ALLOWED_HOSTS),
        Middleware(GateMiddleware, gate=api.gate),
        Middleware(  # the most asked answer, without the router's steps
            SnapshotAnswers, snapshots=api.snapshots, schema=STATUS_QUERY, path="/api/status"
        ),
    ]

    async def store_trouble(request: Request, exc: Exception) -> Response:
        """The store failing under a request (full, read-only, damaged): its line, 503."""
        if (fault := faults.fault_of(exc, daemon.outage.path)) is None:
            raise exc
        return JSONResponse({"error": str(fault)}, status_code=503)

    handlers = {PipewardenError: _refused, faults.StoreFault: store_trouble}
    handlers |= {sqlite3.Error: store_trouble, peewee.PeeweeException: store_trouble}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)


def _json_body(content: object) -> bytes:
    """What JSONResponse would send for `content`."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


# -- what the page finds and draws (issue 14): runs by filter, a run's record, held items,
# charts, the audit, the rules' advice. Read only: every change goes through the routes above.
FIND_RUNS_QUERY: Schema = {
    "pipeline": Param(str, None), "stage": Param(str, None), "label": Param(str, None),
    "status": Param(str, None, choices=(*(s.value for s in RunStatus), finds.FAILURES)),
    "since": Param(float, None), "until": Param(float, None),
    "before": Param(float, None), "before_id": Param(str, None),
    "limit": Param(int, 50, clamp=(1, API_RUNS_MAX)),
}  # fmt: skip
HELD_QUERY: Schema = {"pipeline": Param(str, None), "limit": Param(int, 100, clamp=(1, 500))}
CHARTS_QUERY: Schema = {"pipeline": Param(str, None), "hours": Param(int, 24, clamp=(1, 168))}
AUDIT_QUERY: Schema = {"limit": Param(int, 50, clamp=(1, audit.AUDIT_SHOWN_MAX))}


def _console_routes(api: ApiServer, who: Callable[[Request], str]) -> list[Route]:
    daemon = api.daemon

    async def find_runs(request: Request) -> Response:
        q = query(request, FIND_RUNS_QUERY)
        if (q["before"] is None) != (q["before_id"] is None):
            raise UsageError("give 'before' and 'before_id' together (the last run seen)")
        if q["pipeline"] is not None:
            daemon.config.pipeline(q["pipeline"])  # a typo is a 400 naming the pipelines
        wanted = finds.RunFilter(
            q["pipeline"], q["stage"], q["status"], q["label"], q["since"], q["until"],
            None if q["before"] is None else (q["before"], q["before_id"]),
        )  # fmt: skip
        return JSONResponse(finds.find_runs(daemon.store, wanted, q["limit"]))

    async def run_record(request: Request) -> Response:
        query(request, NOTHING)
        record = finds.run_record(daemon.store, daemon.rules, request.path_params["run_id"])
        if record is None:
            return JSONResponse({"error": "no such run (or the prefix fits several)"},
                                status_code=404)  # fmt: skip
        return JSONResponse(record)

    async def held(request: Request) -> Response:
        q = query(request, HELD_QUERY)
        return JSONResponse(finds.held_items(daemon.store, q["pipeline"], q["limit"]))

    async def stage_charts(request: Request) -> Response:
        q = query(request, CHARTS_QUERY)
        if q["pipeline"] is not None:
            daemon.config.pipeline(q["pipeline"])
        now = daemon.clock.now()
        charts_ = charts.stage_charts(daemon.store, daemon.config, q["pipeline"], now, q["hours"])
        return JSONResponse({"now": now, "hours": q["hours"], "charts": charts_})

    async def audit_lines(request: Request) -> Response:
        q = query(request, AUDIT_QUERY)
        return JSONResponse(audit.recent(daemon.store, q["limit"]))

    async def advice(request: Request) -> Response:
        query(request, NOTHING)
        return JSONResponse(finds.advice_by_label(daemon.rules))

    return [
        Route("/api/find/runs", find_runs),
        Route("/api/find/runs/{run_id}", run_record),
        Route("/api/find/held", held),
        Route("/api/charts", stage_charts),
        Route("/api/audit", audit_lines),
        Route("/api/advice", advice),
    ]


async def _refused(request: Request, exc: Exception) -> Response:
    """A PipewardenError is the client's to fix: its text is the answer, never a traceback."""
    status = 413 if isinstance(exc, RequestTooLarge) else 400
    return JSONResponse({"error": str(exc)}, status_code=status)
