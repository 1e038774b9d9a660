"""Input and output: time series in, model files and fit outputs out, plots.

`io` sits just above the base helpers and below everything numerical: it imports neither the
solve layer nor models nor fitting, so any of them may read data or write files through it.
Plotting (`io.plotting`) imports matplotlib and is loaded only where a picture is drawn.
"""

from .model_files import load, save
from .timeseries import TimeSeries

__all__ = ["TimeSeries", "load", "save"]
