"""Observed time series: the one data container every strategy and model reads."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax import Array

from .._checks import as_array


class TimeSeries(eqx.Module):
    """Observations `ys` of a system at strictly increasing times `ts`.

    `ys` has shape `(T, D)` for one trajectory or `(B, T, D)` for `B` trajectories sampled on the
    same grid. Missing observations are allowed only through an explicit boolean `mask` of the same
    shape as `ys` (True = observed); masked-out entries of `ys` may hold anything, NaN included.

    Example:
        >>> import numpy as np, neuraldiffeq as nde
        >>> data = nde.TimeSeries(np.linspace(0, 1, 5), np.ones((5, 2)))
        >>> data.ys.shape, data.n_trajectories, data.dim
        ((5, 2), 1, 2)
    """

    ts: Array
    ys: Array
    mask: Array | None = None

    def __init__(self, ts, ys, mask=None):
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
        return TimeSeries(self.ts, np.asarray(self.ys)[None], mask)

    @classmethod
    def from_csv(
        cls, path: str | os.PathLike, time: str = "t", columns: Sequence[str] | None = None
    ) -> TimeSeries:
        """Read a CSV with a header row: one time column and one column per state variable.

        Empty cells (and `nan`) are missing observations (masked). The delimiter is detected
        (`,` `;` tab or `|`); with `;` a decimal comma (`1,5`) is read as a decimal point, as
        spreadsheets in such locales write it. A UTF-8 byte-order mark (Excel) is ignored, and
        lines starting with `#` are comments. Values beyond the working precision (float32 unless
        x64 is on) are refused, naming the cell. Example:
            >>> import neuraldiffeq as nde
            >>> data = nde.TimeSeries.from_csv(nde.datasets.LYNX_HARE_CSV, time="year")
        """
        name = os.fspath(path)
        header, rows, delimiter = _read_csv(path)
        if time not in header:
            raise ValueError(
                f"time column {time!r} not found in {name!r}; its columns are {header}. "
                "Pass time=<name of the time column>."
            )
        if columns is None:
            columns = [c for c in header if c != time]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"columns {missing} not found in {name!r}; it has {header}.")
        if not columns:
            raise ValueError(f"{name!r} has no state columns besides {time!r}.")
        repeated = sorted({c for c in [time, *columns] if header.count(c) > 1})
        if repeated:
            raise ValueError(f"{name!r} has more than one column named {repeated}; rename them.")
        if time in columns:
            raise ValueError(f"the time column {time!r} cannot also be a state column.")
        largest = float(np.finfo(working_dtype()).max)

        def column(col):
            j = header.index(col)
            out = []
            for i, row in enumerate(rows):
                cell = row[j].strip() if j < len(row) else ""
                if delimiter == ";" and "," in cell and "." not in cell:
                    cell = cell.replace(",", ".")  # decimal comma
                try:
                    value = float(cell) if cell else np.nan
                except ValueError:
                    raise ValueError(
                        f"column {col!r} of {name!r} is not numeric: row {i + 2} holds "
                        f"{cell!r}. Drop the column (columns=[...]) or clean the file."
                    ) from None
                if np.isinf(value) and cell.lower().lstrip("+-") in ("inf", "infinity"):
                    raise ValueError(
                        f"column {col!r} of {name!r}, row {i + 2}, holds {cell!r}; values must be "
                        "finite (leave a cell empty for a missing value)."
                    )
                if np.isinf(value) or abs(value) > largest:
                    raise ValueError(
                        f"column {col!r} of {name!r}, row {i + 2}, holds {cell!r}, beyond the "
                        f"working precision {working_dtype()} (largest {largest:.3g}). Rescale "
                        "the column or enable float64 (jax_enable_x64)."
                    )
                out.append(value)
            return np.asarray(out)

        if len(rows) < 2:
            raise ValueError(f"{name!r} has {len(rows)} data row; a time series needs at least 2.")
        ts = column(time)
        if np.any(np.isnan(ts)):
            row = int(np.argmax(np.isnan(ts))) + 2
            raise ValueError(
                f"time column {time!r} of {name!r} has an empty cell (row {row}); every row needs "
                "a time."
            )
        ys = np.stack([column(c) for c in columns], axis=-1)
        mask = ~np.isnan(ys)
        empty = [c for c, seen in zip(columns, mask.any(axis=0), strict=True) if not seen]
        if empty:
            raise ValueError(f"columns {empty} of {name!r} have no values at all; drop them.")
        return cls(ts, ys, None if mask.all() else mask)


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


def working_dtype() -> np.dtype:
    """The float type arrays get in JAX: float32, or float64 with `jax_enable_x64`."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def _to_working_precision(arr: np.ndarray, name: str) -> np.ndarray:
    """Cast to the working precision; refuse finite values that overflow it."""
    dtype = working_dtype()
    with np.errstate(over="ignore"):
        cast = arr.astype(dtype)
    overflow = np.isfinite(arr) & ~np.isfinite(cast)
    if overflow.any():
        where = tuple(int(i) for i in np.argwhere(overflow)[0])
        raise ValueError(
            f"{name}{list(where)} = {arr[where]:.3g} overflows {dtype} (largest "
            f"{np.finfo(dtype).max:.3g}). Rescale {name} (e.g. divide by a power of ten) or "
            "enable float64 with jax.config.update('jax_enable_x64', True)."
        )
    return cast


#: delimiters `from_csv` recognises, in order of preference
DELIMITERS = (",", ";", "\t", "|")


def _read_csv(path) -> tuple[list[str], list[list[str]], str]:
    """Header, data rows and delimiter of a CSV file (comments and blank lines skipped)."""
    name = os.fspath(path)
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first name
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read CSV file {name!r}: {e}") from None
    if "\x00" in "".join(lines[:1]):
        raise ValueError(f"{name!r} is not a text CSV file (it holds NUL bytes).")
    delimiter = _sniff_delimiter(lines[:50])
    try:
        rows = list(csv.reader(lines, delimiter=delimiter))
    except csv.Error as e:
        raise ValueError(f"cannot parse CSV file {name!r}: {e}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise ValueError(f"{name!r} needs a header row and at least one data row.")
    header = [h.strip() for h in rows[0]]
    for i, row in enumerate(rows[1:]):
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
            raise ValueError(
                f"row {i + 2} of {name!r} has {len(row)} cells but the header has "
                f"{len(header)} names (delimiter {delimiter!r}); fix the row or the header."
            )
    return header, rows[1:], delimiter


def _sniff_delimiter(lines: list[str]) -> str:
    """The delimiter that splits the header into the most columns, consistently in the rows.

    A delimiter is consistent when no data row has more of it than the header (rows may be
    short: trailing empty cells). `,` wins ties, and is the answer for a one-column file.
    """
    best, best_count = ",", 0
    if not lines:
        return best
    header = lines[0]
    for d in DELIMITERS:
        count = header.count(d)
        if count > best_count and all(line.count(d) <= count for line in lines[1:]):
            best, best_count = d, count
    return best
