"""Irregular multivariate classification on UEA data: neural CDE vs a GRU with time gaps.

As in Kidger et al. (2020), a fraction (`--drops`, default 0%, 30%, 50%, 70%) of the time points
of every series is dropped at random (the same points in every channel; each series its own), so
the series become irregularly sampled; the models see the remaining points and their times.

- neural CDE: `nde.NeuralCDE`, natural cubic spline through the kept points with time and
  observation counts as channels, hidden 32, field MLP 32 → 64 → 32·channels, time = the index
  of the original grid, fixed-step midpoint with one step per grid point;
- GRU-Δt: a GRU (hidden 32) run over the kept points only, its input the values, the time since
  the previous kept point and the observation mask; readout of its last state.

Both: `nde.fit` with cross-entropy, Adam, `--steps` steps on minibatches of 32, test accuracy on
the data set's test split, `--seeds` seeds (data drop and initialisation). Nothing is downloaded:
the data are the `.ts` files bundled in the `aeon` wheel (the `bench` extra), read here without
importing aeon. The ODE-RNN encoder of `nde.LatentODE` is not in this table yet.

    python benchmarks/cde_uea.py --dataset BasicMotions --steps 300 --seeds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde


def data_dir() -> Path:
    spec = importlib.util.find_spec("aeon")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this benchmark reads the data bundled in aeon: pip install aeon")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def load_ts(path: Path):
    """A `.ts` file -> (values (N, T, D) with NaN padding, labels (N,) as class indices)."""
    series, labels, names, in_data = [], [], None, False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("@classlabel"):
            names = line.split()[2:]
        elif line.lower() == "@data":
            in_data = True
        elif in_data:
            *dims, label = line.split(":")
            arrays = [
                np.array([np.nan if v == "?" else float(v) for v in d.split(",")]) for d in dims
            ]
            series.append(np.stack(arrays, axis=-1))
            labels.append(names.index(label))
    length = max(s.shape[0] for s in series)
    values = np.full((len(series), length, series[0].shape[1]), np.nan)
    for i, s in enumerate(series):
        values[i, : s.shape[0]] = s
    return values, np.array(labels, np.int32), len(names)


def drop_points(values, fraction, rng):
    """NaN at a random `fraction` of each series' time points (all channels), first one kept."""
    values = values.copy()
    n, length, _ = values.shape
    for i in range(n):
        present = np.flatnonzero(~np.isnan(values[i]).all(axis=-1))
        k = int(round(fraction * present.size))
        gone = rng.choice(present[1:], size=min(k, present.size - 1), replace=False)
        values[i, gone] = np.nan
    return values


class GRUDelta(eqx.Module):
    """GRU over the observed points: input (values, mask, time since the last observation)."""

    cell: eqx.nn.GRUCell
    readout: eqx.nn.Linear
    hidden: int = eqx.field(static=True)

    def __init__(self, data_size, hidden, n_classes, key):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.GRUCell(2 * data_size + 1, hidden, key=k1)
        self.readout = eqx.nn.Linear(hidden, n_classes, key=k2)
        self.hidden = hidden

    def __call__(self, ts, values, mask):
        def step(carry, inputs):
            h, t_last = carry
            t, x, m = inputs
            seen = jnp.any(m)
            new = self.cell(jnp.concatenate([jnp.where(m, x, 0.0), m, (t - t_last)[None]]), h)
            return (jnp.where(seen, new, h), jnp.where(seen, t, t_last)), None

        (h, _), _ = jax.lax.scan(step, (jnp.zeros(self.hidden), ts[0]), (ts, values, mask))
        return self.readout(h)


