"""Data frames in and out: pandas or polars tables of one or many series, as arrays on one grid.

A frame holds one row per observation time: a time column, one column per state ("wide"), and
optionally an id column saying which series (patient, reactor, site) the row belongs to. A
"long" (melted) frame holds one row per observed value instead: id, time, the state's name
(`variable`) and its `value`. Either way, the series are aligned onto the union of their times,
with a mask that is False where a series was not observed (NaN and null cells are missing
values too); the rows may come in any order. Date/time columns become numbers with the unit and
origin the caller states. Only numbers (and booleans) can be states: text and categorical columns
are refused rather than guessed at.

pandas and polars are both optional here: a frame is recognised by the module of its type and
the library is imported only to read it (or, for `to_frame`, to build the one asked for).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .precision import beyond_working_precision, working_dtype, working_max

#: time units for date/time columns: name -> NumPy's unit
TIME_UNITS = {"D": "D", "h": "h", "min": "m", "s": "s", "ms": "ms", "us": "us", "ns": "ns"}
#: the most values (series x union times x states) an aligned grid may hold
MAX_GRID_VALUES = 100_000_000
#: frame layouts
LAYOUTS = ("wide", "long")
#: libraries to_frame can build
LIBRARIES = ("polars", "pandas")


@dataclasses.dataclass(frozen=True)
class Aligned:
    """Series aligned onto the union of their times.

    Attributes:
        ts: the union grid, sorted, `(T,)` float64.
        ys: `(T, D)` without ids, `(B, T, D)` with them; 0 where not observed.
        mask: True where observed, the shape of `ys`; None when everything is observed.
        ids: the id of each series, in order of first appearance (None without ids).
        columns: the state names, in the order of the last axis of `ys`.
    """

    ts: np.ndarray
    ys: np.ndarray
    mask: np.ndarray | None
    ids: tuple | None
    columns: tuple


def library_of(frame: Any) -> str:
    """`"pandas"` or `"polars"`, from the module of the frame's type; anything else is refused.

    Example:
        >>> import polars as pl
        >>> from neuraldiffeq.io.frames import library_of
        >>> library_of(pl.DataFrame({"t": [0.0, 1.0]}))
        'polars'
    """
    root = type(frame).__module__.split(".")[0]
    if root in LIBRARIES and type(frame).__name__ == "DataFrame":
        return root
    raise ValueError(
        f"frame must be a pandas or polars DataFrame, got {type(frame).__module__}."
        f"{type(frame).__name__}. For NumPy arrays use nde.TimeSeries(ts, ys, mask)."
    )


def align_frame(
    frame: Any,
    time: str,
    columns: Sequence[str] | None = None,
    *,
    id: str | None = None,
    variable: str | None = None,
    value: str | None = None,
    time_unit: str | None = None,
    time_origin: Any = None,
    source: str = "the frame",
) -> Aligned:
    """The series of a pandas or polars frame, aligned onto one time grid.

    See `nde.TimeSeries.from_frame`, which wraps this in a `TimeSeries`.

    Example:
        >>> import polars as pl
        >>> from neuraldiffeq.io.frames import align_frame
        >>> df = pl.DataFrame({"id": ["a", "a", "b"], "t": [0.0, 1.0, 0.5], "x": [1.0, 2.0, 3.0]})
        >>> aligned = align_frame(df, "t", id="id")
        >>> aligned.ts.tolist(), aligned.ids, aligned.mask[:, :, 0].tolist()
        ([0.0, 0.5, 1.0], ('a', 'b'), [[True, False, True], [False, True, False]])
    """
    lib = library_of(frame)
    if lib == "pandas" and time not in list(frame.columns) and frame.index.name == time:
        frame = frame.reset_index()  # a time index is a time column
    names = [c for c in frame.columns]
    if lib == "pandas" and len(set(names)) != len(names):
        repeated = sorted({str(c) for c in names if names.count(c) > 1})
        raise ValueError(f"{source} has more than one column named {repeated}; rename them.")
    if (variable is None) != (value is None):
        raise ValueError(
            "a long (melted) frame needs both variable= (the column naming the state) and "
            f"value= (the column holding its value); got variable={variable!r}, value={value!r}."
        )
    for role, col in (("time", time), ("id", id), ("variable", variable), ("value", value)):
        if col is not None and col not in names:
            raise ValueError(
                f"{role} column {col!r} not found in {source}; its columns are "
                f"{[str(c) for c in names]}. Pass {role}=<name of the {role} column>."
            )
    if len(frame) == 0:
        raise ValueError(f"{source} has no rows.")
    ts = time_numbers(_column(frame, lib, time), time, time_unit, time_origin, source)
    if id is None:
        codes, ids = np.zeros(len(ts), np.int64), None
    else:
        codes, ids = _factorize(_column(frame, lib, id), lib, id, source)
    if variable is None:
        roles = {time, id}
        if columns is None:
            columns = [c for c in names if c not in roles]
        _check_columns(columns, names, roles, source)
        values = np.stack([numbers(_column(frame, lib, c), c, source) for c in columns], axis=-1)
        return _align(codes, ids, ts, values, list(columns), time, source)
    var_codes, found = _factorize(_column(frame, lib, variable), lib, variable, source)
    if columns is None:
        columns = list(found)
    missing = [c for c in columns if c not in found]
    if missing:
        raise ValueError(
            f"states {missing} do not appear in the {variable!r} column of {source}; it names "
            f"{list(found)}."
        )
    # keep only the rows of the states asked for, numbered in the order of `columns`
    order = np.array([list(columns).index(v) if v in columns else -1 for v in found])
    var_codes = order[var_codes]
    keep = var_codes >= 0
    vals = numbers(_column(frame, lib, value), value, source)
    wide = np.full((int(keep.sum()), len(columns)), np.nan)
    wide[np.arange(wide.shape[0]), var_codes[keep]] = vals[keep]
    return _align(codes[keep], ids, ts[keep], wide, list(columns), time, source, var_codes[keep])


def align_wide(
    ids: Any, ts: np.ndarray, values: np.ndarray, columns: list, time: str, source: str
) -> Aligned:
    """Rows `(ids[i], ts[i], values[i])` of several series (ids a pandas or polars Series)
    aligned onto the union of their times.

    Example:
        >>> import numpy as np, polars as pl
        >>> from neuraldiffeq.io.frames import align_wide
        >>> ids = pl.Series(["b", "a", "b"])
        >>> out = align_wide(ids, np.array([1.0, 0.0, 0.0]), np.ones((3, 1)), ["x"], "t", "f")
        >>> out.ids, out.mask[..., 0].tolist()
        (('b', 'a'), [[True, True], [True, False]])
    """
    lib = type(ids).__module__.split(".")[0]
    codes, found = _factorize(ids, lib, getattr(ids, "name", "id"), source)
    return _align(codes, found, ts, values, columns, time, source)


def _check_columns(columns, names, roles, source: str) -> None:
    columns = list(columns)
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"columns {missing} not found in {source}; it has {names}.")
    if not columns:
        raise ValueError(
            f"{source} has no state columns besides {sorted(map(str, roles - {None}))}."
        )
    clash = [c for c in columns if c in roles]
    if clash:
        raise ValueError(f"the time or id column {clash[0]!r} cannot also be a state column.")
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns names a column more than once: {columns}.")


def _column(frame, lib: str, name):
    return frame[name] if lib == "pandas" else frame.get_column(name)


def _kind(series) -> str:
    """`number`, `bool`, `datetime`, `duration`, `text`, `category` or `other`."""
    if type(series).__module__.split(".")[0] == "polars":
        import polars as pl

        dtype = series.dtype
        if dtype == pl.Boolean:
            return "bool"
        if dtype.is_numeric():
            return "number"
        if dtype in (pl.Datetime, pl.Date):
            return "datetime"
        if dtype == pl.Duration:
            return "duration"
        if dtype in (pl.String, pl.Categorical, pl.Enum):
            return "text" if dtype == pl.String else "category"
        return "other"
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_complex_dtype(dtype):
        return "other"
    if pd.api.types.is_numeric_dtype(dtype):
        return "number"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if pd.api.types.is_timedelta64_dtype(dtype):
        return "duration"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        return "text"
    return "other"


def _float64(series) -> np.ndarray:
    if type(series).__module__.split(".")[0] == "polars":
        import polars as pl

        return series.cast(pl.Float64).to_numpy().astype(np.float64, copy=True)
    return series.to_numpy(dtype=np.float64, na_value=np.nan).copy()


def numbers(series, name, source: str) -> np.ndarray:
    """A numeric or boolean column as float64 (NaN where null); anything else is refused.

    Example:
        >>> import pandas as pd
        >>> from neuraldiffeq.io.frames import numbers
        >>> numbers(pd.Series([1, None, 3], dtype="Int64"), "x", "the frame").tolist()
        [1.0, nan, 3.0]
    """
    kind = _kind(series)
    if kind not in ("number", "bool"):
        what = {
            "text": "text",
            "category": "categories",
            "datetime": "dates/times (only the time column may)",
            "duration": "durations (only the time column may)",
        }.get(kind, f"values of type {series.dtype}")
        raise ValueError(
            f"column {name!r} of {source} holds {what}, dtype {series.dtype}; states must be "
            "numbers. Leave it out of columns=[...] or encode it as numbers yourself (e.g. one "
            "column per category)."
        )
    values = _float64(series)
    bad = beyond_working_precision(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"column {name!r} of {source}, row {i} (counting from 0), holds {float(values[i])!r}; "
            f"values must be finite and within the working precision {working_dtype()} "
            f"(largest {working_max():.3g}). Use NaN or null for a missing value; rescale the "
            "column or enable float64 (jax_enable_x64) for large ones."
        )
    return values


def time_numbers(series, name, time_unit, time_origin, source: str) -> np.ndarray:
    """The time column as float64: numbers as they are, dates/times as `(t - origin) / unit`.

    Example:
        >>> import polars as pl, datetime as dt
        >>> from neuraldiffeq.io.frames import time_numbers
        >>> days = pl.Series([dt.date(2024, 1, 1), dt.date(2024, 1, 3)])
        >>> time_numbers(days, "day", "D", "2024-01-01", "the frame").tolist()
        [0.0, 2.0]
    """
    kind = _kind(series)
    if kind in ("number", "bool"):
        if time_unit is not None or time_origin is not None:
            raise ValueError(
                f"time_unit= and time_origin= convert a date/time column to numbers, but the "
                f"time column {name!r} of {source} already holds numbers; leave them out."
            )
        ts = _float64(series)
    elif kind in ("datetime", "duration"):
        unit = _unit(time_unit, name, kind, source)
        stamps = _datetime64(series, kind)
        if kind == "datetime":
            if time_origin is None:
                raise ValueError(
                    f"the time column {name!r} of {source} holds dates/times; say where time 0 "
                    "is with time_origin= (e.g. '2024-01-01', or the first date) and the unit "
                    f"with time_unit= (one of {list(TIME_UNITS)})."
                )
            stamps = stamps - as_datetime64(time_origin)
        elif time_origin is not None:
            raise ValueError(
                f"the time column {name!r} of {source} holds durations, which need no "
                "time_origin=; leave it out."
            )
        ts = np.where(
            np.isnat(stamps), np.nan, stamps.astype("timedelta64[ns]").astype(np.int64) / 1.0
        )
        ts = ts / np.timedelta64(1, unit).astype("timedelta64[ns]").astype(np.int64)
    else:
        raise ValueError(
            f"the time column {name!r} of {source} holds {series.dtype}; times must be numbers, "
            "dates/times (with time_unit= and time_origin=) or durations (with time_unit=)."
        )
    missing = np.isnan(ts)
    if missing.any():
        raise ValueError(
            f"the time column {name!r} of {source} has a missing value (row "
            f"{int(np.argmax(missing))}, counting from 0); every row needs a time."
        )
    if np.isinf(ts).any():
        raise ValueError(f"the time column {name!r} of {source} holds infinite times.")
    return ts


def _unit(time_unit, name, kind: str, source: str) -> str:
    if time_unit not in TIME_UNITS:
        raise ValueError(
            f"the time column {name!r} of {source} holds {kind}s; time_unit= must say what one "
            f"time unit is, one of {list(TIME_UNITS)}, got {time_unit!r}."
        )
    return TIME_UNITS[time_unit]


def _datetime64(series, kind: str) -> np.ndarray:
    """Dates/times as naive UTC datetime64[ns] (durations as timedelta64[ns]), NaT where null."""
    if type(series).__module__.split(".")[0] == "polars":
        import polars as pl

        if kind == "datetime":
            if series.dtype == pl.Date:
                series = series.cast(pl.Datetime("us"))
            elif series.dtype.time_zone is not None:
                series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            return series.to_numpy().astype("datetime64[ns]")
        return series.to_numpy().astype("timedelta64[ns]")
    if kind == "datetime":
        if getattr(series.dtype, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.to_numpy().astype("datetime64[ns]")
    return series.to_numpy().astype("timedelta64[ns]")


def as_datetime64(origin: Any) -> np.datetime64:
    """A time origin (ISO string, date, datetime, NumPy or pandas time) as naive UTC ns."""
    if isinstance(origin, datetime.datetime) and origin.tzinfo is not None:
        origin = origin.astimezone(datetime.UTC).replace(tzinfo=None)
    try:
        stamp = np.datetime64(origin, "ns")
    except (TypeError, ValueError):
        raise ValueError(
            f"time_origin must be a date/time (e.g. '2024-01-01' or datetime.datetime(2024, 1, "
            f"1)), got {origin!r}."
        ) from None
    if np.isnat(stamp):
        raise ValueError(f"time_origin must be a date/time, got {origin!r}.")
    return stamp


def _factorize(series, lib: str, name, source: str) -> tuple[np.ndarray, tuple]:
    """Codes 0..K-1 of a column's values, in order of first appearance, and those values."""
    if lib == "polars":
        import polars as pl

        if series.null_count():
            row = int(series.is_null().arg_max())
            raise ValueError(
                f"the {name!r} column of {source} has a missing value (row {row}, counting from "
                "0); every row needs one."
            )
        found = series.unique(maintain_order=True)
        codes = series.replace_strict(found, pl.int_range(found.len(), eager=True))
        return codes.to_numpy().astype(np.int64), tuple(found.to_list())
    import pandas as pd

    codes, found = pd.factorize(series, sort=False)
    if (codes < 0).any():
        row = int(np.argmax(codes < 0))
        raise ValueError(
            f"the {name!r} column of {source} has a missing value (row {row}, counting from 0); "
            "every row needs one."
        )
    return codes.astype(np.int64), tuple(_plain(v) for v in found.tolist())


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _align(codes, ids, ts, values, columns, time, source, var_codes=None) -> Aligned:
    """Put row i's values at (series codes[i], time ts[i]) of the union grid; refuse repeats."""
    n_series = 1 if ids is None else len(ids)
    grid = np.unique(ts)
    n_times, dim = grid.shape[0], values.shape[1]
    if n_series * n_times * dim > MAX_GRID_VALUES:
        raise ValueError(
            f"aligning the {n_series} series of {source} onto the union of their times gives "
            f"{n_series} x {n_times} x {dim} values, more than {MAX_GRID_VALUES:,}. Round the "
            f"times of {time!r} (e.g. to whole days) so that series share time points, or load "
            "the series in groups."
        )
    t_idx = np.searchsorted(grid, ts)
    key = codes * n_times + t_idx
    if var_codes is not None:
        key = key * dim + var_codes
    order = np.argsort(key, kind="stable")
    repeated = np.flatnonzero(key[order][1:] == key[order][:-1])
    if repeated.size:
        a, b = order[repeated[0]], order[repeated[0] + 1]
        who = "" if ids is None else f" for id {ids[codes[a]]!r}"
        what = "" if var_codes is None else f" of {columns[var_codes[a]]!r}"
        hint = (
            " If it holds several series, pass id=<the column naming the series>."
            if ids is None
            else ""
        )
        raise ValueError(
            f"{source} has two rows{who} at time {time!r} = {ts[a]:g}{what} (rows {min(a, b)} "
            f"and {max(a, b)}, counting from 0); each series needs distinct times.{hint}"
        )
    ys = np.full((n_series, n_times, dim), np.nan)
    if var_codes is None:
        ys[codes, t_idx] = values
    else:
        ys[codes, t_idx, var_codes] = values[np.arange(len(var_codes)), var_codes]
    mask = ~np.isnan(ys)
    empty = [c for c, seen in zip(columns, mask.any(axis=(0, 1)), strict=True) if not seen]
    if empty:
        raise ValueError(f"columns {empty} of {source} have no values at all; drop them.")
    ys = np.where(mask, ys, 0.0)
    if ids is None:
        ys, mask = ys[0], mask[0]
    return Aligned(grid, ys, None if mask.all() else mask, ids, tuple(columns))


