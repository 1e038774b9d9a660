"""Run a benchmark command and keep what it printed as a result file under benchmarks/results/.

The file holds the date, the exact command, the machine (CPU model, cores, load) and the
command's output, so a number in the docs can always be traced to the run that produced it.

    python benchmarks/record.py NAME -- python benchmarks/dde.py --repeats 10

writes benchmarks/results/<date>-NAME.md (a second run the same day adds a section).
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, load average before the run {load}"


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1:
        print(__doc__)
        return 2
    name, command = argv[0], argv[2:]
    started = datetime.datetime.now()
    run = subprocess.run(command, capture_output=True, text=True)
    output = (run.stdout + run.stderr).strip()
    print(output)
    path = RESULTS / f"{started.date().isoformat()}-{name}.md"
    RESULTS.mkdir(exist_ok=True)
    section = "\n".join(
        [
            f"## {name}, {started.isoformat(timespec='minutes')}",
            "",
            f"- command: `{shlex.join(command)}` (via `benchmarks/record.py`)",
            f"- machine: {machine()}",
            f"- exit code: {run.returncode}",
            "",
            "```",
            output,
            "```",
            "",
        ]
    )
    previous = path.read_text() + "\n" if path.exists() else ""
    path.write_text(previous + section)
    print(f"wrote {path}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
