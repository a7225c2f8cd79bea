"""Business hours as people write them (over midnight, split, all day, holidays, DST) and
durations as people write them (1h30m, 2w), in the config, rules, replies and the CLI."""

from __future__ import annotations

import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import Project
from freezegun import freeze_time
from pipewarden._yaml import parse_duration
from pipewarden.calendar import BusinessHours, parse_days, parse_hours
from pipewarden.config import load_config
from pipewarden.errors import ConfigError
from pipewarden.protocol import Verdict, parse_line
from pipewarden.rules import load_rules

LONDON = ZoneInfo("Europe/London")
UTC = ZoneInfo("UTC")


def at(text: str, zone: ZoneInfo = LONDON) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def hours(days: str, windows: str, holidays: dict[str, str] | None = None) -> BusinessHours:
    """Business hours as the config would load them (holidays through the real package)."""
    closed_on = None
    if holidays:
        import holidays as package

        closed_on = package.country_holidays(**holidays).__contains__
    return BusinessHours(parse_days(days), parse_hours(windows), LONDON, closed_on)


# -- over midnight ---------------------------------------------------------------------------
NIGHTS = hours("mon-fri", "22:00-06:00")


@freeze_time("2026-11-24 03:00:00")  # Tuesday, 03:00 in London (GMT in November)
def test_an_overnight_window_is_open_after_midnight_on_the_morning_after_an_open_day():
    assert NIGHTS.is_open(time.time())
    assert NIGHTS.next_open(time.time()) == time.time()


@freeze_time("2026-11-24 12:00:00")
def test_an_overnight_window_closed_at_noon_opens_that_evening():
    assert not NIGHTS.is_open(time.time())
    assert NIGHTS.next_open(time.time()) == at("2026-11-24 22:00")


def test_friday_nights_window_runs_into_saturday_morning_and_then_waits_for_monday_night():
    assert NIGHTS.is_open(at("2026-11-28 05:59"))  # Saturday: Friday's window
    assert not NIGHTS.is_open(at("2026-11-28 06:00"))
    assert not NIGHTS.is_open(at("2026-11-29 23:00"))  # Sunday is no day of the window
    assert NIGHTS.next_open(at("2026-11-28 06:00")) == at("2026-11-30 22:00")
    assert not NIGHTS.is_open(at("2026-11-23 05:00"))  # Monday morning: Sunday opened nothing


# -- split days ------------------------------------------------------------------------------
SPLIT = hours("mon-fri", "09:00-12:00,13:00-17:00")


@freeze_time("2026-11-24 12:30:00")
def test_a_split_day_is_closed_over_lunch_and_opens_again_at_one():
    assert not SPLIT.is_open(time.time())
    assert SPLIT.next_open(time.time()) == at("2026-11-24 13:00")


def test_a_split_days_edges():
    assert SPLIT.is_open(at("2026-11-24 11:59")) and SPLIT.is_open(at("2026-11-24 13:00"))
    assert not SPLIT.is_open(at("2026-11-24 12:00")) and not SPLIT.is_open(at("2026-11-24 17:00"))
    assert SPLIT.next_open(at("2026-11-24 08:00")) == at("2026-11-24 09:00")
    assert SPLIT.next_open(at("2026-11-27 17:00")) == at("2026-11-30 09:00")  # Friday evening


# -- all day ---------------------------------------------------------------------------------
@freeze_time("2026-11-27 23:59:59")  # Friday, the last second of the day
def test_all_day_is_open_to_the_last_second_then_closed_for_the_weekend():
    weekdays = hours("mon-fri", "00:00-24:00")
    assert weekdays.is_open(time.time())
    assert not weekdays.is_open(time.time() + 1)
    assert weekdays.next_open(time.time() + 1) == at("2026-11-30 00:00")


def test_all_day_every_day_is_always_open():
    always = hours("mon-sun", "00:00-24:00")
    for moment in ("2026-11-28 00:00", "2026-11-29 12:34", "2026-03-29 01:30"):
        assert always.is_open(at(moment))


# -- public holidays -------------------------------------------------------------------------
OFFICE_ENGLAND = hours("mon-fri", "09:00-17:00", {"country": "GB", "subdiv": "ENG"})


@freeze_time("2026-12-24 18:00:00")  # Christmas Eve, a Thursday, after hours
def test_christmas_and_the_observed_boxing_day_keep_the_office_closed_until_tuesday():
    # 25 Dec is a Friday; Boxing Day falls on Saturday and is observed on Monday 28 Dec.
    assert OFFICE_ENGLAND.next_open(time.time()) == at("2026-12-29 09:00")
    assert not OFFICE_ENGLAND.is_open(at("2026-12-25 10:00"))
    assert not OFFICE_ENGLAND.is_open(at("2026-12-28 10:00"))


