"""Wall time and peak memory of the default test run (`pytest -n 2 -q`), workers included.

Samples the summed resident memory of pytest and all its worker processes every 0.5 s and
writes the result file under benchmarks/results/. Run from the repository root:

    python benchmarks/suite_footprint.py [-- extra pytest args]
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def main() -> None:
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    command = [sys.executable, "-m", "pytest", "-n", "2", "-q", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        time.sleep(0.5)
    wall = time.perf_counter() - start
    output = proc.stdout.read()
    summary = [line for line in output.splitlines() if " passed" in line or " failed" in line]
    print(output[-3000:])
    result = "\n".join(
        [
            "# Default test run: wall time and peak memory",
            "",
            f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
            f"- command: `python benchmarks/suite_footprint.py` (runs `{' '.join(command[2:])}`)",
            f"- machine: {platform.machine()}, {os.cpu_count()} cores",
            f"- result: {summary[-1] if summary else 'no summary line'}",
            f"- wall time: {wall / 60:.1f} min",
            f"- peak resident memory, pytest and workers summed: {peak / 2**30:.2f} GiB",
            "",
        ]
    )
    out = Path("benchmarks/results/test_suite_footprint.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result)
    print(result)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
