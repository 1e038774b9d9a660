"""Fuzzing the boundary (issue 10, item 9): random malformed CSV files and `TimeSeries` inputs,
and a corpus of bad CSVs through the CLI. Each is refused with a one-line `ValueError` message
(no traceback) or accepted with finite numbers; nothing else."""

import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import neuraldiffeq as nde
from neuraldiffeq.cli import main

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64).map(repr),
    st.integers(-(10**40), 10**40).map(str),
    st.sampled_from(["1e38", "-3.5e38", "1e-45", "1,5", "0x10", "nan", "inf", "-inf", "1_000"]),
)
CELLS = st.one_of(
    NUMBERS,
    st.sampled_from(["", " ", "NA", "abc", '"1"', '"a,b"', "\u00a0", "#", "1;2", "\t"]),
    st.text(max_size=4),
)


@st.composite
def csv_texts(draw):
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    n_cols = draw(st.integers(1, 4))
    names = draw(
        st.lists(
            st.sampled_from(["t", "x", "y", "z", " t", "t ", ""]), min_size=n_cols, max_size=n_cols
        )
    )
    rows = [delimiter.join(names)]
    for _ in range(draw(st.integers(0, 7))):
        width = draw(st.integers(0, n_cols + 1))  # ragged rows too
        rows.append(delimiter.join(draw(st.lists(CELLS, min_size=width, max_size=width))))
    if draw(st.booleans()):
        rows.insert(draw(st.integers(0, len(rows))), "# a comment")
    text = "\n".join(rows) + draw(st.sampled_from(["", "\n", "\r\n"]))
    return ("\ufeff" if draw(st.booleans()) else "") + text


def check_accepted(data: nde.TimeSeries):
    ts, ys = np.asarray(data.ts), np.asarray(data.ys)
    assert np.all(np.isfinite(ts)) and np.all(np.diff(ts) > 0)
    observed = np.ones(ys.shape, bool) if data.mask is None else np.asarray(data.mask)
    assert np.all(np.isfinite(ys[observed]))
    assert np.all(np.isfinite(ys))  # masked entries are stored as 0, never NaN


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_texts())
def test_random_csv_files_are_read_or_refused_cleanly(text):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "f.csv")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        try:
            data = nde.TimeSeries.from_csv(path, time="t")
        except ValueError as e:
            assert str(e) and "Traceback" not in str(e)
            return
        check_accepted(data)


ARRAY_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e39, -1e300, 3e38, 1e-320, 0.0]),
    st.integers(-(10**20), 10**20),
    st.complex_numbers(max_magnitude=10),
    st.booleans(),
    st.sampled_from(["1", "a", None]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(ARRAY_VALUES, min_size=0, max_size=6),
    st.lists(st.lists(ARRAY_VALUES, min_size=1, max_size=2), min_size=0, max_size=6),
    st.one_of(st.none(), st.lists(st.lists(st.booleans(), min_size=1, max_size=2), max_size=6)),
)
def test_random_timeseries_inputs_are_accepted_finite_or_refused(ts, ys, mask):
    try:
        data = nde.TimeSeries(ts, ys, mask)
    except ValueError as e:
        assert str(e)
        return
    check_accepted(data)


# A corpus of bad files through the whole CLI, in process. Entries that fit use tiny settings.
GOOD = "t,x,y\n" + "\n".join(f"{i},{np.cos(i / 3):.4f},{np.sin(i / 3):.4f}" for i in range(8))
CORPUS = {
    "empty": "",
    "header only": "t,x,y\n",
    "one row": "t,x\n0,1\n",
    "no time column": "time,x\n0,1\n1,2\n",
    "text cell": "t,x\n0,1\n1,abc\n",
    "infinite": "t,x\n0,1\n1,inf\n2,3\n",
    "overflow": "t,x\n0,1\n1,1e39\n2,3\n",
    "repeated time": "t,x\n0,1\n0,2\n1,3\n",
    "decreasing time": "t,x\n2,1\n1,2\n0,3\n",
    "empty time": "t,x\n0,1\n,2\n2,3\n",
    "duplicate header": "t,x,x\n0,1,2\n1,2,3\n",
    "too many cells": "t,x\n0,1,2\n1,2\n",
    "all empty column": "t,x,y\n0,1,\n1,2,\n2,3,\n",
    "binary": "\x00\x01\x02\x03",
    "constant column": "t,x\n" + "\n".join(f"{i},5" for i in range(6)),
    "only time": "t\n0\n1\n2\n",
    "huge values, semicolons, BOM": "\ufeff" + GOOD.replace(",", ";").replace("\n", "e30\n"),
    "missing cells": GOOD.replace("0.9450", "").replace(",-0.3272", ","),
}


#: corpus entries the CLI accepts and fits (seconds of compiling each): the long tier (the
#: default run fits a CSV with gaps through the CLI in test_frames' --id fit)
FITTED = {"constant column", "huge values, semicolons, BOM", "missing cells"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.long) if n in FITTED else n for n in sorted(CORPUS)]
)
def test_bad_csv_corpus_through_the_cli(name, tmp_path, capsys):
    path = tmp_path / "data.csv"
    path.write_text(CORPUS[name], encoding="utf-8")
    out = tmp_path / "out"
    argv = ["fit", str(path), "--time", "t", "--out", str(out), "--strategy", "trajectory"]
    argv += ["--steps", "2", "--lbfgs-steps", "0", "--hidden", "4", "--depth", "1"]
    code = main([*argv, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    if code == 0:
        metrics = json.loads((out / "metrics.json").read_text(), parse_constant=_refuse)
        assert np.isfinite(metrics["train_mse"]) and np.isfinite(metrics["final_loss"])
        assert nde.load(out / "model.eqx") is not None
    else:
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("neuraldiffeq: error:")


def _refuse(constant):
    raise ValueError(constant)
