"""Bayesian inference over a model's parameters with NUTS (BlackJAX), through the model's solve.

The log-posterior is priors + a Gaussian likelihood of the observations around the model's
solution `model(ts, y0)`, differentiated by `jax.grad` through the model's own sensitivity (any of
them). Parameters are named by their path in the model (`"field.rates"`, `"field.net"` for every
array of a network), plus `"y0"` (the initial state) and `"noise"` (the observation noise scale).

Why BlackJAX rather than NumPyro: BlackJAX samples any log-density function of any pytree, so it
takes our equinox model and our solve as they are; NumPyro would need the model rewritten as a
NumPyro program (`numpyro.sample` sites) and would wrap the same NUTS kernel. BlackJAX also gives
the pieces of Stan's warm-up (dual averaging, the mass matrix's running estimate; composed here so
that warm-up and draws share one kernel) and the R-hat/ESS diagnostics as plain functions. Several
chains run in one compiled program (one after another, or as a `vmap`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .priors import Prior

#: diagnostics thresholds behind the warning (Vehtari et al. 2021: R-hat < 1.01, ESS > 100)
RHAT_MAX = 1.01
ESS_MIN = 100.0

#: `mass_matrix="auto"` adapts a dense mass matrix up to this many sampled entries (its cost
#: per leapfrog step grows with their square, its warm-up estimate needs more draws)
DENSE_MAX = 200
MASS_MATRICES = ("auto", "dense", "diagonal")
CHAIN_METHODS = ("auto", "sequential", "vectorized")


class PosteriorWarning(UserWarning):
    """The chains' diagnostics are poor (R-hat > 1.01, ESS < 100, or divergences)."""


