"""Store faults as a user meets them: a full disk (a real 5 MB tmpfs), files made immutable
(chattr +i), stores damaged each way, file modes, read-only commands that never migrate."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, wait_until
from pipewarden.store import SCHEMA_VERSION, STORE_FILE
from pipewarden.store.sqlite.schema import MIGRATIONS
from test_systemd import NotifySocket

FILES = (STORE_FILE, f"{STORE_FILE}-wal", f"{STORE_FILE}-shm")
DAMAGED_FIX = "— restore a backup (pipewarden backup) or move it aside"

WORKER = """
import pathlib, time

HERE = pathlib.Path(__file__).parent


def work(data, ctx):
    (HERE / "started" / ctx.run).touch()
    while (HERE / "hold").exists():  # the test lets the attempts end when it is ready
        time.sleep(0.01)
    return {"blob": "x" * int(data.get("size", 0))}
"""


def configure(project: Project, items: int, size: int = 0, concurrency: int = 2) -> None:
    project.write("w.py", WORKER)
    (project.root / "started").mkdir(exist_ok=True)
    project.configure(
        f"p:\n  stages:\n    - {{name: s, python: 'w:work', concurrency: {concurrency}}}\n"
    )
    project.write("items.jsonl", "".join(
        f'{{"key": "k{n}", "data": {{"size": {size}}}}}\n' for n in range(items)
    ))  # fmt: skip


def started(project: Project) -> set[str]:
    return {path.name for path in (project.root / "started").iterdir()}


def queued(status: str) -> int:
    """The queued total of the status tree's only stage."""
    return int(re.search(r"└─ queued +(\d+)", status).group(1))


def store_line(project: Project, what: str) -> str:
    return f"store {project.state_dir / STORE_FILE}: {what}"


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and "cannot rollback" not in text, text[-3000:]


def assert_each_item_done_once(project: Project, items: int) -> None:
    """Every item done; every attempt that started is recorded, once (none lost, none twice)."""
    runs = project.runs()
    assert {run.status for run in runs} == {"ok"}
    assert sorted(run.id for run in runs) == sorted(started(project))
    store = project.store()
    try:
        states = [item.state for item in store.Item.select()]
    finally:
        store.close()
    assert states == ["done"] * items


# -- real small and immutable file systems ----------------------------------------------------
def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "5m") -> Iterator[Path]:
    """A tmpfs of `size` at `folder`, unmounted at the end whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()} (the test needs root)")
    try:
        yield folder
    finally:
        _run("umount", "-l", str(folder))


@contextlib.contextmanager
def chattr_filesystem(folder: Path) -> Iterator[Path]:
    """`folder` on a file system where chattr +i works: where it is, or a loop-mounted ext4."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / "probe"
    probe.touch()
    works = _run("chattr", "+i", str(probe))
    _run("chattr", "-i", str(probe))
    probe.unlink()
    if works.returncode == 0:
        yield folder
        return
    image = folder.parent / f"{folder.name}.ext4"
    os.truncate(image, 32 * 1024 * 1024)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    mounted = made.returncode == 0 and _run("mount", "-o", "loop", str(image), str(folder))
    if not mounted or mounted.returncode != 0:
        why = works.stderr.strip() or "chattr failed"
        pytest.skip(f"chattr +i is not supported here ({why}), nor a loop-mounted ext4")
    try:
        os.chmod(folder, 0o700)
        yield folder
    finally:
        _run("umount", "-l", str(folder))


@contextlib.contextmanager
def immutable(folder: Path) -> Iterator[list[Path]]:
    """The store's files made immutable, made mutable again at the end whatever happens."""
    files = [folder / name for name in FILES if (folder / name).exists()]
    done = _run("chattr", "+i", *map(str, files))
    try:
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not permitted here: {done.stderr.strip()}")
        yield files
    finally:
        _run("chattr", "-i", *map(str, files))


