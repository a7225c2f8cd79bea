"""The daemon's life: lock the state dir, recover from an unclean stop, run, drain.

At start the daemon becomes a child subreaper (see containment.py). After an unclean
stop it first kills what the dead daemon's workers left running, then requeues their
items. Signal handlers only set flags or wake the loop; the loop acts and says why.
SIGTERM / SIGINT: stop claiming, let in-flight runs finish within the drain grace,
interrupt and requeue the rest, exit 0. SIGUSR1: something was enqueued, look now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from pipewarden import faults, lease
from pipewarden import reload as reload_module
from pipewarden.classifier import Classifier
from pipewarden.clock import Clock
from pipewarden.config import Config
from pipewarden.containment import containment
from pipewarden.errors import PipewardenError
from pipewarden.events import EventBus
from pipewarden.guard import Guard, stages_by_pipeline
from pipewarden.lock import DaemonLock
from pipewarden.notifier import Notifier
from pipewarden.processes import Identity
from pipewarden.rules import Rule, RuleSet
from pipewarden.scheduler import Scheduler
from pipewarden.sdnotify import SystemdNotifier
from pipewarden.store import STORE_FILE, Storage, open_configured
from pipewarden.template_feed import TemplateFeed
from pipewarden.writer import Writer

log = logging.getLogger("pipewarden.daemon")

RECOVERED_REASON = "daemon stopped while running"
PRUNE_EVERY_S = 3600.0
WATCH_RETRY_S = 1.0  # a failed file watcher starts again after this, doubling up to the max
WATCH_RETRY_MAX_S = 10.0
TROUBLE_SAVE_EVERY_S = 1.0  # a rule's trouble count reaches the store at most this often
OPEN_TIMEOUT_S = 900  # what systemd waits for the store to open (and migrate) at a start


def _internal(exc: BaseException, when: str) -> str:
    return f"internal error {when}: {type(exc).__name__}: {exc} (see the daemon's log)"


def detect_code_ref(directory: Path) -> str | None:
    """The code version runs are recorded against: $PIPEWARDEN_CODE_REF or the git commit."""
    if ref := os.environ.get("PIPEWARDEN_CODE_REF"):
        return ref
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=directory, capture_output=True, text=True, timeout=2, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


class Daemon:
    def __init__(
        self,
        config: Config,
        rules: RuleSet,
        clock: Clock | None = None,
        state_dir_override: str | None = None,
    ):
        self.config = config
        self.rules = rules
        self.clock = clock or Clock()
        self._state_dir_override = state_dir_override
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._scheduler: Scheduler | None = None
        self._store: Storage | None = None
        self._code: dict[str, reload_module.StageCode] = {}  # the stages' code as last loaded
        self._reload_lock = asyncio.Lock()
        self._troubles: dict[str, dict[str, Any]] = {}  # rule id -> what `status` shows of it
        self._trouble_saved = 0.0
        self._trouble_flush_due = False
        self._background: set[asyncio.Task[None]] = set()
        self.events = EventBus()
        self.observers: list[Any] = []  # told of finished runs, deliveries, reloads (metrics)
        self.systemd = SystemdNotifier()
        self.outage = faults.Outage(
            config.store_url or config.state_dir / STORE_FILE,
            lambda status: self.systemd.send(f"STATUS={status}"),
        )

    # -- what the API needs of the running daemon ---------------------------------------
    @property
    def store(self) -> Storage:
        assert self._store is not None, "the daemon is not running"
        if fault := self._store.unwritable():
            raise fault  # read-only or gone: a read could kill the daemon (SIGBUS on -shm)
        return self._store

    @property
    def notifier(self) -> Notifier:
        assert self._scheduler is not None, "the daemon is not running"
        return self._scheduler.notifier

    @property
    def working(self) -> bool:
        return self._scheduler is not None and self._scheduler.working

    @property
    def in_flight(self) -> int:
        return self._scheduler.in_flight if self._scheduler is not None else 0

    def wake(self) -> None:
        if self._scheduler is not None:
            self._scheduler.wake()

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            log.info("%s: stopping — no new claims, draining running attempts", reason)
            self._stop_reason = reason
            self.systemd.stopping()
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.wake()

    async def run(self, until_idle: bool = False, watch_files: bool = True) -> int:
        lock = DaemonLock(self.config.state_dir)
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.outage.wait_out(lock.acquire)  # its pid cannot be written on a full disk
        # Opening may migrate a big store for minutes: longer than systemd's start timeout.
        self.systemd.send(f"EXTEND_TIMEOUT_USEC={OPEN_TIMEOUT_S * 1_000_000}",
                          "STATUS=opening the store (an upgrade may take minutes)")  # fmt: skip
        store = self._store = await self.outage.wait_out(lambda: open_configured(self.config))
        await self.outage.wait_out(
            lambda: lease.join(store, self.config.lease_s, self.config.global_concurrency)
        )
        self.outage.relieve = partial(faults.make_room, store)
        stop_listening: Callable[[], None] = str  # a no-op, until a shared store listens
        writer = Writer(store)  # the scheduler's passes and the workers' records, off the loop
        umask = os.umask(0o077)  # what the daemon and its workers write: their user's alone
        try:
            stopped_cleanly = await self.outage.wait_out(
                lambda: faults.check_after_unclean_stop(store)
            )
            notifier = Notifier(store, self.config.notify, self.clock)
            containment.enable(self.config.state_dir, writer.later(store.record_processes))
            await self._kill_leftovers(store, stopped_cleanly is False)
            await self.outage.wait_out(lambda: self._recover(store, notifier))
            self._code = await asyncio.to_thread(reload_module.stage_code, self.config)
            scheduler = self._scheduler = Scheduler(
                self.config,
                store,
                self._classifier(self.rules, self.config),
                Guard(store, self.rules.halts, stages_by_pipeline(self.config)),
                notifier,
                self.clock,
                detect_code_ref(self.config.path.parent),
                self.events,
                code=self._code,
                writer=writer,
            )
            scheduler.observers, scheduler.outage = self.observers, self.outage
            feed = TemplateFeed(store)  # issue 15: unmatched failures mined, rules proposed
            self.observers.append(feed)
            notifier.on_result = self._delivered
            self._install_signal_handlers(scheduler)
            if store.kind != "sqlite":  # a fleet's store: heartbeats, and the others' changes
                self._spawn(lease.keep(store, self.config.lease_s, self._hold_stages(),
                                       self.request_stop))  # fmt: skip
                stop_listening = store.listen(scheduler.wake)  # on this loop
            self._record_reload(ok=True, why="start")
            log.info(
                "pipewarden running: %d pipeline(s), %d rule(s), %d halt rule(s), store %s",
                len(self.config.pipelines), len(self.rules.rules), len(self.rules.halts),
                store.path,
            )  # fmt: skip
            for warning in self.rules.warnings:
                log.warning("rules: %s", warning)
            if watch_files:
                self._spawn(self._watch_files())
            api = await self._start_api()
            self.systemd.ready(self.summary())
            self._spawn(self.systemd.watchdog(self.summary, lambda s: writer.busy_for() > s))
            self._spawn(self._keep_the_books())
            self._spawn(containment.keep_sweeping())
            self._spawn(feed.keep_proposing(self.clock.now))
            damaged = await self._run_scheduler(scheduler, until_idle)
            self._stop.set()  # ends the file watcher too
            reason = (
                f"daemon stopping ({self._stop_reason or 'done'}): interrupted after drain grace"
            )
            recorded = await scheduler.drain(self.config.drain_grace_s, reason)
            if api is not None:
                await api.stop()
            for task in self._background:
                task.cancel()  # the watchdog pings; the file watcher ends with the stop event
            await asyncio.gather(*self._background, return_exceptions=True)
            if damaged is not None:
                raise damaged
            if recorded:
                lease.leave(store)
                faults.mark_clean_stop(store)
                log.info("stopped cleanly")
            return 0
        finally:
            self._remove_signal_handlers()
            containment.disable()
            stop_listening()
            writer.close()
            store.close()
            lock.release()
            os.umask(umask)

    async def _run_scheduler(self, scheduler: Scheduler, until_idle: bool) -> Any:
        """Run the loop to its end; returns the fault of a damaged store (it stopped the
        loop), else None. A store that cannot be reached for a moment (a database server
        restarting) is waited out and the loop taken up again."""
        while True:
            try:
                await scheduler.run(self._stop, until_idle=until_idle)
                return None
            except Exception as exc:  # a damaged store: stop as on SIGTERM, then say so
                if (fault := faults.fault_of(exc, scheduler.store.path)) is None:
                    raise
                if not fault.passing:
                    self.request_stop("the store is damaged")
                    return fault
                await asyncio.sleep(scheduler.outage.failed(fault))  # its next commit: over

    async def _start_api(self) -> Any:
        if not self.config.api.enabled:
            return None
        from pipewarden.api import ApiServer  # starlette, uvicorn: only the daemon pays for them

        api = await self.outage.wait_out(lambda: ApiServer(self, self.config.api.port))  # token
        try:
            await api.start()
        except OSError as exc:
            raise PipewardenError(
                f"cannot serve the API on 127.0.0.1:{self.config.api.port}: {exc.strerror} —"
                " choose another port with `api: {port: N}` in the config"
            ) from None
        log.info(
            "API and web page on http://127.0.0.1:%d/ (token in %s; `pipewarden open`)",
            self.config.api.port, self.config.state_dir / "api.token",
        )  # fmt: skip
        if api.socket_path is not None:
            log.info("API on %s too, for its group's members", api.socket_path)
        return api

    async def _keep_the_books(self) -> None:
        """Prune runs past the retention, hourly, a small batch at a time."""
        while True:
            if self.config.retention_s and (store := self._store) is not None:
                older_than = self.clock.now() - self.config.retention_s
                total = 0
                prune = partial(store.prune_batch, older_than)
                while deleted := faults.unless_waiting(store, prune):  # else: in an hour
                    total += deleted
                    await asyncio.sleep(0)  # let the scheduler in between batches
                if total:
                    log.info("pruned %d run(s) older than the retention", total)
            await asyncio.sleep(PRUNE_EVERY_S)

    def summary(self) -> str:
        """One line for systemd's STATUS=: what runs, what waits, what is halted."""
        assert self._scheduler is not None and self._store is not None
        store = self._store  # not to be touched while it is read-only or gone (SIGBUS)
        if fault := self.outage.fault or store.unwritable():
            return f"{fault} · {self._scheduler.in_flight} running"
        totals: dict[str, int] = {}
        for (_, _, state), count in self._store.item_totals().items():
            totals[state] = totals.get(state, 0) + count
        holds = self._scheduler.halted_targets()
        waiting = ", ".join(
            f"{totals[s]} {s}" for s in ("queued", "retrying", "failed") if totals.get(s)
        )
        halted = f"; halted: {', '.join(holds)}" if holds else ""
        return f"{self._scheduler.in_flight} running, {waiting or 'nothing waiting'}{halted}"

    def _delivered(self, ok: bool) -> None:
        for observer in self.observers:
            observer.notification(ok)

    async def reload(self, why: str) -> dict[str, Any]:
        """Load the config and rules again; a bad edit keeps the last good ones in force.

        Never raises: whatever goes wrong is a failed reload, recorded and returned as
        what `status` shows (`ok`, `error`, ...).
        """
        async with self._reload_lock:
            self.systemd.reloading()
            try:
                return await self._reload(why)
            finally:
                self.systemd.ready(self.summary())

    async def _reload(self, why: str) -> dict[str, Any]:
        try:
            config, rules, classifier, code = await asyncio.to_thread(self._load, why)
        except PipewardenError as exc:
            log.error("reload failed (%s): %s — the last good rules stay in force", why, exc)
            return self._record_reload(ok=False, why=why, error=str(exc))
        except Exception as exc:  # a fault in loading must not end the watcher or the API
            log.exception("reload failed (%s) — the last good rules stay in force", why)
            return self._record_reload(ok=False, why=why, error=_internal(exc, "while loading"))
        needs_restart = []
        if config.state_dir != self.config.state_dir:
            needs_restart.append(f"state_dir (still {self.config.state_dir})")
            config = replace(config, state_dir=self.config.state_dir)
        assert self._scheduler is not None and self._store is not None
        try:
            guard = Guard(self._store, rules.halts, stages_by_pipeline(config))
            changes = self._scheduler.apply(config, classifier, guard, code)
        except Exception as exc:
            log.exception("reload failed (%s) while applying it", why)
            return self._record_reload(ok=False, why=why, error=_internal(exc, "while applying"))
        if config.global_concurrency != self.config.global_concurrency:
            self._store.global_caps = dict(config.global_concurrency)  # the next claim's caps
            changes.append(f"global_concurrency {config.global_concurrency or 'none'}")
        if rules.version != self.rules.version:
            self._troubles = {}  # what the old rules ran into is no longer news
        self.config, self.rules, self._code = config, rules, code
        for warning in rules.warnings:
            log.warning("rules: %s", warning)
        for setting in needs_restart:
            log.warning("reload: %s needs a restart to change; left as it was", setting)
        log.info("reloaded (%s): %s", why, "; ".join(changes) or "nothing changed")
        return self._record_reload(ok=True, why=why, needs_restart=needs_restart, changes=changes)

    def _load(
        self, why: str
    ) -> tuple[Config, RuleSet, Classifier, dict[str, reload_module.StageCode]]:
        """Parse, validate and compile everything, and read the stages' code (blocking: it
        runs in a thread)."""
        config, rules = reload_module.load_all(self.config.path, self._state_dir_override)
        return config, rules, self._classifier(rules, config), reload_module.stage_code(config)

    def _classifier(self, rules: RuleSet, config: Config) -> Classifier:
        """A classifier for these rules, its prefilters built, its trouble kept for status."""
        classifier = Classifier(rules, on_trouble=self._rule_trouble)
        classifier.prepare((p.name, s.name) for p in config.pipelines.values() for s in p.stages)
        return classifier

    def _rule_trouble(self, rule: Rule, problem: str) -> None:
        """A rule gave up on a message (counted as no match): keep it for `status`, `doctor`."""
        now = self.clock.now()
        entry = self._troubles.setdefault(
            rule.id, {"rule": rule.id, "pattern": rule.source, "count": 0, "first_at": now}
        )
        entry.update(problem=problem, count=entry["count"] + 1, last_at=now)
        if entry["count"] == 1 or now - self._trouble_saved >= TROUBLE_SAVE_EVERY_S:
            self._save_troubles(now)
        elif not self._trouble_flush_due:  # a burst: its last count reaches the store soon
            self._trouble_flush_due = True
            asyncio.get_running_loop().call_later(TROUBLE_SAVE_EVERY_S, self._flush_troubles)

    def _flush_troubles(self) -> None:
        try:
            self._save_troubles(self.clock.now())
        except Exception:
            log.exception("could not keep the rules' trouble in the store")

    def _save_troubles(self, now: float) -> None:
        self._trouble_flush_due = False
        if self._store is not None:
            self._trouble_saved = now
            troubles = {"version": self.rules.version, "rules": list(self._troubles.values())}
            faults.unless_waiting(
                self._store, lambda: self._store.set_meta("rules_trouble", troubles)
            )

    def _record_reload(
        self, ok: bool, why: str, error: str | None = None, needs_restart: list[str] | None = None,
        changes: list[str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """What `pipewarden status` shows of the rules' health, and notify a failure."""
        assert self._store is not None
        now = self.clock.now()
        self.events.publish("reload", ok=ok, why=why, error=error, version=self.rules.version)
        for observer in self.observers:
            observer.reloaded(ok, now)
        record = {
            "ok": ok, "at": now, "why": why, "error": error, "version": self.rules.version,
            "rules": len(self.rules.rules), "warnings": list(self.rules.warnings),
            "needs_restart": needs_restart or [], "changes": changes or [],
        }  # fmt: skip
        faults.unless_waiting(self._store, lambda: self._store.set_meta("reload", record))
        if ok:
            self._save_troubles(now)
        if not ok and self._scheduler is not None:
            self._scheduler.notifier.notify(
                "reload_failed", f"reload_failed:{error}", "pipewarden: rules reload failed",
                f"{error}\nThe last good rules (version {self.rules.version}) stay in force.", now,
            )  # fmt: skip
            self._scheduler.wake()
        return record

    async def _watch_files(self) -> None:
        """The file watcher, supervised: when it fails it is logged and started again.

        A watch started again reloads once it is in place, for the saves it missed.
        """
        delay, catch_up, last_problem = WATCH_RETRY_S, False, ""
        while not self._stop.is_set():
            try:
                await reload_module.watch(
                    lambda: self.config, self.reload, self._stop, catch_up, lambda: self._code
                )
                delay, last_problem = WATCH_RETRY_S, ""  # returned: its folders changed, or stop
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if problem != last_problem:  # not once per retry while a folder stays away
                    log.error(
                        "file watcher failed (%s): trying again, every %.0fs at most",
                        problem, WATCH_RETRY_MAX_S,
                    )  # fmt: skip
                last_problem = problem
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, WATCH_RETRY_MAX_S)
            catch_up = True

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task failed: %s: %s", type(error).__name__, error)

    async def _kill_leftovers(self, store: Storage, unclean: bool) -> None:
        """After an unclean stop, before any item is requeued: nothing the dead daemon
        started may still run beside the requeued copy of its work."""
        interrupted = [Identity(*row) for row in store.running_processes()]
        if not unclean and not interrupted:
            return
        killed = await containment.kill_leftovers(interrupted)
        log.log(
            logging.WARNING if killed else logging.INFO,
            "after an unclean stop: killed %d leftover process(es) of the previous daemon's"
            " workers", killed,
        )  # fmt: skip

    def _hold_stages(self) -> set[tuple[str, str]]:
        return {
            (p.name, s.name)
            for p in self.config.pipelines.values()
            for s in p.stages
            if s.on_interrupt == "hold"
        }

    def _recover(self, store: Storage, notifier: Notifier) -> None:
        now = self.clock.now()
        recovered = store.recover_interrupted(now, self._hold_stages(), RECOVERED_REASON)
        for run in recovered:
            log.warning(
                "recovered run %s (%s/%s %s) left running by a stopped daemon: %s",
                run.run_id[:8], run.pipeline, run.stage, run.item_key,
                "held for a person (on_interrupt: hold)" if run.held else "requeued",
            )  # fmt: skip
        if recovered:
            held = sum(run.held for run in recovered)
            notifier.notify(
                "recovered", f"recovered:{now}",
                f"pipewarden: recovered {len(recovered)} run(s) after an unclean stop",
                f"{len(recovered) - held} item(s) requeued, {held} held for a person.", now,
            )  # fmt: skip

    def _install_signal_handlers(self, scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signal.Signals(signum).name)
        loop.add_signal_handler(signal.SIGUSR1, scheduler.wake)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("SIGHUP")))

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            loop.remove_signal_handler(signum)
