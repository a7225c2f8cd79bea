"""The shipped unit under a real systemd: Debian 12 booted in systemd-nspawn.

Inside, the README's systemd section runs verbatim from a copy of this checkout (pip
installs from wheels fetched here first: the container has no network of its own), then
service_checks.py asks what a person would: is it READY, does the journal name it, does
headless Chromium with its own sandbox capture a page, do a desktop user in the group
and a stranger get what they should, does a reload keep the pid, does the watchdog hold,
does a stop with a capture running finish it and exit 0.

The OS tree (debootstrap, Chromium, python3-venv: about 1 GB, a few minutes to build) is
kept in /var/cache/pipewarden-nspawn and reused while its recipe is the same; each boot
runs on a throw-away overlay of it (--volatile=overlay), so no run sees another's state.
Slow: marked `systemd`; `./dev test -m 'not systemd'` leaves it out, .ci/run runs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.systemd

CACHE = Path(os.environ.get("PIPEWARDEN_NSPAWN_CACHE", "/var/cache/pipewarden-nspawn"))
BOOT_TIMEOUT_S = 600
DRIVER_UNIT = """\
[Unit]
Description=pipewarden's container test: run /pw-test/driver.sh, then power off
ConditionPathExists=/pw-test/driver.sh
After=multi-user.target

[Service]
Type=oneshot
TimeoutStartSec=15min
ExecStart=/bin/sh /pw-test/driver.sh
ExecStopPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
"""
# What the root is made of; a change to any of it builds the root anew.
RECIPE = {
    "debootstrap": ["--variant=minbase", "--include=systemd,systemd-sysv,dbus", "bookworm"],
    "packages": ["chromium", "python3-venv"],
    "driver": DRIVER_UNIT,
}
DRIVER = """\
#!/bin/sh
# Runs in the booted container as root (pipewarden-test-driver.service).
exec > /pw-test/driver.log 2>&1
export PIP_NO_INDEX=1 PIP_FIND_LINKS=/pw-wheels PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_PROGRESS_BAR=off PIP_ROOT_USER_ACTION=ignore
cd /pw-test/checkout
sh -ex /pw-test/readme.sh > /pw-test/readme.log 2>&1
echo $? > /pw-test/readme.rc
cp /etc/passwd /pw-test/passwd
python3 /pw-test/service_checks.py /pw-test/results.json
journalctl --no-pager -u pipewarden > /pw-test/journal.log
"""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: it boots a container with systemd-nspawn"
    for tool in ("systemd-nspawn", "debootstrap"):
        if not shutil.which(tool):
            return f"needs {tool} (apt-get install systemd-container debootstrap)"
    return None


@pytest.fixture(scope="module")
def prerequisites() -> None:
    if (reason := _missing()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the container test, but it {reason}")
        pytest.skip(reason)


def _run(argv: list[str], log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise AssertionError(f"{' '.join(argv[:3])} … exited {done.returncode}:\n{tail}")


def _nspawn_pipe(root: Path, script: str, log: Path) -> None:
    _run(["systemd-nspawn", "-D", str(root), "--register=no", "--keep-unit", "--pipe",
          "/bin/sh", "-ec", script], log, timeout=1200)  # fmt: skip


def _build_root(target: Path, log: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    _run(["debootstrap", *RECIPE["debootstrap"], str(target)], log, timeout=1800)
    install = "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
    packages = " ".join(RECIPE["packages"])
    _nspawn_pipe(target, f"apt-get update -qq && {install} {packages} && apt-get clean", log)
    units = target / "etc/systemd/system"
    (units / "pipewarden-test-driver.service").write_text(DRIVER_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    (wants / "pipewarden-test-driver.service").symlink_to("../pipewarden-test-driver.service")


@pytest.fixture(scope="module")
def root(prerequisites: None) -> Iterator[Path]:
    """The cached OS tree, built when absent or made by another recipe."""
    CACHE.mkdir(parents=True, exist_ok=True)
    recipe = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]
    tree, stamp = CACHE / "root", CACHE / "root.recipe"
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; readers wait for it
        if not (tree.is_dir() and stamp.is_file() and stamp.read_text() == recipe):
            started = time.monotonic()
            building = CACHE / "root.building"
            _build_root(building, CACHE / "build.log")
            stamp.unlink(missing_ok=True)
            shutil.rmtree(tree, ignore_errors=True)
            building.rename(tree)
            stamp.write_text(recipe)
            print(f"built the container root in {time.monotonic() - started:.0f}s")
        yield tree


@pytest.fixture(scope="module")
def wheels(root: Path) -> Path:
    """Everything the README's `pip install '.[re2]'` needs, fetched here with this
    machine's pip settings."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + b"[re2]").hexdigest()[:16]
    folder = CACHE / f"wheels-{key}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder),
              f"{REPO}[re2]", "setuptools>=64", "wheel"], CACHE / "wheels.log",
             timeout=600)  # fmt: skip
        for built in folder.glob("pipewarden-*"):
            built.unlink()  # the checkout itself is built inside, as the README says
        (folder / ".complete").touch()
    return folder


def readme_systemd_section() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Running under systemd") :]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def _copy_checkout(target: Path) -> None:
    ignored = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "build", ".pipewarden*", ".*_cache"
    )
    shutil.copytree(REPO, target, ignore=ignored)


@pytest.fixture(scope="module")
def booted(root: Path, wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Boot the container once; the driver installs the service and runs the checks."""
    results = tmp_path_factory.mktemp("pw-test")
    _copy_checkout(results / "checkout")
    (results / "readme.sh").write_text(readme_systemd_section())
    (results / "driver.sh").write_text(DRIVER)
    shutil.copy(Path(__file__).with_name("service_checks.py"), results)
    argv = [
        "systemd-nspawn", "-D", str(root), "--volatile=overlay", "--boot", "--register=no",
        "--keep-unit", "--console=read-only", "--private-network",
        f"--bind={results}:/pw-test", f"--bind-ro={wheels}:/pw-wheels",
    ]  # fmt: skip
    started = time.monotonic()
    _run(argv, results / "boot.log", timeout=BOOT_TIMEOUT_S)
    print(f"the container ran for {time.monotonic() - started:.0f}s")
    return results


def test_the_readme_installs_the_unit_as_written(booted: Path):
    rc = (booted / "readme.rc").read_text().strip() if (booted / "readme.rc").exists() else "?"
    assert rc == "0", (booted / "readme.log").read_text()[-3000:]
    assert "pipewarden:x:" in (booted / "passwd").read_text()  # systemd-sysusers made the user


def test_the_service_under_a_real_systemd(booted: Path):
    results_file = booted / "results.json"
    assert results_file.exists(), (booted / "driver.log").read_text()[-3000:]
    results = json.loads(results_file.read_text())
    failed = [r for r in results if not r["ok"]]
    report = "\n".join(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']}: {r['detail']}"
                       for r in results)  # fmt: skip
    assert len(results) == 10 and not failed, report
