import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

import neuraldiffeq as nde


def test_spiral_matches_independent_reference():
    data = nde.datasets.spiral()
    assert data.ts.shape == (30,) and data.ys.shape == (30, 2)
    np.testing.assert_allclose(np.asarray(data.ts)[[0, -1]], [0.0, 1.5])
    a = np.array([[-0.1, 2.0], [-2.0, -0.1]])
    ref = solve_ivp(
        lambda t, u: (u**3) @ a,
        (0, 1.5),
        [2.0, 0.0],
        t_eval=np.asarray(data.ts),
        rtol=1e-11,
        atol=1e-12,
        method="DOP853",
    )
    np.testing.assert_allclose(np.asarray(data.ys), ref.y.T, rtol=1e-5, atol=1e-6)


def test_lotka_volterra_matches_independent_reference():
    data = nde.datasets.lotka_volterra(n_points=40, t1=5.0)
    al, be, de, ga = 1.5, 1.0, 3.0, 1.0
    ref = solve_ivp(
        lambda t, u: [al * u[0] - be * u[0] * u[1], de * u[0] * u[1] - ga * u[1]],
        (0, 5.0),
        [1.0, 1.0],
        t_eval=np.asarray(data.ts),
        rtol=1e-11,
        atol=1e-12,
        method="DOP853",
    )
    np.testing.assert_allclose(np.asarray(data.ys), ref.y.T, rtol=1e-5, atol=1e-6)


def test_lynx_hare_bundled():
    data = nde.datasets.lynx_hare()
    assert data.ys.shape == (21, 2)
    np.testing.assert_allclose(np.asarray(data.ts)[[0, -1]], [1900, 1920])
    np.testing.assert_allclose(data.ys[0], [4.0, 30.0])


@pytest.mark.parametrize(
    "ts, ys, match",
    [
        ([0.0, 2.0, 1.0], np.zeros((3, 2)), "ts must be strictly increasing"),
        ([0.0, 1.0, 1.0], np.zeros((3, 2)), "ts must be strictly increasing"),
        ([0.0, np.nan, 1.0], np.zeros((3, 2)), "ts contains NaN"),
        ([0.0], np.zeros((1, 2)), "at least 2 time points"),
        ([[0.0, 1.0]], np.zeros((2, 2)), "ts must be one-dimensional"),
        ([0.0, 1.0, 2.0], np.zeros((4, 2)), "ys has 4 time points"),
        ([0.0, 1.0, 2.0], np.zeros(3), r"ys must have shape \(T, D\)"),
        ([0.0, 1.0, 2.0], [[0.0], [np.nan], [1.0]], "ys contains NaN"),
        ([0.0, 1.0], "abc", "ys must be an array of real numbers"),
    ],
)
def test_timeseries_rejects_bad_input(ts, ys, match):
    with pytest.raises(ValueError, match=match):
        nde.TimeSeries(ts, ys)


def test_times_distinct_only_in_float64_are_rejected():
    with pytest.raises(ValueError, match="float32 precision"):
        nde.TimeSeries([1e6, 1e6 + 0.01], np.zeros((2, 1)))


def test_timeseries_mask_allows_missing_values():
    ys = np.array([[1.0], [np.nan], [3.0]])
    data = nde.TimeSeries([0.0, 1.0, 2.0], ys, mask=~np.isnan(ys))
    assert np.all(np.isfinite(np.asarray(data.ys)))
    assert data.mask.tolist() == [[True], [False], [True]]
    with pytest.raises(ValueError, match="mask must have the shape"):
        nde.TimeSeries([0.0, 1.0, 2.0], ys, mask=np.ones(3, bool))


def test_batched_timeseries():
    data = nde.TimeSeries(np.arange(4.0), np.zeros((3, 4, 2)))
    assert data.batched and data.n_trajectories == 3 and data.dim == 2
    assert nde.TimeSeries(np.arange(4.0), np.zeros((4, 2))).as_batch().ys.shape == (1, 4, 2)


def test_from_csv_roundtrip_and_missing_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("# comment line\ntime,a,b,label\n0,1.0,2.0,x\n0.5,,3.0,y\n1.0,2.0,4.0,z\n")
    data = nde.TimeSeries.from_csv(path, time="time", columns=["a", "b"])
    np.testing.assert_allclose(data.ts, [0, 0.5, 1.0])
    assert data.mask[1].tolist() == [False, True]
    np.testing.assert_allclose(data.ys[2], [2.0, 4.0])


