"""The store's interface as a contract: what every backend must do, tested through
`Storage` alone (no SQL, no models' databases). The `storage` fixture opens each backend
in turn; a new backend joins by adding itself to BACKENDS."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pipewarden.store import Claimed, FinishedRun, NewRun, Storage, open_store
from pipewarden.types import ItemState, RunStatus

BACKENDS: dict[str, Callable[[Path], Storage]] = {"sqlite": open_store}
P, S, NEXT = "sites", "find", "capture"  # a pipeline and two of its stages


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store = BACKENDS[request.param](tmp_path)
    yield store
    store.close()


_run_numbers = itertools.count()


def describe(channel: str = "web") -> Callable[[int, str, dict], NewRun]:
    def new_run(item_id: int, key: str, data: dict) -> NewRun:
        number = next(_run_numbers)
        return NewRun(f"run-{key}-{number}", item_id, channel, f"fp-{key}", "cfg", None, "t")

    return new_run


def claim(store: Storage, limit: int = 10, now: float = 10.0, **kw) -> list[tuple[Claimed, NewRun]]:
    return store.claim(P, S, limit, now, describe(), **kw)


def ended(claimed: Claimed, run: NewRun, status: RunStatus, now: float, **fields) -> FinishedRun:
    """A run's end: ok moves the item on to NEXT; a failure fails it at S."""
    ok = status is RunStatus.OK
    return FinishedRun(
        run_id=run.run_id, item_id=claimed.item_id, status=status, pipeline=P, stage=S,
        channel=run.channel, finished_at=now, duration_s=1.0,
        item_stage=NEXT if ok else S, item_state=ItemState.QUEUED if ok else ItemState.FAILED,
        item_data=json.dumps(claimed.data), item_attempt=0 if ok else claimed.attempt,
        item_ready_at=now if ok else None, item_channel=run.channel, **fields,
    )  # fmt: skip


# -- the queue --------------------------------------------------------------------------------
def test_enqueue_sorts_items_into_new_restarted_unchanged_and_held(storage: Storage):
    first = storage.enqueue(P, S, [("a", {"n": 1}), ("b", None)], 1.0)
    assert (first.new, first.restarted, first.unchanged) == (["a", "b"], [], [])
    again = storage.enqueue(P, S, [("a", {"n": 2}), ("c", {})], 2.0)
    assert (again.new, again.unchanged) == (["c"], ["a"])
    assert json.loads(storage.item(P, "a").data) == {"n": 1}  # queued: left as it was


def test_a_finished_item_starts_again_keeping_its_data_unless_data_is_given(storage: Storage):
    storage.enqueue(P, S, [("a", {"n": 1}), ("b", {"n": 1})], 1.0)
    storage.finish([ended(c, r, RunStatus.FAILED, 2.0, error="boom") for c, r in claim(storage)],
                   {})  # fmt: skip
    restarted = storage.enqueue(P, S, [("a", None), ("b", {"n": 5})], 3.0)
    assert restarted.restarted == ["a", "b"] and restarted.data_replaced == ["b"]
    assert json.loads(storage.item(P, "a").data) == {"n": 1}
    assert json.loads(storage.item(P, "b").data) == {"n": 5}
    assert storage.item(P, "a").state == ItemState.QUEUED


def test_claim_marks_items_running_and_records_their_runs_before_any_worker_starts(
    storage: Storage, tmp_path: Path
):
    storage.enqueue(P, S, [("a", {"x": 1}), ("b", {}), ("c", {})], 1.0)
    claimed = claim(storage, limit=2)
    assert [c.key for c, _ in claimed] == ["a", "b"]
    assert claimed[0][0].data == {"x": 1} and claimed[0][0].attempt == 1
    other = open_store(tmp_path)  # what a second process (a restarted daemon) sees
    try:
        assert [run.item_key for run in other.running_runs()] == ["a", "b"]
        assert other.item(P, "a").state == ItemState.RUNNING
        assert other.item(P, "c").state == ItemState.QUEUED
    finally:
        other.close()


def test_claim_takes_only_ready_items_and_leaves_blocked_channels_queued(storage: Storage):
    storage.enqueue(P, S, [("now", {})], 1.0)
    storage.enqueue(P, S, [("later", {})], 50.0)  # ready at 50
    storage.enqueue(P, S, [("sms", {})], 1.0, channel_for=lambda data: "sms")
    assert [c.key for c, _ in claim(storage, blocked_channels=["sms"])] == ["now"]
    assert claim(storage, blocked_channels=["sms"]) == []
    assert [c.key for c, _ in claim(storage, only_channel="sms")] == ["sms"]
    assert storage.next_ready_at([(P, S)]) == 50.0


def test_finish_ends_the_run_and_moves_the_item_on_in_one_write(storage: Storage):
    storage.enqueue(P, S, [("a", {})], 1.0)
    ((claimed, run),) = claim(storage)
    storage.finish([], {run.run_id: (0.5, "half way")})
    assert storage.running_runs()[0].progress == 0.5
    storage.finish([ended(claimed, run, RunStatus.OK, 12.0)], {})
    (row,) = storage.item_runs(claimed.item_id)
    assert (row.status, row.finished_at, row.message) == ("ok", 12.0, "half way")
    item = storage.item(P, "a")
    assert (item.stage, item.state) == (NEXT, ItemState.QUEUED)
    assert storage.running_runs() == []


