"""The daemon's HTTP API on 127.0.0.1: status, runs, items, halts, control, events, metrics.

Starlette for routing and uvicorn to serve, inside the daemon's own event loop (so
every handler runs on the loop's thread, like the scheduler, and shares its store).
Every endpoint but /health needs the token kept in `api.token` (0600) in the state
dir, as `Authorization: Bearer TOKEN` or the page's HttpOnly, SameSite=Strict cookie.
Requests whose Host is not localhost or 127.0.0.1 are refused, so a page on another
site cannot reach the API through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hmac
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from pipewarden import control
from pipewarden.errors import PipewardenError
from pipewarden.metrics import Metrics
from pipewarden.render import run_as_dict
from pipewarden.status import hold_as_dict, status_snapshot
from pipewarden.story import item_story
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

if TYPE_CHECKING:
    from pipewarden.daemon import Daemon

TOKEN_FILE = "api.token"
COOKIE = "pipewarden_token"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and browsers from timing out
PAGE = Path(__file__).with_name("page.html")


def load_or_create_token(state_dir: Path) -> str:
    """The API token, created once with mode 0600; readable only by the daemon's user."""
    path = state_dir / TOKEN_FILE
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    os.chmod(path, 0o600)
    return path.read_text().strip()


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
        self.metrics = Metrics(daemon)
        self.app = _build_app(self)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
            lifespan="off",
        )  # fmt: skip
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind 127.0.0.1:port (an OSError says why not), then serve on that socket."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            raise
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start (port in use, ...)
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task

    # -- authentication ----------------------------------------------------------------
    def authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        given = given or request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given, self.token)


def _build_app(api: ApiServer) -> Starlette:
    daemon = api.daemon

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if not api.authorised(request):
                return JSONResponse({"error": "a valid token is required"}, status_code=401)
            try:
                return await handler(request)
            except PipewardenError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)

        return endpoint

    def who(request: Request) -> str:
        return f"{getpass.getuser()} (api from {request.client.host if request.client else '?'})"

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise PipewardenError("the request body must be a JSON object") from None
        if not isinstance(data, dict):
            raise PipewardenError("the request body must be a JSON object")
        return data

    def changed() -> None:
        daemon.wake()

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def status(request: Request) -> Response:
        snapshot = status_snapshot(
            daemon.config, daemon.store, daemon.clock.now(), request.query_params.get("pipeline"),
            request.query_params.get("verbose") == "1", daemon_running=True,
        )  # fmt: skip
        snapshot["daemon"] = {"running": True, "pid": os.getpid(),
                              "state_dir": str(daemon.config.state_dir)}  # fmt: skip
        return JSONResponse(snapshot)

    async def runs(request: Request) -> Response:
        q = request.query_params
        rows = daemon.store.recent_runs(
            min(int(q.get("limit", 50)), 1000), q.get("stage"), q.get("status"), q.get("pipeline")
        )
        return JSONResponse([run_as_dict(run) for run in rows])

    async def run_detail(request: Request) -> Response:
        matches = daemon.store.runs_with_prefix(request.path_params["run_id"])
        if len(matches) != 1:
            return JSONResponse({"error": "no such run", "matches": len(matches)}, status_code=404)
        return JSONResponse(run_as_dict(matches[0]))

    async def item(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(
            item_story(daemon.config, daemon.store, p["pipeline"], p["key"], daemon.clock.now())
        )

    async def halts(request: Request) -> Response:
        return JSONResponse([hold_as_dict(hold) for hold in daemon.store.active_holds()])

    async def clear_halt(request: Request) -> Response:
        target = (await body(request)).get("target", "")
        cleared = control.clear_halt(
            daemon.store, daemon.notifier, target, who(request), daemon.clock.now()
        )
        daemon.events.publish("halt_cleared", target=target, by=who(request))
        changed()
        return JSONResponse({"cleared": [hold_as_dict(hold) for hold in cleared]})

    async def pause(request: Request) -> Response:
        data = await body(request)
        added = control.pause(daemon.store, daemon.config, data.get("scope", ""),
                              data.get("target", ""), who(request), daemon.clock.now())  # fmt: skip
        changed()
        return JSONResponse({"paused": data.get("target"), "already": not added})

    async def resume(request: Request) -> Response:
        data = await body(request)
        was = control.resume(daemon.store, daemon.config, data.get("scope", ""),
                             data.get("target", ""), who(request), daemon.clock.now())  # fmt: skip
        changed()
        return JSONResponse({"resumed": data.get("target"), "was_paused": was})

    async def reload(request: Request) -> Response:
        await daemon.reload(f"api ({who(request)})")
        return JSONResponse(daemon.store.get_meta("reload"))

    async def enqueue(request: Request) -> Response:
        data = await body(request)
        items = [(str(i["key"]), i.get("data") or {}) for i in data.get("items", [])]
        result = control.enqueue(daemon.store, daemon.config, data.get("pipeline", ""), items,
                                 daemon.clock.now(), bool(data.get("force")))  # fmt: skip
        changed()
        return JSONResponse(asdict(result))

    async def retry(request: Request) -> Response:
        data = await body(request)
        count = control.retry(daemon.store, daemon.config, data, daemon.clock.now())
        changed()
        return JSONResponse({"label": data.get("label"), "items": count,
                             "dry_run": bool(data.get("dry_run"))})  # fmt: skip

    async def events(request: Request) -> Response:
        queue = daemon.events.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield ": connected\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    payload = json.dumps(event.data, default=str)
                    yield f"id: {event.id}\nevent: {event.type}\ndata: {payload}\n\n"
            finally:
                daemon.events.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})  # fmt: skip

    async def metrics(request: Request) -> Response:
        content, media_type = api.metrics.render()
        return Response(content, media_type=media_type)

    async def page(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:  # the signed-in link `pipewarden open` prints, used once
            if not hmac.compare_digest(token, api.token):
                return PlainTextResponse("wrong token", status_code=401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        if not api.authorised(request):
            return HTMLResponse(_LOGIN, status_code=401)
        return HTMLResponse(PAGE.read_text(), headers={"Cache-Control": "no-store"})

    async def login(request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token", ""))
        if not hmac.compare_digest(token, api.token):
            return HTMLResponse(_LOGIN, status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    routes = [
        Route("/health", health),
        Route("/", page),
        Route("/login", login, methods=["POST"]),
        Route("/metrics", guarded(metrics)),
        Route("/api/status", guarded(status)),
        Route("/api/runs", guarded(runs)),
        Route("/api/runs/{run_id}", guarded(run_detail)),
        Route("/api/items/{pipeline}/{key:path}", guarded(item)),
        Route("/api/halts", guarded(halts)),
        Route("/api/halts/clear", guarded(clear_halt), methods=["POST"]),
        Route("/api/pause", guarded(pause), methods=["POST"]),
        Route("/api/resume", guarded(resume), methods=["POST"]),
        Route("/api/reload", guarded(reload), methods=["POST"]),
        Route("/api/enqueue", guarded(enqueue), methods=["POST"]),
        Route("/api/retry", guarded(retry), methods=["POST"]),
        Route("/api/events", guarded(events)),
    ]
    return Starlette(
        routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=ALLOWED_HOSTS)]
    )


_LOGIN = """<!doctype html><meta charset="utf-8"><title>pipewarden</title>
<body style="font-family: system-ui; margin: 3em">
<h1>pipewarden</h1><p>Paste the API token (in <code>api.token</code> in the state directory),
or open the link <code>pipewarden open</code> prints.</p>
<form method="post" action="/login"><input name="token" type="password" size="48" autofocus>
<button>Sign in</button></form></body>"""
