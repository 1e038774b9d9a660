"""Reading data files through polars: CSV (also gzip-compressed) and Parquet.

polars splits the fields and converts the numbers (multi-threaded, in Rust); this module keeps
what users of `from_csv` rely on around it: the delimiter is detected (`,` `;` tab or `|`), with
`;` a decimal comma (`1,5`) is read as a decimal point, a UTF-8 byte-order mark (Excel) is
ignored, lines starting with `#` are comments, and every refusal names the file, the column, the
row and the cell, with the same messages as before the library did the parsing.

Cells are read as text first and converted column by column, so that a bad cell can be quoted in
the message; a number is whatever Python's `float` accepts (polars converts the cells it can,
and the few it cannot, such as `1_000`, go through `float`). Rows count as in a spreadsheet: the
header is row 1 (comment and blank lines are not counted).
"""

from __future__ import annotations

import csv as std_csv
import dataclasses
import gzip
import io
import os
import re
import zlib
from typing import Any

import numpy as np

from .precision import beyond_working_precision, working_dtype, working_max

#: delimiters a CSV file may use, in order of preference when the header is ambiguous
DELIMITERS = (",", ";", "\t", "|")
#: what Python's str.strip() removes (every c with c.isspace()); polars' own notion differs
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
    "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
#: how many lines the delimiter is sniffed from
_SNIFF_LINES = 50
#: file name endings read as Parquet
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclasses.dataclass(frozen=True)
class Table:
    """A data file's header and cells, before any column is converted to numbers.

    Attributes:
        name: the file's path as given, for messages.
        header: the column names (stripped of surrounding blanks), in file order.
        cells: a polars DataFrame with one column per header name, named by position
            (`"0"`, `"1"`, ...: header names may repeat or be empty): text for a CSV file, the
            stored types for Parquet. Blank rows are already dropped.
        delimiter: the delimiter of a CSV file (None for Parquet).

    Example:
        >>> import neuraldiffeq as nde
        >>> from neuraldiffeq.io.csv import read_table
        >>> table = read_table(nde.datasets.LYNX_HARE_CSV)
        >>> table.header, table.delimiter, table.n_rows
        (['year', 'lynx', 'hare'], ',', 21)
    """

    name: str
    header: list[str]
    cells: Any
    delimiter: str | None

    @property
    def n_rows(self) -> int:
        return self.cells.height

    def cells_of(self, column: str) -> Any:
        """The polars Series of the (first) column named `column`."""
        return self.cells.get_column(str(self.header.index(column)))


def read_table(path: str | os.PathLike) -> Table:
    """Read a CSV file (`.csv`, gzip-compressed `.csv.gz`, any delimiter) or a Parquet file.

    Raises ValueError for a file that cannot be read, is not text, has no data row, or has a row
    with more cells than the header (trailing empty cells are allowed).
    """
    name = os.fspath(path)
    if name.lower().endswith(PARQUET_SUFFIXES):
        return _read_parquet(path, name)
    text = _read_text(path, name)
    if "\r" in text:  # old Mac line ends (a lone \r) end a line as they did for open()
        text = re.sub(r"\r(?!\n)", "\n", text)
    if "#" in text:
        text = _drop_comment_lines(text)
    first, sniffed = _first_lines(text)
    if sniffed and "\x00" in sniffed[0]:
        raise ValueError(f"{name!r} is not a text CSV file (it holds NUL bytes).")
    delimiter = _sniff_delimiter(sniffed)
    cells = _parse(text[first:], delimiter, name) if sniffed else None
    if cells is not None:
        cells = _drop_blank_rows(cells)
    if cells is None or cells.height < 2:
        raise ValueError(f"{name!r} needs a header row and at least one data row.")
    header = [("" if h is None else h).strip() for h in cells.row(0)]
    cells = cells.slice(1)
    return Table(
        name, header, cells.rename({c: str(i) for i, c in enumerate(cells.columns)}), delimiter
    )


def _read_text(path, name: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read CSV file {name!r}: {e}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip's magic number, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"cannot read CSV file {name!r}: broken gzip data ({e})") from None
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first name
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"cannot read CSV file {name!r}: {e}") from None


