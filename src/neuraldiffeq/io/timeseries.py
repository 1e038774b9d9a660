"""Observed time series: the one data container every strategy and model reads."""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

import equinox as eqx
import numpy as np
from jax import Array

from .._checks import as_array
from . import csv as csv_files
from . import frames
from .precision import to_working_precision as _to_working_precision
from .precision import working_dtype

__all__ = ["TimeSeries", "working_dtype"]


class TimeSeries(eqx.Module):
    """Observations `ys` of a system at strictly increasing times `ts`.

    `ys` has shape `(T, D)` for one trajectory or `(B, T, D)` for `B` trajectories sampled on the
    same grid. Missing observations are allowed only through an explicit boolean `mask` of the same
    shape as `ys` (True = observed); masked-out entries of `ys` may hold anything, NaN included.

    Optionally the series carry names: `ids`, one per trajectory of a batch (the patient,
    reactor or site each came from), and `columns`, one per state. `from_frame` and `from_csv`
    set them, `to_frame` writes them back; nothing numerical reads them.

    Example:
        >>> import numpy as np, neuraldiffeq as nde
        >>> data = nde.TimeSeries(np.linspace(0, 1, 5), np.ones((5, 2)))
        >>> data.ys.shape, data.n_trajectories, data.dim
        ((5, 2), 1, 2)
    """

    ts: Array
    ys: Array
    mask: Array | None = None
    ids: tuple | None = eqx.field(static=True, default=None)
    columns: tuple | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        ts,
        ys,
        mask=None,
        *,
        ids: Sequence[Hashable] | None = None,
        columns: Sequence[str] | None = None,
    ):
        ts_np = _as_float_array(ts, "ts")
        ys_np = _as_float_array(ys, "ys")
        if ts_np.ndim != 1:
            raise ValueError(f"ts must be one-dimensional (T,), got shape {ts_np.shape}.")
        if ts_np.shape[0] < 2:
            raise ValueError(f"ts must hold at least 2 time points, got {ts_np.shape[0]}.")
        if not np.all(np.isfinite(ts_np)):
            raise ValueError("ts contains NaN or infinite values; every time must be finite.")
        # Check the times at the precision they will be used in (float32 unless x64 is on).
        ts_np = _to_working_precision(ts_np, "ts")
        if not np.all(np.diff(ts_np) > 0):
            bad = int(np.argmax(np.diff(ts_np) <= 0))
            raise ValueError(
                f"ts must be strictly increasing; ts[{bad}]={ts_np[bad]} is followed by "
                f"ts[{bad + 1}]={ts_np[bad + 1]} (at {ts_np.dtype} precision). Sort the data, drop "
                "repeated times, and shift large time origins (e.g. years) towards 0."
            )
        if ys_np.ndim not in (2, 3):
            raise ValueError(
                f"ys must have shape (T, D) or (B, T, D), got shape {ys_np.shape}. "
                "For a single state variable use ys[:, None]."
            )
        if ys_np.shape[-2] != ts_np.shape[0]:
            raise ValueError(
                f"ys has {ys_np.shape[-2]} time points along its time axis (shape {ys_np.shape}) "
                f"but ts has {ts_np.shape[0]}; time must be the axis before the state axis."
            )
        if mask is None:
            if not np.all(np.isfinite(ys_np)):
                raise ValueError(
                    "ys contains NaN or infinite values. Pass mask= (True where observed) to mark "
                    "missing observations explicitly."
                )
            mask_j = None
        else:
            mask_np = np.asarray(mask)
            if mask_np.shape != ys_np.shape:
                raise ValueError(
                    f"mask must have the shape of ys {ys_np.shape}, got {mask_np.shape}."
                )
            if mask_np.dtype != bool and not np.isin(mask_np, (0, 1)).all():
                raise ValueError(
                    "mask must be boolean (True where observed), got values other than 0 and 1."
                )
            mask_np = mask_np.astype(bool)
            if not np.all(np.isfinite(ys_np[mask_np])):
                raise ValueError("ys has NaN or infinite values where mask says it is observed.")
            ys_np = np.where(mask_np, ys_np, 0.0)
            mask_j = as_array(mask_np)
        # finiteness again after the cast: 1e40 is finite in float64 but inf in float32
        self.ts = as_array(ts_np)
        self.ys = as_array(_to_working_precision(ys_np, "ys"))
        self.mask = mask_j
        self.ids = None if ids is None else _check_ids(ids, ys_np.shape)
        self.columns = None if columns is None else _check_names(columns, ys_np.shape[-1])

    @property
    def batched(self) -> bool:
        return self.ys.ndim == 3

    @property
    def n_trajectories(self) -> int:
        return self.ys.shape[0] if self.batched else 1

    @property
    def dim(self) -> int:
        return self.ys.shape[-1]

    def as_batch(self) -> TimeSeries:
        """The same data with a leading batch axis, `(B, T, D)`."""
        if self.batched:
            return self
        # in NumPy: an eager `ys[None]` would compile a program for every new shape
        mask = None if self.mask is None else np.asarray(self.mask)[None]
        return TimeSeries(self.ts, np.asarray(self.ys)[None], mask, columns=self.columns)

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        time: str = "t",
        columns: Sequence[str] | None = None,
        *,
        id: str | None = None,
        time_unit: str | None = None,
        time_origin: Any = None,
    ) -> TimeSeries:
        """Read a CSV (or `.csv.gz`, or Parquet) file: a time column and one column per state.

        The file is read through polars. Empty cells (and `nan`) are missing observations
        (masked). The delimiter is detected (`,` `;` tab or `|`); with `;` a decimal comma
        (`1,5`) is read as a decimal point, as spreadsheets in such locales write it. A UTF-8
        byte-order mark (Excel) is ignored, and lines starting with `#` are comments. Values
        beyond the working precision (float32 unless x64 is on) are refused, naming the cell.

        With `id`, the file is a long table of several series, one per value of the `id` column
        (its rows in any order), aligned onto the union of their times as `from_frame` does.
        With `time_unit` (and `time_origin`), the time column holds dates/times (ISO 8601, e.g.
        `2024-03-01` or `2024-03-01T12:30`), turned into numbers as `from_frame` describes.

        Example:
            >>> import neuraldiffeq as nde
            >>> data = nde.TimeSeries.from_csv(nde.datasets.LYNX_HARE_CSV, time="year")
            >>> data.columns
            ('lynx', 'hare')
        """
        table = csv_files.read_table(path)
        name, header = table.name, table.header
        if time not in header:
            raise ValueError(
                f"time column {time!r} not found in {name!r}; its columns are {header}. "
                "Pass time=<name of the time column>."
            )
        if id is not None and id not in header:
            raise ValueError(
                f"id column {id!r} not found in {name!r}; its columns are {header}. "
                "Pass id=<name of the column naming each row's series>."
            )
        if columns is None:
            columns = [c for c in header if c not in (time, id)]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"columns {missing} not found in {name!r}; it has {header}.")
        if not columns:
            raise ValueError(f"{name!r} has no state columns besides {time!r}.")
        named = [time, *columns, *([id] if id is not None else [])]
        repeated = sorted({c for c in named if header.count(c) > 1})
        if repeated:
            raise ValueError(f"{name!r} has more than one column named {repeated}; rename them.")
        if time in columns:
            raise ValueError(f"the time column {time!r} cannot also be a state column.")
        if id is not None and (id in columns or id == time):
            raise ValueError(f"the id column {id!r} cannot also be the time or a state column.")
        if table.n_rows < 2:
            raise ValueError(
                f"{name!r} has {table.n_rows} data row; a time series needs at least 2."
            )
        ts = _csv_times(table, time, time_unit, time_origin)
        if np.any(np.isnan(ts)):
            row = int(np.argmax(np.isnan(ts))) + 2
            raise ValueError(
                f"time column {time!r} of {name!r} has an empty cell (row {row}); every row needs "
                "a time."
            )
        ys = np.stack([csv_files.numbers(table, c) for c in columns], axis=-1)
        if id is not None:
            aligned = frames.align_wide(
                _csv_ids(table, id), ts, ys, list(columns), time, repr(name)
            )
            return cls._of(aligned)
        mask = ~np.isnan(ys)
        empty = [c for c, seen in zip(columns, mask.any(axis=0), strict=True) if not seen]
        if empty:
            raise ValueError(f"columns {empty} of {name!r} have no values at all; drop them.")
        return cls(ts, ys, None if mask.all() else mask, columns=columns)

    @classmethod
    def from_frame(
        cls,
        frame: Any,
        time: str = "t",
        columns: Sequence[str] | None = None,
        *,
        id: str | None = None,
        variable: str | None = None,
        value: str | None = None,
        time_unit: str | None = None,
        time_origin: Any = None,
    ) -> TimeSeries:
        """Series from a pandas or polars data frame (neither is imported unless given).

        Wide layout (the default): one row per time, a `time` column and one column per state
        (`columns`, default every other column). Long layout: one row per observed value, with
        `variable=` naming the column that holds the state's name and `value=` the one that
        holds its value (`columns` then picks and orders the states).

        With `id`, the frame holds several series, one per distinct value of that column
        (patient, reactor, site; ids keep their order of first appearance, in `.ids`). Each
        series keeps its own irregular times: all are aligned onto the union of their times,
        with a mask that is False where a series has no observation. NaN and null cells are
        missing values. Rows may come in any order; two rows for the same series and time are
        refused. A pandas frame whose index is named `time` reads its index as the time.

        A date/time column becomes numbers `(t - time_origin) / time_unit`, with `time_unit`
        one of `D`, `h`, `min`, `s`, `ms`, `us`, `ns` and `time_origin` a date/time (ISO
        string, `datetime`, NumPy or pandas time; time zone aware columns are taken in UTC).
        Both must be given: the library does not guess the unit or where time 0 is. A duration
        column needs only `time_unit`. States must be numbers or booleans: text and categorical
        columns are refused.

        Example:
            >>> import pandas as pd, neuraldiffeq as nde
            >>> df = pd.DataFrame({"patient": ["a", "a", "b", "b"], "day": [0, 2, 0, 1],
            ...                    "hr": [70.0, 72.0, 80.0, None]})
            >>> data = nde.TimeSeries.from_frame(df, time="day", id="patient")
            >>> data.ys.shape, data.ids, data.mask[1, :, 0].tolist()
            ((2, 3, 1), ('a', 'b'), [True, False, False])
        """
        aligned = frames.align_frame(
            frame,
            time,
            columns,
            id=id,
            variable=variable,
            value=value,
            time_unit=time_unit,
            time_origin=time_origin,
        )
        return cls._of(aligned)

    @classmethod
    def _of(cls, aligned: frames.Aligned) -> TimeSeries:
        return cls(aligned.ts, aligned.ys, aligned.mask, ids=aligned.ids, columns=aligned.columns)

    def to_frame(
        self,
        *,
        time: str = "t",
        id: str = "id",
        layout: str = "wide",
        library: str = "polars",
        time_unit: str | None = None,
        time_origin: Any = None,
    ) -> Any:
        """The series as a polars (default) or pandas data frame, for plotting and export.

        Wide layout: one row per series and time with at least one observed state, columns
        `id` (batches only), `time` and one per state (named by `.columns`, else `y0, y1, ...`),
        NaN where a state is not observed. Long layout: one row per observed value, columns
        `id`, `time`, `variable`, `value`. With `time_unit` (and `time_origin`) the times are
        turned back into durations (dates/times), undoing `from_frame`'s conversion. To export
        predictions, wrap them first: `nde.TimeSeries(ts, preds, ids=data.ids,
        columns=data.columns).to_frame()`.

        Example:
            >>> import numpy as np, neuraldiffeq as nde
            >>> data = nde.TimeSeries([0.0, 1.0], np.zeros((3, 2, 1)), ids=["a", "b", "c"])
            >>> data.to_frame().columns
            ['id', 't', 'y0']
        """
        return frames.to_frame(
            self.ts,
            self.ys,
            self.mask,
            ids=self.ids,
            columns=self.columns,
            time=time,
            id=id,
            layout=layout,
            library=library,
            time_unit=time_unit,
            time_origin=time_origin,
        )

    def class_labels(self, frame: Any, column: str, *, id: str) -> tuple[np.ndarray, tuple]:
        """One class label per series (in `.ids` order) from `column` of `frame`, as 0..K-1.

        For `nde.Classification`: `labels, classes = data.class_labels(df, "outcome",
        id="patient")`, then fit on `(data, labels)`; label `k` stands for `classes[k]` (the
        distinct labels, sorted). Each series must carry one label on all its rows.

        Example:
            >>> import polars as pl, neuraldiffeq as nde
            >>> df = pl.DataFrame({"id": ["a", "a", "b", "b"], "t": [0.0, 1.0, 0.0, 1.0],
            ...                    "x": [1.0, 2.0, 3.0, 4.0], "outcome": ["y", "y", "n", "n"]})
            >>> data = nde.TimeSeries.from_frame(df, columns=["x"], id="id")
            >>> data.class_labels(df, "outcome", id="id")
            (array([1, 0], dtype=int32), ('n', 'y'))
        """
        if self.ids is None:
            raise ValueError(
                "class_labels matches labels to series by id, and these series have no ids; "
                "load them with from_frame(..., id=...) or pass ids= to nde.TimeSeries."
            )
        return frames.class_labels(frame, column, id=id, ids=self.ids)


