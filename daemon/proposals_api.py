"""The proposals on the API (issue 15): list, one with its counts, approve, reject.

    GET  /api/proposals[?state=pending]      the proposals (refreshed from the templates first)
    GET  /api/proposals/{id}                 one, with its counts (all, last 24 h, per stage)
    POST /api/proposals/{id}/approve         {"label", "group", "category", "match", "file"}
    POST /api/proposals/{id}/reject          {}

Inputs are checked by schema.py like every other route's; a bad one is a 400 with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pipewarden import proposals
from pipewarden.errors import UsageError
from pipewarden.schema import Param, Schema, body, query
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from pipewarden.daemon import Daemon

LIST_QUERY: Schema = {"state": Param(str, None, choices=proposals.STATES)}
APPROVE_BODY: Schema = {
    "label": Param(str, None), "group": Param(str, None, choices=proposals.GROUPS),
    "category": Param(str, None), "match": Param(str, None), "file": Param(str, None),
}  # fmt: skip


def proposal_routes(daemon: Daemon, who: Callable[[Request], str]) -> list[Route]:
    def proposal_id(request: Request) -> int:
        given = request.path_params["proposal_id"]
        if not given.isdigit():
            raise UsageError(f"'{given}' is not a proposal id (a whole number)")
        return int(given)

    async def listing(request: Request) -> Response:
        state = query(request, LIST_QUERY)["state"]
        now = daemon.clock.now()
        proposals.refresh(daemon.store, now)
        found = proposals.listed(daemon.store, state)
        return JSONResponse([p.as_dict() | {"counts": proposals.counts(daemon.store,
                             p.template_id, now)} for p in found])  # fmt: skip

    async def one(request: Request) -> Response:
        query(request, {})
        found = proposals.get(daemon.store, proposal_id(request))
        counted = proposals.counts(daemon.store, found.template_id, daemon.clock.now())
        return JSONResponse(found.as_dict() | {"counts": counted})

    async def approve(request: Request) -> Response:
        data = await body(request, APPROVE_BODY)
        target, added, tried = proposals.approve(
            daemon.store, daemon.config, proposal_id(request), who(request), daemon.clock.now(),
            data["file"], label=data["label"], group=data["group"], category=data["category"],
            pattern=data["match"],
        )  # fmt: skip
        return JSONResponse({"file": str(target), "added": added, "backtest": tried.as_dict()})

    async def reject(request: Request) -> Response:
        await body(request, {})
        decided = proposals.decide(
            daemon.store, proposal_id(request), "rejected", who(request), daemon.clock.now()
        )
        return JSONResponse(decided.as_dict())

    return [
        Route("/api/proposals", listing),
        Route("/api/proposals/{proposal_id}", one),
        Route("/api/proposals/{proposal_id}/approve", approve, methods=["POST"]),
        Route("/api/proposals/{proposal_id}/reject", reject, methods=["POST"]),
    ]
