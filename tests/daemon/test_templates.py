"""The template miner: real-looking error streams into the templates a person would name, and
its grouping accuracy on a Loghub-2k dataset through bench/templates.py."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pipewarden.templates import Miner, mask

REPO = Path(__file__).resolve().parents[2]
LOGHUB = REPO.parent / "shared" / "loghub2k"


def error_stream(seed: int = 7) -> list[tuple[str, str]]:
    """A few hundred (text, expected template) pairs: Playwright, HTTP, SMTP, SQLite errors with
    the variable parts real ones have (URLs, selectors, ids, durations, addresses, paths)."""
    rng = random.Random(seed)
    host = lambda: rng.choice(["shop.example.com", "api.example.org", "cdn.test.net"])  # noqa: E731
    shapes = [
        (
            lambda: (
                f"page.goto: Timeout {rng.randint(1, 9) * 10000}ms exceeded. navigating to "
                f'"https://{host()}/item/{rng.randint(1, 10**6)}", waiting until "load"'
            ),
            'page.goto: Timeout <*> exceeded. navigating to <*>, waiting until "load"',
        ),
        (
            lambda: "locator.click: Target page, context or browser has been closed",
            "locator.click: Target page, context or browser has been closed",
        ),
        (
            lambda: f"net::ERR_CONNECTION_RESET at https://{host()}/p?id={rng.randint(1, 99999)}",
            "net::ERR_CONNECTION_RESET at <*>",
        ),
        (
            lambda: (
                f"HTTPError: 429 Client Error: Too Many Requests for url: "
                f"https://{host()}/v1/search?q={rng.choice(['shoes', 'hats', 'red+socks'])}"
            ),
            "HTTPError: <*> Client Error: Too Many Requests for url: <*>",
        ),
        (
            lambda: (
                f"HTTPError: 503 Server Error: Service Unavailable for url: "
                f"https://{host()}/v1/items/{rng.randint(1, 5000)}"
            ),
            "HTTPError: <*> Server Error: Service Unavailable for url: <*>",
        ),
        (
            lambda: (
                f"SMTPRecipientsRefused: {{'{rng.choice(['ann', 'bob', 'eve'])}"
                f"{rng.randint(1, 99)}@mail.example.com': (550, b'5.1.1 User unknown')}}"
            ),
            "SMTPRecipientsRefused: {<*>: (<*>, b'<*> User unknown')}",
        ),
        (
            lambda: (
                f"smtplib.SMTPServerDisconnected: Connection unexpectedly closed: "
                f"timed out after {rng.randint(5, 60)}s"
            ),
            "smtplib.SMTPServerDisconnected: Connection unexpectedly closed: timed out after <*>",
        ),
        (
            lambda: "sqlite3.OperationalError: database is locked",
            "sqlite3.OperationalError: database is locked",
        ),
        (
            lambda: (
                f"sqlite3.OperationalError: unable to open database file "
                f"/var/lib/app/{rng.choice(['a', 'b', 'c'])}/{rng.randint(1, 9)}.db"
            ),
            "sqlite3.OperationalError: unable to open database file <*>",
        ),
        (
            lambda: (
                f"sqlite3.IntegrityError: UNIQUE constraint failed: orders.id "
                f"(row {rng.randint(1, 10**5)})"
            ),
            "sqlite3.IntegrityError: UNIQUE constraint failed: orders.id (row <*>)",
        ),
        (
            lambda: (
                f"ConnectionError: HTTPSConnectionPool(host='{host()}', port=443): Max "
                f"retries exceeded with url: /api/{rng.randint(1, 999)} (Caused by "
                f"ConnectTimeoutError(timeout={rng.randint(1, 30)}.0))"
            ),
            "ConnectionError: HTTPSConnectionPool(host=<*>, port=<*>): Max retries exceeded "
            "with url: <*> (Caused by ConnectTimeoutError(timeout=<*>))",
        ),
        (
            lambda: (
                f"job {rng.getrandbits(128):032x} failed for user "
                f"{rng.choice(['ann', 'bob', 'eve', 'joe', 'kim', 'lee', 'max'])} after "
                f"{rng.randint(1, 900)}ms"
            ),
            "job <*> failed for user <*> after <*>",
        ),
    ]
    stream = []
    for _ in range(400):
        make, template = rng.choice(shapes)
        stream.append((make(), template))
    return stream


def test_a_stream_of_errors_mines_into_one_template_per_kind() -> None:
    stream = error_stream()
    miner = Miner()
    clusters = [miner.add(text) for text, _ in stream]
    final = [cluster.current() for cluster in clusters]
    by_expected: dict[str, set[int]] = {}
    for (_, expected), cluster in zip(stream, final, strict=True):
        by_expected.setdefault(expected, set()).add(cluster.id)
    # every kind of error is exactly one template, and no template holds two kinds
    assert all(len(ids) == 1 for ids in by_expected.values()), by_expected
    assert len({next(iter(ids)) for ids in by_expected.values()}) == len(by_expected)
    templates = {expected: final[i].template for i, (_, expected) in enumerate(stream)}
    assert templates["sqlite3.OperationalError: database is locked"] == (
        "sqlite3.OperationalError: database is locked"
    )
    # the constant words stay, the variable parts are masked
    for expected, template in templates.items():
        assert template == expected, (expected, template)
    assert sum(c.count for c in miner.live()) == len(stream)


def test_masks_cover_the_variable_shapes() -> None:
    text = (
        "user a.b+c@example.com from 10.0.0.12:8080 fetched https://x.org/a?b=1 into "
        "/tmp/run/42/out.json id 3f2504e0-4f89-11d3-9a0c-0305e82c3301 hash 9f86d081884c7d65 "
        "at 0x7ffd took 1.5s; file 'thing.txt' code 17 on Sun Jul 24 02:38:22 2005 size 9.2 KB"
    )
    assert mask(text) == (
        "user <*> from <*> fetched <*> into <*> id <*> hash <*> at <*> took <*>; file <*> "
        "code <*> on <*> <*> <*> <*> <*> size <*> <*>"
    )
    # a quoted sentence keeps its words (they are usually the message), its variables go
    assert mask('said "GET /v2/items HTTP/1.1" in 3ms') == 'said "GET <*> HTTP/<*>" in <*>'


def test_states_stay_apart_but_a_place_with_many_words_becomes_a_variable() -> None:
    miner = Miner()
    states = ["Resumed", "Started", "Paused", "Stopped"]
    vm = {miner.add(f"VM {s} (Lifecycle Event)").id for s in states * 3}
    assert len(vm) == 4  # four states: four templates, as a person would keep them
    users = ["root", "ftp", "git", "uucp", "news", "guest"]
    last = [miner.add(f"session closed for user {u}") for u in users]
    assert len({c.current().id for c in last}) == 1
    assert last[-1].current().template == "session closed for user <*>"


def test_restored_templates_take_new_members() -> None:
    miner = Miner()
    restored = miner.restore("connection to <*> refused after <*> retries", 12)
    assert miner.add("connection to db.local:5432 refused after 3 retries") is restored
    assert restored.count == 13


def test_mining_takes_well_under_a_millisecond_per_message() -> None:
    texts = [text for text, _ in error_stream(seed=3)] * 5
    miner = Miner()
    started = time.process_time()
    for text in texts:
        miner.add(text)
    per_message = (time.process_time() - started) / len(texts)
    assert per_message < 0.0002, f"{per_message * 1e6:.0f} µs per message"


@pytest.mark.skipif(
    not (LOGHUB / "HPC" / "HPC_2k.log_structured.csv").exists(),
    reason=f"the Loghub-2k data is not at {LOGHUB} (CI keeps ../shared beside the clone)",
)
def test_bench_grouping_accuracy_on_loghub_hpc() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "templates.py"), "--data", str(LOGHUB),
         "--only", "HPC", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (hpc,) = result["systems"]
    # measured 0.930 (0.930 against the corrected templates): the floor leaves room for
    # harmless changes, not for a regression
    assert hpc["ga"] >= 0.92 and hpc["ga_corrected"] >= 0.92, hpc
    assert result["mean_ga"] == hpc["ga"]


def test_bench_says_where_the_data_is_missing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "templates.py"), "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no Loghub-2k data" in done.stderr and "--data" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def pipewarden(*args: str, stdin: str = "", cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipewarden", *args],
        input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip


def test_templates_command_prints_each_template_with_count_and_examples(tmp_path: Path) -> None:
    stream = error_stream(seed=11)
    log = tmp_path / "errors.log"
    log.write_text("\n".join(text for text, _ in stream) + "\n")
    done = pipewarden("templates", str(log))
    assert done.returncode == 0, done.stderr
    expected = Counter(template for _, template in stream)
    template, count = expected.most_common(1)[0]
    assert f"{count:>7}  #" in done.stdout and template in done.stdout
    assert done.stdout.splitlines()[-1] == f"{len(stream)} texts, {len(expected)} templates"
    assert "e.g. " + next(text for text, t in stream if t == template) in done.stdout


def test_templates_json_is_one_object_per_line_in_order() -> None:
    texts = ["database is locked", "", "HTTP 429 for https://a.example/x?1", "database is locked",
             "HTTP 429 for https://a.example/y?2"]  # fmt: skip
    done = pipewarden("templates", "-", "--json", stdin="\n".join(texts) + "\n")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["line"] for row in rows] == [1, 3, 4, 5]  # the empty line has no template
    assert rows[0]["template_id"] == rows[2]["template_id"] != rows[1]["template_id"]
    assert rows[1]["template"] == rows[3]["template"] == "HTTP <*> for <*>"


def test_templates_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    done = pipewarden("templates", str(tmp_path / "nope.log"))
    assert done.returncode == 2
    assert (
        done.stderr == f"pipewarden: templates {tmp_path / 'nope.log'}: cannot read it: "
        "No such file or directory\n"
    )
