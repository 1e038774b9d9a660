"""Data frames in and out (issue 30): pandas and polars, wide and long, several series by id with
their own irregular times and gaps, datetimes, refusals; CSV.gz, Parquet and `fit --id`."""

import datetime
import gzip
import json

import equinox as eqx
import jax
import numpy as np
import optax
import pandas as pd
import polars as pl
import pytest

import neuraldiffeq as nde
from neuraldiffeq.cli import main
from neuraldiffeq.io import frames

# three series with their own irregular times; NaN = a value not recorded
ROWS = {
    "site": ["a", "a", "a", "a", "b", "b", "b", "c", "c", "c", "c"],
    "t": [0.0, 0.5, 1.5, 2.0, 0.0, 1.0, 2.0, 0.0, 0.25, 1.5, 2.0],
    "x": [1.0, 0.9, 0.6, 0.5, 2.0, 1.5, 1.1, -1.0, -0.9, np.nan, -0.5],
    "y": [0.0, 0.2, np.nan, 0.5, 1.0, 0.8, 0.6, 0.3, 0.35, 0.5, 0.55],
}
UNION = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]


def as_polars(frame):
    """A pandas frame as a polars one, column by column: `pl.from_pandas` needs pyarrow for
    pandas 3's text columns, which neither library requires. NaN becomes null, as there."""
    columns = {str(c): frame[c].tolist() for c in frame.columns}
    return pl.DataFrame(columns, nan_to_null=True)


def as_pandas(frame):
    """A polars frame as a pandas one (`to_pandas` needs pyarrow); null becomes NaN."""
    return pd.DataFrame(frame.fill_null(np.nan).to_dict(as_series=False))


def wide(library):
    frame = pd.DataFrame(ROWS).sample(frac=1.0, random_state=1)  # rows in any order
    return frame if library == "pandas" else as_polars(frame)


def long(library):
    melted = pd.DataFrame(ROWS).melt(id_vars=["site", "t"], var_name="name", value_name="val")
    melted = melted.dropna()  # a long table lists only what was observed
    return melted if library == "pandas" else as_polars(melted)


def read(library, layout):
    if layout == "wide":
        return nde.TimeSeries.from_frame(wide(library), time="t", id="site")
    return nde.TimeSeries.from_frame(
        long(library), time="t", columns=["x", "y"], id="site", variable="name", value="val"
    )


def rows_of(frame):
    """A frame's rows as sorted tuples, NaN as None, values rounded to float32's precision."""
    if isinstance(frame, pl.DataFrame):
        frame = as_pandas(frame)
    out = []
    for row in frame.itertuples(index=False):
        out.append(
            tuple(None if _is_nan(v) else (round(v, 5) if isinstance(v, float) else v) for v in row)
        )
    return sorted(out, key=repr)


def _is_nan(v):
    return isinstance(v, float) and np.isnan(v)


@pytest.mark.parametrize("library", ["pandas", "polars"])
@pytest.mark.parametrize("layout", ["wide", "long"])
def test_round_trip_frame_series_fit_frame(library, layout):
    data = read(library, layout)
    assert data.ids == ("a", "b", "c") and data.columns == ("x", "y")
    np.testing.assert_array_equal(np.asarray(data.ts), UNION)
    assert data.ys.shape == (3, 6, 2)
    mask = np.asarray(data.mask)
    # site b was never seen at 0.25, 0.5 or 1.5; site a has no y at 1.5; c no x at 1.5
    assert mask[1, :, 0].tolist() == [True, False, False, True, False, True]
    assert mask[0, 4].tolist() == [True, False] and mask[2, 4].tolist() == [False, True]
    assert int(mask.sum()) == int(np.isfinite(np.array([ROWS["x"], ROWS["y"]])).sum())
    # back out: exactly the rows that went in (wide), the observed values (long)
    back = data.to_frame(time="t", id="site", layout=layout, library=library)
    assert type(back).__module__.split(".")[0] == library
    if layout == "wide":
        assert rows_of(back) == rows_of(pd.DataFrame(ROWS))
    else:
        names = {"variable": "name", "value": "val"}
        renamed = back.rename(columns=names) if library == "pandas" else back.rename(names)
        assert rows_of(renamed) == rows_of(long("pandas")[["site", "t", "name", "val"]])
    # a fit reads the ragged series through the mask, and its predictions go out per id
    mlp = eqx.nn.MLP(2, 2, 4, 1, activation=jax.nn.tanh, key=jax.random.key(0))
    model = nde.NeuralODE(nde.autonomous(mlp))
    result = nde.fit(
        model, data, nde.Trajectory(), optimizer=optax.adam(1e-2), steps=3, progress=False
    )
    assert np.all(np.isfinite(np.asarray(result.losses)))
    preds = jax.vmap(lambda y0: result.model(data.ts, y0))(data.ys[:, 0])
    out = nde.TimeSeries(data.ts, preds, ids=data.ids, columns=data.columns).to_frame(
        time="t", id="site", library=library
    )
    out = out if library == "pandas" else as_pandas(out)
    assert list(out.columns) == ["site", "t", "x", "y"] and len(out) == 3 * 6
    b = out[out["site"] == "b"]
    np.testing.assert_allclose(b["x"], np.asarray(preds)[1, :, 0], rtol=1e-6)


