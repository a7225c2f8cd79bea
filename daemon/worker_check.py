"""`doctor`'s look at the workers as they will start: a `python:` stage's function imported
by the interpreter that runs it, in the stage's cwd and env (a module it imports that is
not installed there is named, with the command that installs it); a command's program
found on the stage's own PATH, and executable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipewarden.config import Stage
    from pipewarden.setup import Finding

IMPORT_TIMEOUT_S = 30.0  # a module that takes longer to import is reported, not waited for
# Run by the workers' interpreter, as pipewarden._runner loads a stage's function.
_PROBE = """
import importlib, os, sys
sys.path.insert(0, os.getcwd())
module, _, attribute = sys.argv[1].partition(":")
try:
    found = importlib.import_module(module)
except ModuleNotFoundError as exc:
    print("missing", exc.name or "")
    sys.exit(0)
except BaseException as exc:
    print("broken", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    sys.exit(0)
for part in attribute.split("."):
    found = getattr(found, part, None)
print("ok" if callable(found) else "absent")
"""


def check_stage(stage: Stage) -> Iterator[Finding]:
    yield from (_command(stage) if stage.command else _python(stage))


def _stage_env(stage: Stage) -> dict[str, str]:
    return {**os.environ, **dict(stage.env)}


def _python(stage: Stage) -> Iterator[Finding]:
    from pipewarden.setup import Finding

    where, target = f"stage {stage.qualified_name}", stage.python or ""
    module = target.partition(":")[0]
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, target], cwd=stage.cwd, env=_stage_env(stage),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        yield Finding(False, f"{where}: importing {module} took over {IMPORT_TIMEOUT_S:g} s",
                      "make its import cheap: do the slow work inside the function")  # fmt: skip
        return
    except OSError as exc:  # the stage's cwd is gone
        yield Finding(False, f"{where}: cannot start Python in {stage.cwd}: {exc.strerror}",
                      "check the stage's `cwd`")  # fmt: skip
        return
    verdict, _, detail = (done.stdout.strip().splitlines() or [""])[-1].partition(" ")
    if verdict == "ok":
        yield Finding(True, f"{where}: module {module} found, {target} imports")
    elif verdict == "missing" and _is_part_of(detail, module):
        yield Finding(False, f"{where}: module {module} not found from {stage.cwd}",
                      "check `python:` and the stage's `cwd`")  # fmt: skip
    elif verdict == "missing":
        yield Finding(False, f"{where}: {module} imports {detail}, which the workers' Python"
                      f" ({sys.executable}) does not have", _install_hint(detail))  # fmt: skip
    elif verdict == "absent":
        yield Finding(False, f"{where}: {module} has no function {target.partition(':')[2]}",
                      "check the name after the colon in `python:`")  # fmt: skip
    else:
        error = detail or (done.stderr.strip().splitlines() or ["it crashed"])[-1]
        see = f"run {sys.executable} -c 'import {module}' in {stage.cwd} to see why"
        yield Finding(False, f"{where}: importing {module} fails: {error}", see)


def _is_part_of(missing: str, module: str) -> bool:
    """The stage's own module (or a package on its way) is what is missing."""
    return module == missing or module.startswith(missing + ".")


def _install_hint(missing: str) -> str:
    top = missing.partition(".")[0]
    if f"{os.sep}pipx{os.sep}venvs{os.sep}" in sys.prefix:
        return (
            f"install the package that provides {top} beside pipewarden: pipx inject"
            f" {os.path.basename(sys.prefix)} PACKAGE (e.g. pipx inject pipewarden {top})"
        )
    return (
        f"install the package that provides {top} into it: {sys.executable} -m pip install"
        f" PACKAGE (for {top}, often: {sys.executable} -m pip install {top})"
    )


def _command(stage: Stage) -> Iterator[Finding]:
    from pipewarden.setup import Finding

    where = f"stage {stage.qualified_name}"
    program = (stage.command or ("",))[0]
    path = _stage_env(stage).get("PATH", os.defpath)
    found = str(stage.cwd / program) if "/" in program else shutil.which(program, path=path)
    if found is None or not os.path.exists(found):
        looked = f"in {stage.cwd}" if "/" in program else f"on the stage's PATH ({path})"
        yield Finding(False, f"{where}: command {program} not found {looked}",
                      "install it, or give its full path")  # fmt: skip
    elif not os.access(found, os.X_OK) or os.path.isdir(found):
        fix = f"chmod +x {found}, or name its interpreter first: [sh, {program}]"
        yield Finding(False, f"{where}: command {program} ({found}) is not executable", fix)
    else:
        yield Finding(True, f"{where}: command {program} found ({found})")