def test_claims_never_sent_to_a_worker_go_back_untouched(storage: Storage):
    storage.enqueue(P, S, [("a", {}), ("b", {})], 1.0)
    ((a, run_a),) = claim(storage, limit=1)
    storage.finish([replace(ended(a, run_a, RunStatus.FAILED, 2.0, error="boom"),
                            item_state=ItemState.RETRYING, item_ready_at=3.0)], {})  # fmt: skip
    (b, run_b), (again, run_again) = claim(storage, now=4.0)
    assert (again.key, again.attempt, b.attempt) == ("a", 2, 1)
    storage.unclaim([(run_again.run_id, again.item_id), (run_b.run_id, b.item_id)])
    item_a, item_b = storage.item(P, "a"), storage.item(P, "b")
    assert (item_a.state, item_a.attempt, item_a.last_run_id) == ("queued", 1, run_a.run_id)
    assert (item_b.state, item_b.attempt, item_b.last_run_id) == ("queued", 0, None)
    assert [r.id for r in storage.item_runs(a.item_id)] == [run_a.run_id]
    assert storage.item_runs(b.item_id) == [] and storage.running_runs() == []
    assert [(c.key, c.attempt) for c, _ in claim(storage, now=5.0)] == [("b", 1), ("a", 2)]


def test_recovery_ends_running_runs_as_interrupted_and_requeues_or_holds_their_items(
    storage: Storage,
):
    storage.enqueue(P, S, [("a", {}), ("b", {})], 1.0)
    (a, run_a), _ = claim(storage)
    storage.record_processes([(run_a.run_id, 4242, 4242, 99)])
    assert storage.running_processes() == [(4242, 4242, 99)]
    recovered = storage.recover_interrupted(20.0, set(), "daemon stopped while running")
    assert sorted(r.item_key for r in recovered) == ["a", "b"] and not any(
        r.held for r in recovered
    )
    item = storage.item(P, "a")
    assert (item.state, item.attempt) == (ItemState.QUEUED, 0)  # the attempt is not spent
    assert storage.item_runs(a.item_id)[0].status == RunStatus.INTERRUPTED

    claim(storage, now=21.0)
    held = storage.recover_interrupted(22.0, {(P, S)}, "stopped")
    assert all(r.held for r in held) and storage.item(P, "b").state == ItemState.HELD


def test_pending_count_leaves_out_what_waits_for_a_person_or_a_time(storage: Storage):
    storage.enqueue(P, S, [("a", {}), ("b", {})], 1.0)
    storage.enqueue(P, S, [("sms", {})], 1.0, channel_for=lambda data: "sms")
    assert storage.pending_count() == 3
    assert storage.pending_count(blocked_channels=["sms"]) == 2
    assert storage.pending_count(blocked_stages=[f"{P}/{S}"]) == 0
    assert storage.pending_count(blocked_pipelines=[P]) == 0
    assert storage.defer_channel("sms", 100.0, 2.0, "Business hours") == 1
    assert storage.pending_count() == 2


# -- holds ------------------------------------------------------------------------------------
def halt(target: str = "sms", now: float = 5.0) -> dict:
    return {"scope": "channel", "target": target, "kind": "halt", "reason": "25 in 2h",
            "label": "Opted out", "samples": ["STOP"], "created_at": now}  # fmt: skip


def test_one_active_hold_per_target_and_kind_cleared_once(storage: Storage):
    raised = storage.add_hold(halt())
    assert raised is not None and storage.add_hold(halt()) is None  # already active
    assert [h.target for h in storage.active_holds()] == ["sms"]
    storage.update_hold(raised.id, probe_at=9.0)
    assert storage.hold(raised.id).probe_at == 9.0
    assert [h.id for h in storage.clear_holds("sms", ("halt",), "ann", 7.0)] == [raised.id]
    assert storage.clear_holds("sms", ("halt",), "ann", 8.0) == []
    assert storage.active_holds() == [] and storage.halt_cleared_at("channel", "sms") == 7.0
    assert [h.id for h in storage.holds_on(["sms"], since=6.0)] == [raised.id]
    assert storage.holds_on(["sms"], since=7.5) == []
    assert storage.add_hold(halt(now=9.0)) is not None  # raised again after its clear