def test_single_series_and_a_time_index():
    frame = pd.DataFrame({"x": [3.0, 1.0, 2.0]}, index=pd.Index([2.0, 0.0, 1.0], name="t"))
    data = nde.TimeSeries.from_frame(frame, time="t")
    assert data.ys.shape == (3, 1) and data.mask is None and data.ids is None
    assert np.asarray(data.ys).ravel().tolist() == [1.0, 2.0, 3.0]  # sorted by time
    assert data.to_frame().columns == ["t", "x"]


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_datetimes_with_unit_and_origin(library):
    stamps = [datetime.datetime(2024, 3, 1) + datetime.timedelta(hours=h) for h in (0, 6, 30)]
    frame = pd.DataFrame({"when": stamps, "x": [1.0, 2.0, 3.0]})
    frame = frame if library == "pandas" else as_polars(frame)
    data = nde.TimeSeries.from_frame(frame, time="when", time_unit="h", time_origin="2024-03-01")
    assert np.asarray(data.ts).tolist() == [0.0, 6.0, 30.0]
    days = nde.TimeSeries.from_frame(
        frame, time="when", time_unit="D", time_origin=datetime.date(2024, 2, 29)
    )
    np.testing.assert_allclose(np.asarray(days.ts), [1.0, 1.25, 2.25])
    back = data.to_frame(time="when", time_unit="h", time_origin="2024-03-01", library="pandas")
    assert list(back["when"]) == [pd.Timestamp(s) for s in stamps]
    with pytest.raises(ValueError, match="holds dates/times; say where time 0 is with time_orig"):
        nde.TimeSeries.from_frame(frame, time="when", time_unit="h")
    with pytest.raises(ValueError, match=r"time_unit= must say what one time unit is"):
        nde.TimeSeries.from_frame(frame, time="when", time_origin="2024-03-01")
    with pytest.raises(ValueError, match="already holds numbers"):
        nde.TimeSeries.from_frame(frame, time="x", columns=[], time_unit="h")


def test_time_zones_and_dates():
    utc = pd.DataFrame(
        {
            "t": pd.to_datetime(["2024-01-01 01:00", "2024-01-01 03:00"]).tz_localize(
                "Europe/Paris"
            ),
            "x": [1.0, 2.0],
        }
    )
    origin = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    data = nde.TimeSeries.from_frame(utc, time_unit="h", time_origin=origin)
    assert np.asarray(data.ts).tolist() == [0.0, 2.0]  # 01:00 in Paris is 00:00 UTC
    dates = pl.DataFrame({"t": [datetime.date(2024, 1, 1), datetime.date(2024, 1, 8)], "x": [1, 2]})
    assert np.asarray(
        nde.TimeSeries.from_frame(dates, time_unit="D", time_origin="2024-01-01").ts
    ).tolist() == [0.0, 7.0]


