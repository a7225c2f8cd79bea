"""RE2 is optional (`pipewarden[re2]`): without it the rules are tried one by one in Python,
with the same answers over the corpus of real texts and the shipped rules' examples, and
`doctor` says which engine is in use."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, Project
from pipewarden import packs
from pipewarden.classifier import Classifier
from pipewarden.patterns import ENGINE_VARIABLE, re2_module, required_text
from pipewarden.rules import load_rules
from test_classifier import ACCOUNT, OUTREACH, SITES
from test_packs import corpus

UNMATCHED = ["the flux capacitor overheated", "", "x" * 5000, "\ud800 a lone surrogate",
             "Request failed with \u017ftatus code 429",  # re folds the long s to s
             "read ECONNRESET \u212a", "HTTP 503 \u0130stanbul"]  # fmt: skip
SCOPES = [(None, None), ("sites", "capture"), ("outreach", "send")]

# Runs the CLI in a Python where `import re2` fails, as where google-re2 is not installed.
WITHOUT_RE2 = """
import sys

class NoRe2:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("re2", "_re2"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoRe2())
from pipewarden.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_texts_a_pattern_requires_are_plain_ascii_runs_it_cannot_match_without():
    assert required_text("EACCES") == ("eacces",)
    assert required_text(r"Request failed with status code 4\d\d") == (
        "request failed with status code 4",
    )
    assert required_text(r"(?x) timed \s+ out after") == ("outafter",)  # as verbose reads it
    assert required_text("ECONNRESET|ETIMEDOUT|(Not )?found") == ("econnreset", "etimedout",
                                                                  "found")  # fmt: skip
    assert required_text(r"adb.*(timed? ?out|timeout)") == ("time",)  # re factors "time" out
    assert required_text("a|.b") == ("a", "b") and required_text("a|.") == ()
    assert required_text(r"^\d+$") == ()
    assert required_text("(?:x)*y|z") == ("y", "z")  # a group that may be absent tells nothing
    assert required_text("caf\u00e9 au lait") == (" au lait",)


def _judged(classifier: Classifier, texts: list[str]) -> list[tuple]:
    return [
        (text[:60], scope, got.group, got.label, got.rule_id)
        for text in texts
        for scope in SCOPES
        for got in [classifier.classify(text, pipeline=scope[0], stage=scope[1])]
    ]


def test_without_re2_every_text_gets_the_classification_it_gets_with_re2(
    monkeypatch: pytest.MonkeyPatch,
):
    rule_files = [*sorted((REPO / "rules").glob("*.yaml")),
                  *(packs.packs_dir() / f"{name}.yaml" for name in packs.ORDER)]  # fmt: skip
    ruleset = load_rules(rule_files, REPO)
    texts = [m for _, kind in corpus() for m in kind["messages"]]
    texts += [m for m, _, _ in (*SITES, *OUTREACH, *ACCOUNT)] + UNMATCHED
    assert re2_module() is not None  # the suite has RE2 (the dev extra brings it)
    with_re2 = _judged(Classifier(ruleset), texts)
    monkeypatch.setenv(ENGINE_VARIABLE, "python")
    assert re2_module() is None
    without = _judged(Classifier(ruleset), texts)
    assert without == with_re2
    assert sum(label != "Unknown" for *_, label, _ in without) > len(texts)  # not all unknown


def test_doctor_names_the_engine_and_rules_test_answers_alike_without_re2(project: Project):
    project.configure("sites:\n  stages:\n    - {name: capture, command: [python3, x.py]}\n")
    with_re2 = project.cli("doctor", expect=None).stdout
    assert "rules engine: RE2 prefilter (google-re2 1." in with_re2
    text = "EACCES: permission denied, mkdir '/run/media/store'"
    tested = project.cli("rules", "test", text, "--pipeline", "sites").stdout

    def without_re2(*args: str) -> str:
        argv = [sys.executable, "-c", WITHOUT_RE2, *args]
        done = subprocess.run(argv, cwd=project.root, env=project.env(), capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout

    doctor = without_re2("doctor")
    assert "rules engine: Python re (install pipewarden[re2] for RE2's one pass" in doctor
    assert without_re2("rules", "test", text, "--pipeline", "sites") == tested
    assert "label     Permission denied" in tested