# -- history: what the guard asks -------------------------------------------------------------
def test_the_guard_reads_failures_costs_and_earlier_successes(storage: Storage):
    storage.enqueue(P, S, [("a", {}), ("b", {}), ("c", {})], 1.0)
    (a, ra), (b, rb), (c, rc) = claim(storage)
    storage.finish([
        ended(a, ra, RunStatus.OK, 11.0, cost=0.5, data_out="{}"),
        ended(b, rb, RunStatus.FAILED, 12.0, error="opted out 1", label="Opted out", cost=0.25),
        ended(c, rc, RunStatus.FAILED, 13.0, error="opted out 2", label="Opted out"),
    ], {})  # fmt: skip
    assert storage.label_failures("web", "Opted out", 0.0, samples=1) == (2, ["opted out 2"])
    assert storage.count_runs(P, S, "failed", 12.5) == 1
    assert storage.cost_since(P, [S], 0.0) == 0.75
    latest = storage.last_run_statuses(P, S, 2)
    assert latest == [("failed", "opted out 2"), ("failed", "opted out 1")]
    assert storage.earlier_success(P, S, "fp-a") == (ra.run_id, "{}")
    assert storage.earlier_success(P, S, "fp-b") is None
    assert storage.pipelines_of("a") == [P]
    assert len(storage.recent_runs(2)) == 2
    assert [r.item_key for r in storage.recent_runs(5, status="ok")] == ["a"]
    assert storage.runs_with_prefix("run-a")[0].id == ra.run_id


# -- many items at once -----------------------------------------------------------------------
def test_retry_by_label_counts_first_then_requeues_and_held_items_are_released_or_failed(
    storage: Storage,
):
    storage.enqueue(P, S, [("a", {}), ("b", {})], 1.0)
    (a, ra), (b, rb) = claim(storage)
    timeout = ended(a, ra, RunStatus.FAILED, 11.0, label="Timeout", error="t")
    storage.finish([timeout, ended(b, rb, RunStatus.FAILED, 11.0, label="Other", error="o")], {})
    assert storage.requeue_by_label("Timeout", 20.0, dry_run=True) == 1
    assert storage.item(P, "a").state == ItemState.FAILED  # a dry run changes nothing
    assert storage.requeue_by_label("Timeout", 20.0) == 1
    assert storage.item(P, "a").state == ItemState.QUEUED

    claim(storage, now=21.0)
    storage.recover_interrupted(22.0, {(P, S)}, "stopped")  # held for a person
    assert storage.change_held(P, ["a", "zz"], 23.0, dry_run=True).not_held == {"zz": None}
    failed = storage.change_held(P, ["a"], 23.0, fail_reason="not worth it")
    assert failed.changed == ["a"] and storage.item(P, "a").state == ItemState.FAILED


# -- books, outbox, aggregates ----------------------------------------------------------------
def test_meta_prune_and_export(storage: Storage):
    storage.set_meta("reload", {"ok": True})
    assert storage.get_meta("reload") == {"ok": True} and storage.get_meta("nothing") is None
    storage.enqueue(P, S, [("a", {})], 1.0)
    for now in (10.0, 20.0):  # two runs of one item: the older may go, the latest stays
        ((c, r),) = claim(storage, now=now)
        storage.finish([replace(ended(c, r, RunStatus.FAILED, now + 1), item_state="queued",
                                item_ready_at=now)], {})  # fmt: skip
    assert storage.prune_batch(older_than=100.0) == 1
    assert storage.prune_batch(older_than=100.0) == 0
    assert [row["item_key"] for row in storage.export_runs(None)] == ["a"]


def test_each_notification_is_due_once_then_sent_or_retried_later(storage: Storage):
    storage.add_notification("halt:1", "halt", "t1", "title", "body", now=1.0, due=1.0)
    assert storage.sent_recently("halt:1", "t1", since=0.0)
    assert storage.next_notification_due(["t1"]) == 1.0 and storage.outbox_backlog() == 1
    (row,) = storage.due_notifications(2.0, stopping=False)
    storage.mark_failed([row.id], 1, 30.0, "connection refused")
    assert storage.due_notifications(2.0, stopping=False) == []
    assert storage.next_notification_due(["t1"]) == 30.0
    storage.mark_sent([row.id], 31.0)
    assert storage.outbox_backlog() == 0 and storage.next_notification_due(["t1"]) is None


def test_the_status_aggregates_count_items_with_their_recent_changes(storage: Storage):
    storage.enqueue(P, S, [("a", {}), ("b", {})], 1.0)
    (a, ra), _ = claim(storage, now=5.0)
    storage.finish([ended(a, ra, RunStatus.FAILED, 6.0, label="Boom", group_name="terminal",
                          error="boom")], {})  # fmt: skip
    totals = {key: n for key, n in storage.item_totals().items() if n}
    assert totals == {(P, S, "failed"): 1, (P, S, "running"): 1}
    counts = {row[2]: row[4:] for row in storage.state_counts(since_24h=0.0, since_1h=5.5)}
    assert counts == {"failed": (1, 1, 1), "running": (1, 1, 0)}
    (label,) = storage.label_counts(since_24h=0.0, since_1h=0.0)
    assert label[2:5] == ("failed", "terminal", "Boom")


def test_writes_are_counted_and_reads_write_nothing(storage: Storage):
    storage.enqueue(P, S, [("a", {})], 1.0)
    before = storage.writes
    storage.pending_count(), storage.active_holds(), storage.next_ready_at([(P, S)])
    storage.state_counts(0.0, 0.0), storage.get_meta("x")
    assert storage.writes == before
    claim(storage)
    assert storage.writes == before + 1