@pytest.mark.parametrize(
    "frame, match",
    [
        (pd.DataFrame({"t": [0.0, 1.0], "s": ["m", "f"]}), r"column 's' of the frame holds text"),
        (
            pd.DataFrame({"t": [0.0, 1.0], "s": pd.Categorical(["m", "f"])}),
            "column 's' of the frame holds categories",
        ),
        (pl.DataFrame({"t": [0.0, 1.0], "s": ["m", "f"]}), "column 's' of the frame holds text"),
        (
            pl.DataFrame(
                {"t": [0.0, 1.0], "s": ["m", "f"]}, schema_overrides={"s": pl.Categorical}
            ),
            "holds categories",
        ),
        (
            pd.DataFrame({"t": [0.0, 1.0], "x": [1.0, np.inf]}),
            r"row 1 \(counting from 0\), holds inf",
        ),
        (pd.DataFrame({"t": [0.0, 0.0], "x": [1.0, 2.0]}), "two rows at time 't' = 0 .* pass id="),
        (pd.DataFrame({"t": [0.0, np.nan], "x": [1.0, 2.0]}), "time column 't' .* missing value"),
        (pd.DataFrame({"t": [0.0, 1.0], "x": [np.nan, np.nan]}), r"columns \['x'\] .* no values"),
        (pd.DataFrame({"u": [0.0, 1.0], "x": [1.0, 2.0]}), "time column 't' not found"),
    ],
)
def test_bad_frames_are_refused_with_a_clear_message(frame, match):
    with pytest.raises(ValueError, match=match):
        nde.TimeSeries.from_frame(frame)


