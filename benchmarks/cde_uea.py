"""Irregular multivariate classification on UEA data: neural CDE, ODE-RNN and GRU with time gaps.

As in Kidger et al. (2020), a fraction (`--drops`, default 0%, 30%, 50%, 70%) of the time points
of every series is dropped at random (the same points in every channel; each series its own), so
the series become irregularly sampled; the models see the remaining points and their times.
Series of different lengths (JapaneseVowels: 7 to 29 points) are NaN-padded at the end, as
missing points; time is the index of the padded grid scaled to [0, 1].

- neural CDE: `nde.NeuralCDE`, natural cubic spline through the kept points with time and the
  observation counts (divided by the grid length) as channels, hidden 32, field MLP
  32 → 64 → 32·channels with a final tanh, fixed-step midpoint with one step per grid point.
  The field's last layer starts at a tenth of its default scale (`--field-scale`): z moves by up
  to |f|·(the variation of X), and these series are rough (a variation of ~50 per channel on
  BasicMotions), so at the default scale z(T) starts in the tens and the logits with it;
- ODE-RNN: the encoder of `nde.LatentODE(encoder="ode-rnn")` (hidden 32, latent 16; a GRU read
  backwards over the kept points, its state following a learned ODE over each gap), with a
  linear readout of the posterior mean;
- GRU-Δt: a GRU (hidden 32) run over the kept points, its input the values, the observation
  mask and the time since the previous kept point in grid steps; readout of its last state.

All three: `nde.fit` with `nde.Classification` (cross-entropy), Adam, `--steps` steps on
minibatches of 32, test accuracy on the data set's test split, `--seeds` seeds (data drop and
initialisation; seeds outermost, so `--budget-minutes` cuts whole seeds). Nothing is
downloaded: the data are the `.ts` files bundled in the `aeon` wheel (the `bench` extra), read
here without importing aeon.

    python benchmarks/cde_uea.py --datasets BasicMotions,JapaneseVowels --steps 300 --seeds 3
"""

from __future__ import annotations

import argparse
import builtins
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
from neuraldiffeq.models.cde import CDEField

MODELS = ("neural CDE", "ODE-RNN", "GRU-dt")


def data_dir() -> Path:
    spec = importlib.util.find_spec("aeon")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this benchmark reads the data bundled in aeon: pip install aeon")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def load_ts(path: Path, names=None):
    """A `.ts` file -> (values (N, T, D), NaN-padded at the end, labels (N,), class names)."""
    series, labels, in_data = [], [], False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("@classlabel"):
            names = names or line.split()[2:]  # the test split keeps the train split's order
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
    return values, np.array(labels, np.int32), names


def drop_points(values, fraction, rng):
    """NaN at a random `fraction` of each series' time points (all channels), first one kept."""
    values = values.copy()
    for i in range(values.shape[0]):
        present = np.flatnonzero(~np.isnan(values[i]).all(axis=-1))
        k = int(round(fraction * present.size))
        gone = rng.choice(present[1:], size=min(k, present.size - 1), replace=False)
        values[i, gone] = np.nan
    return values


def normalise(train, test):
    mean = np.nanmean(train, axis=(0, 1))
    std = np.nanstd(train, axis=(0, 1)) + 1e-6
    return (train - mean) / std, (test - mean) / std


class Observations(eqx.Module):
    """A batch of masked series on shared times: the input `nde.Classification` hands to the
    RNN models (what `nde.NeuralCDE.control` is for the CDE)."""

    ts: jax.Array  # (T,)
    ys: jax.Array  # (B, T, D), zero where missing
    mask: jax.Array  # (B, T, D)

    shared_times = True

    @property
    def channels(self) -> int:
        return self.ys.shape[-1]

    def __len__(self) -> int:
        return self.ys.shape[0]

    def __getitem__(self, index):
        return Observations(self.ts, self.ys[index], self.mask[index])


def observations(ts, ys, mask=None):
    mask = ~np.isnan(ys) if mask is None else np.asarray(mask, bool)
    return Observations(
        jnp.asarray(ts, jnp.float32),
        jnp.asarray(np.where(mask, ys, 0.0), jnp.float32),
        jnp.asarray(mask, jnp.float32),
    )


class ODERNN(eqx.Module):
    """The ODE-RNN encoder of `nde.LatentODE` with a linear readout of its posterior mean."""

    encoder: eqx.Module
    readout: eqx.nn.Linear

    def __init__(self, data_size, hidden, latent, n_classes, key):
        k1, k2 = jax.random.split(key)
        latent_ode = nde.LatentODE(latent, data_size, "ode-rnn", hidden_size=hidden, key=k1)
        self.encoder = latent_ode.encoder
        self.readout = eqx.nn.Linear(latent, n_classes, key=k2)

    control = staticmethod(observations)

    def __call__(self, x: Observations):
        mean, _ = self.encoder(x.ts, x.ys, x.mask > 0)
        return jax.vmap(self.readout)(mean)


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

    control = staticmethod(observations)

    def __call__(self, x: Observations):
        step_size = x.ts[1] - x.ts[0]  # the gap is fed in grid steps, O(1)
        return jax.vmap(lambda ys, mask: self._one(x.ts / step_size, ys, mask))(x.ys, x.mask)

    def _one(self, ts, values, mask):
        def step(carry, inputs):
            h, t_last = carry
            t, v, m = inputs
            seen = jnp.any(m > 0)
            new = self.cell(jnp.concatenate([v, m, (t - t_last)[None]]), h)
            return (jnp.where(seen, new, h), jnp.where(seen, t, t_last)), None

        (h, _), _ = jax.lax.scan(step, (jnp.zeros(self.hidden), ts[0]), (ts, values, mask))
        return self.readout(h)


