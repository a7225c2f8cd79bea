"""Who may use the API: the token's holder, and the page a person signed in with a one-time code.

Every request but the page's own HTML, /health and the code exchange carries a
credential in its `Authorization: Bearer` header: the API token (CLI, tray, scripts) or
a browser session (the page). No cookie is ever a credential. A browser sends a cookie
for 127.0.0.1 to every port on 127.0.0.1, so another local program would receive it and
could use it, and every page on any port could make the browser attach it; a header is
sent only by a script that holds its value. The page keeps its session in localStorage,
which a browser scopes to the exact origin, port included.

Sessions are minted from one-time codes: `pipewarden open` asks the daemon for a code
(with the token), opens the page with the code in the URL's fragment, and the page trades
it once, within 60 s, for a session. A session is the token's HMAC over when it was
issued, so a restart keeps the page signed in and a new token signs every page out.

On top of that, a request a browser marks as coming from another site (an `Origin` other
than the daemon's own, or `Sec-Fetch-Site` other than same-origin or none) is refused
before anything else, whatever it carries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pipewarden.client import CLIENT_HEADER
from pipewarden.socket_api import PEER as SOCKET_PEER
from starlette.types import ASGIApp, Receive, Scope, Send

LOGIN_CODE_TTL_S = 60.0  # a code in a URL is dead this soon after `pipewarden open`
LOGIN_CODES_KEPT = 16  # unused codes held at once; older ones are dropped
SESSION_TTL_S = 30 * 86400.0  # then the page asks for `pipewarden open` again
_SESSION_PREFIX = "pws1"
_CLOCK_SKEW_S = 300.0  # a session issued "in the future" by this much is refused

# The page's HTML holds no data and no secret: any navigation may load it (a link, a
# bookmark, a sign-in URL opened by another program).
PAGE_PATHS = frozenset({"/"})
# Need no credential, but are refused to other sites like every API call.
PUBLIC_PATHS = frozenset({"/health", "/api/session"})
# Need the token itself: a session cannot mint more sessions.
TOKEN_PATHS = frozenset({"/api/login-codes"})
TOKEN_CLIENTS = ("cli", "tray")  # what a token holder may say it is (CLIENT_HEADER)


@dataclass
class LoginCodes:
    """One-time sign-in codes, each good once within LOGIN_CODE_TTL_S of being issued."""

    _issued: dict[str, float] = field(default_factory=dict)

    def issue(self, now: float) -> str:
        self._issued = {
            code: at for code, at in self._issued.items() if now - at < LOGIN_CODE_TTL_S
        }
        while len(self._issued) >= LOGIN_CODES_KEPT:
            del self._issued[next(iter(self._issued))]
        code = secrets.token_urlsafe(24)
        self._issued[code] = now
        return code

    def redeem(self, code: str, now: float) -> bool:
        """True once for a code issued less than LOGIN_CODE_TTL_S ago; False ever after."""
        issued = self._issued.pop(code, None)
        return issued is not None and 0 <= now - issued < LOGIN_CODE_TTL_S


def new_session(token: str, now: float) -> str:
    issued = f"{_SESSION_PREFIX}.{int(now)}.{secrets.token_urlsafe(16)}"
    return f"{issued}.{_mac(token, issued)}"


def session_valid(token: str, session: str, now: float) -> bool:
    """True for a session this token issued within SESSION_TTL_S."""
    issued, _, mac = session.rpartition(".")
    parts = issued.split(".")
    if len(parts) != 3 or parts[0] != _SESSION_PREFIX or not parts[1].isdigit():
        return False
    if not hmac.compare_digest(mac, _mac(token, issued)):
        return False
    return -_CLOCK_SKEW_S <= now - int(parts[1]) < SESSION_TTL_S


def _mac(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def own_origins(port: int) -> frozenset[str]:
    return frozenset({f"http://127.0.0.1:{port}", f"http://localhost:{port}"})


def foreign_site(headers: Mapping[str, str], origins: frozenset[str]) -> str | None:
    """Why a browser's request comes from another site, or None when it does not say so.

    Clients that are not browsers send neither header and pass; a browser sends them on
    every request a page makes, and no page can forge or drop them.
    """
    origin = headers.get("origin")
    if origin is not None and origin not in origins:
        return f"a request from another site (Origin {origin[:100]})"
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"a request from another site (Sec-Fetch-Site {fetch_site[:30]})"
    return None


def client_of(headers: Mapping[str, str], token: str) -> str:
    """What a request came through, for the audit: "page" for a browser session (a session
    is only ever the page's); a token holder's own word otherwise ("cli", "tray"), or ""."""
    given = bearer(headers)
    if given and not hmac.compare_digest(given, token):
        return "page"  # the gate let it in with a credential that is not the token
    said = headers.get(CLIENT_HEADER, "")
    return said if said in TOKEN_CLIENTS else ""


def bearer(headers: Mapping[str, str]) -> str:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


@dataclass(frozen=True)
class Gate:
    """The API's one check of who may do what, and the sign-in codes it hands out.

    `GateMiddleware` runs it for every request to the app, whichever listener took it.
    """

    token: str
    origins: frozenset[str]
    now: Callable[[], float]
    codes: LoginCodes = field(default_factory=LoginCodes)

    def refusal(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, str] | None:
        """(status, reason) when the request may not go on, None when it may."""
        if path in PAGE_PATHS and method in ("GET", "HEAD"):
            return None
        if reason := foreign_site(headers, self.origins):
            return 403, f"{reason}: only the daemon's own page may call the API from a browser"
        if path in PUBLIC_PATHS:
            return None
        given = bearer(headers)
        if given and hmac.compare_digest(given, self.token):
            return None
        if path in TOKEN_PATHS:
            return 401, "the API token is required (Authorization: Bearer TOKEN)"
        if given and session_valid(self.token, given, self.now()):
            return None
        return 401, (
            "a valid token is required (Authorization: Bearer TOKEN); the page signs in"
            " with `pipewarden open`"
        )

    def login_code(self) -> str:
        return self.codes.issue(self.now())

    def sign_in(self, code: str) -> str | None:
        """A new session for a valid one-time code, or None."""
        now = self.now()
        return new_session(self.token, now) if self.codes.redeem(code, now) else None


class GateMiddleware:
    """Runs `Gate.refusal` before every HTTP request reaches a route, known or not."""

    def __init__(self, app: ASGIApp, gate: Gate):
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A request through the Unix socket was let in by its peer's credentials, and no
        # browser can reach a Unix socket: the token and origin checks are for TCP.
        if scope["type"] != "http" or scope.get(SOCKET_PEER) is not None:
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in scope["headers"]}  # fmt: skip
        refused = self.gate.refusal(scope["method"], scope["path"], headers)
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, reason = refused
        body = json.dumps({"error": reason}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