def test_more_refusals():
    frame = pd.DataFrame({"id": ["a", "a", None], "t": [0.0, 1.0, 0.0], "x": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="'id' column of the frame has a missing value"):
        nde.TimeSeries.from_frame(frame, id="id")
    frame = pd.DataFrame({"id": ["a", "a", "a"], "t": [0.0, 1.0, 1.0], "x": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="two rows for id 'a' at time 't' = 1"):
        nde.TimeSeries.from_frame(frame, id="id")
    with pytest.raises(ValueError, match="pandas or polars DataFrame"):
        nde.TimeSeries.from_frame({"t": [0.0, 1.0], "x": [1.0, 2.0]})
    with pytest.raises(ValueError, match="needs both variable="):
        nde.TimeSeries.from_frame(frame, id="id", variable="x")
    with pytest.raises(ValueError, match="ids has 2 entries for 3 series"):
        frames.to_frame([0.0, 1.0], np.zeros((3, 2, 1)), ids=["a", "b"])
    with pytest.raises(ValueError, match="ids must be distinct"):
        nde.TimeSeries([0.0, 1.0], np.zeros((2, 2, 1)), ids=["a", "a"])


def test_the_union_grid_has_a_size_limit(monkeypatch):
    monkeypatch.setattr(frames, "MAX_GRID_VALUES", 50)
    rng = np.random.default_rng(0)
    frame = pl.DataFrame(
        {"id": np.repeat(np.arange(5), 4), "t": rng.random(20), "x": rng.random(20)}
    )
    with pytest.raises(ValueError, match="Round the times"):
        nde.TimeSeries.from_frame(frame, id="id")


def test_class_labels_feed_classification():
    frame = pd.DataFrame(ROWS)
    frame["outcome"] = frame["site"].map({"a": "up", "b": "down", "c": "up"})
    data = nde.TimeSeries.from_frame(frame, columns=["x", "y"], id="site")
    labels, classes = data.class_labels(frame, "outcome", id="site")
    assert labels.tolist() == [1, 0, 1] and classes == ("down", "up")
    cde = nde.NeuralCDE(2, 4, 2, width_size=8, depth=1, key=jax.random.key(0))
    result = nde.fit(
        cde,
        (data, labels),
        nde.Classification(),
        optimizer=optax.adam(1e-2),
        steps=2,
        progress=False,
    )
    assert np.all(np.isfinite(np.asarray(result.losses)))
    frame.loc[0, "outcome"] = "down"
    with pytest.raises(ValueError, match=r"series \['a'\] carry more than one label"):
        data.class_labels(frame, "outcome", id="site")
    with pytest.raises(ValueError, match="these series have no ids"):
        nde.TimeSeries([0.0, 1.0], np.zeros((2, 1))).class_labels(frame, "outcome", id="site")


def test_csv_gz_and_parquet_read_like_the_csv(tmp_path):
    frame = pd.DataFrame(ROWS)
    text = frame.to_csv(index=False)
    (tmp_path / "d.csv").write_text(text)
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(text.encode()))
    as_polars(frame).write_parquet(tmp_path / "d.parquet")
    read = [
        nde.TimeSeries.from_csv(tmp_path / name, time="t", id="site")
        for name in ("d.csv", "d.csv.gz", "d.parquet")
    ]
    direct = nde.TimeSeries.from_frame(frame, id="site")
    for data in read:
        assert data.ids == direct.ids and data.columns == direct.columns
        np.testing.assert_array_equal(np.asarray(data.ys), np.asarray(direct.ys))
        np.testing.assert_array_equal(np.asarray(data.mask), np.asarray(direct.mask))
    (tmp_path / "bad.csv.gz").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(ValueError, match="cannot read CSV file .* broken gzip data"):
        nde.TimeSeries.from_csv(tmp_path / "bad.csv.gz")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nothing")
    with pytest.raises(ValueError, match="cannot read Parquet file"):
        nde.TimeSeries.from_csv(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"id column 'site' of .* has an empty cell \(row 3\)"):
        (tmp_path / "e.csv").write_text("site,t,x\na,0,1\n,1,2\n")
        nde.TimeSeries.from_csv(tmp_path / "e.csv", time="t", id="site")


def test_csv_dates_as_times(tmp_path):
    path = tmp_path / "dated.csv"
    path.write_text("day;x\n2024-03-01;1,5\n2024-03-03;2,5\n2024-03-04;3\n")
    data = nde.TimeSeries.from_csv(path, time="day", time_unit="D", time_origin="2024-03-01")
    assert np.asarray(data.ts).tolist() == [0.0, 2.0, 3.0]
    assert np.asarray(data.ys).ravel().tolist() == [1.5, 2.5, 3.0]  # decimal commas still
    path.write_text("day,x\n2024-03-01,1\nsoon,2\n")
    with pytest.raises(ValueError, match="row 3, holds 'soon', which is not a date/time"):
        nde.TimeSeries.from_csv(path, time="day", time_unit="D", time_origin="2024-03-01")


def test_fit_id_fits_every_series_and_writes_predictions(tmp_path, capsys):
    path = tmp_path / "sites.csv"
    pd.DataFrame(ROWS).sample(frac=1.0, random_state=2).to_csv(path, index=False)
    out = tmp_path / "out"
    argv = ["fit", str(path), "--time", "t", "--id", "site", "--out", str(out), "--no-progress"]
    argv += ["--strategy", "trajectory", "--steps", "2", "--lbfgs-steps", "0", "--hidden", "4"]
    assert main([*argv, "--depth", "1"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["train_mse"])
    predictions = pl.read_csv(out / "predictions.csv")
    assert predictions.columns == ["site", "t", "x", "y"]
    # one row per site and time it was seen
    assert predictions.height == len(ROWS["t"])
    assert sorted(predictions["site"].unique().to_list()) == ["a", "b", "c"]
    assert main([*argv[:4], "--id", "nope", *argv[6:], "--depth", "1"]) == 2
    assert "id column 'nope' not found" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["shooting", "collocation"])
def test_batched_strategies_read_ragged_series(strategy):
    data = nde.TimeSeries.from_frame(pd.DataFrame(ROWS), id="site")
    mlp = eqx.nn.MLP(2, 2, 4, 1, activation=jax.nn.tanh, key=jax.random.key(0))
    chosen = nde.MultipleShooting(group_size=3) if strategy == "shooting" else nde.Collocation()
    result = nde.fit(
        nde.NeuralODE(nde.autonomous(mlp)),
        data,
        chosen,
        optimizer=optax.adam(1e-2),
        steps=2,
        progress=False,
    )
    assert np.all(np.isfinite(np.asarray(result.losses)))


def test_csv_strips_what_python_strips():
    from neuraldiffeq.io.csv import _WHITESPACE

    assert _WHITESPACE == "".join(c for c in map(chr, range(0x110000)) if c.isspace())