@pytest.mark.parametrize(
    "text, kwargs, match",
    [
        ("t,a\n0,1\n1,x\n", {}, "column 'a' .* is not numeric: row 3 holds 'x'"),
        ("t,a\n0,1\n0,2\n", {}, "strictly increasing"),
        ("t,a\n0,1\n1,2\n", {"time": "time"}, "time column 'time' not found"),
        ("t,a\n0,1\n1,2\n", {"columns": ["b"]}, r"columns \['b'\] not found"),
        ("t,a\n", {}, "header row and at least one data row"),
    ],
)
def test_from_csv_rejects_bad_files(tmp_path, text, kwargs, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        nde.TimeSeries.from_csv(path, **kwargs)


def test_from_csv_unreadable(tmp_path):
    with pytest.raises(ValueError, match="cannot read CSV file"):
        nde.TimeSeries.from_csv(tmp_path / "missing.csv")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(ValueError, match="cannot read CSV file|header row"):
        nde.TimeSeries.from_csv(binary)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=12),
    st.integers(1, 3),
)
def test_timeseries_accepts_exactly_the_strictly_increasing_grids(times, dim):
    ys = np.zeros((len(times), dim))
    if np.all(np.diff(np.asarray(times, dtype=np.float32)) > 0):
        data = nde.TimeSeries(times, ys)
        assert data.ts.shape == (len(times),) and data.dim == dim
    else:
        with pytest.raises(ValueError, match="ts must be strictly increasing"):
            nde.TimeSeries(times, ys)


# --- no silent NaN at the boundary (issue 10, item 3) -------------------------------------------


def test_values_that_overflow_float32_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match=r"ys\[1, 0\] = 1e\+40 overflows float32"):
        nde.TimeSeries([0.0, 1.0, 2.0], [[1.0], [1e40], [2.0]])
    with pytest.raises(ValueError, match=r"ts\[2\] = 1e\+39 overflows float32"):
        nde.TimeSeries([0.0, 1.0, 1e39], [[1.0], [2.0], [3.0]])
    # masked-out entries may hold anything, overflow included
    data = nde.TimeSeries([0.0, 1.0, 2.0], [[1.0], [1e40], [2.0]], [[True], [False], [True]])
    assert np.all(np.isfinite(np.asarray(data.ys)))
    # just inside float32 is accepted and stays finite
    big = nde.TimeSeries([0.0, 1.0], [[3e38], [-3e38]])
    assert np.all(np.isfinite(np.asarray(big.ys)))


def test_complex_input_is_an_error_not_a_warning():
    with pytest.raises(ValueError, match="ys holds complex numbers"):
        nde.TimeSeries([0.0, 1.0], np.ones((2, 1)) * (1 + 2j))
    with pytest.raises(ValueError, match="ts holds complex numbers"):
        nde.TimeSeries(np.array([0, 1j]), np.ones((2, 1)))
    with pytest.raises(ValueError, match="ys holds complex numbers"):
        nde.TimeSeries([0.0, 1.0], [[1.0], [2 + 0j]])


def test_from_csv_reads_excel_bom_and_semicolons(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("t,x\n0,1\n1,2\n".encode("utf-8-sig"))
    assert nde.TimeSeries.from_csv(bom, time="t").ys.ravel().tolist() == [1.0, 2.0]
    semi = tmp_path / "semi.csv"
    semi.write_text("\ufefft;x;y\n0;1,5;2\n1;2,5;\n2;3;4\n", encoding="utf-8")
    data = nde.TimeSeries.from_csv(semi, time="t")
    assert np.asarray(data.ys)[:, 0].tolist() == [1.5, 2.5, 3.0]  # decimal commas
    assert np.asarray(data.mask)[:, 1].tolist() == [True, False, True]
    tab = tmp_path / "tab.csv"
    tab.write_text("t\tx\n0\t1\n1\t2\n")
    assert nde.TimeSeries.from_csv(tab, time="t").dim == 1


@pytest.mark.parametrize(
    "text, match",
    [
        ("t,x\n0,1\n1,1e40\n", r"column 'x' of .*row 3, holds '1e40', beyond the working"),
        ("t,x\n0,1\n1,inf\n", r"row 3, holds 'inf'; values must be finite"),
        ("t,x,x\n0,1,2\n1,2,3\n", "more than one column named"),
        ("t,x\n0,1\n1,2,5\n", "row 3 .* has 3 cells but the header has 2"),
        ("t,x,y\n0,1,\n1,2,\n", r"columns \['y'\] .* have no values at all"),
        ("t,x\n0,1\n,2\n", r"time column 't' .* has an empty cell \(row 3\)"),
    ],
)
def test_from_csv_names_the_bad_cell(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        nde.TimeSeries.from_csv(path, time="t")