@dataclasses.dataclass(frozen=True)
class Posterior:
    """Posterior samples from `sample_posterior`, as models and as named arrays.

    - `models`: the model with a leading sample axis on every array leaf (chains x draws samples,
      chain-major); `eqx.filter_vmap` over it gives one result per sample.
    - `y0` `(S, D)` and `noise` `(S,)`: the initial state and noise scale of each sample (the
      given values repeated when they were not sampled).
    - `samples`: name -> `(chains, draws, *shape)` array of each sampled parameter.
    - `rhat`, `ess`: name -> split R-hat and effective sample size, per entry.
    - `divergences`: the number of divergent transitions after warm-up, over all chains.
    - `integration_steps`: `(chains, draws)` leapfrog steps (gradients) of each kept draw;
      `saturated` counts the draws that reached `max_tree_depth`.

    Example:
        >>> import neuraldiffeq as nde
        >>> " ".join(sorted(f.name for f in __import__("dataclasses").fields(nde.Posterior))[:3])
        'acceptance divergences ess'
    """

    models: Any
    y0: jax.Array
    noise: jax.Array
    samples: dict[str, np.ndarray]
    rhat: dict[str, np.ndarray]
    ess: dict[str, np.ndarray]
    divergences: int
    step_sizes: np.ndarray
    acceptance: float
    integration_steps: np.ndarray | None = None
    max_tree_depth: int = 10

    @property
    def saturated(self) -> int:
        """How many kept draws' trajectories reached `max_tree_depth` (2**depth - 1 steps)."""
        if self.integration_steps is None:
            return 0
        return int(np.sum(np.asarray(self.integration_steps) >= 2**self.max_tree_depth - 1))

    def draws(self, name: str) -> np.ndarray:
        """The samples of parameter `name` with chains and draws merged: `(S, *shape)`."""
        if name not in self.samples:
            raise ValueError(f"no parameter {name!r} was sampled; sampled: {list(self.samples)}.")
        x = self.samples[name]
        return x.reshape(-1, *x.shape[2:])

    def interval(self, name: str, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """The central credible interval of `name` at `level` (e.g. 5% and 95% quantiles)."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}.")
        x = self.draws(name)
        tail = (1 - level) / 2
        return np.quantile(x, tail, axis=0), np.quantile(x, 1 - tail, axis=0)

    def summary(self) -> str:
        """A table: mean, sd, 5% and 95% quantiles, R-hat and ESS of every sampled entry."""
        rows = [
            f"{'parameter':<24}{'mean':>10}{'sd':>10}{'5%':>10}{'95%':>10}{'R-hat':>8}{'ESS':>8}"
        ]
        for name in self.samples:
            x = self.draws(name).reshape(self.draws(name).shape[0], -1)
            rhat = np.ravel(self.rhat[name])
            ess = np.ravel(self.ess[name])
            for i in range(x.shape[1]):
                label = name if x.shape[1] == 1 else f"{name}[{i}]"
                lo, hi = np.quantile(x[:, i], [0.05, 0.95])
                rows.append(
                    f"{label:<24}{x[:, i].mean():>10.4g}{x[:, i].std():>10.4g}{lo:>10.4g}"
                    f"{hi:>10.4g}{rhat[i]:>8.3f}{ess[i]:>8.0f}"
                )
        rows.append(f"divergent transitions: {self.divergences}")
        if self.integration_steps is not None:
            rows.append(
                f"leapfrog steps per draw: mean {np.mean(self.integration_steps):.0f}, "
                f"{self.saturated} draws at max_tree_depth={self.max_tree_depth}"
            )
        return "\n".join(rows)


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One sampled parameter: its name, prior, and where it lives (a leaf index, y0 or noise)."""

    name: str
    prior: Prior
    leaf: int | None  # index into the model's leaves; None for "y0" and "noise"
    start: jax.Array


def sample_posterior(
    model: Any,
    data: Any,
    priors: Mapping[str, Prior],
    *,
    noise: float | None = None,
    chains: int = 4,
    warmup: int = 500,
    samples: int = 500,
    key: jax.Array | None = None,
    target_accept: float = 0.8,
    jitter: float = 0.1,
    mass_matrix: str = "auto",
    chain_method: str = "auto",
    max_tree_depth: int = 10,
) -> Posterior:
    """Sample the posterior of `model`'s parameters given `data` with NUTS (BlackJAX).

    The likelihood: each observation `ys[i]` ~ Normal(`model(ts, y0)[i]`, `noise`) (masked-out
    entries skipped). Only the parameters named in `priors` are sampled; every other leaf keeps
    its value. Each chain starts at the model's current values (a fitted model is a good start)
    plus `jitter` x Normal(0, 1) in the unconstrained space, adapts its step size and mass
    matrix (`mass_matrix`) for `warmup` steps (Stan's window adaptation) and then draws `samples`. A
    `PosteriorWarning` is raised when some R-hat > 1.01, some ESS < 100 or a transition diverged.

    Arguments:
        model: a model called as `model(ts, y0)` (e.g. `nde.NeuralODE`).
        data: an `nde.TimeSeries` with one trajectory `(T, D)`.
        priors: parameter name -> `nde.priors.*`. Names are paths in the model
            (`"field.rates"`; `"field.net"` puts the prior on every array of the network),
            `"y0"` for the initial state (otherwise the first observation is used) and `"noise"`
            for the noise scale (otherwise give `noise=`).
        noise: the fixed observation noise scale, when `"noise"` is not sampled.
        chains, warmup, samples: chains (see `chain_method`), warm-up and kept draws each.
        key: a `jax.random` key (default `jax.random.key(0)`).
        target_accept: the acceptance rate the step size is adapted to.
        jitter: the scale of the chains' random offsets from the start (unconstrained space).
        mass_matrix: what the warm-up adapts besides the step size: `"dense"`, a full inverse
            mass matrix (the posterior's covariance), so that NUTS moves along correlated
            directions in long steps (an ODE's rates are usually strongly correlated, e.g. a
            growth rate and the predation rate that balances it); `"diagonal"`, the variances
            only (Stan's default), for many parameters. `"auto"`: dense up to `DENSE_MAX` (200)
            sampled entries, diagonal above. Either way the posterior is the same; only the
            number of gradient evaluations per draw changes.
        chain_method: `"sequential"` runs the chains one after another (`lax.map`) in one
            compiled program; `"vectorized"` runs them as one `vmap`, where every chain waits
            for the longest trajectory of the others and each solve for the slowest of them,
            which pays off only on an accelerator. `"auto"`: sequential on a CPU, vectorized
            on a GPU/TPU.
        max_tree_depth: the most doublings of a NUTS trajectory (Stan's `max_treedepth`,
            BlackJAX's `max_num_doublings`), so at most 2**max_tree_depth - 1 gradients a
            draw. A draw that reaches it stops before its trajectory turns back: the chain
            stays valid for the same posterior but explores it more slowly (more correlated
            draws, lower ESS). Draws that reach the cap are counted in `Posterior.saturated`
            and warned about; `Posterior.integration_steps` holds each draw's gradient count.

    The example below samples a closed-form model; an `nde.NeuralODE` is sampled the same way
    (the `bayes` demo, tests/test_bayes.py). The doctest run skips it: compiling the warm-up and
    NUTS costs more than the default test run's budget per example; it runs as shown.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> class Decay(eqx.Module):  # y(t) = y0 exp(-k t), called as model(ts, y0)
        ...     k: jax.Array
        ...     def __call__(self, ts, y0): return y0 * jnp.exp(-self.k * ts)[:, None]
        >>> ts = jnp.linspace(0, 2, 10)
        >>> data = nde.TimeSeries(ts, jnp.exp(-0.7 * ts)[:, None])
        >>> post = nde.sample_posterior(Decay(jnp.array(0.5)), data,
        ...     {"k": nde.priors.LogNormal(0, 1)}, noise=0.05, chains=2, warmup=100,
        ...     samples=200)  # doctest: +SKIP
        >>> abs(float(post.draws("k").mean()) - 0.7) < 0.05, post.draws("k").shape  # doctest: +SKIP
        (True, (400,))
    """
    ts, ys, mask = _check_data(data)
    _check_counts(chains=chains, warmup=warmup, samples=samples)
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}.")
    if not (jitter >= 0 and math.isfinite(jitter)):
        raise ValueError(f"jitter must be a finite number >= 0, got {jitter}.")
    if mass_matrix not in MASS_MATRICES:
        raise ValueError(f"mass_matrix must be one of {MASS_MATRICES}, got {mass_matrix!r}.")
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}.")
    check_max_tree_depth(max_tree_depth)
    key = jax.random.key(0) if key is None else key
    if not isinstance(priors, Mapping) or not priors:
        raise ValueError("priors must be a non-empty dict: parameter name -> nde.priors.*.")
    if "noise" in priors and noise is not None:
        raise ValueError("give the noise scale either as priors['noise'] or as noise=, not both.")
    if "noise" not in priors and noise is None:
        raise ValueError(
            "the noise scale is unknown: pass noise=<observation sd> or sample it with "
            "priors['noise'] = nde.priors.HalfNormal(...)."
        )
    if noise is not None and not (noise > 0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a finite number > 0, got {noise}.")

    leaves, treedef = jax.tree_util.tree_flatten(model)
    names = [
        jax.tree_util.keystr(path).lstrip(".")
        for path, _ in jax.tree_util.tree_flatten_with_path(model)[0]
    ]
    data_y0 = ys[0]
    units = _units(priors, leaves, names, data_y0, ys, model, ts, mask)

    problem = _Problem(
        model=model,
        priors=tuple(unit.prior for unit in units),
        slots=tuple(unit.name if unit.leaf is None else unit.leaf for unit in units),
        ts=ts,
        ys=ys,
        mask=mask,
        y0=data_y0,
        noise=None if noise is None else jnp.asarray(noise, ys.dtype),
    )
    start = tuple(unit.prior.inverse(unit.start) for unit in units)
    _check_start(units, start, problem)

    entries = sum(int(np.size(u)) for u in start)
    dense = mass_matrix == "dense" or (mass_matrix == "auto" and entries <= DENSE_MAX)
    if chain_method == "auto":
        chain_method = "sequential" if jax.default_backend() == "cpu" else "vectorized"
    chains_out = _run_chains(
        problem,
        key,
        start,
        jitter,
        chains,
        warmup,
        samples,
        target_accept,
        dense,
        chain_method == "sequential",
        max_tree_depth,
    )
    return _posterior(units, leaves, treedef, data_y0, noise, max_tree_depth, chains_out)


def check_max_tree_depth(depth: Any, name: str = "max_tree_depth") -> None:
    """Refuse a NUTS tree-depth cap outside [1, 20] (`name`: the argument, as the user wrote it).

    Example:
        >>> from neuraldiffeq.inference.posterior import check_max_tree_depth
        >>> check_max_tree_depth(25, "--lynx-hare-tree-depth")
        Traceback (most recent call last):
        ...
        ValueError: --lynx-hare-tree-depth must be in [1, 20] (2**depth - 1 gradients a draw), got 25.
    """  # noqa: E501
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ValueError(f"{name} must be an integer >= 1, got {depth!r}.")
    if not 1 <= depth <= 20:
        raise ValueError(f"{name} must be in [1, 20] (2**depth - 1 gradients a draw), got {depth}.")


class _Problem(eqx.Module):
    """The log-posterior's inputs as one pytree, so that one compiled sampler serves every data
    set of the same shapes (the calibration study samples ten)."""

    model: Any
    priors: tuple
    slots: tuple = eqx.field(static=True)  # per sampled unit: a leaf index, "y0" or "noise"
    ts: jax.Array
    ys: jax.Array
    mask: jax.Array
    y0: jax.Array
    noise: jax.Array | None

    def parts(self, position) -> tuple[jax.Array, jax.Array]:
        """(log prior + log-Jacobian, log-likelihood) at an unconstrained position."""
        leaves, treedef = jax.tree_util.tree_flatten(self.model)
        y0, sigma, prior_lp = self.y0, self.noise, 0.0
        for prior, slot, u in zip(self.priors, self.slots, position, strict=True):
            x, logdet = prior.forward(u)
            prior_lp = prior_lp + prior.log_prob(x) + logdet
            if slot == "y0":
                y0 = x
            elif slot == "noise":
                sigma = x
            else:
                leaves[slot] = x.astype(leaves[slot].dtype)
        pred = jax.tree_util.tree_unflatten(treedef, leaves)(self.ts, y0)
        z = (self.ys - pred) / sigma
        loglik = -0.5 * z**2 - jnp.log(sigma) - 0.5 * math.log(2 * math.pi)
        return prior_lp, jnp.sum(jnp.where(self.mask, loglik, 0.0))

    def log_density(self, position) -> jax.Array:
        total = sum(self.parts(position))
        return jnp.where(jnp.isfinite(total), total, -jnp.inf)


@eqx.filter_jit
def _run_chains(
    problem: _Problem,
    key,
    start,
    jitter: float,
    chains: int,
    warmup: int,
    samples: int,
    target: float,
    dense: bool,
    sequential: bool,
    depth: int,
):
    """Window adaptation, then `samples` NUTS draws, for each chain (one after another with
    `sequential`, else vmapped) from `start` plus `jitter` x Normal(0, 1); the draws in the
    constrained space with their R-hat and ESS. The data are in `problem`, an argument: one
    compiled sampler serves every data set of the same shapes. Everything from the chains'
    starts to the diagnostics is one program: done eagerly, each small operation would be
    compiled on its own the first time."""
    from blackjax.diagnostics import effective_sample_size, potential_scale_reduction

    jitter_key, chain_key = jax.random.split(key)
    starts = jax.tree_util.tree_map(
        lambda u, k: u + jitter * jax.random.normal(k, (chains, *u.shape), u.dtype),
        start,
        tuple(jax.random.split(jitter_key, len(start))),
    )
    keys = jax.random.split(chain_key, chains)

    def run_chain(chain_key, position):
        return _window_adapted_nuts(
            problem.log_density, chain_key, position, warmup, samples, target, dense, depth
        )

    if sequential:
        out = jax.lax.map(lambda pair: run_chain(*pair), (keys, starts))
    else:
        out = jax.vmap(run_chain)(keys, starts)
    draws, divergent, accept, step_sizes, n_steps = out
    constrained = tuple(
        jax.vmap(jax.vmap(lambda u, p=prior: p.forward(u)[0]))(d)
        for prior, d in zip(problem.priors, draws, strict=True)
    )
    rhat = tuple(potential_scale_reduction(x, chain_axis=0, sample_axis=1) for x in constrained)
    ess = tuple(effective_sample_size(x, chain_axis=0, sample_axis=1) for x in constrained)
    return constrained, rhat, ess, divergent, accept, step_sizes, n_steps


def _window_adapted_nuts(log_density, key, position, warmup, samples, target, dense, depth):
    """Stan's window adaptation for `warmup` steps, then `samples` draws, as one scan whose body
    calls the NUTS kernel once: during warm-up with the adaptation's current step size and mass
    matrix, afterwards with its final ones. (Adapting with blackjax's `window_adaptation` and then
    sampling with a second kernel puts the kernel, and the solve's gradient inside it, into the
    program twice, and so compiles it twice.)

    The adaptation is Stan's (and blackjax's): a fast window adapting the step size by dual
    averaging, slow windows of doubling length that also estimate the mass matrix (restarting the
    dual averaging from the window's average step size at each window's end), a final fast
    window; the draws use the averaged step size and the last mass matrix."""
    import blackjax
    from blackjax.adaptation.mass_matrix import mass_matrix_adaptation
    from blackjax.adaptation.staged_adaptation import build_schedule
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    mm_init, mm_update, mm_final = mass_matrix_adaptation(not dense)
    da_init, da_update, da_final = dual_averaging_adaptation(target)
    kernel = blackjax.mcmc.nuts.build_kernel()
    size = sum(int(np.size(u)) for u in jax.tree_util.tree_leaves(position))
    # per step: (in a slow window?, the window's last step?); nothing to adapt after warm-up
    stages = jnp.concatenate(
        [jnp.asarray(build_schedule(warmup), jnp.int32), jnp.zeros((samples, 2), jnp.int32)]
    )
    schedule = (stages[:, 0], stages[:, 1].astype(bool))
    in_warmup = jnp.arange(warmup + samples) < warmup

    def adapt(carry, stage, state, acceptance):
        mm, da, _, _ = carry
        slow, window_end = stage
        mm = jax.lax.cond(slow == 1, lambda m: mm_update(m, state.position), lambda m: m, mm)
        da = da_update(da, acceptance)

        def end_window(pair):
            mm, da = pair
            return mm_final(mm), da_init(da_final(da))

        mm, da = jax.lax.cond(window_end, end_window, lambda pair: pair, (mm, da))
        return mm, da, jnp.exp(da.log_step_size), mm.inverse_mass_matrix

    def step(carry, xs):
        state, adaptation, final = carry
        step_key, stage, warming = xs
        step_size, imm = jax.tree_util.tree_map(
            lambda a, b: jnp.where(warming, a, b), adaptation[2:], final
        )
        state, info = kernel(step_key, state, log_density, step_size, imm, depth)
        adapted = adapt(adaptation, stage, state, info.acceptance_rate)
        adaptation = jax.tree_util.tree_map(
            lambda new, old: jnp.where(warming, new, old), adapted, adaptation
        )
        # the draws' parameters: Stan's averaged step size, the last window's mass matrix
        final = (jnp.exp(adaptation[1].log_step_size_avg), adaptation[0].inverse_mass_matrix)
        out = (state.position, info.is_divergent, info.acceptance_rate, info.num_integration_steps)
        return (state, adaptation, final), out

    mm = mm_init(size)
    start = (mm, da_init(1.0), jnp.asarray(1.0), mm.inverse_mass_matrix)
    carry = (blackjax.nuts.init(position, log_density), start, start[2:])
    keys = jax.random.split(key, warmup + samples)
    (_, _, final), (positions, divergent, accept, n_steps) = jax.lax.scan(
        step, carry, (keys, schedule, in_warmup)
    )
    kept = lambda x: x[warmup:]  # noqa: E731
    return (
        jax.tree_util.tree_map(kept, positions),
        kept(divergent),
        kept(accept),
        final[0],
        kept(n_steps),
    )


def posterior_predictive(
    posterior: Posterior, ts: Any, *, key: jax.Array | None = None
) -> jax.Array:
    """The posterior's trajectories at `ts`, `(S, T, D)`; with `key`, plus observation noise.

    Without `key` the result is the solution of each sampled model (the band of the mean
    trajectory); with it, each sample also gets Normal(0, its noise scale) added, which is the
    distribution of new observations (what a 90% band over the data should cover 90% of).

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> post = nde.Posterior(models=nde.NeuralODE(lambda t, y, a: -y), y0=jnp.ones((3, 1)),
        ...     noise=jnp.full(3, 0.1), samples={}, rhat={}, ess={}, divergences=0,
        ...     step_sizes=jnp.ones(1), acceptance=0.8)
        >>> nde.posterior_predictive(post, jnp.linspace(0, 1, 5)).shape
        (3, 5, 1)
    """
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"ts must be a 1-D array of times, got shape {ts.shape}.")
    # every array leaf of posterior.models carries the sample axis (see Posterior)
    solve = eqx.filter_vmap(lambda m, y0: m(ts, y0), in_axes=(eqx.if_array(0), 0))
    paths = solve(posterior.models, posterior.y0)
    if key is None:
        return paths
    noise = jax.random.normal(key, paths.shape, paths.dtype)
    return paths + posterior.noise[:, None, None] * noise