def _check_ids(ids, shape) -> tuple:
    ids = tuple(v.item() if isinstance(v, np.generic) else v for v in ids)
    if len(shape) != 3 or len(ids) != shape[0]:
        raise ValueError(
            f"ids must name each series of a batch (B, T, D), one id per series; got {len(ids)} "
            f"ids for ys of shape {shape}."
        )
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be distinct: each names one series.")
    return ids


def _check_names(columns, dim: int) -> tuple:
    columns = tuple(columns)
    if len(columns) != dim:
        raise ValueError(f"columns must name each of the {dim} states, got {len(columns)} names.")
    return columns


def _csv_times(table, time: str, time_unit, time_origin) -> np.ndarray:
    """The time column of a CSV/Parquet table as float64 numbers (NaN where empty)."""
    import polars as pl

    cells = table.cells_of(time)
    if cells.dtype != pl.String:  # Parquet: typed
        if cells.null_count():
            return np.where(cells.is_null().to_numpy(), np.nan, 0.0)
        if cells.dtype.is_numeric() and time_unit is None and time_origin is None:
            return csv_files.numbers(table, time)
        return frames.time_numbers(cells, time, time_unit, time_origin, repr(table.name))
    if time_unit is None and time_origin is None:
        return csv_files.numbers(table, time)
    text = cells.str.strip_chars()
    stamps = text.str.to_datetime(strict=False)
    bad = (stamps.is_null() & text.is_not_null() & (text != "")).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"time column {time!r} of {table.name!r}, row {i + 2}, holds {text[i]!r}, which is "
            "not a date/time like the rows before it (ISO 8601, e.g. 2024-03-01 or "
            "2024-03-01T12:30)."
        )
    empty = stamps.is_null().to_numpy()
    if empty.any():
        return np.where(empty, np.nan, 0.0)
    return frames.time_numbers(stamps, time, time_unit, time_origin, repr(table.name))