def to_frame(
    ts: Any,
    ys: Any,
    mask: Any = None,
    *,
    ids: Sequence[Hashable] | None = None,
    columns: Sequence[str] | None = None,
    time: str = "t",
    id: str = "id",
    layout: str = "wide",
    library: str = "polars",
    time_unit: str | None = None,
    time_origin: Any = None,
) -> Any:
    """Series on one grid as a pandas or polars frame (see `nde.TimeSeries.to_frame`).

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.io.frames import to_frame
        >>> to_frame(np.array([0.0, 1.0]), np.ones((2, 2, 1)), ids=["a", "b"]).shape
        (4, 3)
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}.")
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {list(LIBRARIES)}, got {library!r}.")
    ts = np.asarray(ts, np.float64)
    ys = np.asarray(ys, np.float64)
    batched = ys.ndim == 3
    ys3 = ys if batched else ys[None]
    n_series, n_times, dim = ys3.shape
    mask3 = np.ones(ys3.shape, bool) if mask is None else np.asarray(mask, bool).reshape(ys3.shape)
    if columns is None:
        columns = [f"y{d}" for d in range(dim)]
    if len(columns) != dim:
        raise ValueError(f"columns names {len(columns)} states, the series have {dim}.")
    if ids is None and batched:
        ids = list(range(n_series))
    if ids is not None and len(ids) != n_series:
        raise ValueError(f"ids has {len(ids)} entries for {n_series} series; give one per series.")
    if id in (time, *columns) or time in columns:
        raise ValueError(
            f"the id {id!r}, time {time!r} and state names {list(columns)} must all differ."
        )
    times = _times_out(ts, time_unit, time_origin)
    series_of = np.repeat(np.arange(n_series), n_times)
    time_of = np.tile(np.arange(n_times), n_series)
    flat = np.where(mask3, ys3, np.nan).reshape(-1, dim)
    observed = mask3.reshape(-1, dim)
    data: dict[str, Any] = {}
    if layout == "wide":
        keep = observed.any(axis=1)
        if ids is not None:
            data[id] = np.asarray(ids, dtype=object)[series_of[keep]]
        data[time] = times[time_of[keep]]
        for d, name in enumerate(columns):
            data[name] = flat[keep, d]
    else:
        rows, cols = np.nonzero(observed)
        if ids is not None:
            data[id] = np.asarray(ids, dtype=object)[series_of[rows]]
        data[time] = times[time_of[rows]]
        data["variable"] = np.asarray(columns, dtype=object)[cols]
        data["value"] = flat[rows, cols]
    if library == "pandas":
        import pandas as pd

        return pd.DataFrame({k: (list(v) if v.dtype == object else v) for k, v in data.items()})
    import polars as pl

    return pl.DataFrame({k: (list(v) if v.dtype == object else v) for k, v in data.items()})


def _times_out(ts: np.ndarray, time_unit, time_origin) -> np.ndarray:
    if time_unit is None:
        if time_origin is not None:
            raise ValueError("time_origin= needs time_unit= (what one time unit is).")
        return ts
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {list(TIME_UNITS)}, got {time_unit!r}.")
    step = np.timedelta64(1, TIME_UNITS[time_unit]).astype("timedelta64[ns]").astype(np.int64)
    offsets = np.round(ts * step).astype(np.int64).astype("timedelta64[ns]")
    return offsets if time_origin is None else as_datetime64(time_origin) + offsets


def class_labels(
    frame: Any, column: str, *, id: str, ids: Sequence[Hashable]
) -> tuple[np.ndarray, tuple]:
    """One class label per series from a column of the frame, as integers 0..K-1.

    Each series (rows with the same `id`) must carry one label throughout. The classes are the
    distinct labels in sorted order; label `k` of the result is `classes[k]`.

    Example:
        >>> import polars as pl
        >>> from neuraldiffeq.io.frames import class_labels
        >>> df = pl.DataFrame({"id": [1, 1, 2], "outcome": ["ill", "ill", "well"]})
        >>> labels, classes = class_labels(df, "outcome", id="id", ids=(2, 1))
        >>> labels.tolist(), classes
        ([1, 0], ('ill', 'well'))
    """
    lib = library_of(frame)
    for role, col in (("label", column), ("id", id)):
        if col not in list(frame.columns):
            raise ValueError(
                f"{role} column {col!r} not found in the frame; its columns are "
                f"{[str(c) for c in frame.columns]}."
            )
    codes, found = _factorize(_column(frame, lib, id), lib, id, "the frame")
    label_codes, values = _factorize(_column(frame, lib, column), lib, column, "the frame")
    per_series: dict[int, set] = {}
    for c, v in zip(codes.tolist(), label_codes.tolist(), strict=True):
        per_series.setdefault(c, set()).add(v)
    mixed = [found[c] for c, v in per_series.items() if len(v) > 1]
    if mixed:
        raise ValueError(
            f"series {mixed[:5]} carry more than one label in column {column!r}; a class label "
            "belongs to a whole series."
        )
    position = {v: i for i, v in enumerate(found)}
    absent = [i for i in ids if i not in position]
    if absent:
        raise ValueError(f"ids {absent[:5]} have no rows in the frame's {id!r} column.")
    classes = tuple(sorted(values))
    rank = {v: classes.index(v) for v in values}
    label_of = {found[c]: rank[values[next(iter(v))]] for c, v in per_series.items()}
    return np.array([label_of[i] for i in ids], np.int32), classes