def fill(ballast: Path, leave: int) -> Path:
    """A ballast file that leaves about `leave` bytes free on its file system (with 0,
    not a byte: it is written in ever smaller pieces until the disk takes none)."""
    free = os.statvfs(ballast.parent).f_bavail * os.statvfs(ballast.parent).f_frsize
    with open(ballast, "wb", buffering=0) as handle:
        for size in (65536, 4096, 1) if leave == 0 else (65536,):
            with contextlib.suppress(OSError):  # ENOSPC: the point
                for _ in range(max(0, free - leave) // size if leave else 1 << 30):
                    handle.write(bytes(size))
    return ballast


# -- 1. a full disk ---------------------------------------------------------------------------
def test_a_full_disk_is_one_line_the_daemon_waits_and_resumes_losing_nothing(project: Project):
    configure(project, items=60, size=20_000)
    notify = NotifySocket(project.root)
    with small_filesystem(project.state_dir):
        try:
            project.cli("enqueue", "p", "--file", "items.jsonl")
            ballast = fill(project.state_dir / "ballast", leave=400_000)
            daemon = project.start_daemon("--until-idle", env={"NOTIFY_SOCKET": notify.path})
            line = store_line(project, "disk full — free space; nothing was lost")
            wait_until(lambda: line in project.daemon_log(), "the disk-full line", 30)
            assert daemon.poll() is None  # waiting, not dead
            wait_until(lambda: any(f"STATUS={line}" in m for _, m in notify.messages), "STATUS=")
            assert line in project.cli("status").stdout.splitlines()[1]  # asked of the daemon

            ballast.unlink()
            assert daemon.wait(60) == 0
        finally:
            notify.close()
        log = project.daemon_log()
        assert_no_traceback(log)
        assert log.count(line) == 1  # said once, however many retries
        assert "writable again — resuming" in log
        assert_each_item_done_once(project, 60)


def test_stopped_and_restarted_on_a_full_disk_the_daemon_waits_then_requeues(project: Project):
    configure(project, items=60, size=20_000)
    with small_filesystem(project.state_dir):
        project.cli("enqueue", "p", "--file", "items.jsonl")
        ballast = fill(project.state_dir / "ballast", leave=400_000)
        daemon = project.start_daemon()
        line = store_line(project, "disk full — free space; nothing was lost")
        wait_until(lambda: line in project.daemon_log(), "the disk-full line", 30)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        unrecorded = re.search(r"(\d+) finished run\(s\) not recorded: the next start requeues"
                               " their items", project.daemon_log())  # fmt: skip
        ahead = re.search(r"(\d+) item\(s\) claimed ahead not given back: the next start"
                          " requeues them", project.daemon_log())  # fmt: skip

        more = fill(project.state_dir / "more", leave=0)  # not a byte left for the restart
        again = project.start_daemon("--until-idle")
        wait_until(lambda: line in project.daemon_log(), "the disk-full line at start", 30)
        assert again.poll() is None
        assert line in project.cli("status").stdout.splitlines()[1]  # above the tree
        ballast.unlink()
        more.unlink()
        assert again.wait(60) == 0
        assert_no_traceback(project.daemon_log(0), project.daemon_log())
        runs = project.runs()
        store = project.store()
        try:
            states = {item.state for item in store.Item.select()}
        finally:
            store.close()
        assert states == {"done"}
        interrupted = [run for run in runs if run.status == "interrupted"]
        assert len(interrupted) == sum(int(m.group(1)) for m in (unrecorded, ahead) if m)
        assert {run.status for run in runs} <= {"ok", "interrupted"}


def test_a_daemon_started_on_a_full_disk_waits_to_start_then_runs(project: Project):
    configure(project, items=10, size=1000)
    notify = NotifySocket(project.root)
    with small_filesystem(project.state_dir):
        try:
            project.cli("enqueue", "p", "--file", "items.jsonl")  # closed: no -wal, no -shm
            ballast = fill(project.state_dir / "ballast", leave=0)
            daemon = project.start_daemon("--until-idle", env={"NOTIFY_SOCKET": notify.path})
            line = store_line(project, "disk full — free space; nothing was lost")
            wait_until(lambda: line in project.daemon_log(), "the disk-full line", 30)
            assert daemon.poll() is None and "pipewarden running" not in project.daemon_log()
            wait_until(lambda: any(f"STATUS={line}" in m for _, m in notify.messages), "STATUS=")
            ballast.unlink()
            assert daemon.wait(30) == 0
        finally:
            notify.close()
        assert_no_traceback(project.daemon_log())
        assert_each_item_done_once(project, 10)


# -- 2. files made immutable ------------------------------------------------------------------
def test_store_files_made_immutable_are_one_line_and_the_daemon_resumes_after(project: Project):
    configure(project, items=4, concurrency=4)
    with chattr_filesystem(project.state_dir):
        project.cli("enqueue", "p", "--file", "items.jsonl")
        (project.root / "hold").touch()
        daemon = project.start_daemon("--until-idle")
        wait_until(lambda: len(started(project)) == 4, "the attempts to start")
        with immutable(project.state_dir) as files:
            assert len(files) == 3  # the store, its -wal and -shm
            (project.root / "hold").unlink()  # the attempts end: the daemon must record them
            line = store_line(
                project, f"read-only ({STORE_FILE} is immutable: chattr -i"
                f" {project.state_dir / STORE_FILE}) — make it writable again; nothing was lost",
            )  # fmt: skip
            wait_until(lambda: line in project.daemon_log(), "the read-only line")
            late = project.cli("enqueue", "p", "late", expect=1)  # through the daemon's API
            assert late.stderr == f"pipewarden: {line}\n"
            assert daemon.poll() is None  # waiting; no SIGBUS on the immutable -shm
        assert daemon.wait(30) == 0
        assert_no_traceback(project.daemon_log())
        assert_each_item_done_once(project, 4)


def test_a_daemon_started_on_immutable_store_files_waits_until_they_are_writable(
    project: Project,
):
    configure(project, items=3)
    with chattr_filesystem(project.state_dir):
        project.cli("enqueue", "p", "--file", "items.jsonl")
        with immutable(project.state_dir):
            daemon = project.start_daemon("--until-idle")
            line = store_line(project, f"read-only ({STORE_FILE} is immutable")
            wait_until(lambda: line in project.daemon_log(), "the read-only line")
            assert daemon.poll() is None
            status = project.cli("status")  # reads only: an immutable store is readable
            assert queued(status.stdout) == 3
        assert daemon.wait(30) == 0
        assert_no_traceback(project.daemon_log())
        assert_each_item_done_once(project, 3)


def test_a_store_moved_away_under_the_daemon_is_waited_for_not_written_into_the_void(
    project: Project,
):
    configure(project, items=4, concurrency=4)
    project.cli("enqueue", "p", "--file", "items.jsonl")
    (project.root / "hold").touch()
    daemon = project.start_daemon("--until-idle")
    wait_until(lambda: len(started(project)) == 4, "the attempts to start")
    path = project.state_dir / STORE_FILE
    path.rename(project.root / "moved.db")
    (project.root / "hold").unlink()
    line = store_line(project, "vanished (the file is gone) — put it back; nothing was lost")
    wait_until(lambda: line in project.daemon_log(), "the vanished line")
    assert daemon.poll() is None
    (project.root / "moved.db").rename(path)
    assert daemon.wait(30) == 0
    assert_no_traceback(project.daemon_log())
    assert_each_item_done_once(project, 4)


# -- 3. damaged stores ------------------------------------------------------------------------
def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated to half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zeroed header":
        path.write_bytes(bytes(100) + data[100:])
    elif how == "a text file":
        path.write_text("these are my notes, not a database\n" * 100)
    elif how == "random bytes over page 2":
        path.write_bytes(data[:4096] + random.Random(2).randbytes(4096) + data[8192:])
    elif how == "truncated to 0 bytes":
        path.write_bytes(b"")


DAMAGE = {
    "truncated to half": "database disk image is malformed",
    "zeroed header": "file is not a database",
    "a text file": "file is not a database",
    "random bytes over page 2": "database disk image is malformed",
    "truncated to 0 bytes": "the file is empty",
}


def used_store(project: Project) -> Path:
    """A store a daemon ran on (its runs recorded, its API token beside it), stopped cleanly."""
    configure(project, items=40, size=2000)
    project.cli("enqueue", "p", "--file", "items.jsonl")
    assert project.start_daemon("--until-idle").wait(30) == 0
    return project.state_dir / STORE_FILE


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_store_is_one_line_and_exit_2_for_status_run_and_doctor(
    project: Project, how: str
):
    path = used_store(project)
    _damage(path, how)
    before = path.read_bytes()
    expected = f"pipewarden: store {path} is damaged ({DAMAGE[how]}) {DAMAGED_FIX}\n"
    for args in (("status",), ("runs", "tail"), ("enqueue", "p", "new"), ("run", "--until-idle")):
        done = project.cli(*args, expect=2)
        assert done.stderr.endswith(expected), (args, done.stderr)
        assert_no_traceback(done.stderr)
        assert done.stderr.count("\n") == 1 or args[0] == "run"  # the daemon logs its start
    doctor = project.cli("doctor", expect=1)
    assert f"FAIL store {path} is damaged ({DAMAGE[how]}" in doctor.stdout
    assert_no_traceback(doctor.stdout, doctor.stderr)
    assert path.read_bytes() == before  # nothing wrote over what is left to rescue


def test_damage_a_crash_left_is_found_by_the_quick_check_at_the_next_start(
    project: Project, kill_leftovers: list[int]
):
    configure(project, items=200, size=2000)
    project.cli("enqueue", "p", "--file", "items.jsonl")
    (project.root / "hold").touch()
    daemon = project.start_daemon()
    wait_until(lambda: len(started(project)) == 2, "the attempts to start")
    daemon.send_signal(signal.SIGKILL)  # an unclean stop
    daemon.wait(10)
    path = project.state_dir / STORE_FILE
    store = sqlite3.connect(path)
    store.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file, none in the WAL
    # The runs it left (the two started, and those handed ahead to their pool slots).
    runs = store.execute("SELECT id, status FROM runs ORDER BY id").fetchall()
    assert len(runs) >= 2 and {status for _, status in runs} == {"running"}
    (page,) = store.execute(  # the items table's last leaf: no read at the start touches it
        "SELECT max(pageno) FROM dbstat WHERE name = 'items' AND pagetype = 'leaf'"
    ).fetchone()
    store.close()
    with open(path, "r+b") as handle:
        handle.seek((page - 1) * 4096)
        handle.write(random.Random(3).randbytes(4096))

    done = project.cli("run", "--until-idle", expect=2)
    assert done.stderr == (
        f"pipewarden: store {path} is damaged (database disk image is malformed) {DAMAGED_FIX}\n"
    )
    check = sqlite3.connect(path)  # refused before a write: the crash's runs are as it left them
    assert check.execute("SELECT id, status FROM runs ORDER BY id").fetchall() == runs
    check.close()


def test_an_empty_store_file_in_a_new_state_dir_is_a_new_store(project: Project):
    configure(project, items=1)
    project.state_dir.mkdir()
    (project.state_dir / STORE_FILE).touch()
    project.cli("enqueue", "p", "--file", "items.jsonl")
    assert queued(project.cli("status").stdout) == 1


# -- 4. modes and read-only commands ----------------------------------------------------------
def test_the_store_and_its_wal_and_shm_are_the_daemons_users_alone(project: Project):
    configure(project, items=2)
    project.cli("enqueue", "p", "--file", "items.jsonl")  # the CLI makes the store
    (project.root / "hold").touch()
    daemon = project.start_daemon()
    wait_until(lambda: len(started(project)) == 2, "the attempts to start")
    modes = {name: stat.S_IMODE((project.state_dir / name).stat().st_mode) for name in FILES}
    assert modes == dict.fromkeys(FILES, 0o600)
    (project.root / "hold").unlink()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0


def schema_4_store(project: Project) -> Path:
    project.state_dir.mkdir()
    path = project.state_dir / STORE_FILE
    connection = sqlite3.connect(path)
    for step in MIGRATIONS[:4]:
        for statement in step:
            connection.execute(statement)
    connection.execute("PRAGMA user_version = 4")
    connection.execute(
        "INSERT INTO items (pipeline, key, stage, state, created_at, updated_at)"
        " VALUES ('p', 'k0', 's', 'queued', 1, 1)"
    )
    connection.commit()
    connection.close()
    return path


def test_read_only_commands_never_migrate_an_older_store_and_migrate_does(project: Project):
    configure(project, items=1)
    path = schema_4_store(project)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = (
        f"pipewarden: {path} has schema 4; this pipewarden reads schema {SCHEMA_VERSION} — start"
        " the daemon or run `pipewarden migrate`\n"
    )
    for args in (("status",), ("runs", "tail"), ("runs", "show", "abcd"), ("why", "k0"),
                 ("item", "p", "k0"), ("halts",), ("export", "runs")):  # fmt: skip
        done = project.cli(*args, expect=1)
        assert done.stderr == expected, args
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in project.state_dir.iterdir()) == [STORE_FILE]  # no -wal either

    done = project.cli("migrate")
    assert done.stdout == f"store {path}: migrated from schema 4 to {SCHEMA_VERSION}\n"
    assert project.cli("migrate").stdout == f"store {path}: schema {SCHEMA_VERSION} already\n"
    assert queued(project.cli("status").stdout) == 1