def build(name, data_size, n_classes, n_times, seed, field_scale):
    key = jax.random.key(seed)
    if name == "neural CDE":
        k1, k2 = jax.random.split(key)
        channels = 1 + 2 * data_size  # time, values, observation counts
        field = CDEField(32, channels, 64, 1, key=k1)
        last = field.mlp.layers[-1]
        field = eqx.tree_at(
            lambda f: (f.mlp.layers[-1].weight, f.mlp.layers[-1].bias),
            field,
            (last.weight * field_scale, last.bias * field_scale),
        )
        return nde.NeuralCDE(
            data_size,
            32,
            n_classes,
            observed_channels=True,
            field=field,
            key=k2,
            solver="midpoint",
            dt0=1.0 / (n_times - 1),  # one step per point of the original grid
            max_steps=None,
        )
    if name == "ODE-RNN":
        return ODERNN(data_size, 32, 16, n_classes, key)
    if name == "GRU-dt":
        return GRUDelta(data_size, 32, n_classes, key)
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def run_one(name, train, test, n_classes, args, seed):
    (xtr, ytr), (xte, yte) = train, test
    ts = np.linspace(0.0, 1.0, xtr.shape[1])
    model = build(name, xtr.shape[-1], n_classes, xtr.shape[1], seed, args.field_scale)
    strategy = nde.Classification(batch_size=min(32, len(ytr)))
    t0 = time.perf_counter()
    result = nde.fit(
        model,
        ((ts, xtr), ytr),
        strategy,
        optimizer=optax.adam(args.lr),
        steps=args.steps,
        key=jax.random.key(seed + 1),
        progress=False,
    )
    seconds = time.perf_counter() - t0
    every = max(1, args.steps // 6)
    print(f"  losses every {every} steps:", np.round(np.asarray(result.losses)[::every], 3))
    prepared = strategy.prepare(result.model, ((ts, xte), yte))
    return nde.Classification.accuracy(result.model, prepared), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="BasicMotions,JapaneseVowels")
    parser.add_argument("--drops", default="0,0.3,0.5,0.7")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--budget-minutes", type=float, default=float("inf"), help="start no run after this"
    )
    parser.add_argument("--log", help="also append the progress lines to this file")
    parser.add_argument(
        "--field-scale", type=float, default=0.1, help="the CDE field's last layer at init"
    )
    args = parser.parse_args()
    if args.log:  # record.py shows the output only at the end: a file to follow a long run
        global print
        print = _Tee(args.log)
    drops = [float(d) for d in args.drops.split(",")]
    models = args.models.split(",")
    tables = {}
    started = time.perf_counter()
    for dataset in args.datasets.split(","):
        folder = data_dir() / dataset
        xtr, ytr, names = load_ts(folder / f"{dataset}_TRAIN.ts")
        xte, yte, _ = load_ts(folder / f"{dataset}_TEST.ts", names)
        # one grid for both splits (JapaneseVowels' longest series may be in either)
        length = max(xtr.shape[1], xte.shape[1])
        xtr, xte = (
            np.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0)), constant_values=np.nan)
            for x in (xtr, xte)
        )
        xtr, xte = normalise(xtr, xte)
        print(
            f"{dataset}: train {xtr.shape}, test {xte.shape}, {len(names)} classes; "
            f"{args.steps} Adam({args.lr}) steps, minibatch 32, {args.seeds} seeds",
            flush=True,
        )
        table = tables[dataset] = {(drop, name): [] for drop in drops for name in models}
        # seeds outermost, so that a run cut short by --budget-minutes has every cell's first
        # seeds rather than all seeds of the first cells
        for seed in range(args.seeds):
            for drop in drops:
                for name in models:
                    if time.perf_counter() - started > 60 * args.budget_minutes:
                        print(f"budget spent: {dataset} drop {drop:.0%} {name} seed {seed} skipped")
                        continue
                    rng = np.random.default_rng(seed)
                    train = (drop_points(xtr, drop, rng), ytr)
                    test = (drop_points(xte, drop, rng), yte)
                    acc, seconds = run_one(name, train, test, len(names), args, seed)
                    table[(drop, name)].append(acc)
                    print(
                        f"{dataset} drop {drop:.0%} {name} seed {seed}: test accuracy {acc:.3f} "
                        f"({seconds:.0f} s)",
                        flush=True,
                    )
        print_table(dataset, table, drops, models, flush=True)  # each data set as it is done
    print("\nSummary: test accuracy, mean ± standard deviation over the seeds run (n)")
    for dataset, table in tables.items():
        print_table(dataset, table, drops, models)


class _Tee:
    def __init__(self, path):
        self.path = path

    def __call__(self, *parts, **kwargs):
        builtins.print(*parts, **kwargs)
        with open(self.path, "a") as f:
            builtins.print(*parts, file=f)


def print_table(dataset, table, drops, models, flush=False):
    print(f"\n{dataset}\n\n| dropped | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))
    for drop in drops:
        cells = []
        for name in models:
            s = table[(drop, name)]
            spread = f" ± {statistics.stdev(s):.3f}" if len(s) > 1 else ""
            cells.append(f"{statistics.mean(s):.3f}{spread} (n={len(s)})" if s else "not run")
        print(f"| {drop:.0%} | " + " | ".join(cells) + " |", flush=flush)


if __name__ == "__main__":
    main()
