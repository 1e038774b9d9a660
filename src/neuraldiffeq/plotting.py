"""Plots a person would rather look at than read: fits, loss curves."""

from __future__ import annotations

import os

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
) -> None:
    """Write a PNG: observations (dots) against the model's trajectories (lines), per state, and
    the loss curve (log scale) if `losses` is given, with dotted lines between training stages
    (`stage_steps`: steps per stage). `ys`/`pred_ys` are (T, D) or (B, T, D).

    Example:
        >>> import numpy as np, tempfile, os
        >>> from neuraldiffeq.plotting import plot_fit
        >>> ts = np.linspace(0, 1, 10); ys = np.stack([ts, ts**2], -1)
        >>> plot_fit(os.path.join(tempfile.mkdtemp(), "fit.png"), ts, ys, ts, ys, losses=[1, 0.1])
    """
    ys, pred_ys = np.asarray(ys), np.asarray(pred_ys)
    if ys.ndim == 2:
        ys, pred_ys = ys[None], pred_ys[None]
    dim = ys.shape[-1]
    labels = labels or [f"y{i + 1}" for i in range(dim)]
    ncols = 2 if losses is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.2), squeeze=False)
    ax = axes[0, 0]
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
        ax.text(holdout_from, ax.get_ylim()[1], " held out →", va="top", color="gray")
    ax.set_xlabel("t")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    if losses is not None:
        ax = axes[0, 1]
        ax.semilogy(np.arange(1, len(losses) + 1), np.asarray(losses), lw=1.2)
        for end in np.cumsum(stage_steps or [])[:-1]:
            ax.axvline(end + 0.5, color="gray", ls=":", lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("training loss")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save and close a figure, atomically (temp file + rename)."""
    path = os.fspath(path)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