def _drop_comment_lines(text: str) -> str:
    """`text` without its comment lines (first non-blank character `#`), line ends included.

    Visits each `#` rather than each line: comments are few, and a regular expression anchored
    at every line start costs seconds on a large file.
    """
    kept, done = [], 0
    i = text.find("#")
    while i >= 0:
        start = text.rfind("\n", 0, i) + 1
        end = text.find("\n", i)
        end = len(text) if end < 0 else end + 1
        if not text[start:i].strip():  # only blanks before the `#`: a comment line
            kept.append(text[done:start])
            done = end
        i = text.find("#", end)  # a later `#` on the same line starts nothing
    return "".join(kept) + text[done:] if kept else text


def _first_lines(text: str) -> tuple[int, list[str]]:
    """Where the first non-blank line starts, and the first non-blank lines (for sniffing)."""
    lines: list[str] = []
    start, first = 0, None
    while len(lines) < _SNIFF_LINES and start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        line = text[start:end]
        if line.strip():
            if first is None:
                first = start
            lines.append(line)
        start = end
    return (first or 0), lines


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


def _irregular_quote(delimiter: str) -> re.Pattern:
    """A quote that neither opens nor closes a field: text on both sides (`1"5`, `"a"b`), or
    field boundaries on both sides (a lone `"`). polars and the standard library's reader split
    such rows differently; the latter decides, as it always has."""
    d = re.escape(delimiter)
    return re.compile(
        rf'"(?:(?<=[^{d}\n"]")(?=[^{d}\r\n"])|(?=[{d}\r\n]|\Z)(?:(?<=\A")|(?<=[{d}\n]")))'
    )


def _parse(text: str, delimiter: str, name: str):
    """Every row's cells as text (row 0 the header), blank rows included."""
    import polars as pl

    if '"' in text and _irregular_quote(delimiter).search(text):
        return _parse_irregular(text, delimiter, name)
    try:
        cells = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            has_header=False,
            separator=delimiter,
            infer_schema=False,  # every cell as text: a bad one can be quoted in the message
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError:
        return _parse_irregular(text, delimiter, name)
    first = cells.head(1)
    if cells.height and _drop_blank_rows(first).height == 0:
        return _parse_irregular(text, delimiter, name)
    return cells


