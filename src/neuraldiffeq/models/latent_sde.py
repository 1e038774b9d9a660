"""Latent SDEs (Li et al. 2020, "Scalable gradients for stochastic differential equations").

A generative model of time series whose latent state follows a *prior* SDE
    dz = h(z) dt + g(z) dW,        z(t0) ~ N(pz0_mean, pz0_std²),
decoded to observations by a linear map plus Gaussian noise of standard deviation `obs_std`.
Inference uses a *posterior* SDE with the same diffusion and a drift that also sees a context
c(t) encoding the observations still to come (a GRU read backwards over the series):
    dz = f(z, c(t)) dt + g(z) dW,   z(t0) ~ q(z0 | observations).
With u = (f - h) / g, Girsanov's theorem gives the KL divergence between the two path measures,
    KL(q || p) = KL(q(z0) || p(z0)) + E_q ∫ ½ |u(t, z_t)|² dt,
and the evidence lower bound is E_q[log p(observations | z)] - KL(q || p). The path integral is
solved alongside z as one extra state component (zero diffusion), so one SDE solve gives both.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_batch_series, check_positive, check_sizes, check_times, is_concrete
from ..solve.brownian import resolve_brownian
from ..solve.config import HasSolveConfig, SolveConfig, on_failure, shortcuts
from ..solve.sensitivity import AbstractSensitivity, Direct
from .latent import gaussian_log_likelihood
from .sde import _Diagonal, sde_config, sde_terms

#: Where |g| is smaller, u = (f - h) / g divides by this (sign kept) instead: a finite KL.
_MIN_DIFFUSION = 1e-7


def softplus(x: jax.Array) -> jax.Array:
    """log(1 + exp(x)), the activation of `LatentSDE`'s networks: `jax.nn.softplus`'s formula,
    max(x, 0) + log1p(exp(-|x|)), with a derivative, sigmoid(x), that reuses exp(-|x|).

    `jax.nn.softplus` is `logaddexp(x, 0)`, whose derivative computes two more exponentials
    (one for the constant 0); the training step evaluates these networks hundreds of times per
    solve, forward and backward. Values agree with `jax.nn.softplus` to rounding. (A plain
    function, so that model files name it.)

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.models.latent_sde import softplus
        >>> x = jnp.array([-3.0, 0.0, 2.0])
        >>> bool(jnp.allclose(softplus(x), jax.nn.softplus(x)))
        True
        >>> float(jax.grad(softplus)(0.0))
        0.5
    """
    return _softplus(x)


@jax.custom_jvp
def _softplus(x):
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@_softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    out = jnp.maximum(x, 0) + jnp.log1p(e)
    return out, dx * jnp.where(x >= 0, 1, e) / (1 + e)  # sigmoid(x), from e


class ContextEncoder(eqx.Module):
    """A GRU read backwards over a masked series: one context vector per observation time.

    The context at time index i has seen the observations i, i+1, ..., T-1: what the posterior
    drift needs to steer the latent path towards the data still ahead.
    """

    cell: eqx.nn.GRUCell
    out: eqx.nn.Linear

    def __init__(self, obs_dim: int, hidden_size: int, context_size: int, *, key):
        k1, k2 = jax.random.split(key)
        # inputs: values (zero where unobserved) and the mask
        self.cell = eqx.nn.GRUCell(2 * obs_dim, hidden_size, key=k1)
        self.out = eqx.nn.Linear(hidden_size, context_size, key=k2)

    def __call__(self, ys, mask) -> jax.Array:
        """ys, mask (B, T, D) -> context (B, T, context_size)."""
        h0 = jnp.zeros((ys.shape[0], self.cell.hidden_size), ys.dtype)

        def step(h, inputs):
            y, m = inputs
            h = jax.vmap(self.cell)(jnp.concatenate([y * m, m.astype(y.dtype)], axis=-1), h)
            return h, h

        inputs = (jnp.swapaxes(ys, 0, 1), jnp.swapaxes(mask, 0, 1))
        _, hs = jax.lax.scan(step, h0, inputs, reverse=True)  # (T, B, H)
        return jnp.swapaxes(jax.vmap(jax.vmap(self.out))(hs), 0, 1)


class PosteriorDrift(eqx.Module):
    """f(t, z, c): an MLP of the latent state and the context (time enters through c)."""

    net: eqx.nn.MLP

    def __call__(self, t, z, context):
        return self.net(jnp.concatenate([z, context]))


class PriorDrift(eqx.Module):
    """h(t, z): an MLP of the latent state."""

    net: eqx.nn.MLP

    def __call__(self, t, z):
        return self.net(z)


class DiagonalDiffusion(eqx.Module):
    """g(t, z)_i = sigmoid(MLP_i(z_i)): one small network per latent component.

    Each component's diffusion depends on that component alone (diagonal noise, so Itô and
    Stratonovich solvers see the same commutative noise); the sigmoid keeps it in (0, 1).
    """

    nets: eqx.nn.MLP  # one MLP with a leading axis of size latent_dim on every weight

    def __init__(self, latent_dim: int, width: int, *, key):
        make = lambda k: eqx.nn.MLP(1, 1, width, 1, activation=softplus, key=k)  # noqa: E731
        self.nets = eqx.filter_vmap(make)(jax.random.split(key, latent_dim))

    def __call__(self, t, z):
        # Each net is 1 -> width -> 1: an outer product and a dot, written elementwise for all
        # components at once (what eqx.nn.MLP computes, without width-1 matrix products).
        first, last = self.nets.layers
        hidden = self.nets.activation(first.weight[:, :, 0] * z[:, None] + first.bias)
        out = jnp.sum(last.weight[:, 0, :] * hidden, axis=-1) + last.bias[:, 0]
        return jax.nn.sigmoid(self.nets.final_activation(out))


class LatentSDE(HasSolveConfig):
    """A latent SDE (Li et al. 2020) for time series, trained by its evidence lower bound.

    Arguments:
        latent_dim: size of the latent state z.
        obs_dim: size of an observation y.
        context_size: size of the encoder's context c(t) fed to the posterior drift.
        hidden_size: width of the GRU encoder, of the drift MLPs (two hidden layers, softplus)
            and of the per-component diffusion networks (one hidden layer, sigmoid output), as
            in torchsde's `latent_sde_lorenz.py`.
        obs_std: standard deviation of the Gaussian observation noise.
        solver, dt0, max_steps, sensitivity, config: the solve settings (one `nde.SolveConfig`),
            as for `nde.NeuralSDE`: defaults `"euler"` (Itô Euler–Maruyama), constant steps
            dt0 = 0.01, `max_steps=None`, `nde.Direct()`. Steps are constant (rtol/atol are
            refused). Sensitivities: `nde.Direct()`, `nde.Forward()`, and `nde.Backsolve()` with
            a Stratonovich solver of one term (`"heun"`, `"midpoint"`); others are refused.
            `nde.Direct()` keeps the state of every step for the backward pass (the state is
            batch × (latent_dim + 1) numbers, so this costs little memory and saves recomputing
            steps); `nde.Direct(checkpoints=k)` keeps k.
        brownian: the Brownian motion, as for `nde.NeuralSDE`: `"auto"` (default) gives
            `"grid"` (one Gaussian increment per step, `nde.GridBrownianPath`) with `Direct()`
            and `Forward()`, and `"tree"` (`diffrax.VirtualBrownianTree`) with `Backsolve()`;
            `"grid"` with `Backsolve()` is refused. `model.brownian` is the kind in use.
        key: PRNG key for the initial weights.

    The KL divergence uses only the difference of the two drifts, which is the same in the Itô
    and the Stratonovich reading (they share the diffusion), so any SDE solver gives the ELBO.

    Methods: `elbo(ts, ys, mask, key, kl_weight=1.0)` (mean over series; what `nde.ELBO` trains),
    `elbo_terms` (its parts per series), `sample_prior(ts, key=, n=)`,
    `sample_posterior(ts, ys, mask, key=, n=, ts_out=)`. Observations live at `ts` (one grid
    for all series, `(T,)`), with values `(T, D)` or `(B, T, D)` and an optional mask (True =
    observed).

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.LatentSDE(2, 3, context_size=8, hidden_size=16, key=jax.random.key(0))
        >>> ts = jnp.linspace(0.0, 1.0, 11); ys = jnp.zeros((5, 11, 3))
        >>> model.elbo(ts, ys, None, jax.random.key(1)).shape
        ()
        >>> model.sample_prior(ts, key=jax.random.key(2), n=4).shape
        (4, 11, 3)
        >>> model.sample_posterior(ts, ys, key=jax.random.key(3), n=2).shape
        (2, 5, 11, 3)
        >>> [x.shape for x in model.elbo_terms(ts, ys, key=jax.random.key(4))]  # per series
        [(5,), (5,), (5,)]
    """

    encoder: ContextEncoder
    qz0: eqx.nn.Linear
    posterior_drift: Callable
    prior_drift: Callable
    diffusion: Callable
    projector: eqx.nn.Linear
    pz0_mean: jax.Array
    pz0_logstd: jax.Array
    config: SolveConfig
    latent_dim: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    obs_std: float = eqx.field(static=True)
    # "grid" or "tree" (resolved); files written before it existed were solved on a tree
    brownian: str = eqx.field(static=True, default="tree")

    def __init__(
        self,
        latent_dim: int,
        obs_dim: int,
        *,
        context_size: int = 64,
        hidden_size: int = 128,
        obs_std: float = 0.01,
        solver: str | diffrax.AbstractSolver | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        config: SolveConfig | None = None,
        brownian: str = "auto",
        key: jax.Array | None = None,
    ):
        check_sizes(
            latent_dim=latent_dim,
            obs_dim=obs_dim,
            context_size=context_size,
            hidden_size=hidden_size,
        )
        check_positive(obs_std, "obs_std")
        if key is None:
            raise ValueError("LatentSDE needs key=jax.random.key(...) to initialise its weights.")
        self.config = sde_config("LatentSDE", config, shortcuts(locals()))
        self.brownian = resolve_brownian(brownian, self.config.sensitivity, "LatentSDE")
        keys = jax.random.split(key, 6)
        self.encoder = ContextEncoder(obs_dim, hidden_size, context_size, key=keys[0])
        self.qz0 = eqx.nn.Linear(context_size, 2 * latent_dim, key=keys[1])
        self.posterior_drift = PosteriorDrift(
            eqx.nn.MLP(latent_dim + context_size, latent_dim, hidden_size, 2, softplus, key=keys[2])
        )
        self.prior_drift = PriorDrift(
            eqx.nn.MLP(latent_dim, latent_dim, hidden_size, 2, softplus, key=keys[3])
        )
        self.diffusion = DiagonalDiffusion(latent_dim, hidden_size, key=keys[4])
        self.projector = eqx.nn.Linear(latent_dim, obs_dim, key=keys[5])
        self.pz0_mean = jnp.zeros(latent_dim)
        self.pz0_logstd = jnp.zeros(latent_dim)
        self.latent_dim, self.obs_dim, self.obs_std = int(latent_dim), int(obs_dim), float(obs_std)

    # -- public -----------------------------------------------------------------------------

    def elbo(
        self, ts, ys, mask=None, key: jax.Array | None = None, *, kl_weight: float = 1.0
    ) -> jax.Array:
        """The evidence lower bound, averaged over series (one posterior path per series):
        mean of log p(ys | z) - kl_weight * KL(q || p). `kl_weight` < 1 anneals the KL (as
        torchsde's example does early in training); 1 is the ELBO itself. Example: see
        `LatentSDE`.
        """
        loglik, kl0, kl_path = self.elbo_terms(ts, ys, mask, key)
        return jnp.mean(loglik - kl_weight * (kl0 + kl_path))

    def elbo_terms(
        self, ts, ys, mask=None, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Per series `(B,)` (scalars for one series): the log-likelihood of the observed
        entries under the sampled posterior path, KL(q(z0) || p(z0)), and the path KL
        ∫ ½ |u|² dt along that path (-inf / inf where the solve failed). Example: see
        `LatentSDE`.
        """
        if key is None:
            raise ValueError("elbo needs key=jax.random.key(...) for its posterior sample.")
        ts, ys, mask, single = check_batch_series(ts, ys, mask, dim=self.obs_dim)
        k_z0, k_bm = jax.random.split(key)
        context = self.encoder(ys, mask)
        mean, logstd = self._qz0(context)
        z0 = mean + jnp.exp(logstd) * jax.random.normal(k_z0, mean.shape, mean.dtype)
        zs, kl_path, result = self._solve_posterior(ts, context, z0, ts, k_bm, logqp=True)
        pred = jax.vmap(jax.vmap(self.projector))(zs)
        loglik = gaussian_log_likelihood(pred, ys, mask, self.obs_std)
        kl0 = _normal_kl(mean, logstd, self.pz0_mean, self.pz0_logstd)
        why = dict(config=self.config, model="LatentSDE")
        loglik = on_failure(result, loglik, -jnp.inf, **why)
        kl_path = on_failure(result, kl_path, **why)
        out = (loglik, kl0, kl_path)
        return tuple(x[0] for x in out) if single else out

    def sample_prior(self, ts, *, key: jax.Array, n: int = 1, latent: bool = False) -> jax.Array:
        """`n` paths of the prior at `ts`: decoded observations (without the observation noise)
        `(n, T, obs_dim)`, or with `latent=True` the latent states `(n, T, latent_dim)`.
        Example: see `LatentSDE`.
        """
        _check_n(n)
        ts = check_times(ts, "ts")
        dtype = jnp.result_type(self.pz0_mean)
        ts = ts.astype(dtype)
        k_z0, k_bm = jax.random.split(key)
        eps = jax.random.normal(k_z0, (int(n), self.latent_dim), dtype)
        z0 = self.pz0_mean + jnp.exp(self.pz0_logstd) * eps
        shape = z0.shape
        drift = _BatchDrift(self.prior_drift, shape[0])
        diffusion = _BatchDiffusion(self.diffusion, shape[0], False)
        sol = self._sde_solve(drift, diffusion, ts, z0.reshape(-1), k_bm, None)
        zs = jnp.swapaxes(sol.ys.reshape(ts.shape[0], *shape), 0, 1)
        zs = on_failure(sol, zs, config=self.config, model="LatentSDE")
        return zs if latent else jax.vmap(jax.vmap(self.projector))(zs)

    def sample_posterior(
        self,
        ts,
        ys,
        mask=None,
        *,
        key: jax.Array,
        n: int = 1,
        ts_out=None,
        latent: bool = False,
    ) -> jax.Array:
        """`n` posterior paths per series, given observations `ys` at `ts`, saved at `ts_out`
        (default `ts`; strictly increasing, within [ts[0], ts[-1]]): decoded observations
        `(n, B, T_out, obs_dim)` (`(n, T_out, obs_dim)` for one series), or with `latent=True`
        the latent states. Example: see `LatentSDE`.
        """
        _check_n(n)
        ts, ys, mask, single = check_batch_series(ts, ys, mask, dim=self.obs_dim)
        if ts_out is None:
            ts_out = ts
        else:
            ts_out = check_times(ts_out, "ts_out").astype(ts.dtype)
            if is_concrete(ts_out) and is_concrete(ts):  # numpy: nothing staged under jit
                (a, b), (c, d) = np.asarray(ts)[[0, -1]], np.asarray(ts_out)[[0, -1]]
                if c < a or d > b:
                    raise ValueError(
                        f"ts_out must lie within the observation times [{a}, {b}] where the "
                        f"posterior is defined, got [{c}, {d}]."
                    )
        k_z0, k_bm = jax.random.split(key)
        context = self.encoder(ys, mask)  # (B, T, C)
        mean, logstd = self._qz0(context)
        eps = jax.random.normal(k_z0, (int(n), *mean.shape), mean.dtype)
        z0 = (mean + jnp.exp(logstd) * eps).reshape(-1, self.latent_dim)  # (n * B, L)
        context = jnp.broadcast_to(context, (int(n), *context.shape)).reshape(
            -1, *context.shape[1:]
        )
        zs, _, result = self._solve_posterior(ts, context, z0, ts_out, k_bm, logqp=False)
        zs = on_failure(result, zs, config=self.config, model="LatentSDE")
        zs = zs.reshape(int(n), ys.shape[0], ts_out.shape[0], -1)
        out = zs if latent else jax.vmap(jax.vmap(jax.vmap(self.projector)))(zs)
        return out[:, 0] if single else out

    # -- internals --------------------------------------------------------------------------

    def _qz0(self, context):
        out = jax.vmap(self.qz0)(context[:, 0])
        return jnp.split(out, 2, axis=-1)

    def _solve_posterior(self, ts, context, z0, ts_out, key, *, logqp: bool):
        """Solve the posterior SDE of a batch (B, L) as one SDE of B * (L + logqp) components.

        One solve for the whole batch (one step loop, matrix products over the batch) rather
        than a vmapped solve. The context is piecewise constant: on [ts[i-1], ts[i]) the drift
        sees context[:, i], the encoding of the observations from ts[i] on.
        """
        batch, latent = z0.shape
        width = latent + int(logqp)
        drift = _PosteriorField(
            self.posterior_drift, self.prior_drift, self.diffusion, batch, logqp
        )
        diffusion = _BatchDiffusion(self.diffusion, batch, logqp)
        if logqp:
            z0 = jnp.concatenate([z0, jnp.zeros((batch, 1), z0.dtype)], -1)
        both = drift.with_diffusion if logqp else None
        y0, args = z0.reshape(-1), (ts, context)
        sol = self._sde_solve(drift, diffusion, ts_out, y0, key, args, ts, both)
        ys = jnp.swapaxes(sol.ys.reshape(ts_out.shape[0], batch, width), 0, 1)
        kl_path = ys[:, -1, latent] if logqp else None
        return ys[:, :, :latent], kl_path, sol.result

    def _sde_solve(self, drift, diffusion, ts_out, y0, key, args, ts_span=None, both=None):
        """Solve from the span's start (default `ts_out[0]`) to `ts_out[-1]`, saving at
        `ts_out`. A tree Brownian motion lives on the whole span (default `ts_out`), a grid one
        on the solve's grid. `both`: drift and diffusion from one evaluation (`JointTerms`)."""
        span = ts_out if ts_span is None else ts_span
        config = self.config
        if isinstance(config.sensitivity, Direct) and config.sensitivity.checkpoints is None:
            # every step kept: the backward pass recomputes none (the constant-step count is
            # known only when the times are, else it is max_steps' bound)
            every_step = Direct(checkpoints=config.steps_for(span[0], ts_out[-1]))
            config = config.replace(sensitivity=every_step)
        bm = jax.ShapeDtypeStruct(y0.shape, y0.dtype)
        end = span[-1] if self.brownian == "tree" else ts_out[-1]
        terms = sde_terms(
            config,
            drift,
            _Diagonal(diffusion),
            span[0],
            end,
            bm,
            key,
            self.brownian,
            "LatentSDE",
            both,
        )
        return config.diffeqsolve(
            terms, span[0], ts_out[-1], y0, args=args, saveat=diffrax.SaveAt(ts=ts_out)
        )


class _BatchDrift(eqx.Module):
    """A drift h(t, z) of one latent state applied to a flattened batch (B * L,)."""

    drift: Callable
    batch: int = eqx.field(static=True)

    def __call__(self, t, y, args):
        z = y.reshape(self.batch, -1)
        return jax.vmap(lambda zb: self.drift(t, zb))(z).reshape(-1)


class _BatchDiffusion(eqx.Module):
    """The diagonal diffusion of a flattened batch of rows of `width` components; with `logqp`
    the last component of each row (the KL integral) has no noise."""

    diffusion: Callable
    batch: int = eqx.field(static=True)
    logqp: bool = eqx.field(static=True)

    def __call__(self, t, y, args):
        z = y.reshape(self.batch, -1)
        if self.logqp:
            z = z[:, :-1]
        g = jax.vmap(lambda zb: self.diffusion(t, zb))(z)
        if self.logqp:  # the KL integral is an ordinary integral: no noise on it
            g = jnp.concatenate([g, jnp.zeros((self.batch, 1), g.dtype)], -1)
        return g.reshape(-1)


class _PosteriorField(eqx.Module):
    """The posterior drift of a flattened batch, with (logqp) the KL integrand ½|u|² appended
    to every row. `args` = (observation times, context (B, T, C)); the context is piecewise
    constant: on [ts[i-1], ts[i]) the drift sees context[:, i], the encoding of the
    observations from ts[i] on."""

    posterior: Callable
    prior: Callable
    diffusion: Callable
    batch: int = eqx.field(static=True)
    logqp: bool = eqx.field(static=True)

    def __call__(self, t, y, args):
        return self.with_diffusion(t, y, args)[0]

    def with_diffusion(self, t, y, args):
        """The drift, and (logqp) the diffusion it computed for the KL integrand, as
        `_BatchDiffusion` gives it (None without logqp)."""
        ts, ctx = args
        i = jnp.clip(jnp.searchsorted(ts, t, side="right"), 0, ts.shape[0] - 1)
        c = jax.lax.dynamic_index_in_dim(ctx, i, axis=1, keepdims=False)  # (B, C)
        z = y.reshape(self.batch, -1)
        if self.logqp:
            z = z[:, :-1]
        f = jax.vmap(lambda zb, cb: self.posterior(t, zb, cb))(z, c)
        if not self.logqp:
            return f.reshape(-1), None
        h = jax.vmap(lambda zb: self.prior(t, zb))(z)
        g = jax.vmap(lambda zb: self.diffusion(t, zb))(z)
        g_kl = jnp.where(jnp.abs(g) > _MIN_DIFFUSION, g, _MIN_DIFFUSION * jnp.sign(g))
        u = (f - h) / g_kl
        drift = jnp.concatenate([f, 0.5 * jnp.sum(u**2, -1, keepdims=True)], -1)
        noise = jnp.concatenate([g, jnp.zeros((self.batch, 1), g.dtype)], -1)
        return drift.reshape(-1), noise.reshape(-1)


def _normal_kl(mean_q, logstd_q, mean_p, logstd_p) -> jax.Array:
    """KL(N(mean_q, std_q²) || N(mean_p, std_p²)) of diagonal Gaussians, summed over the last
    axis."""
    var_ratio = jnp.exp(2 * (logstd_q - logstd_p))
    gap = ((mean_q - mean_p) / jnp.exp(logstd_p)) ** 2
    return 0.5 * jnp.sum(var_ratio + gap - 1.0 - 2 * (logstd_q - logstd_p), axis=-1)


def _check_n(n) -> None:
    if isinstance(n, bool) or not (isinstance(n, int | np.integer) and n > 0):
        raise ValueError(f"n (number of paths) must be a positive integer, got {n!r}.")