def _csv_ids(table, id: str) -> Any:
    """The id column of a CSV/Parquet table (text stripped); an empty cell is refused."""
    import polars as pl

    cells = table.cells_of(id)
    if cells.dtype == pl.String:
        cells = cells.str.strip_chars()
        empty = (cells.is_null() | (cells == "")).to_numpy()
    else:
        empty = cells.is_null().to_numpy()
    if empty.any():
        raise ValueError(
            f"id column {id!r} of {table.name!r} has an empty cell (row "
            f"{int(np.argmax(empty)) + 2}); every row needs an id."
        )
    return cells.alias(id)


def _as_float_array(x, name: str) -> np.ndarray:
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError):  # e.g. ragged nested lists
        raise ValueError(
            f"{name} must be a rectangular array of real numbers, got {type(x).__name__}."
        ) from None
    if np.iscomplexobj(raw) or (
        raw.dtype == object and any(isinstance(v, complex) for v in raw.ravel())
    ):
        raise ValueError(
            f"{name} holds complex numbers; pass real values (e.g. the real and imaginary parts "
            "as separate states)."
        )
    if raw.dtype.kind not in "biuf" and raw.dtype != object:  # text, dates, ...: no guessing
        raise ValueError(f"{name} must be an array of real numbers, got dtype {raw.dtype}.")
    try:
        return np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be an array of real numbers, got {type(x).__name__} holding "
            "something else."
        ) from None
