"""The shipped rule packs: every real error text of the corpus labelled as expected by the
daemon's own classifier, every pack rule on RE2's fast path and with advice, the packs
named in a config as pack:NAME, and the reputation halts they ship."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from conftest import REPO, Project
from freezegun import freeze_time
from pipewarden import packs
from pipewarden.classifier import Classifier
from pipewarden.config import load_config
from pipewarden.errors import ConfigError
from pipewarden.guard import Guard
from pipewarden.patterns import PYTHON_ONLY, relaxed
from pipewarden.rules import load_rules
from pipewarden.store import FinishedRun, Store
from pipewarden.types import Group, ItemState, RunStatus
from ruamel.yaml import YAML

CORPUS = REPO / "tests" / "corpus"
PACKS = [packs.packs_dir() / f"{name}.yaml" for name in packs.pack_names()]


def corpus() -> list[tuple[str, dict]]:
    """(pack, kind) for every kind in tests/corpus/PACK.yaml."""
    return [
        (path.stem, kind)
        for path in sorted(CORPUS.glob("*.yaml"))
        for kind in YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    ]


def corpus_messages() -> list:
    return [
        pytest.param(message, kind["label"], kind["group"], id=f"{pack}/{kind['kind']}/{n}")
        for pack, kind in corpus()
        for n, message in enumerate(kind["messages"], 1)
    ]


@pytest.fixture(scope="module")
def every_pack() -> Classifier:
    return Classifier(load_rules(PACKS))


@pytest.mark.parametrize(("message", "label", "group"), corpus_messages())
def test_every_corpus_message_gets_its_label_and_group(
    every_pack: Classifier, message: str, label: str, group: str
):
    got = every_pack.classify(message, pipeline="outreach", stage="send")
    assert (got.label, got.group.value) == (label, group), (
        f"{message!r}\n  expected {label} ({group}), got {got.label} ({got.group}) "
        f"from {got.rule_id}"
    )


def test_the_corpus_is_large_sourced_and_names_real_labels():
    kinds = corpus()
    messages = [m for _, kind in kinds for m in kind["messages"]]
    assert len(messages) >= 400 and len(kinds) >= 60
    assert len(set(messages)) == len(messages), "a message appears twice"
    labels = {rule.label for rule in load_rules(PACKS).rules}
    for pack, kind in kinds:
        assert pack in packs.pack_names(), f"corpus file {pack}.yaml names no pack"
        assert kind["source"].startswith("https://"), kind["kind"]
        assert kind["group"] in {g.value for g in Group if g is not Group.UNKNOWN}
        assert kind["label"] in labels, f"{kind['kind']}: no pack gives '{kind['label']}'"


@pytest.mark.parametrize("path", PACKS, ids=lambda p: p.stem)
def test_each_pack_loads_without_warnings_and_every_rule_has_advice(path: Path):
    ruleset = load_rules([path])
    assert ruleset.warnings == ()
    assert ruleset.rules, "an empty pack"
    for rule in ruleset.rules:
        assert rule.id.startswith(f"pack:{path.stem}:")
        assert rule.advice, f"{rule.id} ({rule.label}) has no advice"


def test_all_packs_together_and_with_the_shipped_rules_load_without_warnings():
    shipped = sorted((REPO / "rules").glob("*.yaml"))
    assert load_rules(PACKS).warnings == ()
    assert load_rules([*shipped, *PACKS]).warnings == ()


def test_every_pack_rule_goes_through_the_re2_prefilter():
    import re2

    options = re2.Options()
    options.case_sensitive = False
    for rule in load_rules(PACKS).rules:
        assert not PYTHON_ONLY.search(rule.source), f"{rule.id} needs Python's re"
        re2.compile(relaxed(rule.source), options)  # raises where RE2 refuses it


def test_packs_are_named_in_the_config_and_an_unknown_one_lists_the_shipped(tmp_path: Path):
    (tmp_path / "mine.yaml").write_text("rules: [{match: flux, group: terminal, label: Mine}]\n")
    config = tmp_path / "config.yaml"
    pipelines = "pipelines: {sites: {stages: [{name: find, command: [x]}]}}\n"
    config.write_text(f"rules: [mine.yaml, pack:http, pack:net]\n{pipelines}")
    loaded = load_config(config)
    http, net = (packs.packs_dir().resolve() / f"{name}.yaml" for name in ("http", "net"))
    assert loaded.rule_paths == (tmp_path / "mine.yaml", http, net)
    classifier = Classifier(load_rules(loaded.rule_paths, tmp_path))
    assert classifier.classify("flux: 503 Server Error").label == "Mine"  # first match wins
    assert classifier.classify("503 Server Error: x for url: y").rule_id.startswith("pack:http:")

    config.write_text(f"rules: [pack:browsers]\n{pipelines}")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value) == (
        f"{config}:1:8: rules: no pack named 'browsers' — shipped packs: "
        + ", ".join(f"pack:{name}" for name in packs.pack_names())
    )


def test_rules_packs_lists_every_pack_with_its_rule_count(project: Project):
    lines = project.cli("rules", "packs").stdout.splitlines()
    for name in packs.pack_names():
        count = len(load_rules([packs.packs_dir() / f"{name}.yaml"]).rules)
        assert any(line.startswith(f"pack:{name} ") and f" {count} rules" in line for line in lines)
    with_halts = [line.split()[0] for line in lines if " halt" in line]
    assert with_halts == ["pack:smtp", "pack:email", "pack:sms"]  # on the email and sms channels


_keys = itertools.count()


def failed_send(store: Store, channel: str, label: str) -> FinishedRun:
    now = time.time()
    store.enqueue("outreach", "send", [(f"lead-{next(_keys)}", {})], now)
    item_id = store.db.connection().execute("SELECT MAX(id) FROM items").fetchone()[0]
    run_id = f"run{item_id:06d}"
    store.db.connection().execute(
        "INSERT INTO runs (id, pipeline, stage, item_id, item_key, attempt, channel, status,"
        " started_at) VALUES (?, 'outreach', 'send', ?, 'k', 1, ?, 'running', ?)",
        (run_id, item_id, channel, now),
    )
    run = FinishedRun(
        run_id=run_id, item_id=item_id, status=RunStatus.FAILED, pipeline="outreach",
        stage="send", channel=channel, finished_at=now, duration_s=0.1, item_stage="send",
        item_state=ItemState.FAILED, item_data="{}", item_attempt=1, item_ready_at=None,
        item_channel=channel, error=f"Twilio error: {label}", label=label,
    )  # fmt: skip
    store.finish([run], {})
    return run


def test_five_carrier_filtered_sms_halt_sms_but_five_opted_out_do_not(tmp_path: Path):
    store = Store(tmp_path)
    guard = Guard(store, load_rules([packs.packs_dir() / "sms.yaml"]).halts, {})
    with freeze_time("2026-11-22 10:00:00") as frozen:
        for _ in range(5):  # a recipient's opt-out says nothing about the sender
            assert guard.check([failed_send(store, "sms", "Opted out")], time.time(), []) == []
        for _ in range(4):
            run = failed_send(store, "sms", "Carrier filtered")
            assert guard.check([run], time.time(), []) == []
            frozen.tick(600)
        run = failed_send(store, "sms", "Carrier filtered")
        (halt,) = guard.check([run], time.time(), [])
    assert (halt.target, halt.label, halt.reason) == (
        "sms",
        "Carrier filtered",
        "5× Carrier filtered within 1h",
    )
