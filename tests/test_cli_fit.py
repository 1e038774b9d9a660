"""`neuraldiffeq fit DATA.csv`: round trip on a small CSV, and clear rejections of bad files."""

import json
import os

import numpy as np

import neuraldiffeq as nde
from neuraldiffeq.cli import main


def write_csv(path, rows, header="time,x,y"):
    with open(path, "w") as f:
        f.write(header + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")


def oscillator_rows(n=16):
    ts = np.linspace(0.0, 6.0, n)
    # a damped oscillation in units far from 1, to exercise the normalisation
    xs = 100.0 + 40.0 * np.exp(-0.1 * ts) * np.cos(ts)
    ys = -5.0 + 2.0 * np.exp(-0.1 * ts) * np.sin(ts)
    return [(1990.0 + t, x, y) for t, x, y in zip(ts, xs, ys, strict=True)]


def fit_round_trip_args(csv, out, seed: int = 0) -> list[str]:
    """`neuraldiffeq fit` on the oscillator: shooting, then L-BFGS, 3 points held out."""
    return [
        "fit",
        str(csv),
        "--time",
        "time",
        "--columns",
        "x",
        "y",
        "--hidden",
        "16",
        "--depth",
        "1",
        "--strategy",
        "shooting",
        "--steps",
        "150",
        "--lbfgs-steps",
        "20",
        "--holdout",
        "3",
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--no-progress",
    ]


def test_fit_round_trip(tmp_path, capsys):
    csv = tmp_path / "osc.csv"
    rows = oscillator_rows()
    write_csv(csv, rows)
    out = tmp_path / "out"
    code = main(fit_round_trip_args(csv, out))
    assert code == 0
    for name in ("model.eqx", "fit.png", "extrapolation.png", "metrics.json"):
        assert os.path.getsize(out / name) > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["strategy"] == "shooting" and metrics["n_train"] == 13
    assert metrics["holdout"] == 3 and metrics["holdout_mse"] is not None
    assert [s["name"].split(" ", 1)[1] for s in metrics["stages"]] == [
        "MultipleShooting",
        "Trajectory",
    ]
    assert all(s["wall_seconds"] > 0 for s in metrics["stages"])
    norm = metrics["normalisation"]
    assert norm["t0"] == 1990.0 and len(norm["mean"]) == 2
    # the model was fitted: in original units the error is far below the data's variance
    data = np.array(rows)[:, 1:]
    assert metrics["train_mse"] < 0.2 * data[:13].var(axis=0).mean()
    model = nde.load(out / "model.eqx")
    ts_norm = (np.array(rows)[:, 0] - norm["t0"]) / norm["t_scale"]
    y0 = (data[0] - np.array(norm["mean"])) / np.array(norm["std"])
    assert model(ts_norm, y0).shape == (16, 2)
    assert "wrote" in capsys.readouterr().out


def test_fit_rejects_non_numeric_column(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    write_csv(csv, [(0, 1.0, "a"), (1, 2.0, "b"), (2, 3.0, "c")])
    assert main(["fit", str(csv), "--time", "time", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "column 'y'" in err and "not numeric" in err and "row 2" in err


def test_fit_rejects_repeated_time(tmp_path, capsys):
    csv = tmp_path / "dup.csv"
    write_csv(csv, [(0, 1.0, 2.0), (1, 2.0, 3.0), (1, 2.5, 3.5), (2, 3.0, 4.0)])
    assert main(["fit", str(csv), "--time", "time", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "time column 'time'" in err and "no repeated times" in err


def test_fit_rejects_bad_options(tmp_path, capsys):
    csv = tmp_path / "osc.csv"
    write_csv(csv, oscillator_rows())
    assert main(["fit", str(csv), "--time", "t", "--out", str(tmp_path / "o")]) == 2
    assert "time column 't' not found" in capsys.readouterr().err
    assert (
        main(["fit", str(csv), "--time", "time", "--holdout", "14", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "keep at least 5" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.csv"), "--time", "time"]) == 2
    assert "does not exist" in capsys.readouterr().err
