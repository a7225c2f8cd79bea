"""No rule or rule file can stall, break or silently stop the daemon.

A pattern that backtracks for ever gets a time budget and counts as no match; a
pattern RE2 cannot read is confirmed by Python; a rules or config file that cannot
be read is one clear line, wherever it is loaded; the file watcher outlives every
bad save; `rules test` classifies as the daemon does, exception bases included.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import httpx
import pytest
from conftest import Project, wait_until
from pipewarden.classifier import Classifier
from pipewarden.config import load_config
from pipewarden.errors import ConfigError
from pipewarden.rules import load_rules

WORKER = """
def judge(data):
    return {"ok": False, "error": data["text"]}

def tick(data):
    return {}
"""
SLOW_RULES = r"""
pipelines: [slow]
rules:
  - {match: '^(\w+\s?)*$', group: terminal, label: Words only}
  - {match: '(a+)+$', group: terminal, label: Nested}
  - {match: '(\w|\w\w)+$', group: terminal, label: Pairs}
"""


def api(project: Project) -> tuple[str, dict[str, str]]:
    base = f"http://127.0.0.1:{project.api_port}"
    wait_until(lambda: _answers(f"{base}/health"), "the API")
    token = (project.state_dir / "api.token").read_text().strip()
    return base, {"Authorization": f"Bearer {token}"}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def finished(project: Project, key: str) -> list:
    return [run for run in project.runs(key) if run.status != "running"]


def enqueue(project: Project, pipeline: str, key: str, data: dict) -> None:
    project.cli("enqueue", pipeline, key, "--data", json.dumps(data))


# -- 4. backtracking rules -------------------------------------------------------------
def test_a_rule_that_backtracks_for_ever_never_stalls_the_daemon(project: Project):
    project.write("worker.py", WORKER)
    project.write("rules/slow.yaml", SLOW_RULES)
    project.configure(
        """
        slow:
          stages:
            - {name: judge, python: "worker:judge", retry: {max_attempts: 1}}
        fast:
          stages:
            - {name: tick, python: "worker:tick", concurrency: 2}
        """,
        rules=("rules/*.yaml",),
    )
    project.start_daemon()
    base, _ = api(project)
    enqueue(project, "slow", "words", {"text": "a" * 40 + "!"})
    enqueue(project, "slow", "nested", {"text": "a" * 26 + "!a"})

    words = wait_until(lambda: finished(project, "words"), "the backtracking message's run")
    nested = wait_until(lambda: finished(project, "nested"), "the nested message's run")
    ticks = "".join(json.dumps({"key": f"tick-{n}", "data": {}}) + "\n" for n in range(20))
    project.write("ticks.jsonl", ticks)
    enqueue(project, "slow", "again", {"text": "a" * 40 + "!"})  # the slow rule, once more
    project.cli("enqueue", "fast", "--file", "ticks.jsonl")

    def ticked() -> bool:  # the other pipeline keeps running, and the API keeps answering
        started = time.monotonic()
        assert httpx.get(f"{base}/health", timeout=1).status_code == 200
        assert time.monotonic() - started < 1.0
        return all(project.item("fast", f"tick-{n}").state == "done" for n in range(20))

    wait_until(ticked, "the other pipeline's items")
    wait_until(lambda: finished(project, "again"), "the slow rule's second message")
    assert [r.label for r in words] == ["Unknown"]  # the slow rule counts as no match
    assert [r.label for r in nested] == ["Nested"]  # Python's answer, without its 12 s
    gave_up = "rules/slow.yaml:5 ('(\\w|\\w\\w)+$') ran out of its 25 ms budget"
    # A burst's later counts reach the store within a second or so, not with each run.
    status = wait_until(
        lambda: (out := project.cli("status").stdout) and f"rule {gave_up} 2 times" in out and out,
        "status to count the slow rule's second give-up",
    )
    assert f"rule {gave_up} 2 times, last " in status and "counted as no match" in status
    assert gave_up in project.cli("doctor", expect=None).stdout
    log = project.daemon_log()
    assert log.count("rules/slow.yaml:5 ('(\\w|\\w\\w)+$') ran out of its 25 ms budget") == 1


def test_rules_check_warns_of_repeats_inside_repeats(project: Project):
    project.write("rules/slow.yaml", SLOW_RULES)
    done = project.cli("rules", "check", "rules/slow.yaml")
    warned = [line for line in done.stdout.splitlines() if "repeats a part" in line]
    assert [line.split(":")[2] for line in warned] == ["3", "4"]  # ^(\w+\s?)*$ and (a+)+$
    assert done.stdout.endswith("ok: 3 rules (version " + done.stdout.rsplit("version ", 1)[1])


def test_a_message_a_rule_gives_up_on_still_meets_the_rules_after_it(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "rules:\n"
        "  - {match: '(\\w|\\w\\w)+$', group: terminal, label: Pairs}\n"
        "  - {match: 'a!', group: retriable, label: Bang}\n"
    )
    gave_up: list[str] = []
    classifier = Classifier(load_rules([path], tmp_path), lambda rule, why: gave_up.append(why))
    started = time.monotonic()
    assert classifier.classify("a" * 40 + "!").label == "Bang"
    assert time.monotonic() - started < 1.0
    assert gave_up == ["ran out of its 25 ms budget"]


# -- 5. patterns RE2 cannot read ----------------------------------------------------------
RE2_REFUSES = """
pipelines: [odd]
rules:
  - {match: '(?x) foo', group: terminal, label: Verbose}
  - {match: 'b{2000}', group: terminal, label: Long repeat}
  - {match: '[[:alpha:]', group: terminal, label: Bracket set}
