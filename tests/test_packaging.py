"""Packaging as a packager meets it: the sdist carries the service files, examples and rules;
Debian 12's setuptools builds it; the wheel, installed in a fresh venv, runs from its own files.

Builds call setuptools' PEP 517 hooks as a frontend does, without isolation, so nothing is
downloaded: the dev environment's setuptools, and the system's where it is Debian's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.egg-info", ".pipewarden*", ".pytest_cache", ".ruff_cache",
    "build", "dist", "results",
)  # fmt: skip
SYSTEM_PYTHON = "/usr/bin/python3"
BUILT = "built: "


def build(python: str, hook: str, source: Path, out: Path) -> Path:
    """`build_meta.<hook>(out)` run by `python` in `source`: the path of what it built."""
    out.mkdir(parents=True, exist_ok=True)
    script = (
        "import sys\nfrom setuptools import build_meta\n"
        f"print({BUILT!r} + build_meta.{hook}(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [python, "-c", script, str(out)], cwd=source, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{hook} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    names = [line[len(BUILT) :] for line in done.stdout.splitlines() if line.startswith(BUILT)]
    return out / names[-1]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIPEWARDEN"))}
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, built from a copy of the source tree (as a clean checkout would be)."""
    work = tmp_path_factory.mktemp("sdist")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    return build(sys.executable, "build_sdist", source, work / "dist")


def unpacked(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    return into / sdist.name.removesuffix(".tar.gz")


def repo_files(folder: str) -> set[str]:
    return {
        str(path.relative_to(REPO))
        for path in (REPO / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_sdist_carries_the_service_files_examples_rules_and_license(sdist: Path):
    with tarfile.open(sdist) as archive:
        prefix = sdist.name.removesuffix(".tar.gz") + "/"
        members = {m.name.removeprefix(prefix) for m in archive.getmembers() if m.isfile()}
        license_text = archive.extractfile(prefix + "LICENSE").read().decode()  # type: ignore[union-attr]
        info = archive.extractfile(prefix + "PKG-INFO").read().decode()  # type: ignore[union-attr]
    for folder in ("systemd", "examples", "rules"):
        assert repo_files(folder) <= members, f"{folder}/ is not all in the sdist"
    assert "rules/packs/sms.yaml" in members and "systemd/pipewarden.service" in members
    assert {"LICENSE", "README.md", "config.example.yaml", "pyproject.toml"} <= members
    assert "daemon/page.html" in members
    assert not [m for m in members if "__pycache__" in m or m.startswith(".pipewarden")]
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 pipewarden contributors\n")
    assert re.search(r"^License(-Expression)?: MIT$", info, re.MULTILINE)


def system_setuptools() -> str | None:
    """The version of the system Python's setuptools (Debian's python3-setuptools), if any."""
    if not Path(SYSTEM_PYTHON).exists():
        return None
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import setuptools, wheel; print(setuptools.__version__)"],
        capture_output=True, text=True, env=clean_env(),
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.mark.skipif(system_setuptools() is None, reason="no system Python with setuptools")
def test_the_systems_setuptools_builds_the_wheel_from_the_sdist(sdist: Path, tmp_path: Path):
    # On Debian 12 that is setuptools 66, which refused `license = "MIT"` (an SPDX string).
    wheel = build(SYSTEM_PYTHON, "build_wheel", unpacked(sdist, tmp_path), tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read("pipewarden-0.1.0.dist-info/METADATA").decode()
    assert "pipewarden/shipped_rules/packs/sms.yaml" in names and "pipewarden/page.html" in names
    assert re.search(r"^License(-Expression)?: MIT$", metadata, re.MULTILINE)


def test_the_wheel_in_a_fresh_venv_lists_the_packs_and_starts_a_project(
    sdist: Path, tmp_path: Path
):
    wheel = build(sys.executable, "build_wheel", unpacked(sdist, tmp_path), tmp_path / "wheel")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         "--no-index", "--disable-pip-version-check", wheel],
        check=True, env=clean_env(),
    )  # fmt: skip
    # Its dependencies from this environment, after its own site-packages: pipewarden itself
    # comes from the wheel (this environment's editable install is not on that path).
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "dev-dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))

    def pipewarden(*args: str, cwd: Path = tmp_path) -> str:
        done = subprocess.run(
            [venv / "bin" / "pipewarden", *args], cwd=cwd, capture_output=True, text=True,
            env=clean_env(), timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"pipewarden {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    where = subprocess.run(
        [python, "-c", "import pipewarden.packs as p; print(p.shipped_rules_dir())"],
        capture_output=True, text=True, check=True, env=clean_env(),
    ).stdout.strip()  # fmt: skip
    assert where.startswith(site), f"pipewarden imported from {where}, not the wheel"

    listed = pipewarden("rules", "packs")
    for pack in (REPO / "rules" / "packs").glob("*.yaml"):
        assert f"pack:{pack.stem} " in listed
    pipewarden("init", str(tmp_path / "starter"))
    shipped = {p.name for p in (REPO / "rules").glob("*.yaml")}
    assert {p.name for p in (tmp_path / "starter" / "rules").glob("*.yaml")} == shipped
    # The starter names packs (pack:http, ...): they load from the installed wheel.
    checked = pipewarden("rules", "check", "--config", str(tmp_path / "starter" / "config.yaml"))
    assert re.fullmatch(r"ok: \d+ rules \(version \w+\)\n", checked)
