"""Plots a person would rather look at than read: fits, loss curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_fit(
    path: str | os.PathLike,
    ts,
    ys,
    pred_ts,
    pred_ys,
    losses=None,
    labels=None,
    title: str = "fit",
    holdout_from: float | None = None,
    stage_steps=None,
    stages: Sequence[Any] | None = None,
) -> None:
    """Write a PNG: observations (dots) against the model's trajectories (lines), per state, and
    the loss curve if `losses` is given, each training stage on its own axes (see `plot_losses`).

    `ys`/`pred_ys` are (T, D) or (B, T, D); NaN observations (missing) are not drawn. `stages`
    is `FitResult.stages` (or `(label, steps)` pairs); `stage_steps` (steps per stage) is the
    older, unlabelled form.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from neuraldiffeq.io.plotting import plot_fit
        >>> ts = np.linspace(0, 1, 10); ys = np.stack([ts, ts**2], -1)
        >>> plot_fit(os.path.join(tempfile.mkdtemp(), "fit.png"), ts, ys, ts, ys, losses=[1, 0.1])
    """
    ys, pred_ys = np.asarray(ys), np.asarray(pred_ys)
    if ys.ndim == 2:
        ys, pred_ys = ys[None], pred_ys[None]
    dim = ys.shape[-1]
    labels = labels or [f"y{i + 1}" for i in range(dim)]
    spans = None if losses is None else stage_spans(len(losses), stages, stage_steps)
    rows = 1 if spans is None else len(spans)
    width = 12 if losses is not None else 6
    fig = plt.figure(figsize=(width, max(4.2, 1.7 * rows + 0.8)))
    grid = fig.add_gridspec(1, 2 if losses is not None else 1)
    ax = fig.add_subplot(grid[0, 0])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for b in range(ys.shape[0]):
        for d in range(dim):
            c = colors[d % len(colors)]
            first = b == 0
            ax.plot(
                ts,
                ys[b, :, d],
                "o",
                color=c,
                ms=4,
                alpha=0.7,
                label=f"data {labels[d]}" if first else None,
            )
            ax.plot(
                pred_ts,
                pred_ys[b, :, d],
                "-",
                color=c,
                lw=1.8,
                label=f"model {labels[d]}" if first else None,
            )
    if holdout_from is not None:
        ax.axvline(holdout_from, color="gray", ls="--", lw=1)
        # right-aligned at the line: stays inside the axes however little is held out
        ax.text(holdout_from, ax.get_ylim()[1], "held out → ", ha="right", va="top", color="gray")
    ax.set_xlabel("t")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    if losses is not None:
        plot_losses(fig, grid[0, 1], losses, spans)
    fig.tight_layout()
    save_figure(fig, path)


def stage_spans(
    n_steps: int, stages: Sequence[Any] | None = None, stage_steps: Sequence[int] | None = None
) -> list[tuple[str, int, int]]:
    """`(label, first step, end step)` per training stage, labelled with strategy and optimizer.

    Example:
        >>> from neuraldiffeq.io.plotting import stage_spans
        >>> stage_spans(5, [("Adam", 3), ("L-BFGS", 2)])
        [('Adam', 0, 3), ('L-BFGS', 3, 5)]
        >>> stage_spans(4)
        [('training loss', 0, 4)]
    """
    if stages:
        pairs = [s if isinstance(s, tuple) else (_stage_label(s), int(s.steps)) for s in stages]
    elif stage_steps:
        n = len(stage_steps)
        pairs = [(f"stage {i + 1}/{n}", int(k)) for i, k in enumerate(stage_steps)]
    else:
        pairs = [("training loss", n_steps)]
    spans, start = [], 0
    for label, steps in pairs:
        spans.append((label, start, min(start + steps, n_steps)))
        start += steps
    return [s for s in spans if s[2] > s[1]] or [("training loss", 0, n_steps)]


def _stage_label(report: Any) -> str:
    """'stage 2/3: Trajectory, L-BFGS' from a `StageReport`."""
    number, _, strategy = str(report.name).partition(" ")
    label = f"stage {number}: {strategy}" if strategy else f"stage {number}"
    optimizer = getattr(report, "optimizer", "")
    return f"{label}, {optimizer}" if optimizer else label


def plot_losses(fig, slot, losses, spans: list[tuple[str, int, int]]) -> list:
    """One axes per stage in `slot` (a subplot spec), stacked, each on its own loss scale.

    Stages minimise different losses (multiple shooting adds a continuity penalty; L-BFGS
    polishes a loss already small), so one shared axis would make a correct run look like a jump.
    Steps are numbered across stages; the y scale is logarithmic unless a loss is <= 0.
    Returns the axes.
    """
    losses = np.asarray(losses, dtype=float)
    sub = slot.subgridspec(len(spans), 1, hspace=0.7)
    axes = []
    for row, (label, start, stop) in enumerate(spans):
        ax = fig.add_subplot(sub[row, 0])
        steps = np.arange(start + 1, stop + 1)
        values = losses[start:stop]
        ax.plot(steps, values, lw=1.2, color=f"C{row % 10}")
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() > 0:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9, loc="left")
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=8)
        ax.set_ylabel("loss", fontsize=8)
        axes.append(ax)
    axes[-1].set_xlabel("step")
    return axes


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save and close a figure, atomically (temp file + rename); the figure is closed even when
    the write fails, and no temporary file is left behind."""
    path = os.fspath(path)
    tmp = path + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
