"""Runs a `python: module:function` stage inside the worker process.

Started as `python -m pipewarden._runner module:function`; speaks the JSON-lines
protocol on behalf of a plain function, so user code never imports pipewarden:

    def capture(data: dict) -> dict | None          # returned dict merges into the item
    def send(data: dict, ctx) -> dict | None        # ctx.key, ctx.run, ctx.attempt,
                                                    # ctx.progress(0.5, "halfway")

Raising an exception fails the attempt with its type, message and traceback. A
returned dict holding "ok", "defer", "defer_until" or "ignore" is passed on as a
protocol reply as it is, e.g. `return {"defer": "1h"}` or `{"ignore": "reason"}`.

Per item, PIPEWARDEN_RUN_ID, PIPEWARDEN_ITEM, PIPEWARDEN_ATTEMPT and TRACEPARENT are set
in the environment, so what the function starts is marked with its run (see
containment.py). The runner dies with the daemon (PR_SET_PDEATHSIG): a worker of a
killed daemon does no more work.

Standard library only: this module is imported in every worker process.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

_PROTOCOL_KEYS = ("ok", "defer", "defer_until", "ignore")


class Context:
    """What a function that takes a second argument gets about its attempt."""

    def __init__(self, message: dict[str, Any], out: IO[str]):
        self.key: str = message.get("item", "")
        self.run: str = message.get("run", "")
        self.attempt: int = message.get("attempt", 1)
        self.traceparent: str = message.get("traceparent", "")
        self._out = out

    def progress(self, fraction: float | None = None, message: str = "") -> None:
        _send(self._out, {"progress": fraction, "message": message})


def main(argv: list[str]) -> int:
    if len(argv) != 2 or ":" not in argv[1]:
        print("usage: python -m pipewarden._runner module:function", file=sys.stderr)
        return 2
    _die_with_parent()
    # The protocol owns the real stdout; everything else that writes to fd 1 (the user's
    # prints, a library's banner, a subprocess) lands on stderr and cannot corrupt it.
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.path.insert(0, os.getcwd())
    function = _load(argv[1])
    wants_context = _takes_two_arguments(function)
    while line := sys.stdin.readline():
        if not line.strip():
            continue
        message = json.loads(line)
        _send(protocol_out, _call(function, message, wants_context, protocol_out))
    return 0


def _die_with_parent() -> None:
    """SIGKILL when the daemon that started this worker dies, however it dies (one that
    dies while this process starts up is the sentinel's to handle)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG


def _load(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    function = module
    for part in attribute.split("."):
        function = getattr(function, part)
    if not callable(function):
        raise TypeError(f"{target} is not callable")
    return function  # type: ignore[return-value]


def _takes_two_arguments(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in positional)


def _call(function: Callable[..., Any], message: dict[str, Any], wants_context: bool, out: IO[str]):
    data = message.get("data") or {}
    # W3C trace context for this item: the user's own tracing (OpenTelemetry) picks it up.
    os.environ["TRACEPARENT"] = message.get("traceparent", "")
    os.environ["PIPEWARDEN_RUN_ID"] = message.get("run", "")
    os.environ["PIPEWARDEN_ITEM"] = message.get("item", "")
    os.environ["PIPEWARDEN_ATTEMPT"] = str(message.get("attempt", 1))
    try:
        result = function(data, Context(message, out)) if wants_context else function(data)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return _describe_exception(exc)
    if result is None:
        return {"ok": True}
    if isinstance(result, dict) and any(key in result for key in _PROTOCOL_KEYS):
        return result
    if isinstance(result, dict):
        return {"ok": True, "data": result}
    return {"ok": True, "data": {"result": result}}


def _describe_exception(exc: BaseException) -> dict[str, Any]:
    name = type(exc).__name__
    text = str(exc)
    reply: dict[str, Any] = {
        "ok": False,
        "error": f"{name}: {text}" if text else name,
        "type": name,
        "types": [cls.__name__ for cls in type(exc).__mro__ if cls not in (object, BaseException)],
        "traceback": "".join(traceback.format_exception(exc)),
    }
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float):
        reply["retry_after"] = retry_after
    return reply


def _send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message, default=str, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
