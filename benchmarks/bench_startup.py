"""Start-up time of the commands, where users wait: ``--help``, ``--cfg job``, a ``debug=fdr`` run.

Each command runs in a fresh process ``--repeats`` times (the token cache warmed first, in a
temporary MEDLM_HOME); the median wall time is printed beside the target of issue 13 (under 2 s
for --help and --cfg job, under 10 s for a debug=fdr run on a 2-core CPU). The import of what a
run needs (``medlm.training``: torch, Lightning, MLflow) is printed too: it is most of a short
run's start-up, and the number to watch for regressions.

    make bench
    .venv/bin/python benchmarks/bench_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

PY = sys.executable
# (what, command, target seconds or None)
COMMANDS = [
    ("import medlm.cli.train", [PY, "-c", "import medlm.cli.train"], None),
    ("import medlm.training (a run's libraries)", [PY, "-c", "import medlm.training"], None),
    ("medlm-train --help", [PY, "-m", "medlm.cli.train", "--help"], 2.0),
    ("medlm-train --cfg job", [PY, "-m", "medlm.cli.train", "--cfg", "job"], 2.0),
    ("medlm-eval --help", [PY, "-m", "medlm.cli.eval", "--help"], 2.0),
    ("medlm-generate --help", [PY, "-m", "medlm.cli.generate", "--help"], 2.0),
    ("medlm-train debug=fdr", [PY, "-m", "medlm.cli.train", "debug=fdr"], 10.0),
]


def wall_time(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MEDLM_HOME": home}
        wall_time(COMMANDS[-1][1], env)  # the token cache, once
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        print(f"\nstart-up, median of {args.repeats} fresh processes")
        print(f"{'command':<44}{'seconds':>9}{'target':>9}")
        for what, command, target in COMMANDS:
            median = statistics.median(wall_time(command, env) for _ in range(args.repeats))
            verdict = "" if target is None else f"{'<' if median < target else '>'} {target:g} s"
            print(f"{what:<44}{median:>9.2f}{verdict:>9}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
