"""Cold start of the CLI: `pipewarden --help` and `pipewarden status`.

    python bench/startup.py [--runs 20]

Runs each command as a user would (a fresh interpreter every time, its bytecode cached:
see installed.py) on the example config and prints the median and the slowest wall time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from installed import shell_env, warm

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {
    "pipewarden --help": ["--help"],
    "pipewarden status": ["status", "--config", str(REPO / "config.example.yaml")],
}


def wall_times(args: list[str], runs: int) -> list[float]:
    command = [str(Path(sys.executable).with_name("pipewarden")), *args]
    warm(command)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=shell_env(), check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    for name, command in COMMANDS.items():
        times = wall_times(command, args.runs)
        print(
            f"{name:<20} median {statistics.median(times) * 1000:6.1f} ms"
            f"   slowest {max(times) * 1000:6.1f} ms   ({args.runs} runs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