def test_a_holiday_of_one_region_is_a_working_day_in_another():
    # New Year's Day 2023 was a Sunday: both observe it on Monday 2 January, and Scotland,
    # which also keeps 2 January, has Tuesday 3 January off too.
    scotland = hours("mon-fri", "09:00-17:00", {"country": "GB", "subdiv": "SCT"})
    assert not scotland.is_open(at("2023-01-02 10:00"))
    england = hours("mon-fri", "09:00-17:00", {"country": "GB", "subdiv": "ENG"})
    assert not england.is_open(at("2023-01-02 10:00"))  # England observes New Year on the 2nd
    assert england.is_open(at("2023-01-03 10:00")) and not scotland.is_open(at("2023-01-03 10:00"))


def test_a_holiday_closes_its_own_date_from_midnight_to_midnight_even_overnight():
    nights = hours("mon-fri", "22:00-06:00", {"country": "GB", "subdiv": "ENG"})
    assert nights.is_open(at("2026-12-24 23:00"))  # Thursday's window, before Christmas
    assert not nights.is_open(at("2026-12-25 01:00"))  # the same window on Christmas Day
    # Monday 28 Dec (observed) opens no window, but its night past midnight is Tuesday's.
    assert nights.next_open(at("2026-12-25 01:00")) == at("2026-12-29 00:00")


# -- DST -------------------------------------------------------------------------------------
@freeze_time("2026-03-28 12:00:00")  # Saturday before the clocks go forward (29 March, 01:00)
def test_after_the_clocks_go_forward_the_office_opens_at_nine_summer_time():
    office = hours("mon-fri", "09:00-17:00")
    assert office.next_open(time.time()) == at("2026-03-30 08:00", UTC)  # 09:00 BST


def test_the_night_the_clocks_go_forward_is_an_hour_shorter():
    nights = hours("mon-sun", "22:00-06:00")
    assert nights.is_open(at("2026-03-28 22:00", UTC))  # Saturday 22:00 GMT
    assert nights.is_open(at("2026-03-29 04:59", UTC))  # 05:59 BST
    assert not nights.is_open(at("2026-03-29 05:00", UTC))  # 06:00 BST: closed
    assert nights.next_open(at("2026-03-29 05:00", UTC)) == at("2026-03-29 21:00", UTC)


def test_a_window_opening_in_the_skipped_hour_opens_as_if_the_clocks_had_not_moved():
    early = hours("sun", "01:30-03:00")
    assert early.next_open(at("2026-03-29 00:30", UTC)) == at("2026-03-29 01:30", UTC)  # 02:30 BST
    assert not early.is_open(at("2026-03-29 02:00", UTC))  # 03:00 BST


@freeze_time("2026-10-24 23:30:00")  # Saturday 00:30 BST; the clocks go back at 02:00 BST
def test_the_night_the_clocks_go_back_is_an_hour_longer():
    nights = hours("mon-sun", "22:00-06:00")
    assert nights.is_open(time.time())
    assert nights.is_open(at("2026-10-25 05:59", UTC))  # 05:59 GMT
    assert not nights.is_open(at("2026-10-25 06:00", UTC))


# -- the config ------------------------------------------------------------------------------
def load(tmp_path: Path, channel: str) -> BusinessHours | ConfigError:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "a.yaml").write_text("rules: []\n")
    path = tmp_path / "config.yaml"
    path.write_text(
        "pipelines:\n  p:\n    stages:\n      - {name: s, command: [x]}\n"
        f"channels:\n  sms:\n{textwrap.indent(textwrap.dedent(channel).strip(), '    ')}\n"
    )
    try:
        return load_config(path).channels["sms"]
    except ConfigError as error:
        return error


def test_the_config_reads_overnight_split_listed_and_holiday_hours(tmp_path: Path):
    split = load(tmp_path, "hours: [09:00-12:00, '13:00-17:00']\ndays: [mon, wednesday, fri]")
    assert isinstance(split, BusinessHours) and len(split.windows) == 2
    assert split.days == {0, 2, 4}
    overnight = load(tmp_path, "hours: 22:00-06:00\nholidays: {country: gb, subdiv: eng}")
    assert isinstance(overnight, BusinessHours)
    assert not overnight.is_open(at("2026-12-25 23:00", UTC))
    assert overnight.is_open(at("2026-12-23 23:00", UTC))


