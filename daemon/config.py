"""The config file: pipelines, their stages, and where state and rules live.

Loaded safely (see `_yaml`) and validated into frozen dataclasses; every error names
file:line:column and what to write instead (see `_yaml.Node`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipewarden import packs
from pipewarden._yaml import Node, load_file
from pipewarden.calendar import BusinessHours, parse_days, parse_hours
from pipewarden.errors import ConfigError

T = TypeVar("T")
DEFAULT_CONFIG_NAME = "config.yaml"
DEFAULT_STATE_DIR = ".pipewarden"
MODES = ("process", "pool")
ON_INTERRUPT = ("requeue", "hold")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3  # attempts in all, the first included
    backoff_s: float = 10.0  # delay before the second attempt
    factor: float = 2.0  # each later delay is this many times the one before
    max_backoff_s: float = 3600.0
    jitter: float = 0.2  # up to this fraction of the delay is added at random


@dataclass(frozen=True)
class Stage:
    pipeline: str
    name: str
    command: tuple[str, ...] | None  # argv; never passed through a shell
    python: str | None  # "module:function"
    mode: str  # "process" (a fresh process per item) or "pool" (long-lived workers)
    concurrency: int
    timeout_s: float
    grace_s: float  # between SIGTERM and SIGKILL when the watchdog fires
    cwd: Path
    env: tuple[tuple[str, str], ...]
    retry: RetryPolicy
    channel: str  # a name, or a template such as "{data.contact_method}"
    on_interrupt: str  # "requeue" or "hold"
    defer_s: float  # how long a `defer` rule without its own time waits

    def channel_for(self, data: dict[str, Any]) -> str:
        """The channel a halt of this item would stop: `{data.x}` fills in from the item."""
        return _TEMPLATE_FIELD.sub(lambda m: _lookup(data, m.group(1)), self.channel)

    @property
    def qualified_name(self) -> str:
        return f"{self.pipeline}/{self.name}"

    @cached_property  # computed once per stage: it is stamped on every run
    def config_hash(self) -> str:
        """Hash of everything that decides what this stage does to an item."""
        fields = asdict(self)
        fields["cwd"] = str(self.cwd)
        blob = json.dumps(fields, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def next_stage(self, name: str) -> Stage | None:
        names = [s.name for s in self.stages]
        index = names.index(name)
        return self.stages[index + 1] if index + 1 < len(self.stages) else None


EVENTS = ("halt", "halt_cleared", "failure", "timeout", "reload_failed", "recovered", "budget")


@dataclass(frozen=True)
class NotifyTarget:
    url: str = field(repr=False)  # an Apprise URL holds credentials: never shown or logged
    tags: tuple[str, ...]  # the events it is sent (empty: all)

    @property
    def id(self) -> str:
        """Names the target in the outbox and in messages without revealing its URL."""
        scheme = self.url.split("://", 1)[0]
        return f"{scheme}:{hashlib.sha256(self.url.encode()).hexdigest()[:10]}"

    def wants(self, event: str) -> bool:
        return not self.tags or event in self.tags


@dataclass(frozen=True)
class NotifySettings:
    targets: tuple[NotifyTarget, ...] = ()
    digest_wait_s: float = 30.0  # failures arriving within this wait go out as one message
    repeat_interval_s: float = 3600.0  # the same notification is not repeated sooner
    timeouts_per_10m: int = 5  # watchdog timeouts on one stage in 10 minutes that notify
    retry_backoff_s: float = 5.0  # after a failed delivery; doubles each time, up to 5 minutes


@dataclass(frozen=True)
class ApiSettings:
    enabled: bool = True
    port: int = 8765  # always on 127.0.0.1: the API is for this host only
    # The same API on a Unix socket too: the socket's group decides who may use it, no token.
    socket: Path | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    state_dir: Path
    rule_paths: tuple[Path, ...]
    pipelines: dict[str, Pipeline] = field(hash=False)
    drain_grace_s: float  # on SIGTERM, how long in-flight runs may finish
    channels: dict[str, BusinessHours] = field(hash=False, default_factory=dict)
    notify: NotifySettings = NotifySettings()
    api: ApiSettings = ApiSettings()
    retention_s: float = 90 * 86400.0  # runs older than this are pruned (0: keep forever)
    log_runs: str = "failures"  # a log line per run: info (every run), failures, off
    store_url: str | None = None  # `store: postgresql://…`: a shared database, not the file
    store_password_file: Path | None = None  # its password (never in the URL, logs or status)
    lease_s: float = 30.0  # a daemon of a fleet silent this long is dead: its runs recovered
    # "pipeline/stage" or a channel -> runs at once across a fleet on PostgreSQL
    global_concurrency: dict[str, int] = field(hash=False, default_factory=dict)

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(self.pipelines) or "none"
            raise ConfigError(
                self.path, 0, 0, f"no pipeline named '{name}'", f"known pipelines: {known}"
            ) from None


_TEMPLATE_FIELD = re.compile(r"\{data\.([\w.]+)\}")


def _lookup(data: dict[str, Any], dotted: str) -> str:
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return str(value) if value not in (None, "") else "unknown"


_TOP_KEYS = {
    "state_dir", "rules", "pipelines", "defaults", "drain_grace", "channels", "notify", "api",
    "retention", "log_runs", "store", "store_password_file", "lease",
    "global_concurrency",
}  # fmt: skip
LOG_RUNS = ("info", "failures", "off")
_CHANNEL_KEYS = {"days", "hours", "timezone", "holidays"}
_NOTIFY_KEYS = {"targets", "digest_wait", "repeat_interval", "timeouts_per_10m", "retry_backoff"}
_STAGE_KEYS = {
    "name", "command", "python", "mode", "concurrency", "timeout", "grace", "cwd", "env",
    "retry", "channel", "on_interrupt", "defer",
}  # fmt: skip
_RETRY_KEYS = {"max_attempts", "backoff", "factor", "max_backoff", "jitter"}


def find_config_path(given: str | None) -> Path:
    """--config, else $PIPEWARDEN_CONFIG, else ./config.yaml."""
    candidate = given or os.environ.get("PIPEWARDEN_CONFIG") or DEFAULT_CONFIG_NAME
    path = Path(candidate)
    if not path.is_file():
        hint = "" if given else " (pass --config PATH or set PIPEWARDEN_CONFIG)"
        raise ConfigError(path, 0, 0, f"no config file at {path}{hint}")
    return path.resolve()


def load_config(path: Path, state_dir: str | None = None) -> Config:
    root = load_file(path)
    top = root.mapping("the config", _TOP_KEYS, frozenset({"pipelines"}))
    base = path.parent
    defaults = (
        top["defaults"].mapping("defaults", _STAGE_KEYS - {"name"}) if "defaults" in top else {}
    )
    pipelines: dict[str, Pipeline] = {}
    for name, node in top["pipelines"].entries("pipelines"):
        pipelines[name] = _load_pipeline(name, node, defaults, base)
    if not pipelines:
        raise top["pipelines"].error("no pipelines defined", "add at least one under 'pipelines:'")
    chosen_state = state_dir or (top["state_dir"].text("state_dir") if "state_dir" in top else None)
    rules_node = top.get("rules") or Node("rules/*.yaml", str(path), 1, 1)
    return Config(
        path=path,
        state_dir=(base / (chosen_state or DEFAULT_STATE_DIR)).resolve(),
        rule_paths=_expand_rule_globs(base, rules_node),
        pipelines=pipelines,
        drain_grace_s=top["drain_grace"].duration("drain_grace") if "drain_grace" in top else 30.0,
        channels=dict(_load_channels(top["channels"])) if "channels" in top else {},
        notify=_load_notify(top["notify"]) if "notify" in top else NotifySettings(),
        api=_load_api(top["api"], base) if "api" in top else ApiSettings(),
        retention_s=top["retention"].duration("retention") if "retention" in top else 90 * 86400.0,
        log_runs=top["log_runs"].choice("log_runs", LOG_RUNS) if "log_runs" in top else "failures",
        store_url=_store_url(top["store"]) if "store" in top else None,
        lease_s=top["lease"].duration("lease") if "lease" in top else 30.0,
        global_concurrency={
            name: cap.integer(f"global_concurrency of {name}", 1)
            for name, cap in top["global_concurrency"].entries("global_concurrency")
        }
        if "global_concurrency" in top
        else {},
        store_password_file=(
            base / top["store_password_file"].text("store_password_file")
            if "store_password_file" in top
            else None
        ),
    )


def _store_url(node: Node) -> str:
    """`store:`: a PostgreSQL URL without a password (SQLite, the default, needs none)."""
    from urllib.parse import urlsplit

    url = node.text("store")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError as exc:
        raise node.error(f"store: not a URL ({exc})", _STORE_FIX) from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise node.error(
            f"store: '{parts.scheme}' is not a store this pipewarden keeps", _STORE_FIX
        )
    if parts.password is not None:
        raise node.error(
            "store: the URL holds a password, which would reach logs and status",
            "leave it out: put it in a file named by store_password_file, or PGPASSWORD",
        )
    return url


_STORE_FIX = "write postgresql://user@host:5432/dbname, or leave store: out for SQLite"


def _load_api(node: Node, base: Path) -> ApiSettings:
    fields = node.mapping("api", {"enabled", "port", "socket"})
    enabled = True
    if "enabled" in fields:
        if not isinstance(fields["enabled"].value, bool):
            raise fields["enabled"].error("api enabled must be true or false")
        enabled = fields["enabled"].value
    port = fields["port"].integer("api port", 1) if "port" in fields else ApiSettings.port
    if port > 65535:
        raise fields["port"].error(f"api port must be at most 65535, not {port}")
    socket = (base / fields["socket"].text("api socket")) if "socket" in fields else None
    return ApiSettings(enabled, port, socket)


def _load_channels(node: Node) -> Iterator[tuple[str, BusinessHours]]:
    for name, entry in node.entries("channels"):
        fields = entry.mapping(f"channel '{name}'", _CHANNEL_KEYS, frozenset({"hours"}))
        what = f"channel '{name}'"
        days = _calendar_part(fields.get("days"), f"days of {what}", parse_days, _DAYS_FIX)
        windows = _calendar_part(fields["hours"], f"hours of {what}", parse_hours, _HOURS_FIX)
        zone = fields["timezone"].text("timezone") if "timezone" in fields else "UTC"
        try:
            timezone = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise fields["timezone"].error(
                f"unknown time zone '{zone}'", "write an IANA name such as Europe/London"
            ) from None
        closed_on = _load_holidays(fields["holidays"], what) if "holidays" in fields else None
        yield name, BusinessHours(days or frozenset(range(5)), windows, timezone, closed_on)


_DAYS_FIX = "write e.g. mon-fri, mon,wed,fri, fri-mon or a list of days"
_HOURS_FIX = (
    "write e.g. 09:00-17:00, 22:00-06:00 (over midnight), 09:00-12:00,13:00-17:00 or 00:00-24:00"
)


def _calendar_part(node: Node | None, what: str, parse: Callable[[str], T], fix: str) -> T | None:
    """Days or hours: one text or a list of texts, parsed as their parts joined by commas."""
    if node is None:
        return None
    if not isinstance(node.value, str | list):
        raise node.error(f"{what} must be text or a list of text, not '{node.value}'", fix)
    try:
        return parse(",".join(node.text_list(what)))
    except ValueError as exc:
        raise node.error(f"{what}: {exc}", fix) from None
    except ConfigError as exc:  # an entry that is not text: say what text would do
        raise ConfigError(exc.path, exc.line, exc.column, exc.problem, fix) from None


def _load_holidays(node: Node, what: str) -> Callable[[date], bool]:
    """`{country: GB, subdiv: ENG}` -> whether a date is a public holiday there."""
    if isinstance(node.value, str | int | float | bool) or node.value is None:
        raise node.error(
            f"holidays of {what} must be a mapping, not '{node.value}'",
            "write e.g. holidays: {country: GB, subdiv: ENG} (subdiv is optional)",
        )
    fields = node.mapping(f"holidays of {what}", {"country", "subdiv"}, frozenset({"country"}))
    try:
        import holidays  # an optional extra: only a config naming holidays pays for it
    except ImportError:
        raise node.error(
            f"holidays of {what} need the 'holidays' package, which is not installed",
            "pip install 'pipewarden[holidays]' (or: pip install holidays) where pipewarden runs",
        ) from None
    supported: dict[str, list[str]] = holidays.list_supported_countries()
    country = fields["country"].text(f"holidays country of {what}").upper()
    if country not in supported:
        raise fields["country"].error(
            f"holidays of {what}: no holidays known for '{country}'",
            "write its ISO 3166 code, such as GB, US or DE",
        )
    subdiv_node = fields.get("subdiv")
    subdiv = subdiv_node.text(f"holidays subdiv of {what}") if subdiv_node else None
    if subdiv is not None:  # 'eng' is ENG: the package's codes are case-sensitive
        subdiv = {known.upper(): known for known in supported[country]}.get(subdiv.upper(), subdiv)
    try:
        calendar = holidays.country_holidays(country, subdiv=subdiv)
    except NotImplementedError:  # the country is known: its subdivision is not
        known = ", ".join(supported[country]) or "none: leave subdiv out"
        raise (subdiv_node or node).error(
            f"holidays of {what}: {country} has no subdivision '{subdiv}'", f"known: {known}"
        ) from None
    return calendar.__contains__


def _load_notify(node: Node) -> NotifySettings:
    fields = node.mapping("notify", _NOTIFY_KEYS)
    targets = []
    for entry in fields["targets"].items("targets") if "targets" in fields else ():
        target = entry.mapping("a notify target", {"url", "tags"}, frozenset({"url"}))
        url = target["url"].text("url")
        if "://" not in url:
            raise target["url"].error("url must be an Apprise URL such as json://host/path")
        tags = target["tags"].text_list("tags") if "tags" in target else ()
        for tag in tags:
            if tag not in EVENTS:
                raise target["tags"].error(f"unknown event '{tag}'", f"events: {', '.join(EVENTS)}")
        targets.append(NotifyTarget(url, tags))
    defaults = NotifySettings()
    return NotifySettings(
        targets=tuple(targets),
        digest_wait_s=_optional(fields, "digest_wait", Node.duration, defaults.digest_wait_s),
        repeat_interval_s=_optional(
            fields, "repeat_interval", Node.duration, defaults.repeat_interval_s
        ),
        timeouts_per_10m=_optional(
            fields, "timeouts_per_10m", _at_least_one, defaults.timeouts_per_10m
        ),
        retry_backoff_s=_optional(fields, "retry_backoff", Node.duration, defaults.retry_backoff_s),
    )


def _expand_rule_globs(base: Path, node: Node) -> tuple[Path, ...]:
    """Rule file paths and globs, relative to the config, in order; each must find a file."""
    paths: list[Path] = []
    for pattern in node.text_list("rules"):
        if pattern.startswith(packs.PREFIX):
            pack = _pack_file(node, pattern)
            if pack not in paths:
                paths.append(pack)
            continue
        matches = sorted(glob.glob(str(base / pattern)))
        if not matches:
            raise node.error(f"rules: '{pattern}' matches no file", f"looked in {base}")
        paths.extend(p for p in (Path(m).resolve() for m in matches) if p not in paths)
    return tuple(paths)


def _pack_file(node: Node, entry: str) -> Path:
    """The shipped file of `pack:NAME`; an unknown name is an error that lists the packs."""
    name = entry.removeprefix(packs.PREFIX)
    path = packs.pack_path(name)
    if path is None:
        known = ", ".join(packs.PREFIX + n for n in packs.pack_names()) or "none"
        raise node.error(f"rules: no pack named '{name}'", f"shipped packs: {known}")
    return path.resolve()


def _load_pipeline(name: str, node: Node, defaults: dict[str, Node], base: Path) -> Pipeline:
    entries = node.mapping(f"pipeline '{name}'", {"stages"}, frozenset({"stages"}))
    stages: list[Stage] = []
    for stage_node in entries["stages"].items(f"stages of pipeline '{name}'"):
        stage = _load_stage(name, stage_node, defaults, base)
        if any(s.name == stage.name for s in stages):
            raise stage_node.error(f"stage '{stage.name}' appears twice in pipeline '{name}'")
        stages.append(stage)
    if not stages:
        raise entries["stages"].error(f"pipeline '{name}' has no stages")
    return Pipeline(name, tuple(stages))


def _load_stage(pipeline: str, node: Node, defaults: dict[str, Node], base: Path) -> Stage:
    own = node.mapping(f"a stage of pipeline '{pipeline}'", _STAGE_KEYS, frozenset({"name"}))
    name = own["name"].text("stage name")
    what = f"stage '{pipeline}/{name}'"
    fields = {**defaults, **own}

    def get(key: str) -> Node | None:
        return fields.get(key)

    command = python = None
    if (c := get("command")) is not None:
        command = c.text_list(f"command of {what}")
    if (p := get("python")) is not None:
        python = p.text(f"python of {what}")
        if ":" not in python:
            raise p.error(f"python of {what} must be 'module:function'", f"not '{python}'")
    if command and python:
        raise node.error(f"{what} has both 'command' and 'python'", "keep one of them")
    if not command and not python:
        raise node.error(
            f"{what} has no worker", "add 'command: [argv...]' or 'python: module:function'"
        )
    default_mode = "pool" if python else "process"
    mode = get("mode").choice(f"mode of {what}", MODES) if get("mode") else default_mode
    return Stage(
        pipeline=pipeline,
        name=name,
        command=command,
        python=python,
        mode=mode,
        concurrency=get("concurrency").integer(f"concurrency of {what}", 1)
        if get("concurrency")
        else 1,
        timeout_s=get("timeout").duration(f"timeout of {what}") if get("timeout") else 120.0,
        grace_s=get("grace").duration(f"grace of {what}") if get("grace") else 5.0,
        cwd=(base / get("cwd").text(f"cwd of {what}")).resolve() if get("cwd") else base,
        env=tuple(
            (k, v.text(f"env {k} of {what}"))
            for k, v in (get("env").entries("env") if get("env") else ())
        ),
        retry=_load_retry(get("retry"), what),
        channel=get("channel").text(f"channel of {what}") if get("channel") else name,
        on_interrupt=get("on_interrupt").choice(f"on_interrupt of {what}", ON_INTERRUPT)
        if get("on_interrupt")
        else "requeue",
        defer_s=get("defer").duration(f"defer of {what}") if get("defer") else 900.0,
    )


def _load_retry(node: Node | None, what: str) -> RetryPolicy:
    if node is None:
        return RetryPolicy()
    entries = node.mapping(f"retry of {what}", _RETRY_KEYS)
    policy = RetryPolicy()
    return RetryPolicy(
        max_attempts=_optional(entries, "max_attempts", _at_least_one, policy.max_attempts),
        backoff_s=_optional(entries, "backoff", Node.duration, policy.backoff_s),
        factor=_optional(entries, "factor", lambda n, w: n.number(w, 1.0), policy.factor),
        max_backoff_s=_optional(entries, "max_backoff", Node.duration, policy.max_backoff_s),
        jitter=_optional(entries, "jitter", lambda n, w: n.number(w, 0.0), policy.jitter),
    )


def _optional(entries: dict[str, Node], key: str, read: Callable[[Node, str], T], default: T) -> T:
    """`read(entries[key], key)`, or `default` where the file does not set the key."""
    return read(entries[key], key) if key in entries else default


def _at_least_one(node: Node, what: str) -> int:
    return node.integer(what, 1)