def _check_data(data):
    if not (hasattr(data, "ts") and hasattr(data, "ys")):
        raise ValueError(f"data must be an nde.TimeSeries, got {type(data).__name__}.")
    ys = jnp.asarray(data.ys)
    if ys.ndim != 2:
        raise ValueError(
            f"data must hold one trajectory (T, D), got ys of shape {ys.shape}; sample each "
            "trajectory's posterior separately."
        )
    mask = jnp.ones(ys.shape, bool) if data.mask is None else jnp.asarray(data.mask)
    if not bool(mask[0].all()):
        raise ValueError("the first observation must be complete: it is the default y0.")
    ys = jnp.where(mask, ys, 0.0)
    return jnp.asarray(data.ts), ys, mask


def _check_counts(**counts):
    for name, value in counts.items():
        minimum = 2 if name == "chains" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"{name} must be an integer >= {minimum}, got {value!r}"
                + ("; R-hat compares several chains." if name == "chains" else ".")
            )


def _units(priors, leaves, names, data_y0, ys, model, ts, mask) -> list[_Unit]:
    units, taken = [], {}
    for name, prior in priors.items():
        if not isinstance(prior, Prior):
            raise ValueError(
                f"priors[{name!r}] must be an nde.priors.* (Normal, LogNormal, HalfNormal, "
                f"Uniform), got {type(prior).__name__}."
            )
        if name == "y0":
            units.append(_Unit("y0", prior, None, data_y0))
            continue
        if name == "noise":
            start = jnp.sqrt(
                jnp.sum(jnp.where(mask, (ys - model(ts, data_y0)) ** 2, 0.0)) / mask.sum()
            )
            floor = 1e-3 * jnp.maximum(jnp.std(ys), 1e-12)
            start = jnp.where(jnp.isfinite(start), jnp.maximum(start, floor), floor)
            units.append(_Unit("noise", prior, None, start.astype(ys.dtype)))
            continue
        matched = [
            i
            for i, (leaf, leaf_name) in enumerate(zip(leaves, names, strict=True))
            if eqx.is_inexact_array(leaf)
            and (leaf_name == name or leaf_name.startswith((name + ".", name + "[")))
        ]
        if not matched:
            available = [
                n for leaf, n in zip(leaves, names, strict=True) if eqx.is_inexact_array(leaf)
            ]
            raise ValueError(
                f"the model has no parameter {name!r} (priors' keys name arrays of the model by "
                f"path, or 'y0'/'noise'); its parameters are {available}."
            )
        for i in matched:
            if i in taken:
                raise ValueError(
                    f"parameter {names[i]!r} has two priors, under {taken[i]!r} and {name!r}."
                )
            taken[i] = name
            units.append(_Unit(names[i], prior, i, jnp.asarray(leaves[i])))
    return units


