"""Small real data sets bundled with the package (sources in each file's header)."""

from __future__ import annotations

from importlib import resources

from ..io.timeseries import TimeSeries

#: Hudson's Bay Company lynx and hare pelts (thousands), 1900-1920; see the file header.
LYNX_HARE_CSV = str(resources.files(__package__) / "data" / "hudson_bay_lynx_hare.csv")


def lynx_hare() -> TimeSeries:
    """The Hudson's Bay lynx–hare series, 21 yearly points, columns (lynx, hare) in thousands.

    Example:
        >>> import neuraldiffeq as nde
        >>> nde.datasets.lynx_hare().ys.shape
        (21, 2)
    """
    return TimeSeries.from_csv(LYNX_HARE_CSV, time="year", columns=["lynx", "hare"])
