"""Latent ODEs (Chen et al. 2018, section 5): a generative model of irregularly sampled series.

A recognition network reads the observations backwards in time and outputs a Gaussian posterior
q(z0 | observations); a neural ODE carries z0 forward to any time; a decoder maps z(t) to the
observation space. Training maximises the evidence lower bound (ELBO)
    E_q[ log p(y | z0) ] - KL(q(z0) || N(0, I)),
with Gaussian observation noise of fixed standard deviation `obs_std`, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_batch_series, check_positive, check_sizes, check_times, is_concrete
from ..solve.config import SolveConfig, build_config, shortcuts
from ..solve.sensitivity import AbstractSensitivity, Direct
from .ode import ODE_DEFAULTS, NeuralODE

ENCODERS = ("rnn", "ode-rnn")


class Rowwise(eqx.Module):
    """A field of one state applied to every row of a batch `(B, L)`: f(t, Y)[b] = net(Y[b]).

    Solving a batch as one ODE (one adaptive step loop for all rows, as torchdiffeq does) is much
    cheaper than a vmapped solve, whose step loop would run to the slowest row anyway.
    """

    net: Callable

    def __call__(self, t, y, args=None):
        return jax.vmap(self.net)(y)


class RecognitionRNN(eqx.Module):
    """Runs backwards over a masked series; returns the posterior mean and log-variance of z0.

    With `ode=True` it is an ODE-RNN (Rubanova et al. 2019): between observations the hidden
    state evolves by a learned ODE over the time gap (one Tsit5 step per grid interval);
    otherwise a GRU sees the time gap as an input feature. Unobserved grid points leave the
    hidden state unchanged (ODE-RNN: only the ODE acts on it).
    """

    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear
    hidden_field: eqx.nn.MLP | None
    hidden_size: int = eqx.field(static=True)

    def __init__(self, obs_dim, latent_dim, hidden_size, *, ode: bool, key):
        k1, k2, k3 = jax.random.split(key, 3)
        # input: values (zero where unobserved), the mask, the time to the next observation
        self.cell = eqx.nn.GRUCell(2 * obs_dim + 1, hidden_size, key=k1)
        # the head also sees how far the first observation is from t0 (z0 lives at t0)
        self.head = eqx.nn.Linear(hidden_size + 1, 2 * latent_dim, key=k2)
        self.hidden_field = (
            eqx.nn.MLP(hidden_size, hidden_size, hidden_size, 1, activation=jnp.tanh, key=k3)
            if ode
            else None
        )
        self.hidden_size = hidden_size

    def __call__(self, ts, ys, mask):
        """ts (T,), ys and mask (B, T, D) -> (mean, logvar), each (B, latent_dim)."""
        batch = ys.shape[0]
        h0 = jnp.zeros((batch, self.hidden_size), ys.dtype)
        t_next0 = jnp.full((batch,), ts[-1], ys.dtype)
        gaps = jnp.concatenate([ts[1:] - ts[:-1], jnp.zeros((1,), ts.dtype)])

        def step(carry, inputs):
            h, t_next = carry
            t, gap, y, m = inputs
            if self.hidden_field is not None:
                h = jnp.where(gap > 0, self._evolve(h, gap), h)
            observed = jnp.any(m, axis=-1)
            x = jnp.concatenate([y * m, m.astype(y.dtype), (t_next - t)[:, None]], axis=-1)
            h_new = jax.vmap(self.cell)(x, h)
            h = jnp.where(observed[:, None], h_new, h)
            t_next = jnp.where(observed, t, t_next)
            return (h, t_next), None

        inputs = (ts, gaps, jnp.swapaxes(ys, 0, 1), jnp.swapaxes(mask, 0, 1))
        (h, t_first), _ = jax.lax.scan(step, (h0, t_next0), inputs, reverse=True)
        out = jax.vmap(self.head)(jnp.concatenate([h, (t_first - ts[0])[:, None]], axis=-1))
        mean, logvar = jnp.split(out, 2, axis=-1)
        return mean, logvar

    def _evolve(self, h, gap):
        # One Tsit5 step over the gap: time rescaled to [0, 1] (dt0 = 1), the field scaled by gap.
        sol = _ONE_STEP.diffeqsolve(
            diffrax.ODETerm(_Scaled(Rowwise(self.hidden_field))),
            0.0,
            1.0,
            h,
            args=gap,
            saveat=diffrax.SaveAt(t1=True),
        )
        return sol.ys[-1]


class _Scaled(eqx.Module):
    field: Callable

    def __call__(self, s, y, scale):
        return scale * self.field(s * scale, y, None)


_ONE_STEP = SolveConfig("tsit5", dt0=1.0, max_steps=2, sensitivity=Direct())


class LatentODE(eqx.Module):
    """A latent ODE for irregularly sampled, partially observed time series.

    Arguments:
        latent_dim: size of the latent state z.
        obs_dim: size of an observation y.
        encoder: `"rnn"` (GRU read backwards in time, time gaps as inputs, as in the paper) or
            `"ode-rnn"` (the hidden state also follows a learned ODE between observations).
        hidden_size: units of the recognition network (paper: 25).
        dynamics_width, dynamics_depth: hidden layers of the latent dynamics MLP (paper: 2 x 20,
            ELU).
        decoder_width, decoder_depth: hidden layers of the decoder MLP (paper: 1 x 20, ReLU).
        obs_std: standard deviation of the Gaussian observation model (paper: 0.3).
        solver, rtol, atol, dt0, max_steps, sensitivity, config: the latent `nde.NeuralODE`'s
            solve settings (one `nde.SolveConfig`); defaults: NeuralODE's with atol 1e-4.
        key: PRNG key for the initial weights.

    Methods: `elbo(ts, ys, mask, key)` (mean over series), `encode`, `decode`,
    `predict(ts_obs, ys_obs, ts_new, key, mask=, n_samples=)`.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.LatentODE(4, 2, key=jax.random.key(0))
        >>> ts = jnp.linspace(0, 1, 10); ys = jnp.ones((3, 10, 2))
        >>> model.elbo(ts, ys, None, jax.random.key(1)).shape
        ()
        >>> model.predict(ts, ys, jnp.linspace(0, 2, 20), jax.random.key(2), n_samples=5).shape
        (5, 3, 20, 2)
    """

    encoder: RecognitionRNN
    dynamics: NeuralODE
    decoder: eqx.nn.MLP
    latent_dim: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    obs_std: float = eqx.field(static=True)

    def __init__(
        self,
        latent_dim: int,
        obs_dim: int,
        encoder: str = "rnn",
        *,
        hidden_size: int = 25,
        dynamics_width: int = 20,
        dynamics_depth: int = 2,
        decoder_width: int = 20,
        decoder_depth: int = 1,
        obs_std: float = 0.3,
        solver: str | diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
        key: jax.Array | None = None,
    ):
        check_sizes(
            latent_dim=latent_dim,
            obs_dim=obs_dim,
            hidden_size=hidden_size,
            dynamics_width=dynamics_width,
            decoder_width=decoder_width,
        )
        check_sizes(0, dynamics_depth=dynamics_depth, decoder_depth=decoder_depth)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}.")
        check_positive(obs_std, "obs_std")
        if key is None:
            raise ValueError("LatentODE needs key=jax.random.key(...) to initialise its weights.")
        k_enc, k_dyn, k_dec = jax.random.split(key, 3)
        self.encoder = RecognitionRNN(
            obs_dim, latent_dim, hidden_size, ode=encoder == "ode-rnn", key=k_enc
        )
        net = eqx.nn.MLP(
            latent_dim, latent_dim, dynamics_width, dynamics_depth, activation=jax.nn.elu, key=k_dyn
        )
        given = shortcuts(locals())
        config = build_config("LatentODE", config, given, dict(ODE_DEFAULTS, atol=1e-4))
        self.dynamics = NeuralODE(Rowwise(net), config=config)
        self.decoder = eqx.nn.MLP(
            latent_dim, obs_dim, decoder_width, decoder_depth, activation=jax.nn.relu, key=k_dec
        )
        self.latent_dim, self.obs_dim, self.obs_std = int(latent_dim), int(obs_dim), float(obs_std)

    # -- public -----------------------------------------------------------------------------

    @property
    def config(self) -> SolveConfig:
        """The latent ODE's solve configuration."""
        return self.dynamics.config

    def encode(self, ts, ys, mask=None) -> tuple[jax.Array, jax.Array]:
        """Posterior mean and log-variance of z(ts[0]): each `(B, latent_dim)`, or `(latent_dim,)`
        for one series."""
        ts, ys, mask, single = check_batch_series(ts, ys, mask, dim=self.obs_dim)
        mean, logvar = self.encoder(ts, ys, mask)
        return (mean[0], logvar[0]) if single else (mean, logvar)

    def decode(self, ts, z0) -> jax.Array:
        """Observations predicted from z0 `(B, L)` at `ts` (ts[0] is z0's time) -> `(B, T, D)`."""
        zs = self.dynamics(ts, z0)  # (T, B, L); inf where the solver failed
        return jnp.swapaxes(jax.vmap(jax.vmap(self.decoder))(zs), 0, 1)

    def elbo(
        self, ts, ys, mask=None, key: jax.Array | None = None, *, kl_weight: float = 1.0
    ) -> jax.Array:
        """The evidence lower bound, averaged over series (one posterior sample per series).
        `kl_weight` < 1 scales the KL term down (KL annealing); 1 is the ELBO itself.

        `ys` is `(T, D)` or `(B, T, D)`; `mask` (same shape, True = observed) may be None.
        Values of `ys` where `mask` is False are never read.
        """
        if key is None:
            raise ValueError("elbo needs key=jax.random.key(...) for its posterior sample.")
        ts, ys, mask, _ = check_batch_series(ts, ys, mask, dim=self.obs_dim)
        mean, logvar = self.encoder(ts, ys, mask)
        z0 = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        pred = self.decode(ts, z0)
        loglik = self.log_likelihood(pred, ys, mask)
        return jnp.mean(loglik - kl_weight * gaussian_kl(mean, logvar))

    def log_likelihood(self, pred, ys, mask=None) -> jax.Array:
        """Gaussian log-density of the observed entries of `ys` given `pred`, summed per series."""
        return gaussian_log_likelihood(pred, ys, mask, self.obs_std)

    def predict(
        self, ts_obs, ys_obs, ts_new, key: jax.Array | None = None, *, mask=None, n_samples: int = 1
    ) -> jax.Array:
        """Interpolate or extrapolate: decode posterior samples of z0 at `ts_new` (≥ ts_obs[0]).

        Returns `(n_samples, T_new, D)` for one series, `(n_samples, B, T_new, D)` for a batch;
        the spread over samples is the model's uncertainty. With `key=None` the posterior mean is
        decoded instead (`n_samples` must then be 1).
        """
        if not (isinstance(n_samples, int | np.integer) and n_samples > 0):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        if key is None and n_samples != 1:
            raise ValueError("n_samples > 1 needs key=jax.random.key(...) to draw the samples.")
        ts_obs, ys_obs, mask, single = check_batch_series(
            ts_obs, ys_obs, mask, dim=self.obs_dim, ts_name="ts_obs", ys_name="ys_obs"
        )
        ts_new = jnp.asarray(ts_new, ts_obs.dtype)
        if ts_new.ndim != 1 or ts_new.shape[0] < 1:
            raise ValueError(f"ts_new must be a 1-D array of times, got shape {ts_new.shape}.")
        if is_concrete(ts_new) and is_concrete(ts_obs):
            if ts_new.shape[0] > 1:
                check_times(ts_new, "ts_new")
            if float(ts_new[0]) < float(ts_obs[0]):
                raise ValueError(
                    f"ts_new starts at {float(ts_new[0])}, before the first observation time "
                    f"{float(ts_obs[0])}, where z0 lives; predict only forward from ts_obs[0]."
                )
        mean, logvar = self.encoder(ts_obs, ys_obs, mask)
        if key is None:
            z0 = mean[None]
        else:
            noise = jax.random.normal(key, (n_samples, *mean.shape), mean.dtype)
            z0 = mean[None] + jnp.exp(0.5 * logvar)[None] * noise
        batch = mean.shape[0]
        # The solve starts at z0's time; prepend it unless ts_new already starts there.
        prepend = not (is_concrete(ts_new) and float(ts_new[0]) == float(ts_obs[0]))
        ts_solve = jnp.concatenate([ts_obs[:1], ts_new]) if prepend else ts_new
        if ts_solve.shape[0] == 1:
            ts_solve = jnp.concatenate([ts_solve, ts_solve + 1.0])  # a solve needs two times
        flat = z0.reshape(-1, self.latent_dim)
        out = self.decode(ts_solve, flat)[:, 1:] if prepend else self.decode(ts_solve, flat)
        out = out[:, : ts_new.shape[0]].reshape(z0.shape[0], batch, ts_new.shape[0], self.obs_dim)
        return out[:, 0] if single else out


def gaussian_log_likelihood(pred, ys, mask, std: float) -> jax.Array:
    """log N(ys | pred, std²) of the entries where `mask` is True (all where it is None), summed
    per series: over all axes but the batch axis of `(B, T, D)`, over all of `(T, D)`."""
    logp = -0.5 * (((ys - pred) / std) ** 2 + jnp.log(2 * jnp.pi * std**2))
    if mask is not None:
        logp = jnp.where(mask, logp, 0.0)
    return jnp.sum(logp, axis=tuple(range(1, logp.ndim))) if logp.ndim > 2 else jnp.sum(logp)


def gaussian_kl(mean, logvar) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)
