"""The store's interface as a contract: what every backend must do, tested through
`Storage` alone (no SQL, no models' databases). The `storage` fixture opens each backend
in turn; a new backend joins by adding itself to BACKENDS. PostgreSQL runs on a throwaway
cluster (tests/pg_cluster.py), skipped with the reason where its binaries are missing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pipewarden.store import Claimed, FinishedRun, NewRun, Storage, open_store, rollup
from pipewarden.store.records import FAILURES, FailureText, Relabel, RunFilter
from pipewarden.types import ItemState, RunStatus

Opener = Callable[[], Storage]  # opens the test's store (again: what another process sees)


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return lambda: open_store(tmp_path)


def _postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    url = request.getfixturevalue("pg_url")
    return lambda: open_store(tmp_path, url=url)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Opener]] = {
    "sqlite": _sqlite, "postgresql": _postgresql,
}  # fmt: skip
P, S, NEXT = "sites", "find", "capture"  # a pipeline and two of its stages


@pytest.fixture(params=sorted(BACKENDS))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture
def storage(opener: Opener) -> Iterator[Storage]:
    store = opener()
    yield store
    store.close()


def describe(channel: str = "web") -> Callable[[int, str, dict], NewRun]:
    def new_run(item_id: int, key: str, data: dict) -> NewRun:
        return NewRun(item_id, channel, f"fp-{key}", "cfg", None)  # the store names the run

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
        item_data=fields.pop("item_data", json.dumps(claimed.data)),
        item_attempt=0 if ok else claimed.attempt,
        item_ready_at=now if ok else None, item_channel=run.channel, **fields,
    )  # fmt: skip


# -- the queue --------------------------------------------------------------------------------
def test_enqueue_sorts_items_into_new_restarted_unchanged_and_held(storage: Storage):
    first = storage.enqueue(P, S, [("a", {"n": 1}), ("b", None)], 1.0)
    assert (first.new, first.restarted, first.unchanged) == (["a", "b"], [], [])
    again = storage.enqueue(P, S, [("a", {"n": 2}), ("c", {})], 2.0)
    assert (again.new, again.unchanged) == (["c"], ["a"])
    assert json.loads(storage.item(P, "a").data) == {"n": 1}  # queued: left as it was


def test_enqueue_of_held_repeated_and_forced_keys(storage: Storage):
    storage.enqueue(P, S, [("a", {})], 1.0)
    claim(storage)
    storage.recover_interrupted(2.0, {(P, S)}, "stopped")  # a: held for a person
    twice = storage.enqueue(P, S, [("a", {}), ("b", {"n": 1}), ("b", {"n": 2})], 3.0)
    assert (twice.held, twice.new, twice.unchanged) == (["a"], ["b"], ["b"])
    assert json.loads(storage.item(P, "b").data) == {"n": 1}  # the second found it queued
    forced = storage.enqueue(P, S, [("a", {"n": 3}), ("b", None)], 4.0, force=True)
    assert (forced.restarted, forced.data_replaced) == (["a", "b"], ["a"])
    item = storage.item(P, "a")
    assert (item.state, json.loads(item.data), item.force) == (ItemState.QUEUED, {"n": 3}, 1)
    routed = storage.enqueue(P, S, [("c", {"to": "sms"})], 5.0, channel_for=lambda d: d["to"])
    assert routed.new == ["c"] and storage.item(P, "c").channel == "sms"


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
    storage: Storage, opener: Opener
):
    storage.enqueue(P, S, [("a", {"x": 1}), ("b", {}), ("c", {})], 1.0)
    claimed = claim(storage, limit=2)
    assert [c.key for c, _ in claimed] == ["a", "b"]
    assert claimed[0][0].data == {"x": 1} and claimed[0][0].attempt == 1
    other = opener()  # what a second process (a restarted daemon) sees
    try:
        assert [run.item_key for run in other.running_runs()] == ["a", "b"]
        assert other.item(P, "a").state == ItemState.RUNNING
        assert other.item(P, "c").state == ItemState.QUEUED
    finally:
        other.close()


def test_the_store_names_each_run_a_number_in_the_order_runs_start(storage: Storage):
    storage.enqueue(P, S, [(f"k{n}", {}) for n in range(11)], 1.0)
    runs = [run for _, run in claim(storage, limit=4)] + [run for _, run in claim(storage)]
    numbers = [int(run.run_id) for run in runs]  # a string of digits at the interface
    assert numbers == sorted(set(numbers)) and len(numbers) == 11
    (first,) = storage.runs_with_prefix(runs[0].run_id)  # run 1 is run 1, not also run 10
    assert first.item_key == "k0"
    for run in (runs[0], runs[-1]):  # the worker's trace id is the one a reader sees
        (stored,) = storage.runs_with_prefix(run.run_id)
        assert stored.trace_id == run.trace_id and len(run.trace_id) == 32
        assert int(run.trace_id, 16) != 0
    assert runs[0].trace_id != runs[1].trace_id


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


def test_a_run_that_returned_no_data_leaves_the_items_data_as_stored(storage: Storage):
    storage.enqueue(P, S, [("a", {"kept": [1, 2]})], 1.0)
    ((claimed, run),) = claim(storage)
    storage.finish([ended(claimed, run, RunStatus.OK, 12.0, item_data=None)], {})
    assert storage.item(P, "a").data == '{"kept": [1, 2]}'


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
    assert storage.earlier_success(a.item_id, P, S, "fp-a") == (ra.run_id, "{}")
    assert storage.earlier_success(b.item_id, P, S, "fp-b") is None
    assert storage.pipelines_of("a") == [P]
    assert len(storage.recent_runs(2)) == 2
    assert [r.item_key for r in storage.recent_runs(5, status="ok")] == ["a"]
    assert storage.runs_with_prefix(ra.run_id)[0].id == ra.run_id


def test_a_recorded_replay_is_a_run_that_no_production_read_counts(storage: Storage):
    storage.enqueue(P, S, [("a", {})], 1.0)
    ((a, ra),) = claim(storage)
    storage.finish([ended(a, ra, RunStatus.FAILED, 11.0, error="opted out", label="Opted out",
                          group_name="terminal", cost=0.5)], {})  # fmt: skip
    item_before = storage.item(P, "a")
    for status, error, label in (("failed", "opted out", "Opted out"), ("ok", None, None)):
        storage.add_replay({
            "pipeline": P, "stage": S, "item_id": a.item_id,
            "item_key": "a", "attempt": 1, "channel": "web", "status": status,
            "started_at": 20.0, "finished_at": 21.0, "duration_s": 1.0, "error": error,
            "label": label, "group_name": label and "terminal", "input_fingerprint": "fp-a",
            "data_out": "{}", "replay_of": ra.run_id,
        })  # fmt: skip
    runs = storage.item_runs(a.item_id)
    assert [r.replay_of for r in runs] == [None, ra.run_id, ra.run_id]
    replays = [r.id for r in runs if r.replay_of]  # the store names them, as it names any run
    assert storage.runs_with_prefix(replays[1])[0].replay_of == ra.run_id
    assert storage.label_failures("web", "Opted out", 0.0, samples=5) == (1, ["opted out"])
    assert storage.count_runs(P, S, "ok", 0.0) == 0 and storage.count_runs(P, S, "failed", 0.0) == 1
    assert storage.last_run_statuses(P, S, 5) == [("failed", "opted out")]
    assert storage.earlier_success(a.item_id, P, S, "fp-a") is None  # a replay is no checkpoint
    assert storage.recent_durations(P, S, 5) == []
    assert [row[1:] for row in storage.ended_runs(P, S, 0.0)] == [("failed", rollup.bucket(1.0), 1)]
    assert storage.cost_since(P, [S], 0.0) == 0.5
    assert [t.runs for t in storage.failure_texts(None)] == [1]  # what a backtest replays
    item_after = storage.item(P, "a")
    assert (item_after.state, item_after.last_run_id, item_after.updated_at) == (
        item_before.state, item_before.last_run_id, item_before.updated_at)  # fmt: skip
    assert storage.prune_batch(older_than=15.0) == 0  # a replay does not make ra prunable
    with pytest.raises(ValueError, match="replay_of"):
        storage.add_replay(
            {
                "pipeline": P,
                "stage": S,
                "item_id": a.item_id,
                "item_key": "a",
                "attempt": 1,
                "status": "ok",
                "started_at": 1.0,
            }
        )


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


# -- re-bucketing history (issue 15) ----------------------------------------------------------
def test_the_labels_offered_are_those_of_items_retrying_failed_or_ignored(storage: Storage):
    """What `retry --label` completes from: a label of an item set aside by its failure,
    never one a done or queued item's row still names."""
    storage.enqueue(P, S, [(key, {}) for key in "abcde"], 1.0)
    runs = dict(zip("abcde", claim(storage), strict=True))
    states = {"a": ItemState.FAILED, "b": ItemState.RETRYING, "c": ItemState.IGNORED,
              "d": ItemState.QUEUED, "e": ItemState.FAILED}  # fmt: skip
    labels = {"a": "Timeout", "b": "Rate limited", "c": "Not found", "d": "Stale", "e": "Timeout"}
    storage.finish([
        replace(ended(c, r, RunStatus.FAILED, 11.0, label=labels[key], group_name="retriable"),
                item_state=states[key], item_ready_at=20.0)
        for key, (c, r) in runs.items()
    ], {})  # fmt: skip
    assert storage.item(P, "d").last_label == "Stale"  # a queued item's row names it still
    assert storage.item_labels() == ["Not found", "Rate limited", "Timeout"]


