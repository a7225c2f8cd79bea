"""`pipewarden init` and `doctor`, and the trace context every worker gets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import Project, free_port

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def run_cli(folder: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PIPEWARDEN_CONFIG"}
    done = subprocess.run([sys.executable, "-m", "pipewarden", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == expect, done.stdout + done.stderr
    return done


def test_init_writes_a_starter_that_doctor_passes_and_that_runs(tmp_path: Path):
    written = run_cli(tmp_path, "init", "starter", "--port", str(free_port())).stdout
    assert "wrote " in written and "config.yaml" in written
    folder = tmp_path / "starter"
    assert (folder / "rules" / "outreach.yaml").exists() and (
        folder / "workers" / "hello.py"
    ).exists()
    doctor = run_cli(folder, "doctor").stdout.splitlines()
    assert doctor[-1] == "all good"
    assert (
        "ok   stage hello/greet: module workers.hello found, workers.hello:greet imports" in doctor
    )

    run_cli(folder, "enqueue", "hello", "ada", "--data", '{"name": "Ada"}')
    run_cli(folder, "run", "--until-idle")
    assert run_cli(folder, "why", "ada").stdout.splitlines()[-1] == "next: nothing: done"
    again = run_cli(tmp_path, "init", "starter", expect=2)
    assert "already exist: init never overwrites" in again.stderr


def test_doctor_says_what_to_fix(tmp_path: Path):
    run_cli(tmp_path, "init", "broken", "--port", str(free_port()))
    folder = tmp_path / "broken"
    config = (folder / "config.yaml").read_text()
    config = config.replace("python: workers.hello:greet", "python: workers.missing:greet")
    config += "      - {name: shout, command: [no-such-program-here]}\n"
    (folder / "config.yaml").write_text(config)
    (folder / ".pipewarden").mkdir(mode=0o755)
    os.chmod(folder / ".pipewarden", 0o755)

    lines = run_cli(folder, "doctor", expect=1).stdout.splitlines()
    assert any(
        line.startswith("FAIL stage hello/greet: module workers.missing not found")
        for line in lines
    )
    missing = "FAIL stage hello/shout: command no-such-program-here not found on the stage's PATH"
    assert any(line.startswith(missing) and line.endswith("— install it, or give its full path")
               for line in lines)  # fmt: skip
    assert any(line.startswith("FAIL state dir: ") and "chmod 700" in line for line in lines)
    assert lines[-1] == "3 problem(s) to fix"


def test_doctor_imports_each_python_worker_and_finds_commands_on_the_stages_path(
    project: Project,
):
    project.write("needs_bs.py", "import no_such_package_xyz.parser\n\ndef work(data):\n    pass\n")
    project.write("fine.py", "import json\n\ndef work(data):\n    pass\n")
    project.write("bin/tool", "#!/bin/sh\necho '{\"ok\": true}'\n")
    os.chmod(project.root / "bin" / "tool", 0o755)
    project.write("notexec.sh", "echo hi\n")
    project.configure(
        f"""
        sites:
          stages:
            - {{name: scrape, python: "needs_bs:work"}}
            - {{name: fine, python: "fine:work"}}
            - {{name: typo, python: "fine:wrok"}}
            - {{name: tool, command: [tool], env: {{PATH: "{project.root / "bin"}"}}}}
            - {{name: sh, command: [sh, -c, "true"], env: {{PATH: "{project.root / "bin"}"}}}}
            - {{name: local, command: [./notexec.sh]}}
        """
    )
    lines = project.cli("doctor", expect=1).stdout.splitlines()
    python = sys.executable
    assert (
        f"FAIL stage sites/scrape: needs_bs imports no_such_package_xyz, which the workers' Python"
        f" ({python}) does not have — install the package that provides no_such_package_xyz into"
        f" it: {python} -m pip install PACKAGE (for no_such_package_xyz, often: {python} -m pip"
        " install no_such_package_xyz)"
    ) in lines
    assert "ok   stage sites/fine: module fine found, fine:work imports" in lines
    assert (
        "FAIL stage sites/typo: fine has no function wrok — check the name after the colon in"
        " `python:`"
    ) in lines
    assert f"ok   stage sites/tool: command tool found ({project.root / 'bin' / 'tool'})" in lines
    # sh is on the doctor's own PATH, not on the one the stage runs with
    assert any(line.startswith("FAIL stage sites/sh: command sh not found on the stage's PATH")
               for line in lines)  # fmt: skip
    assert any(line.startswith("FAIL stage sites/local: command ./notexec.sh (")
               and "is not executable — chmod +x" in line for line in lines)  # fmt: skip
    assert lines[-1] == "4 problem(s) to fix"


def test_every_worker_gets_a_w3c_traceparent_matching_its_run(project: Project):
    project.write(
        "t.py", "import os\n\ndef work(data):\n    return {'seen': os.environ['TRACEPARENT']}\n"
    )
    project.write(
        "t.sh",
        'read line\necho "{\\"ok\\": true, \\"data\\": {\\"seen_cmd\\": \\"$TRACEPARENT\\"}}"\n',
    )
    project.configure(
        """
        p:
          stages:
            - {name: pool, python: "t:work"}
            - {name: process, command: [sh, t.sh]}
        """
    )
    for key in ("a", "b"):
        project.cli("enqueue", "p", key)
    project.start_daemon("--until-idle").wait(30)

    for key in ("a", "b"):
        data = json.loads(project.item("p", key).data)
        pool_run, process_run = project.runs(key)
        for seen, run in ((data["seen"], pool_run), (data["seen_cmd"], process_run)):
            assert TRACEPARENT.match(seen)
            # the span id is the run's number in 16 hex digits
            assert seen == f"00-{run.trace_id}-{int(run.id):016x}-01"


def test_init_names_the_packs_a_starter_needs_and_more_on_request(tmp_path: Path):
    run_cli(tmp_path, "init", "plain")
    config = (tmp_path / "plain" / "config.yaml").read_text()
    assert "  - pack:http\n  - pack:net\n  - pack:os\n" in config
    run_cli(tmp_path, "init", "farm", "--packs", "android,browser")
    config = (tmp_path / "farm" / "config.yaml").read_text()
    assert "  - pack:browser\n  - pack:android\n  - pack:http\n" in config  # specific first
    doctor = run_cli(tmp_path / "farm", "doctor").stdout.splitlines()
    assert doctor[-1] == "all good"
    done = run_cli(tmp_path, "rules", "test", "error: device offline",
                   "--config", str(tmp_path / "farm" / "config.yaml"))  # fmt: skip
    assert "label     Device unreachable" in done.stdout and "pack:android:" in done.stdout
    wrong = run_cli(tmp_path, "init", "x", "--packs", "androids", expect=2)
    assert wrong.stderr.startswith("pipewarden: --packs: no pack named 'androids' (shipped: ")
