"""`from_csv` through polars against the hand-written parser it replaced: same files, same result.

Reads the old `TimeSeries.from_csv` from git history (commit 705e617, `src/neuraldiffeq/data.py`)
into a temporary module and runs both on: the bad-CSV corpus of tests/test_fuzz.py, a list of
edge cases (trailing delimiters, indented comments, old Mac line ends, decimal commas, `1_000`,
stray quotes, blank first rows), and N random files from tests/test_fuzz.py's generator. For
each file the outcome must be identical: the same error message, or the same times, values and
mask.

    python benchmarks/csv_parity.py [N]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from frames import old_from_csv  # noqa: E402
from test_fuzz import CORPUS, csv_texts  # noqa: E402

import neuraldiffeq as nde  # noqa: E402

EDGES = [
    "t,x\n0,1\n1,2,\n2,3\n",
    "t,x\n0,1\n  # c\n1,2\n",
    "\n\nt,x\n0,1\n1,2\n",
    "t,x\r0,1\r1,2\r",
    "t;x\n0;1,5\n1;1,234,5\n",
    "t,x\n0,1_000\n1,2\n",
    't,x\n0,a"b\n1,2\n',
    "t,x,y\n0,1\n1,2,3\n",
    "t,x\n0,\u0661\n1,2\n",
    "t,x\n0,+nan\n1,2\n",
    "t,x\n0, 1 \n1,\u00a02\u00a0\n",
    "t,x\n0,1\n1,-inf\n",
    "t,x\n0,1\n1,1e400\n",
    't,x\n0,"1"\n1,"a,b"\n',
    ",,\nt,x\n0,1\n1,2\n",
    "t,x\n0,1\n,,,\n1,2\n",
    '"t","x"\n"0","1"\n"1","2"\n',
]


def main(n: int) -> int:
    old = old_from_csv()
    mismatches, count = [], 0

    def outcome(read, path):
        try:
            d = read(path, time="t")
        except ValueError as e:
            return ("refused", str(e).replace(path, "PATH"))
        mask = None if d.mask is None else np.asarray(d.mask).tolist()
        return ("read", np.asarray(d.ts).tolist(), np.asarray(d.ys).tolist(), mask)

    def compare(text, label):
        nonlocal count
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "f.csv")
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            a, b = outcome(old, path), outcome(nde.TimeSeries.from_csv, path)
        count += 1
        if a != b:
            mismatches.append((label, text, a, b))

    for name, text in CORPUS.items():
        compare(text, f"corpus: {name}")
    for i, text in enumerate(EDGES):
        compare(text, f"edge {i}")

    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(csv_texts())
    def random_files(text):
        compare(text, "random")

    random_files()
    print(
        f"{count} files ({len(CORPUS)} corpus, {len(EDGES)} edge cases, {n} random): "
        f"{len(mismatches)} differences"
    )
    for label, text, a, b in mismatches[:20]:
        print(f"- {label}: {text!r}\n  before: {a}\n  now:    {b}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