def test_reclassify_keeps_the_first_classification_and_marks_items_until_their_next_run(
    storage: Storage,
):
    storage.enqueue(P, S, [("a", {}), ("b", {})], 1.0)
    runs = claim(storage)
    storage.finish([ended(c, r, RunStatus.FAILED, 11.0, error="widget refused",
                          group_name="unknown", label="Unknown", category="unknown")
                    for c, r in runs], {})  # fmt: skip
    (text,) = storage.failure_texts(since=None)
    assert text == FailureText(P, S, "widget refused", None, "unknown", "Unknown", 2)
    new = Relabel(text, "site", "Widget refused", "retriable", "retriable", "sites.yaml:3")
    assert storage.reclassify([new], since=None, rules_version="v2", now=30.0) == (2, 2)
    (again,) = storage.failure_texts(since=None)  # re-bucketed once more: the first stays
    assert storage.reclassify([replace(new, text=again, label="Widget gone")], None, "v3", 40.0)
    run = storage.item_runs(runs[0][0].item_id)[0]
    assert (run.label, run.original_label, run.original_rules_version) == (
        "Widget gone", "Unknown", None,
    )  # fmt: skip
    assert storage.reclassified_counts() == {(P, S, "failed", "site", "Widget gone"): 2}
    assert storage.requeue_by_label("Widget gone", 50.0) == 2
    claim(storage, limit=1, now=51.0)  # a's next run: its mark ends, b's stays
    assert storage.reclassified_counts() == {(P, S, "queued", "site", "Widget gone"): 1}