"""


def test_patterns_re2_refuses_are_confirmed_by_python(project: Project):
    project.write("worker.py", WORKER)
    project.write("rules/odd.yaml", RE2_REFUSES)
    project.configure(
        """
        odd:
          stages:
            - {name: judge, python: "worker:judge", retry: {max_attempts: 1}}
        """,
        rules=("rules/*.yaml",),
    )
    texts = {"verbose": "a foo happened", "long": "b" * 2000, "set": "zap!", "none": "xyz"}
    for key, text in texts.items():
        enqueue(project, "odd", key, {"text": text})
    project.start_daemon()

    for key in texts:
        wait_until(lambda key=key: project.item("odd", key).state == "failed", f"{key} to fail")
    labels = {key: [r.label for r in project.runs(key)] for key in texts}
    assert labels == {"verbose": ["Verbose"], "long": ["Long repeat"], "set": ["Bracket set"],
                      "none": ["Unknown"]}  # fmt: skip
    assert all(r.status == "failed" for key in texts for r in project.runs(key))


def test_rules_check_warns_of_patterns_re2_refuses_and_rules_test_answers(project: Project):
    project.write("rules/odd.yaml", RE2_REFUSES)
    done = project.cli("rules", "check", "rules/odd.yaml")
    warned = [line for line in done.stdout.splitlines() if "not one RE2 can read" in line]
    assert [line.split(":")[2] for line in warned] == ["3", "4", "5"]
    assert "invalid perl operator: (?x" in warned[0]
    assert "Python alone tries it on every message in its scope" in warned[0]
    project.configure("odd:\n  stages:\n    - {name: judge, command: [x]}\n", rules=("rules/*",))
    tested = project.cli("rules", "test", "zap!", "--pipeline", "odd")
    assert "label     Bracket set" in tested.stdout and tested.stderr == ""


def test_python_meaning_is_kept_where_the_matcher_reads_differently(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "rules:\n"
        "  - {match: '[[:alpha:]]', group: terminal, label: Set then bracket}\n"
        "  - {match: 'foo{e<=1}', group: terminal, label: Literal braces}\n"
        "  - {match: '^\\B$', group: terminal, label: Not a boundary}\n"
        "  - {match: '[a&&b]x', group: terminal, label: Three characters}\n"
    )
    classifier = Classifier(load_rules([path], tmp_path))
    assert classifier.classify("a]").label == "Set then bracket"  # one of [:alph, then ]
    assert classifier.classify("b").label == "Unknown"  # not a POSIX class of letters
    assert classifier.classify("foo{e<=1}").label == "Literal braces"
    assert classifier.classify("fox").label == "Unknown"  # no fuzzy matching
    assert classifier.classify("").label == "Unknown"  # re: \B never holds in ''
    assert classifier.classify("&x").label == "Three characters"  # no set operations


def test_a_pattern_the_matcher_cannot_read_as_python_is_refused_with_the_fix(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n  - {match: '(?a:(?:\\w))x', group: terminal, label: X}\n")
    with pytest.raises(ConfigError) as caught:
        load_rules([path], tmp_path)
    assert str(caught.value) == (
        "r.yaml:2:13: regex '(?a:(?:\\w))x' cannot be matched safely: a scoped ASCII flag"
        " (?a:...) is read differently by the time-limited matcher — put (?a) at the start"
        " to make the whole pattern ASCII"
    )


def test_a_text_re2_cannot_take_is_still_classified(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n  - {match: 'quota', group: terminal, label: Quota}\n")
    assert Classifier(load_rules([path], tmp_path)).classify("\ud800 quota").label == "Quota"


# -- 10. rule and config files that cannot be read ----------------------------------------
GOOD = 'pipelines: [demo]\nrules:\n  - {match: "zorgon", group: terminal, label: "%s"}\n'
BAD_FILES = {
    "not UTF-8": (
        b'rules:\n  - {match: "caf\xe9", group: terminal, label: X}\n',
        "rules/live.yaml:2:17: not UTF-8 text: byte 0xe9 at offset 23 — save the file as UTF-8",
    ),
    "a complex key": (
        b"rules:\n  - ? [match, [x]]\n    : 1\n",
        "rules/live.yaml:2:7: a list or mapping used as a key — keys are plain names:"
        " write 'name: ...'",
    ),
    "nested 5,000 deep": (
        b"rules: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "rules/live.yaml:1:71: nested more than 64 levels deep — config and rule files need"
        " only a few levels",
    ),
}


def bad_rules_files(project: Project) -> list[tuple[str, object, str]]:
    """(what, how to make it, the error it gives): the edits that killed the watcher."""
    live = project.root / "rules" / "live.yaml"
    folder = project.root / "rules" / "x.yaml"
    edits: list[tuple[str, object, str]] = [
        (what, lambda raw=raw: live.write_bytes(raw), error)
        for what, (raw, error) in BAD_FILES.items()
    ]
    edits.append(("a folder named x.yaml", folder.mkdir,
                  "rules/x.yaml: is a folder, not a file — name a .yaml file"))  # fmt: skip
    edits.append(("deleted mid-edit", lambda: (folder.rmdir(), live.unlink()),
                  f"{project.config_path}:1:8: rules: 'rules/*.yaml' matches no file — looked"
                  f" in {project.root}"))  # fmt: skip
    return edits


def reload_said(project: Project, before: float, seen: list[dict]) -> str | None:
    """The error of the newest reload since `before` (kept in `seen`), if one was made."""
    record = reload_record(project)
    if record["at"] == before:
        return None
    seen.append(record)
    return record["error"]


def reload_record(project: Project) -> dict:
    store = project.store()
    try:
        return store.get_meta("reload") or {}
    finally:
        store.close()


def test_every_bad_save_is_a_clear_failed_reload_and_the_next_good_one_is_picked_up(
    project: Project,
):
    project.write("worker.py", WORKER)
    project.write("rules/live.yaml", GOOD % "Zorgon 0")
    project.configure(
        """
        demo:
          stages:
            - {name: judge, python: "worker:judge", retry: {max_attempts: 1}}
        """,
        rules=("rules/*.yaml",),
    )
    project.start_daemon()
    enqueue(project, "demo", "warm-up", {"text": "zorgon"})  # once it ran, the daemon watches
    wait_until(lambda: finished(project, "warm-up"), "the first run")

    for n, (what, make_it, error) in enumerate(bad_rules_files(project), start=1):
        before = reload_record(project)["at"]
        make_it()
        # An edit of two steps (a folder removed, then the file) may be seen between them:
        # that reload fails too, and the one after the second step says what is left.
        seen: list[dict] = []
        with contextlib.suppress(AssertionError):
            wait_until(lambda b=before, s=seen, e=error: reload_said(project, b, s) == e, what)
        assert seen and (seen[-1]["ok"], seen[-1]["error"]) == (False, error), what
        if what == "deleted mid-edit":  # the CLI reads the config too, and says the same
            assert project.cli("status", expect=2).stderr == f"pipewarden: {error}\n"
        else:
            status = project.cli("status").stdout.splitlines()[1]
            assert status.startswith("rules: reload failed at ") and error in status, what

        project.write("rules/live.yaml", GOOD % f"Zorgon {n}")
        if what == "a folder named x.yaml":
            continue  # the folder is still there: the next edit removes it
        wait_until(lambda: reload_record(project)["ok"], f"the good save after {what}")
        enqueue(project, "demo", f"after-{n}", {"text": "zorgon"})
        runs = wait_until(lambda n=n: finished(project, f"after-{n}"), f"the run after {what}")
        assert runs[0].label == f"Zorgon {n}", what
    assert "background task failed" not in project.daemon_log()
    assert "Traceback" not in project.daemon_log()


def test_a_bad_edit_makes_the_reload_endpoint_answer_400_with_the_reason(project: Project):
    project.write("worker.py", WORKER)
    project.write("rules/live.yaml", GOOD % "Zorgon")
    project.configure(
        "demo:\n  stages:\n    - {name: judge, python: 'worker:judge'}\n", rules=("rules/*.yaml",)
    )
    project.start_daemon()
    base, auth = api(project)
    assert httpx.post(f"{base}/api/reload", headers=auth, json={}).status_code == 200
    (project.root / "rules" / "live.yaml").write_bytes(BAD_FILES["not UTF-8"][0])

    answer = httpx.post(f"{base}/api/reload", headers=auth, json={})
    assert answer.status_code == 400
    assert answer.json()["error"] == BAD_FILES["not UTF-8"][1]
    refused = project.cli("reload", expect=1)
    assert refused.stderr.startswith(f"reload failed: {BAD_FILES['not UTF-8'][1]}\n")


@pytest.mark.parametrize("what", [*BAD_FILES, "a folder"])
def test_rules_check_says_what_is_wrong_with_a_file_in_one_line(project: Project, what: str):
    if what == "a folder":
        (project.root / "rules" / "live.yaml").mkdir(parents=True)
        error = "rules/live.yaml: is a folder, not a file — name a .yaml file"
    else:
        raw, error = BAD_FILES[what]
        (project.root / "rules").mkdir()
        (project.root / "rules" / "live.yaml").write_bytes(raw)
    done = project.cli("rules", "check", "rules/live.yaml", expect=2)
    assert done.stderr == f"pipewarden: {error}\n"


def test_a_rule_file_deleted_between_listing_and_reading_is_a_clear_error(tmp_path: Path):
    gone = tmp_path / "rules" / "gone.yaml"  # listed by the config's glob, then removed
    with pytest.raises(ConfigError) as caught:
        load_rules([gone], tmp_path)
    assert str(caught.value) == (
        "rules/gone.yaml: no such file (an editor may have removed it while saving)"
        " — save it again, or fix the name in the config's `rules:`"
    )


def test_a_config_that_is_not_utf8_is_one_line_for_every_command(project: Project):
    project.configure("demo:\n  stages:\n    - {name: s, command: [x]}\n")
    raw = project.config_path.read_bytes()
    project.config_path.write_bytes(raw.replace(b"name: s", b"name: \xff"))
    where = f"{project.config_path}:"
    for command in (["status"], ["rules", "check"], ["run", "--until-idle"], ["reload"]):
        done = project.cli(*command, expect=2)
        assert done.stderr.startswith(f"pipewarden: {where}") and "not UTF-8 text" in done.stderr
        assert "Traceback" not in done.stderr, command
    doctor = project.cli("doctor", expect=None).stdout
    assert "not UTF-8 text: byte 0xff" in doctor and "Traceback" not in doctor


def test_rules_check_takes_8000_rules_and_still_finds_what_matters(project: Project):
    lines = ["rules:"]
    for n in range(8000):
        lines.append(f'  - {{match: "vendor {n} quota (exceeded|exhausted) for \\\\w+",'
                     f" group: retriable, label: Vendor {n}}}")  # fmt: skip
    lines.append('  - {match: "vendor 17 quota exceeded for key", group: terminal, label: Late}')
    lines.append("  - {match: '(x+)+y', group: terminal, label: Nested}")
    project.write("rules/many.yaml", "\n".join(lines) + "\n")

    done = project.cli("rules", "check", "rules/many.yaml")

    assert done.stdout.splitlines()[-1].startswith("ok: 8002 rules")
    shadowed = "rules/many.yaml:8002: pattern 'vendor 17 quota exceeded for key' can never match"
    assert f"{shadowed} — rules/many.yaml:19 ('vendor 17 quota" in done.stdout
    assert "rules/many.yaml:8003: pattern '(x+)+y' repeats a part" in done.stdout


def test_8000_rules_in_one_scope_classify_the_last_one(tmp_path: Path):
    path = tmp_path / "many.yaml"
    rules = [f"  - {{match: 'code {n} in \\w+', group: terminal, label: Code {n}}}" for n in
             range(8000)]  # fmt: skip
    path.write_text("rules:\n" + "\n".join(rules) + "\n")
    assert Classifier(load_rules([path], tmp_path)).classify("code 7999 in x").label == "Code 7999"


# -- issue 11, 9: exception bases ----------------------------------------------------------
def test_rules_test_walks_the_exception_bases_as_the_daemon_does(project: Project):
    project.write(
        "reset.py",
        """
        import json, sys
        json.loads(sys.stdin.readline())
        print(json.dumps({"ok": False, "error": "peer went away",
                          "type": "ConnectionResetError"}))
        """,
    )
    project.configure(
        """
        posting:
          stages:
            - {name: post, command: [python3, reset.py], retry: {max_attempts: 1}}
        """
    )
    project.cli("enqueue", "posting", "k")
    project.start_daemon()
    (run,) = wait_until(lambda: finished(project, "k"), "the run")

    tested = project.cli(
        "rules", "test", "peer went away", "--type", "ConnectionResetError", "--json"
    )
    answer = json.loads(tested.stdout)
    assert (run.label, answer["label"]) == ("Connection dropped", "Connection dropped")
    assert answer["rule"] == run.rule_id
    chain = project.cli("rules", "test", "x", "--type", "MyError,ConnectionError", "--json")
    assert json.loads(chain.stdout)["label"] == "Connection dropped"
    imported = project.cli("rules", "test", "x", "--type", "http.client.RemoteDisconnected")
    assert "label     Connection dropped" in imported.stdout
    missing = project.cli("rules", "test", "x", "--type", "nosuch.Error", expect=2)
    assert missing.stderr.startswith("pipewarden: --type nosuch.Error: cannot import it")


def test_the_watcher_is_started_again_when_its_folder_goes_and_comes_back(project: Project):
    project.write("worker.py", WORKER)
    project.write("rules/live.yaml", GOOD % "Zorgon 0")
    project.configure(
        "demo:\n  stages:\n    - {name: judge, python: 'worker:judge'}\n", rules=("rules/*.yaml",)
    )
    project.start_daemon()
    enqueue(project, "demo", "warm-up", {"text": "zorgon"})  # once it ran, the daemon watches
    wait_until(lambda: finished(project, "warm-up"), "the first run")
    folder = project.root / "rules"
    (folder / "live.yaml").unlink()
    folder.rmdir()  # as `git checkout` or a deploy may do: the folder goes, then comes back
    wait_until(lambda: "file watcher failed" in project.daemon_log(), "the watcher's failure")
    assert not reload_record(project)["ok"]  # no rules left: the last good ones stay

    project.write("rules/live.yaml", GOOD % "Zorgon 1")
    wait_until(lambda: reload_record(project)["ok"], "the rules in the folder made again")
    enqueue(project, "demo", "after", {"text": "zorgon"})
    (run,) = wait_until(lambda: finished(project, "after"), "the run after")
    assert run.label == "Zorgon 1"
    assert project.daemon_log().count("file watcher failed") == 1


def test_settings_are_read_as_yaml_1_2_with_anchors_and_merge_keys(tmp_path: Path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").write_text("rules: []\n")
    (tmp_path / "config.yaml").write_text(
        "defaults: &slow\n"
        "  timeout: 30s\n"
        "  retry: {max_attempts: 0x4, backoff: 1_5}\n"
        "pipelines:\n"
        "  p:\n"
        "    stages:\n"
        "      - &a {name: a, command: [echo, yes, on, No, '1'], <<: *slow}\n"
        "      - {<<: *a, name: b, timeout: 1m}\n"
    )
    a, b = load_config(tmp_path / "config.yaml").pipeline("p").stages
    assert a.command == b.command == ("echo", "yes", "on", "No", "1")
    assert (a.timeout_s, b.timeout_s) == (30.0, 60.0)
    assert (a.retry.max_attempts, a.retry.backoff_s) == (4, 15.0)
    (tmp_path / "config.yaml").write_text("pipelines: {}\npipelines: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "config.yaml")
    assert str(caught.value).endswith(
        "config.yaml:2:1: duplicate key 'pipelines' (also on line 1) — keep one of them"
    )