def _check_start(units, start, problem: _Problem) -> None:
    for unit, u in zip(units, start, strict=True):
        value = np.asarray(unit.start)
        if not bool(unit.prior.support(unit.start)) or not np.all(np.isfinite(np.asarray(u))):
            raise ValueError(
                f"the log-density is not finite at the start: parameter {unit.name!r} = "
                f"{value.tolist() if value.size <= 8 else value.shape} lies outside the support "
                f"of its prior {type(unit.prior).__name__}; set the model's value inside it."
            )
    prior_lp, loglik, grads = _start_values(problem, start)
    if not bool(jnp.isfinite(prior_lp)):
        raise ValueError("the log-density is not finite at the start: the priors' log-density.")
    if not bool(jnp.isfinite(loglik)):
        named = ", ".join(f"{u.name}={np.asarray(u.start).round(4).tolist()}" for u in units)
        raise ValueError(
            "the log-density is not finite at the start: the likelihood (the solve failed or "
            f"overflowed) at the start values of the sampled parameters {named}; start from "
            "fitted values or tighten the solver's tolerances / raise max_steps."
        )
    for unit, g in zip(units, grads, strict=True):
        if not bool(jnp.all(jnp.isfinite(g))):
            raise ValueError(
                f"the log-density's gradient is not finite at the start for parameter "
                f"{unit.name!r}; check the model's sensitivity and the start values."
            )