class GRUClassification(nde.AbstractStrategy):
    """Cross-entropy of `GRUDelta` on (ts, values, mask, labels), minibatches of `batch_size`."""

    batch_size: int = eqx.field(static=True)

    def prepare(self, model, data):
        (ts, ys), labels = data
        mask = ~np.isnan(ys)
        return (
            jnp.asarray(ts, jnp.float32),
            jnp.asarray(np.nan_to_num(ys), jnp.float32),
            jnp.asarray(mask, jnp.float32),
            jnp.asarray(labels),
        )

    @property
    def stochastic(self):
        return True

    def loss(self, model, prepared, key):
        ts, ys, mask, labels = prepared
        idx = jax.random.choice(key, ys.shape[0], (self.batch_size,), replace=False)
        logits = jax.vmap(model, in_axes=(None, 0, 0))(ts, ys[idx], mask[idx])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]))

    @staticmethod
    def accuracy(model, prepared):
        ts, ys, mask, labels = prepared
        logits = eqx.filter_jit(lambda m: jax.vmap(m, in_axes=(None, 0, 0))(ts, ys, mask))(model)
        return float(jnp.mean(jnp.argmax(logits, -1) == labels))


def normalise(train, test):
    mean = np.nanmean(train, axis=(0, 1))
    std = np.nanstd(train, axis=(0, 1)) + 1e-6
    return (train - mean) / std, (test - mean) / std


def run_one(name, train, test, n_classes, steps, seed, lr):
    (xtr, ytr), (xte, yte) = train, test
    ts = np.arange(float(xtr.shape[1]))  # the index as time (torchcde's default)
    key = jax.random.key(seed)
    batch = min(32, len(ytr))
    if name == "neural CDE":
        model = nde.NeuralCDE(
            xtr.shape[-1],
            32,
            n_classes,
            width_size=64,
            depth=1,
            observed_channels=True,
            key=key,
            solver="midpoint",
            dt0=1.0,  # one step per time point of the original grid
            max_steps=None,
        )
        strategy = nde.Classification(batch_size=batch)
        accuracy = nde.Classification.accuracy
    else:
        model = GRUDelta(xtr.shape[-1], 32, n_classes, key)
        strategy = GRUClassification(batch_size=batch)
        accuracy = GRUClassification.accuracy
    t0 = time.perf_counter()
    result = nde.fit(
        model,
        ((ts, xtr), ytr),
        strategy,
        optimizer=optax.adam(lr),
        steps=steps,
        key=jax.random.key(seed + 1),
        progress=False,
    )
    seconds = time.perf_counter() - t0
    print("  losses every 50 steps:", np.round(np.asarray(result.losses)[::50], 3), flush=True)
    return accuracy(result.model, strategy.prepare(result.model, ((ts, xte), yte))), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="BasicMotions")
    parser.add_argument("--drops", default="0,0.3,0.5,0.7")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--models", default="neural CDE,GRU-dt")
    args = parser.parse_args()
    folder = data_dir() / args.dataset
    xtr, ytr, n_classes = load_ts(folder / f"{args.dataset}_TRAIN.ts")
    xte, yte, _ = load_ts(folder / f"{args.dataset}_TEST.ts")
    xtr, xte = normalise(xtr, xte)
    print(
        f"{args.dataset}: train {xtr.shape}, test {xte.shape}, {n_classes} classes; "
        f"{args.steps} Adam({args.lr}) steps, minibatch 32, seeds {args.seeds}"
    )
    drops = [float(d) for d in args.drops.split(",")]
    models = args.models.split(",")
    table = {}
    for drop in drops:
        for name in models:
            scores = []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                train = (drop_points(xtr, drop, rng), ytr)
                test = (drop_points(xte, drop, rng), yte)
                acc, seconds = run_one(name, train, test, n_classes, args.steps, seed, args.lr)
                scores.append(acc)
                print(
                    f"drop {drop:.0%} {name} seed {seed}: test accuracy {acc:.3f} "
                    f"({seconds:.0f} s)",
                    flush=True,
                )
            table[(drop, name)] = scores
    print("\n| dropped | " + " | ".join(models) + " |\n|---|" + "---|" * len(models))
    for drop in drops:
        cells = []
        for name in models:
            s = table[(drop, name)]
            spread = f" ± {statistics.stdev(s):.3f}" if len(s) > 1 else ""
            cells.append(f"{statistics.mean(s):.3f}{spread}")
        print(f"| {drop:.0%} | " + " | ".join(cells) + " |")
    print("\ntest accuracy, mean ± standard deviation over seeds")


if __name__ == "__main__":
    main()