def test_retry_by_label_in_chunks_takes_each_item_once(storage: Storage):
    storage.enqueue(P, S, [(k, {}) for k in "abcde"], 1.0)
    storage.finish([ended(c, r, RunStatus.FAILED, 11.0, label="Timeout", error="t")
                    for c, r in claim(storage)], {})  # fmt: skip
    assert storage.requeue_by_label("Timeout", 20.0, before=15.0, limit=2) == 2
    assert storage.requeue_by_label("Timeout", 20.0, before=15.0, limit=2, dry_run=True) == 2
    # The two requeued fail again meanwhile: a later chunk of the same retry leaves them be.
    again = claim(storage, now=21.0)
    storage.finish([ended(c, r, RunStatus.FAILED, 22.0, label="Timeout", error="t")
                    for c, r in again], {})  # fmt: skip
    assert storage.requeue_by_label("Timeout", 30.0, before=15.0, limit=2) == 2
    assert storage.requeue_by_label("Timeout", 30.0, before=15.0, limit=2) == 1
    assert storage.requeue_by_label("Timeout", 30.0, before=15.0, limit=2) == 0
    assert storage.requeue_by_label("Timeout", 30.0, dry_run=True) == 2  # those two, failed


def test_a_backup_reports_its_progress_up_to_the_whole(storage: Storage, tmp_path: Path):
    storage.enqueue(P, S, [(f"k{n}", {"pad": "x" * 3000}) for n in range(400)], 1.0)
    seen: list[tuple[int, int]] = []
    storage.backup(tmp_path / "copy.db", lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    if storage.kind == "sqlite":  # page by page; pg_dump says only when it is done
        assert seen[-1][0] > 1_000_000 and (tmp_path / "copy.db").stat().st_size > 1_000_000


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


def test_the_status_counts_follow_every_claim_finish_give_back_and_recovery(storage: Storage):
    """The tree's totals and label counts as counting the items themselves says, after the
    scheduler's claims and finishes (which count their own moves) mixed with the other
    writes of items (a give-back, a recovery, a retry by label)."""
    keys = [f"k{n}" for n in range(8)]

    def agrees() -> None:
        items = [storage.item(P, key) for key in keys]
        totals: dict[tuple[str, str, str], int] = {}
        labels: dict[tuple[str, str, str], int] = {}
        for i in items:
            totals[(i.pipeline, i.stage, i.state)] = (
                totals.get((i.pipeline, i.stage, i.state), 0) + 1
            )
            if i.state in ("retrying", "failed"):
                label = (i.state, i.last_group or "", i.last_label or "")
                labels[label] = labels.get(label, 0) + 1
        assert {k: n for k, n in storage.item_totals().items() if n} == totals
        counted = {tuple(row[2:5]): row[5] for row in storage.label_counts(0.0, 0.0) if row[5]}
        assert counted == labels

    storage.enqueue(P, S, [(key, {}) for key in keys], 1.0)
    first = claim(storage, limit=6, now=2.0)
    agrees()
    (a, ra), (b, rb), (c, rc), (d, rd), (e, re), _ = first  # the last stays running
    storage.finish([
        ended(a, ra, RunStatus.OK, 3.0),
        ended(b, rb, RunStatus.FAILED, 3.0, label="Boom", group_name="terminal", error="boom"),
        replace(ended(c, rc, RunStatus.FAILED, 3.0, label="Reset", group_name="retriable",
                      error="reset"), item_state=ItemState.RETRYING, item_ready_at=4.0),
        replace(ended(d, rd, RunStatus.DEFERRED, 3.0), item_stage=S,
                item_state=ItemState.DEFERRED, item_ready_at=50.0),
    ], {})  # fmt: skip
    agrees()
    storage.unclaim([(re.run_id, e.item_id)])  # f stays running
    agrees()
    again = claim(storage, now=5.0)  # c's retry, e, and the two never claimed
    assert sorted(x.key for x, _ in again) == sorted([c.key, e.key, "k6", "k7"])
    agrees()
    storage.recover_interrupted(6.0, set(), "daemon stopped while running")
    agrees()
    assert storage.requeue_by_label("Boom", 7.0) == 1
    agrees()


def test_the_status_counts_of_recent_changes_are_exact_for_windows_starting_anywhere(
    storage: Storage,
):
    """Items changed over a few hours, the windows starting between and on their times:
    every count as grouping the items themselves says."""
    keys = [f"k{n}" for n in range(12)]
    for n, key in enumerate(keys):
        storage.enqueue(P, S, [(key, {})], 1000.0 + n * 250.0, channel_for=lambda d: "web")
    claimed = claim(storage, limit=6, now=4100.0)
    storage.finish([ended(c, r, RunStatus.FAILED, 4100.0 + 300.0 * n, label="Boom",
                          group_name="terminal", error="boom")
                    for n, (c, r) in enumerate(claimed[:4])], {})  # fmt: skip
    items = [storage.item(P, key) for key in keys]
    for since in (0.0, 999.0, 1000.0, 1750.0, 2999.9, 4100.0, 4400.0, 4700.1, 9e9):
        expected: dict[str, list[int]] = {}
        for item in items:
            row = expected.setdefault(item.state, [0, 0])
            row[0] += 1
            row[1] += item.updated_at >= since
        counts = {row[2]: list(row[4:6]) for row in storage.state_counts(since, since)}
        assert counts == expected, f"since {since}"
        (label,) = storage.label_counts(since, since)
        assert label[5:7] == (4, sum(1 for i in items if i.state == "failed"
                                     and i.updated_at >= since)), f"since {since}"  # fmt: skip


def test_writes_are_counted_and_reads_write_nothing(storage: Storage):
    storage.enqueue(P, S, [("a", {})], 1.0)
    before = storage.writes
    storage.pending_count(), storage.active_holds(), storage.next_ready_at([(P, S)])
    storage.state_counts(0.0, 0.0), storage.get_meta("x")
    assert storage.writes == before
    claim(storage)
    assert storage.writes == before + 1


# -- ended runs, counted as they end (status -v and the charts read these) -------------------
def test_ended_runs_are_counted_by_slot_outcome_and_duration_as_they_end(storage: Storage):
    storage.enqueue(P, S, [(k, {}) for k in "abcd"], 1.0)
    (a, ra), (b, rb), (c, rc), (d, rd) = claim(storage, now=1000.0)
    retried = replace(ended(c, rc, RunStatus.FAILED, 1000.5), item_state=ItemState.RETRYING)
    storage.finish([ended(a, ra, RunStatus.OK, 1000.5), ended(b, rb, RunStatus.OK, 1001.0),
                    ended(d, rd, RunStatus.TIMED_OUT, 1001.0), retried], {})  # fmt: skip
    counts = {(slot, outcome): runs for slot, outcome, _, runs in storage.ended_runs(P, S, 0.0)}
    assert counts == {(3, "ok"): 2, (3, "failed"): 1, (3, "retried"): 1}  # 1000 s: slot 3
    assert storage.ended_runs(P, S, 1200.0) == []  # from slot 4 on
    assert storage.ended_runs(P, NEXT, 0.0) == []


def test_runs_a_restart_ends_as_interrupted_are_counted_too(storage: Storage):
    storage.enqueue(P, S, [("a", {})], 1.0)
    claim(storage, now=10.0)
    storage.recover_interrupted(20.0, set(), "the daemon stopped")
    ended_then = [row[1:] for row in storage.ended_runs(P, S, 0.0)]
    assert ended_then == [("interrupted", rollup.bucket(10.0), 1)]


# -- lookups for the page, the CLI and dry runs; the audit lines ------------------------------
def test_the_page_finds_runs_by_filter_page_by_page_with_later_successes(storage: Storage):
    storage.enqueue(P, S, [("a", {}), ("b", {})], 1.0)
    (a, ra), (b, rb) = claim(storage, now=10.0)
    storage.finish([replace(ended(a, ra, RunStatus.FAILED, 11.0, label="Timeout", error="x" * 50),
                            item_state=ItemState.QUEUED, item_stage=S, item_ready_at=11.0),
                    ended(b, rb, RunStatus.OK, 11.0)], {})  # fmt: skip
    ((a2, ra2),) = claim(storage, now=20.0)
    storage.finish([replace(ended(a2, ra2, RunStatus.OK, 21.0))], {})
    columns = ("id", "item_key", "status", "error")
    newest = storage.find_runs(RunFilter(), columns, 10, limit=2)
    assert [(row[1], row[2]) for row in newest] == [("a", "ok"), ("b", "ok")]
    (failed,) = storage.find_runs(RunFilter(status=FAILURES, stage=S), columns, 10, limit=5)
    assert failed == (ra.run_id, "a", "failed", "x" * 10, 1)  # cut; an ok run followed it
    assert storage.later_ok(ra.run_id) and not storage.later_ok(rb.run_id)
    older = storage.find_runs(RunFilter(before=(20.0, ra2.run_id), label="Timeout"), columns,
                              10, limit=5)  # fmt: skip
    assert [row[0] for row in older] == [ra.run_id]
    assert storage.find_runs(RunFilter(since=15.0, until=25.0), columns, 10, 5)[0][0] == ra2.run_id
    assert storage.runs_started_since(15.0) == 1 and storage.runs_started_since(0.0) == 3


def test_runs_are_found_by_their_start_after_the_clock_stepped_back(storage: Storage):
    storage.enqueue(P, S, [(f"k{n}", {}) for n in range(4)], 1.0)
    claim(storage, limit=2, now=1_000.0)
    claim(storage, limit=2, now=700.0)  # recorded later, started five minutes earlier
    everyone, first_two = {"k0", "k1", "k2", "k3"}, {"k0", "k1"}
    assert storage.runs_started_since(700.0) == 4 and storage.runs_started_since(701.0) == 2
    assert {r.item_key for r in storage.runs_matching(None, None, None, None, 700.0)} == everyone
    assert {r.item_key for r in storage.runs_matching(None, P, S, None, 990.0)} == first_two
    assert [r.started_at for r in storage.runs_started_from(650.0)] == [700.0] * 2 + [1_000.0] * 2
    found = storage.find_runs(RunFilter(since=700.0, until=1_000.0), ("item_key",), 10, 10)
    assert {row[0] for row in found} == {"k2", "k3"}
    found = storage.find_runs(RunFilter(until=1_000.5), ("item_key",), 10, 10)
    assert {row[0] for row in found} == everyone
    assert storage.prunable_runs(2_000.0, 10)[0] == 0  # each run is its item's latest
    assert {row["item_key"] for row in storage.export_runs(700.0)} == everyone
    storage.enqueue(P, S, [("k4", {}), ("k5", {})], 1.0)
    claim(storage, limit=1, now=1_030.0)  # the clock is right again
    claim(storage, limit=1, now=705.0)  # and steps back into a minute that has runs
    found = storage.find_runs(RunFilter(until=1_000.5), ("item_key",), 10, 10)
    assert {row[0] for row in found} == {*everyone, "k5"}
    found = storage.find_runs(RunFilter(until=706.0), ("item_key",), 10, 10)
    assert {row[0] for row in found} == {"k2", "k3", "k5"}


def test_held_items_halts_and_dry_run_previews(storage: Storage):
    storage.enqueue(P, S, [("a", {}), ("b", {}), ("c", {})], 1.0)
    (a, ra), (b, rb), _ = claim(storage, now=10.0)
    storage.finish([ended(a, ra, RunStatus.FAILED, 11.0, label="Timeout", error="t"),
                    ended(b, rb, RunStatus.FAILED, 11.0, label="Other", error="o")],
                   {})  # fmt: skip
    storage.recover_interrupted(12.0, {(P, S)}, "stopped")  # c: held for a person
    rows, counts = storage.held_items(None, 10)
    assert [(row[0], row[1], row[2]) for row in rows] == [(P, "c", S)] and counts == {P: 1}
    assert storage.held_items("other", 10) == ([], {})
    assert storage.labelled_failures("Timeout", P, S, None, 5) == (1, [(P, S, "a", "failed")])
    assert storage.labelled_failures("Timeout", None, None, 50.0, 5) == (0, [])
    assert storage.known_keys(P, ["a", "zz", "a"]) == {"a": "failed"}
    assert storage.prunable_runs(100.0, 5) == (0, [])  # every run is its item's latest

    storage.add_hold(halt("sms", now=5.0))
    storage.add_hold({**halt("web", now=6.0), "scope": "channel"})
    assert [row[0] for row in storage.halts_between({"sms"}, False, 0.0)] == ["sms"]
    assert [row[0] for row in storage.halts_between({P}, True, 0.0)] == ["sms", "web"]


def test_audit_lines_are_written_and_read_newest_first(storage: Storage):
    storage.add_audit("ann (cli)", "retry", "sites/find", "3 items", 5.0)
    with storage.transaction():
        storage.add_audit("bob via page", "halt", "sms", "", 6.0)
    lines = storage.audit_lines(10)
    assert [(line[2], line[3], line[1]) for line in lines] == [
        ("bob via page", "halt", 6.0), ("ann (cli)", "retry", 5.0)
    ]  # fmt: skip
    assert len(storage.audit_lines(1)) == 1


def test_runs_tail_reads_the_latest_runs_then_those_started_since_and_the_running(
    storage: Storage,
):
    storage.enqueue(P, S, [("a", {}), ("b", {})], 1.0)
    ((a, ra),) = claim(storage, limit=1, now=10.0)
    storage.finish([ended(a, ra, RunStatus.OK, 11.0)], {})
    ((_, rb),) = claim(storage, limit=1, now=20.0)
    latest = storage.runs_matching(None, P, S, None, None)
    assert [run.id for run in latest] == [rb.run_id, ra.run_id]  # newest first
    assert [run.id for run in storage.runs_matching(1, None, None, "ok", None)] == [ra.run_id]
    assert storage.runs_matching(None, None, None, None, 15.0)[0].id == rb.run_id
    assert [run.id for run in storage.runs_started_from(10.0)] == [ra.run_id, rb.run_id]
    assert [run.status for run in storage.runs_by_id([rb.run_id])] == ["running"]
    assert storage.runs_by_id([]) == []


# -- templates of unmatched failures, and the rules proposed for them (issue 15) -------------
def test_templates_keep_their_members_and_proposals_their_decisions(storage: Storage):
    storage.enqueue(P, S, [("a", {}), ("b", {})], 1.0)
    (a, ra), (b, rb) = claim(storage, now=10.0)
    storage.finish([ended(a, ra, RunStatus.FAILED, 11.0, error="boom 1"),
                    ended(b, rb, RunStatus.FAILED, 12.0, error="boom 2")], {})  # fmt: skip
    with storage.transaction():
        first = storage.add_template("boom <*>", 1, 11.0)
        second = storage.add_template("bang", 1, 11.0)
        storage.add_template_runs([(ra.run_id, first, P, S, 11.0), (rb.run_id, second, P, S, 12.0)])
        storage.merge_template(first, second)
        storage.update_template(first, "boom <*>", 2, 5.0)  # last_seen never goes back
        storage.add_template_runs([(rb.run_id, first, P, S, 12.0)])  # again: replaced
    assert storage.templates() == [(first, "boom <*>", 2)]
    assert storage.latest_templates(5) == [first]
    assert storage.frequent_templates(0.0, 2) == [(first, "boom <*>")]
    assert storage.frequent_templates(11.5, 2) == []
    assert storage.template_errors(first, 5) == ["boom 2", "boom 1"]
    assert storage.template_counts(first, 11.5) == (2, 1, {f"{P}/{S}": 2})

    assert storage.current_proposal(first) is None
    with storage.transaction():
        storage.add_proposal({
            "template_id": first, "template": "boom <*>", "state": "pending",
            "pattern": "boom", "label": "Boom", "group_name": "retriable",
            "category": "app", "examples": "[]", "created_at": 20.0,
        })  # fmt: skip
    ((proposal_id, template, state),) = [storage.current_proposal(first)]
    assert (template, state) == ("boom <*>", "pending")
    with storage.transaction():
        storage.update_proposal(proposal_id, {"state": "approved", "decided_by": "ann"})
    assert storage.proposal(proposal_id)[3] == "approved"
    assert [row[0] for row in storage.proposals("approved")] == [proposal_id]
    assert storage.proposals("pending") == [] and storage.proposal(proposal_id + 9) is None