@pytest.mark.parametrize(
    ("channel", "where", "says"),
    [
        ("hours: 25:00-06:00", (7, 12), "hours of channel 'sms': '25:00' is no time of day"),
        ("hours: 0900-1700", (7, 12), "'0900' is no time of day"),
        ("hours: 09:00-09:00", (7, 12), "opens and closes at the same time (all day is 00:00-2"),
        ("hours: 09:00-12:00,", (7, 12), "'' is no window"),
        ("hours: 9", (7, 12), "hours of channel 'sms' must be text or a list of text, not '9'"),
        ("hours: 09:00-17:00\ndays: mon-fry", (8, 11), "days of channel 'sms': 'fry' is no day"),
        ("hours: 09:00-17:00\nholidays: {country: XX}", (8, 25), "no holidays known for 'XX'"),
        ("hours: 09:00-17:00\nholidays: {country: GB, subdiv: XYZ}", (8, 37),
         "GB has no subdivision 'XYZ' — known: ENG, NIR, SCT, WLS"),
        ("hours: 09:00-17:00\nholidays: {contry: GB}", (8, 16), "unknown key 'contry'"),
        ("hours: 09:00-17:00\nholidays: GB", (8, 15), "holidays of channel 'sms' must be a mappi"),
    ],
)  # fmt: skip
def test_a_malformed_calendar_is_one_line_with_its_position_and_what_to_write(
    tmp_path: Path, channel: str, where: tuple[int, int], says: str
):
    error = load(tmp_path, channel)
    assert isinstance(error, ConfigError), error
    assert (error.line, error.column) == where and says in str(error)
    assert str(error).startswith(f"{tmp_path}/config.yaml:{where[0]}:{where[1]}: ")
    assert " — " in str(error) and "\n" not in str(error)


def test_hours_that_name_holidays_without_the_package_say_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "holidays", None)  # as if it were not installed
    error = load(tmp_path, "hours: 09:00-17:00\nholidays: {country: GB}")
    assert isinstance(error, ConfigError)
    assert str(error) == (
        f"{tmp_path}/config.yaml:8:15: holidays of channel 'sms' need the 'holidays' package,"
        " which is not installed — pip install 'pipewarden[holidays]' (or: pip install holidays)"
        " where pipewarden runs"
    )


def test_a_config_error_in_the_hours_reaches_the_cli_as_one_line(project: Project):
    project.configure(
        "p:\n  stages:\n    - {name: s, command: [x]}\n",
        extra="channels:\n  sms: {hours: '22:00-30:00'}\n",
    )
    done = project.cli("status", expect=None)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "config.yaml:3:16: hours of channel 'sms': '30:00' is no time of day" in done.stderr


# -- durations -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h30m", 5400), ("2w", 14 * 86400), ("1d12h", 129600), ("90s", 90), ("250ms", 0.25),
        ("1.5m", 90), ("30", 30), (45, 45), (2.5, 2.5), ("2 hours", 7200), ("1h 30m", 5400),
        ("1w2d3h4m5s", 788645), ("0", 0),
    ],
)  # fmt: skip
def test_durations_as_people_write_them(text: str | float, seconds: float):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "soon", "30m1h", "1h30", "1m1m", "1H", "-1h", "nan", "inf", "1e400", "1" * 400,
     float("nan"), float("inf"), 10**400, True, None, "1h" * 100],
)  # fmt: skip
def test_what_is_no_duration_is_refused(text: object):
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


def test_config_and_rules_take_compound_durations_and_refuse_nan(tmp_path: Path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").write_text(
        "rules:\n  - {match: 'rate limit', group: retriable, label: Slow, retry: {backoff: 1h30m}}"
        "\n  - {match: 'come back', group: defer, label: Later, defer: 2w}\n"
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        "retention: 2w\npipelines:\n  p:\n    stages:\n"
        "      - {name: s, command: [x], timeout: 1m30s, defer: 1d12h}\n"
    )
    config = load_config(path)
    stage = config.pipeline("p").stages[0]
    assert (config.retention_s, stage.timeout_s, stage.defer_s) == (14 * 86400, 90, 129600)
    slow, later = load_rules(config.rule_paths, tmp_path).rules
    assert (slow.backoff_s, later.defer_s) == (5400, 14 * 86400)
    path.write_text("pipelines:\n  p:\n    stages:\n      - {name: s, command: [x], timeout: .nan}")
    with pytest.raises(ConfigError, match=r"config.yaml:4:42: timeout of stage 'p/s' must be a"):
        load_config(path)


def test_a_workers_reply_may_defer_or_retry_after_a_compound_duration():
    deferred = parse_line(b'{"defer": "1h30m"}')
    assert (deferred.verdict, deferred.defer_s) == (Verdict.DEFER, 5400)
    retried = parse_line(b'{"ok": false, "error": "HTTP 429", "retry_after": "2m30s"}')
    assert retried.retry_after_s == 150
    refused = parse_line(b'{"defer": "30m1h"}')
    assert refused.error == (
        "invalid worker reply: 'defer' must be seconds or a duration such as '90s' or '2h',"
        " not '30m1h'"
    )


def test_the_cli_takes_compound_durations_and_names_a_bad_one(project: Project):
    project.configure("p:\n  stages:\n    - {name: s, command: [x]}\n")
    project.cli("enqueue", "p", "k")
    assert "pruned" in project.cli("prune", "--older-than", "1w2d").stdout
    assert project.cli("export", "runs", "--since", "1h30m").returncode == 0
    bad = project.cli("prune", "--older-than", "30m1h", expect=2)
    assert "--older-than takes a duration" in bad.stderr and "'30m1h'" in bad.stderr
