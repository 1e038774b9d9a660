"""Variational autoencoders with flow posteriors: Gaussian, planar flows, or an amortised FFJORD.

The FFJORD paper's variational-inference experiment (Grathwohl et al. 2019, section 4.2): an
encoder maps an image x to the parameters of a diagonal Gaussian q0(z0 | x) and to a
conditioning vector c(x); a sample z0 ~ q0 is carried by a flow conditioned on c(x) to zK, whose
log-density follows from the change of variables,

    log q(zK | x) = log q0(z0 | x) - log|det ∂zK/∂z0|,

and the evidence lower bound is

    ELBO(x) = E_q[log p(x | zK) + log p(zK) - log q(zK | x)],   p(z) = N(0, I).

The flow is any object with `forward_and_logdet(z, key, *, context=)` and a `context_size`:
`nde.FFJORD` with a conditioned field (`nde.ConcatSquashMLP(d, context_size=C)`, continuous
dynamics that depend on c(x)), or `nde.PlanarFlow` (Rezende & Mohamed 2015: K planar maps
z + u h(wᵀz + b) whose u, w, b are read from c(x), as in the amortised planar posterior the FFJORD
paper compares against), or None for the plain Gaussian posterior. Everything else (encoder,
decoder, likelihood) is shared, so a comparison of posteriors is a comparison of flows.

Why a model with an `elbo` method rather than a recipe on `fit`: the ELBO needs the encoder, the
flow and the decoder together (and the importance-weighted estimate needs them again), so they
live in one pytree that `nde.fit` trains with the existing `nde.ELBO` strategy (which on an
(N, D) array of samples maximises `mean(model.elbo(x, key))`), and that `nde.save` stores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete

LIKELIHOODS = ("bernoulli",)


class PlanarFlow(eqx.Module):
    """K amortised planar transforms z ↦ z + û tanh(wᵀz + b) (Rezende & Mohamed 2015).

    The flow has no weights of its own: each row's (u, w, b) for the K layers are read from its
    context vector, of size `context_size = K (2 d + 1)` (an encoder's output in `nde.VAE`). u is
    replaced by û = u + (m(wᵀu) - wᵀu) w / ‖w‖², m(a) = -1 + softplus(a), so that wᵀû > -1 and
    every map is invertible; the log-determinant of one map is log|1 + ûᵀ w tanh'(wᵀz + b)|.

    Arguments:
        latent_size: the dimension d of z.
        n_layers: the number of planar maps K.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> flow = nde.PlanarFlow(2, n_layers=4)
        >>> c = jax.random.normal(jax.random.key(0), (3, flow.context_size))
        >>> z, logdet = flow.forward_and_logdet(jnp.ones((3, 2)), context=c)
        >>> z.shape, logdet.shape
        ((3, 2), (3,))
    """

    latent_size: int = eqx.field(static=True)
    n_layers: int = eqx.field(static=True)

    def __init__(self, latent_size: int, n_layers: int = 8):
        for name, value in (("latent_size", latent_size), ("n_layers", n_layers)):
            if not (isinstance(value, int | np.integer) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        self.latent_size, self.n_layers = int(latent_size), int(n_layers)

    @property
    def context_size(self) -> int:
        """K (2 d + 1): u (d), w (d) and b (1) for each of the K maps."""
        return self.n_layers * (2 * self.latent_size + 1)

    def forward_and_logdet(
        self, z: jax.Array, key: jax.Array | None = None, *, context: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """zK (N, d) from z0 = `z` (N, d), and log|det ∂zK/∂z0| (N,); `key` is not used."""
        d, k = self.latent_size, self.n_layers
        if jnp.ndim(z) != 2 or jnp.shape(z)[1] != d:
            raise ValueError(f"z must have shape (N, {d}), got {jnp.shape(z)}.")
        if context is None or jnp.shape(context) != (jnp.shape(z)[0], self.context_size):
            raise ValueError(
                f"context must have shape (N, {self.context_size}) = (N, K (2 d + 1)) for "
                f"K = {k} planar maps in d = {d}, got "
                f"{None if context is None else jnp.shape(context)}."
            )
        params = jnp.reshape(context, (-1, k, 2 * d + 1))
        logdet = jnp.zeros(jnp.shape(z)[:1], z.dtype)
        for layer in range(k):
            u, w, b = (
                params[:, layer, :d],
                params[:, layer, d : 2 * d],
                params[:, layer, 2 * d],
            )
            wu = jnp.sum(w * u, axis=-1, keepdims=True)
            # û: the smallest change to u that keeps the map invertible (wᵀû > -1)
            u = u + (jax.nn.softplus(wu) - 1.0 - wu) * w / jnp.sum(w**2, -1, keepdims=True)
            a = jnp.sum(w * z, axis=-1) + b
            h = jnp.tanh(a)
            logdet = logdet + jnp.log(jnp.abs(1.0 + (1.0 - h**2) * jnp.sum(u * w, axis=-1)))
            z = z + u * h[:, None]
        return z, logdet


def _std_normal_log_prob(z):
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class VAE(eqx.Module):
    """A variational autoencoder whose posterior is a Gaussian, optionally pushed through a flow.

    encoder: x (D,) → MLP → (mean (d,), std (d,), context (C,)); z0 ~ N(mean, std²);
    zK, logdet = flow(z0; context); decoder: zK → MLP → Bernoulli logits of the D pixels.
    `elbo(x, key)` is the per-row one-sample ELBO, `iw_log_likelihood(x, key, k)` the
    importance-weighted bound of Burda et al. (k = 500 in the FFJORD paper's table). Train it with
    `nde.fit(vae, x, nde.ELBO(batch_size=...))` on an (N, D) array of binary images.

    Arguments:
        data_size: D, the number of pixels (the rows of the data are flattened binary images).
        latent_size: d.
        flow: None (Gaussian posterior), `nde.PlanarFlow(d, K)`, or an `nde.FFJORD` whose field
            is conditioned (`nde.ConcatSquashMLP(d, ..., context_size=C)`): anything with
            `forward_and_logdet(z, key, *, context=)` and a `context_size` (0 for no context).
        hidden: hidden layer widths of the encoder MLP; the decoder mirrors them.
        activation: the MLPs' activation.
        key: initialises the encoder and decoder.

    The encoder's last layer outputs 2 d + C numbers; everything but the flow is identical for
    every choice of posterior, so a comparison of posteriors compares the flows.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> vae = nde.VAE(64, 4, nde.PlanarFlow(4, 2), hidden=(32,), key=jax.random.key(0))
        >>> x = (jax.random.uniform(jax.random.key(1), (5, 64)) > 0.5).astype(float)
        >>> vae.elbo(x, jax.random.key(2)).shape
        (5,)
    """

    encoder: eqx.nn.MLP
    decoder: eqx.nn.MLP
    flow: Any
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    context_size: int = eqx.field(static=True)
    likelihood: str = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        latent_size: int,
        flow: Any = None,
        *,
        hidden: Sequence[int] = (256, 256),
        activation: Callable = jax.nn.softplus,
        likelihood: str = "bernoulli",
        key: jax.Array,
    ):
        for name, value in (("data_size", data_size), ("latent_size", latent_size)):
            if not (isinstance(value, int | np.integer) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        hidden = tuple(hidden)
        if not hidden or not all(isinstance(h, int | np.integer) and h > 0 for h in hidden):
            raise ValueError(
                f"hidden must be a non-empty sequence of positive integers, got {hidden!r}."
            )
        if not callable(activation):
            raise ValueError(f"activation must be callable, got {activation!r}.")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
        if flow is None:
            context_size = 0
        else:
            if not callable(getattr(flow, "forward_and_logdet", None)):
                raise ValueError(
                    "flow must be None (Gaussian posterior), nde.PlanarFlow(...) or nde.FFJORD "
                    f"(anything with forward_and_logdet(z, key, *, context=)), got "
                    f"{type(flow).__name__}."
                )
            context_size = _context_size(flow)
            flow_dim = getattr(flow, "latent_size", getattr(flow, "dim", None))
            if flow_dim is not None and flow_dim != latent_size:
                raise ValueError(
                    f"flow is {flow_dim}-dimensional but latent_size is {latent_size}; build "
                    "the flow for the latent space."
                )
        k_enc, k_dec = jax.random.split(key)
        width, depth = hidden[0], len(hidden)
        if any(h != width for h in hidden):
            raise ValueError(f"hidden widths must be equal (an eqx.nn.MLP), got {hidden!r}.")
        self.encoder = eqx.nn.MLP(
            data_size, 2 * latent_size + context_size, width, depth, activation, key=k_enc
        )
        self.decoder = eqx.nn.MLP(latent_size, data_size, width, depth, activation, key=k_dec)
        self.flow = flow
        self.data_size, self.latent_size = int(data_size), int(latent_size)
        self.context_size = int(context_size)
        self.likelihood = likelihood

    # -- public -----------------------------------------------------------------------------

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(mean (N, d), std (N, d), context (N, C)) of the posterior of each row of `x`."""
        x = self._check(x, "x")
        out = jax.vmap(self.encoder)(x)
        d = self.latent_size
        mean, pre_std, context = out[:, :d], out[:, d : 2 * d], out[:, 2 * d :]
        std = jax.nn.softplus(pre_std) + 1e-4  # positive, and bounded away from 0
        return mean, std, context

    def posterior_sample(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One sample zK (N, d) of q(z | x) per row of `x`, and log q(zK | x) (N,).

        Example:
            >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> vae = nde.VAE(8, 2, hidden=(16,), key=jax.random.key(0))
            >>> z, logq = vae.posterior_sample(jnp.ones((3, 8)), jax.random.key(1))
            >>> z.shape, logq.shape
            ((3, 2), (3,))
        """
        if key is None:
            raise ValueError("posterior_sample needs key=jax.random.key(...) for its sample.")
        mean, std, context = self.encode(x)
        k_eps, k_flow = jax.random.split(key)
        eps = jax.random.normal(k_eps, mean.shape, mean.dtype)
        z0 = mean + std * eps
        logq = _std_normal_log_prob(eps) - jnp.sum(jnp.log(std), axis=-1)
        if self.flow is None:
            return z0, logq
        zk, logdet = self.flow.forward_and_logdet(
            z0, k_flow, context=context if self.context_size else None
        )
        return zk, logq - logdet

    def log_likelihood(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """log p(x | z) per row (N,): independent Bernoulli pixels with decoded logits."""
        logits = jax.vmap(self.decoder)(z)
        return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)

    def elbo(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """The one-sample ELBO of each row of `x` (N, D) -> (N,), in nats.

        Example:
            >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> vae = nde.VAE(8, 2, hidden=(16,), key=jax.random.key(0))
            >>> bool(jnp.all(vae.elbo(jnp.ones((3, 8)), jax.random.key(1)) < 0))
            True
        """
        if key is None:
            raise ValueError("elbo needs key=jax.random.key(...) for its posterior sample.")
        x = self._check(x, "x")
        z, logq = self.posterior_sample(x, key)
        return self.log_likelihood(x, z) + _std_normal_log_prob(z) - logq

    def iw_log_likelihood(self, x: jax.Array, key: jax.Array, k: int = 500) -> jax.Array:
        """Importance-weighted estimate of log p(x) per row (N,) with `k` posterior samples.

        log (1/k) Σ_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x): a lower bound on log p(x) that
        tightens as k grows (Burda et al. 2016); the FFJORD paper reports it with k = 500. All
        N k samples go through the flow in one solve: pass few rows at a time.

        Example:
            >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> vae = nde.VAE(8, 2, hidden=(16,), key=jax.random.key(0))
            >>> vae.iw_log_likelihood(jnp.ones((3, 8)), jax.random.key(1), k=10).shape
            (3,)
        """
        if not (isinstance(k, int | np.integer) and k > 0):
            raise ValueError(f"k (the number of importance samples) must be >= 1, got {k!r}.")
        x = self._check(x, "x")
        n = x.shape[0]
        rows = jnp.repeat(x, int(k), axis=0)  # row i*k + j: sample j of image i
        z, logq = self.posterior_sample(rows, key)
        logw = self.log_likelihood(rows, z) + _std_normal_log_prob(z) - logq
        logw = jnp.reshape(logw, (n, int(k)))
        return jax.scipy.special.logsumexp(logw, axis=1) - math.log(k)

    # -- internals --------------------------------------------------------------------------

    def _check(self, x, name: str) -> jax.Array:
        if is_concrete(x):
            arr = np.asarray(x)
            if arr.ndim != 2 or arr.shape[1] != self.data_size:
                raise ValueError(
                    f"{name} must have shape (N, {self.data_size}) (one flattened image per row), "
                    f"got shape {arr.shape}."
                )
            if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains NaN or infinite values.")
            if np.any((arr < 0) | (arr > 1)):
                raise ValueError(
                    f"{name} must hold Bernoulli targets in [0, 1] (binarised pixels), got values "
                    f"in [{arr.min()}, {arr.max()}]."
                )
        elif jnp.ndim(x) != 2 or jnp.shape(x)[1] != self.data_size:
            raise ValueError(
                f"{name} must have shape (N, {self.data_size}), got shape {jnp.shape(x)}."
            )
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.result_type(float))
        return x


def _context_size(flow) -> int:
    """The flow's context size: its own attribute, or its field's (nde.FFJORD)."""
    size = getattr(flow, "context_size", None)
    if size is None:
        size = getattr(getattr(flow, "field", None), "context_size", 0)
    if not (isinstance(size, int | np.integer) and size >= 0):
        raise ValueError(f"the flow's context_size must be an integer >= 0, got {size!r}.")
    return int(size)


__all__ = ["VAE", "PlanarFlow"]
