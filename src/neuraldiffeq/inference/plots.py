"""Pictures of discovery and of posteriors: term vs network vs truth, predictive bands, marginals.

They live here rather than in `io/plotting.py` because they draw this layer's results (a
`Posterior`, a discovered term); each writes one PNG through `io.plotting.save_figure` (atomic).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..io.plotting import plt, save_figure
from .posterior import Posterior, posterior_predictive

#: line style per curve label (colour goes by output / state); anything else is solid
_STYLES = {"truth": ":", "network": "--", "refitted": "-.", "data": "o"}


def plot_discovery(
    path: str | os.PathLike,
    ts: np.ndarray,
    terms: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    trajectories: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    data: tuple[np.ndarray, np.ndarray] | None = None,
    state_names: Sequence[str] | None = None,
    fit_end: float | None = None,
) -> None:
    """Left: the explained part along the trajectory, one curve per `terms` entry (e.g. network,
    discovered, truth) and output; right (optional): `trajectories` label -> (ts, ys), with the
    `data` points and a line where the fitted span ends (`fit_end`).

    Example:
        >>> import os, tempfile, numpy as np
        >>> from neuraldiffeq.inference.plots import plot_discovery
        >>> ts = np.linspace(0, 1, 5)
        >>> path = os.path.join(tempfile.mkdtemp(), "d.png")
        >>> plot_discovery(path, ts, {"truth": np.ones((5, 1))}, ["f0"])
        >>> os.path.exists(path)
        True
    """
    panels = 2 if trajectories else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, out in enumerate(output_names):
        for label, values in terms.items():
            style = _STYLES.get(label, "-")
            colour = "k" if label == "truth" else colours[j % len(colours)]
            ax.plot(ts, np.asarray(values)[:, j], color=colour, ls=style, label=f"{out}: {label}")
    ax.set_xlabel("t")
    ax.set_title("the missing terms along the fitted trajectory")
    ax.legend(fontsize=7, ncol=len(output_names))
    if trajectories:
        ax = axes[0, 1]
        names = state_names or [
            f"x{i}" for i in range(next(iter(trajectories.values()))[1].shape[1])
        ]
        for label, (tt, ys) in trajectories.items():
            style = _STYLES.get(label, "-")
            for j, name in enumerate(names):
                colour = colours[j % len(colours)]
                ax.plot(tt, np.asarray(ys)[:, j], color=colour, ls=style, label=f"{name}: {label}")
        if data is not None:
            for j in range(len(names)):
                colour = colours[j % len(colours)]
                ax.plot(
                    data[0], np.asarray(data[1])[:, j], "o", ms=3.5, color=colour, mec="k", mew=0.4
                )
        title = "extrapolation"
        if "truth" in trajectories:  # frame the truth (and data): a runaway model leaves it
            ref = [np.asarray(trajectories["truth"][1])]
            ref += [] if data is None else [np.asarray(data[1])]
            lo = min(float(np.min(r)) for r in ref)
            hi = max(float(np.max(r)) for r in ref)
            pad = 0.15 * (hi - lo) or 1.0
            ax.set_ylim(lo - pad, hi + pad)
            away = [
                label
                for label, (_, ys) in trajectories.items()
                if not np.all((np.asarray(ys) >= lo - pad) & (np.asarray(ys) <= hi + pad))
            ]
            if away:
                title += f" ({', '.join(away)}: beyond the frame)"
        if fit_end is not None:
            ax.axvline(fit_end, color="0.5", lw=0.8)
            ax.text(fit_end, ax.get_ylim()[1], " end of data", va="top", fontsize=8, color="0.4")
        ax.set_xlabel("t")
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def plot_predictive(
    path: str | os.PathLike,
    posterior: Posterior,
    data,
    ts: np.ndarray | None = None,
    *,
    level: float = 0.9,
    key=None,
    labels: Sequence[str] | None = None,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Posterior-predictive bands at `level` over the data: the mean trajectory's band and, with
    `key`, the band of new observations (noise included); the data as points.

    Example:
        >>> import os, tempfile, jax.numpy as jnp, numpy as np, neuraldiffeq as nde
        >>> from neuraldiffeq.inference.plots import plot_predictive
        >>> post = nde.Posterior(models=nde.NeuralODE(lambda t, y, a: -y), y0=jnp.ones((3, 1)),
        ...     noise=jnp.full(3, 0.1), samples={}, rhat={}, ess={}, divergences=0,
        ...     step_sizes=np.ones(1), acceptance=0.8)
        >>> data = nde.TimeSeries(np.linspace(0, 1, 4), np.ones((4, 1)))
        >>> path = os.path.join(tempfile.mkdtemp(), "p.png")
        >>> plot_predictive(path, post, data)
        >>> os.path.exists(path)
        True
    """
    ts = np.linspace(float(data.ts[0]), float(data.ts[-1]), 200) if ts is None else np.asarray(ts)
    tail = (1 - level) / 2
    mean_paths = np.asarray(posterior_predictive(posterior, ts))
    dim = mean_paths.shape[-1]
    labels = labels or [f"x{i}" for i in range(dim)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if key is not None:
        noisy = np.asarray(posterior_predictive(posterior, ts, key=key))
        lo, hi = np.quantile(noisy, [tail, 1 - tail], axis=0)
        for j in range(dim):
            ax.fill_between(ts, lo[:, j], hi[:, j], color=colours[j], alpha=0.15, lw=0)
    lo, hi = np.quantile(mean_paths, [tail, 1 - tail], axis=0)
    median = np.median(mean_paths, axis=0)
    for j in range(dim):
        c = colours[j % len(colours)]
        ax.fill_between(ts, lo[:, j], hi[:, j], color=c, alpha=0.35, lw=0)
        ax.plot(ts, median[:, j], color=c, lw=1.5, label=f"{labels[j]}: posterior median")
        ax.plot(
            np.asarray(data.ts), np.asarray(data.ys)[:, j], "o", ms=3.5, color=c, mec="k", mew=0.4
        )
        if truth is not None:
            ax.plot(
                truth[0], np.asarray(truth[1])[:, j], "k:", lw=1, label="truth" if j == 0 else None
            )
    band = f"{round(level * 100)}% bands: dark = trajectory"
    ax.set_title(band + (", light = new observations" if key is not None else ""))
    ax.set_xlabel("t")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_marginals(
    path: str | os.PathLike,
    posterior: Posterior,
    names: Sequence[str] | None = None,
    truth: Mapping[str, float | np.ndarray] | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
    level: float = 0.9,
) -> None:
    """A histogram per sampled entry (per chain, to show mixing), its central `level` interval
    shaded and the true value (if given) as a vertical line.

    Example:
        >>> import os, tempfile, numpy as np, jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.inference.plots import plot_marginals
        >>> x = np.random.default_rng(0).normal(size=(2, 50))
        >>> post = nde.Posterior(models=None, y0=jnp.ones((100, 1)), noise=jnp.ones(100),
        ...     samples={"k": x}, rhat={"k": np.array(1.0)}, ess={"k": np.array(90.0)},
        ...     divergences=0, step_sizes=np.ones(2), acceptance=0.8)
        >>> path = os.path.join(tempfile.mkdtemp(), "m.png")
        >>> plot_marginals(path, post, truth={"k": 0.0})
        >>> os.path.exists(path)
        True
    """
    names = list(posterior.samples) if names is None else list(names)
    panels = []
    for name in names:
        x = posterior.samples[name]
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        for i in range(flat.shape[2]):
            label = (labels or {}).get(name)
            title = label[i] if label else (name if flat.shape[2] == 1 else f"{name}[{i}]")
            value = None
            if truth is not None and name in truth:
                value = float(np.ravel(np.asarray(truth[name]))[i])
            rhat = float(np.ravel(posterior.rhat[name])[i])
            panels.append((title, flat[:, :, i], value, rhat))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    tail = (1 - level) / 2
    for ax, (title, chains, value, rhat) in zip(axes.ravel(), panels, strict=False):
        bins = np.histogram_bin_edges(chains.ravel(), bins=30)
        for c in chains:
            ax.hist(c, bins=bins, histtype="step", density=True, lw=1)
        lo, hi = np.quantile(chains.ravel(), [tail, 1 - tail])
        ax.axvspan(lo, hi, color="tab:blue", alpha=0.1, lw=0)
        if value is not None:
            ax.axvline(value, color="k", lw=1.5, label="true")
            ax.legend(fontsize=7)
        ax.set_title(f"{title}  (R-hat {rhat:.3f})", fontsize=9)
        ax.set_yticks([])
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