def _parse_irregular(text: str, delimiter: str, name: str):
    """What polars refuses or cannot size from the first line: a row longer than the header
    (an error unless its extra cells are empty, as a trailing delimiter makes them), a stray
    quote inside a field, a blank first row. The standard library's reader splits these rows
    as `from_csv` always has, so such files keep their meaning and their messages."""
    import polars as pl

    lines = [line for line in io.StringIO(text, newline="") if line.strip()]
    try:
        rows = list(std_csv.reader(lines, delimiter=delimiter))
    except std_csv.Error as e:
        raise ValueError(f"cannot parse CSV file {name!r}: {e}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise ValueError(f"{name!r} needs a header row and at least one data row.")
    width = len(rows[0])
    for i, row in enumerate(rows[1:]):
        if len(row) > width and any(cell.strip() for cell in row[width:]):
            raise ValueError(
                f"row {i + 2} of {name!r} has {len(row)} cells but the header has "
                f"{width} names (delimiter {delimiter!r}); fix the row or the header."
            )
    columns = {
        str(j): pl.Series([r[j] if j < len(r) else None for r in rows], dtype=pl.String)
        for j in range(width)
    }
    return pl.DataFrame(columns)


def _drop_blank_rows(cells):
    """The rows with a cell that is not blank (rows of empty cells carry nothing)."""
    import polars as pl

    def blank(c):
        return pl.col(c).is_null() | (pl.col(c).str.strip_chars(_WHITESPACE) == "")

    # a blank row starts with a blank cell: look at the others only in rows that do
    first = cells.columns[0]
    candidates = cells.select(blank(first)).to_series()
    if not candidates.any():
        return cells
    return cells.filter(~pl.all_horizontal(blank(c) for c in cells.columns))


def _read_parquet(path, name: str) -> Table:
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read Parquet file {name!r}: {reason}") from None
    if frame.height < 1:
        raise ValueError(f"{name!r} needs at least one data row.")
    header = [str(c) for c in frame.columns]
    cells = frame.rename({c: str(i) for i, c in enumerate(frame.columns)})
    return Table(name, header, cells, None)


def numbers(table: Table, column: str) -> np.ndarray:
    """The cells of `column` as float64, NaN where empty; refuses text, infinities, overflow.

    A text cell is converted as Python's `float` would; with the delimiter `;` a decimal comma
    (`1,5`, no `.` in the cell) is a decimal point. Values beyond the working precision (float32
    unless x64 is on) are refused, naming the row and cell.

    Example:
        >>> import neuraldiffeq as nde
        >>> from neuraldiffeq.io.csv import numbers, read_table
        >>> numbers(read_table(nde.datasets.LYNX_HARE_CSV), "lynx")[:3].tolist()
        [4.0, 6.1, 9.8]
    """
    import polars as pl

    cells = table.cells_of(column)
    name = table.name
    if cells.dtype != pl.String:
        return _typed_numbers(cells, column, name)
    # polars reads the plain numbers; what it leaves (blanks around a number, a decimal comma,
    # `nan`, `1_000`, text) goes cell by cell through Python's float, as every cell used to
    values = cells.cast(pl.Float64, strict=False).to_numpy().astype(np.float64, copy=True)
    rest = np.flatnonzero(np.isnan(values) & ~cells.is_null().to_numpy())
    bad_text = np.zeros(values.shape, bool)
    for i, cell in zip(rest, cells.gather(rest).to_list(), strict=True):
        cell = _cell_text(cell, table.delimiter)
        try:
            values[i] = float(cell) if cell else np.nan
        except ValueError:
            bad_text[i] = True
    beyond = beyond_working_precision(values)
    bad = np.flatnonzero(bad_text | beyond)
    if bad.size:
        i = int(bad[0])
        cell = _cell_text(cells[i], table.delimiter)
        if bad_text[i]:
            raise ValueError(
                f"column {column!r} of {name!r} is not numeric: row {i + 2} holds "
                f"{cell!r}. Drop the column (columns=[...]) or clean the file."
            )
        if np.isinf(values[i]) and cell.lower().lstrip("+-") in ("inf", "infinity"):
            raise ValueError(
                f"column {column!r} of {name!r}, row {i + 2}, holds {cell!r}; values must be "
                "finite (leave a cell empty for a missing value)."
            )
        raise ValueError(
            f"column {column!r} of {name!r}, row {i + 2}, holds {cell!r}, beyond the "
            f"working precision {working_dtype()} (largest {working_max():.3g}). Rescale "
            "the column or enable float64 (jax_enable_x64)."
        )
    return values


def _cell_text(cell: str | None, delimiter: str | None) -> str:
    """A cell as `float` reads it: stripped, a decimal comma made a point (delimiter `;`)."""
    cell = "" if cell is None else cell.strip()
    if delimiter == ";" and "," in cell and "." not in cell:
        cell = cell.replace(",", ".")  # decimal comma
    return cell


def _typed_numbers(cells, column: str, name: str) -> np.ndarray:
    """A typed (Parquet) column as float64: numbers and booleans only."""
    import polars as pl

    if not (cells.dtype.is_numeric() or cells.dtype == pl.Boolean):
        raise ValueError(
            f"column {column!r} of {name!r} is not numeric: it holds {cells.dtype}. Drop the "
            "column (columns=[...]) or convert it to numbers."
        )
    values = cells.cast(pl.Float64).to_numpy().astype(np.float64, copy=True)
    beyond = beyond_working_precision(values)
    if beyond.any():
        i = int(np.argmax(beyond))
        raise ValueError(
            f"column {column!r} of {name!r}, row {i + 2}, holds {float(values[i])!r}; values "
            f"must be finite and within the working precision {working_dtype()} (largest "
            f"{working_max():.3g}). Rescale the column or enable float64 (jax_enable_x64)."
        )
    return values