@eqx.filter_jit
def _start_values(problem: _Problem, start):
    """The log-prior, log-likelihood and the log-density's gradient at `start`, in one program
    (done eagerly, the solve and its derivative would be compiled as separate programs)."""

    def total(position):
        prior_lp, loglik = problem.parts(position)
        return prior_lp + loglik, (prior_lp, loglik)

    (_, (prior_lp, loglik)), grads = jax.value_and_grad(total, has_aux=True)(start)
    return prior_lp, loglik, grads


def _posterior(units, leaves, treedef, data_y0, noise, depth, chains_out) -> Posterior:
    """The `Posterior` of `_run_chains`' outputs (`chains_out`)."""
    constrained, rhat, ess, divergent, accept, steps, n_steps = chains_out
    # numpy for the bookkeeping: eager jax would compile a program per leaf shape
    chains, draws = divergent.shape
    n = chains * draws
    new = [
        jnp.asarray(np.broadcast_to(np.asarray(leaf), (n, *np.shape(leaf))))
        if eqx.is_array(leaf)
        else leaf
        for leaf in leaves
    ]
    y0 = np.broadcast_to(np.asarray(data_y0), (n, *np.shape(data_y0)))
    sigma = np.full((n,), noise if noise is not None else 0.0, np.asarray(data_y0).dtype)
    samples = {}
    for unit, x in zip(units, constrained, strict=True):
        x = np.asarray(x)
        flat = x.reshape(n, *x.shape[2:])
        if unit.leaf is not None:
            new[unit.leaf] = jnp.asarray(flat.astype(np.asarray(leaves[unit.leaf]).dtype))
        elif unit.name == "y0":
            y0 = flat
        else:
            sigma = flat
        samples[unit.name] = x
    posterior = Posterior(
        models=jax.tree_util.tree_unflatten(treedef, new),
        y0=jnp.asarray(y0),
        noise=jnp.asarray(sigma),
        samples=samples,
        rhat={unit.name: np.asarray(r) for unit, r in zip(units, rhat, strict=True)},
        ess={unit.name: np.asarray(e) for unit, e in zip(units, ess, strict=True)},
        divergences=int(np.sum(np.asarray(divergent))),
        step_sizes=np.asarray(steps),
        acceptance=float(np.mean(np.asarray(accept))),
        integration_steps=np.asarray(n_steps),
        max_tree_depth=depth,
    )
    _warn_if_poor(posterior)
    return posterior


def _warn_if_poor(posterior: Posterior) -> None:
    problems = []
    for name in posterior.samples:
        worst_rhat = float(np.max(posterior.rhat[name]))
        worst_ess = float(np.min(posterior.ess[name]))
        if not worst_rhat <= RHAT_MAX:
            problems.append(f"{name}: R-hat {worst_rhat:.3f} > {RHAT_MAX}")
        if not worst_ess >= ESS_MIN:
            problems.append(f"{name}: ESS {worst_ess:.0f} < {ESS_MIN:.0f}")
    if posterior.divergences:
        problems.append(f"{posterior.divergences} divergent transitions")
    if posterior.saturated:
        problems.append(
            f"{posterior.saturated} draws reached max_tree_depth={posterior.max_tree_depth} "
            "(slow exploration)"
        )
    if problems:
        warnings.warn(
            "the posterior samples are not trustworthy yet: "
            + "; ".join(problems)
            + ". Run longer (warmup=, samples=), raise target_accept (divergences), or give "
            "tighter priors / a better start (a fitted model).",
            PosteriorWarning,
            stacklevel=4,
        )
