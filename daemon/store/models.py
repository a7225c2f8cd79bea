"""The store's rows as Peewee models: what the CLI, the page and `why` read.

The models name no database: each opened store binds its own copies (`bound`), so two
stores never share a connection, and a backend other than SQLite can bind them too.
"""

from __future__ import annotations

from typing import Any

import peewee as pw


class Item(pw.Model):
    id = pw.AutoField()
    pipeline = pw.TextField()
    key = pw.TextField()
    stage = pw.TextField()
    state = pw.TextField()
    data = pw.TextField(default="{}")
    attempt = pw.IntegerField(default=0)  # attempts made at the current stage
    ready_at = pw.FloatField(null=True)  # claimable from then (queued / retrying / deferred)
    channel = pw.TextField(null=True)
    last_run_id = pw.TextField(null=True)
    last_error = pw.TextField(null=True)
    last_label = pw.TextField(null=True)
    last_group = pw.TextField(null=True)
    created_at = pw.FloatField()
    updated_at = pw.FloatField()
    requeues = pw.IntegerField(default=0)  # schema 3: times a person requeued it in bulk
    force = pw.IntegerField(default=0)  # schema 5: run even if this input already succeeded
    relabelled_at = pw.FloatField(null=True)  # schema 10: re-bucketed, until its next run

    class Meta:
        table_name = "items"


class Run(pw.Model):
    id = pw.TextField(primary_key=True)
    pipeline = pw.TextField()
    stage = pw.TextField()
    item_id = pw.IntegerField()
    item_key = pw.TextField()
    attempt = pw.IntegerField()
    channel = pw.TextField(null=True)
    status = pw.TextField()
    started_at = pw.FloatField()
    finished_at = pw.FloatField(null=True)
    duration_s = pw.FloatField(null=True)
    exit_code = pw.IntegerField(null=True)
    signal = pw.IntegerField(null=True)
    pid = pw.IntegerField(null=True)
    error = pw.TextField(null=True)
    error_type = pw.TextField(null=True)  # the exception type the worker reported
    traceback = pw.TextField(null=True)  # traceback, or the stderr tail of a command
    output = pw.TextField(null=True)  # stdout lines that were not protocol messages
    group_name = pw.TextField(null=True)
    label = pw.TextField(null=True)
    category = pw.TextField(null=True)
    type = pw.TextField(null=True)
    rule_id = pw.TextField(null=True)
    rules_version = pw.TextField(null=True)
    input_fingerprint = pw.TextField(null=True)
    code_ref = pw.TextField(null=True)
    config_hash = pw.TextField(null=True)
    rows_in = pw.IntegerField(null=True)
    rows_out = pw.IntegerField(null=True)
    cost = pw.FloatField(null=True)
    trace_id = pw.TextField(null=True)
    progress = pw.FloatField(null=True)  # schema 2
    message = pw.TextField(null=True)  # schema 2
    pgid = pw.IntegerField(null=True)  # schema 6: the worker's process group
    proc_start = pw.IntegerField(null=True)  # schema 6: its start time (/proc/PID/stat 22)
    data_out = pw.TextField(null=True)  # schema 7: what an ok run merged into its item (JSON)
    probe_of = pw.IntegerField(null=True)  # schema 7: the halt (holds.id) this run probed
    # schema 10: what judged a failure first, when `pipewarden reclassify` re-bucketed it
    original_group = pw.TextField(null=True)
    original_label = pw.TextField(null=True)
    original_category = pw.TextField(null=True)
    original_type = pw.TextField(null=True)
    original_rule_id = pw.TextField(null=True)
    original_rules_version = pw.TextField(null=True)
    reclassified_at = pw.FloatField(null=True)
    daemon = pw.TextField(null=True)  # schema 11: host:pid of the daemon that ran it
    replay_of = pw.TextField(null=True)  # schema 14: the run `pipewarden replay` ran again

    class Meta:
        table_name = "runs"


class Hold(pw.Model):
    """A halt (raised by a rule) or a pause (by a person) on a channel, stage or pipeline."""

    id = pw.AutoField()
    scope = pw.TextField()  # "channel" | "stage" | "pipeline"
    target = pw.TextField()  # "sms" | "sites/capture" | "sites"
    kind = pw.TextField()  # "halt" | "pause"
    rule = pw.TextField(null=True)
    reason = pw.TextField()
    label = pw.TextField(null=True)
    count = pw.IntegerField(null=True)
    samples = pw.TextField(null=True)  # JSON list of a few error texts
    created_at = pw.FloatField()
    created_by = pw.TextField(null=True)
    cleared_at = pw.FloatField(null=True)
    cleared_by = pw.TextField(null=True)
    probe_at = pw.FloatField(null=True)
    cooldown_s = pw.FloatField(null=True)
    probe_run_id = pw.TextField(null=True)

    class Meta:
        table_name = "holds"


class Outbox(pw.Model):
    """One notification for one target; sent once, retried until it is."""

    id = pw.AutoField()
    key = pw.TextField()
    event = pw.TextField()
    target = pw.TextField()  # the target's id (a hash): Apprise URLs are secrets
    title = pw.TextField()
    body = pw.TextField()
    created_at = pw.FloatField()
    due_at = pw.FloatField()
    attempts = pw.IntegerField(default=0)
    next_try_at = pw.FloatField()
    sent_at = pw.FloatField(null=True)
    last_error = pw.TextField(null=True)
    claimed_by = pw.TextField(null=True)  # schema 11: the daemon of a fleet delivering it

    class Meta:
        table_name = "outbox"


def bound(model: type[pw.Model], db: pw.Database) -> Any:
    meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
    return type(model.__name__, (model,), {"Meta": meta, "__module__": __name__})
