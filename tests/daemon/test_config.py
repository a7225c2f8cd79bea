"""Bad config and rule files are refused with file:line:column and what to write instead."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import Project
from pipewarden.config import load_config
from pipewarden.errors import ConfigError
from pipewarden.rules import load_rules

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def config_error(tmp_path: Path, text: str) -> ConfigError:
    write(tmp_path, "rules/a.yaml", "rules: []\n")
    path = write(tmp_path, "config.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


def rules_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, "rules/sites.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_rules([path], tmp_path)
    return caught.value


def test_a_misspelt_stage_key_is_named_with_its_position_and_a_suggestion(tmp_path: Path):
    error = config_error(
        tmp_path,
        """
        pipelines:
          sites:
            stages:
              - name: capture
                command: [python3, capture.py]
                timout: 30s
        """,
    )
    assert str(error).startswith(f"{tmp_path}/config.yaml:6:9: unknown key 'timout'")
    assert "did you mean 'timeout'?" in str(error)


def test_a_wrong_type_is_named_with_its_position(tmp_path: Path):
    error = config_error(
        tmp_path,
        """
        pipelines:
          sites:
            stages:
              - name: capture
                command: [python3, capture.py]
                concurrency: lots
        """,
    )
    assert (error.line, error.column) == (6, 22)
    assert "concurrency of stage 'sites/capture' must be a whole number, not 'lots'" in str(error)


def test_a_bad_duration_says_what_to_write(tmp_path: Path):
    error = config_error(
        tmp_path,
        """
        pipelines:
          sites:
            stages:
              - {name: capture, command: [x], timeout: soon}
        """,
    )
    assert (error.line, error.column) == (4, 48)
    assert "write e.g. 30s, 5m, 2h" in str(error)


def test_a_stage_without_a_worker_is_refused(tmp_path: Path):
    error = config_error(tmp_path, "pipelines:\n  sites:\n    stages:\n      - name: capture\n")
    assert "has no worker" in str(error) and (error.line, error.column) == (4, 9)


def test_invalid_yaml_reports_where(tmp_path: Path):
    error = config_error(tmp_path, "pipelines:\n  sites: [unclosed\n")
    assert error.line >= 2 and "invalid YAML" in str(error)


def test_a_bad_regex_names_file_line_column_and_the_problem(tmp_path: Path):
    error = rules_error(
        tmp_path,
        """
        pipelines: [sites]
        rules:
          - group: retriable
            label: Server error
            match: HTTP (5\\d\\d
        """,
    )
    assert str(error) == (
        "rules/sites.yaml:5:17: invalid regex 'HTTP (5\\d\\d' — missing ')' at position 5"
    )


def test_a_bad_regex_in_quotes_points_past_the_quote(tmp_path: Path):
    error = rules_error(tmp_path, "rules:\n  - {match: 'a[b', group: ignore, label: X}\n")
    assert (error.line, error.column) == (2, 15)


def test_a_misspelt_rule_key_and_a_wrong_group(tmp_path: Path):
    error = rules_error(tmp_path, "rules:\n  - {match: x, group: ignore, lable: X}\n")
    assert (
        str(error) == "rules/sites.yaml:2:31: unknown key 'lable' in a rule — did you mean 'label'?"
    )
    error = rules_error(tmp_path, "rules:\n  - {match: x, group: retry, label: X}\n")
    assert (error.line, error.column) == (2, 23)
    assert "group must be one of retriable, terminal, ignore, defer, not 'retry'" in str(error)


def test_ambiguous_labels_and_shadowed_patterns_are_warnings(tmp_path: Path):
    path = write(
        tmp_path,
        "rules/x.yaml",
        """
        rules:
          - {match: "Timeout", group: retriable, label: Timeout}
          - {match: "Form timeout", group: terminal, label: Form timeout}
          - {match: "gateway", group: terminal, label: Timeout}
        """,
    )
    ruleset = load_rules([path], tmp_path)
    assert len(ruleset.rules) == 3
    assert ruleset.warnings == (
        "rules/x.yaml:3: pattern 'Form timeout' can never match — rules/x.yaml:2 ('Timeout')"
        " matches every such message first",
        "rules/x.yaml:4: label 'Timeout' is terminal here but retriable at rules/x.yaml:2"
        " — give one of them another label",
    )


def test_the_cli_prints_one_clear_line_and_exits_2(project: Project):
    project.write("rules/bad.yaml", "rules:\n  - {match: 'HTTP (5', group: retriable, label: X}\n")
    done = project.cli("rules", "check", "rules/bad.yaml", expect=2)
    assert done.stderr == (
        "pipewarden: rules/bad.yaml:2:19: invalid regex 'HTTP (5' — missing ')' at position 5\n"
    )


def test_shipped_rules_check_clean_and_rules_test_explains_a_match(project: Project):
    done = project.cli("rules", "check", *sorted(str(p) for p in (REPO / "rules").glob("*.yaml")))
    assert done.stdout.startswith("ok: 41 rules")
    project.configure("sites:\n  stages:\n    - {name: find, command: [x]}\n")
    done = project.cli("rules", "test", "EACCES: permission denied", "--pipeline", "sites")
    assert done.stdout.splitlines() == [
        "group     retriable",
        "label     Permission denied",
        "category  infrastructure",
        "type      permission_denied",
        f"rule      {REPO}/rules/sites.yaml:36  (EACCES)",
        "advice    the output folder cannot be written (often an unmounted disk): mount it or"
        " fix its owner, then `pipewarden retry --label 'Permission denied'`",
    ]


def test_a_missing_config_is_one_line(project: Project):
    done = project.cli("status", "--config", "nope.yaml", expect=2)
    assert done.stderr == "pipewarden: nope.yaml: no config file at nope.yaml\n"
