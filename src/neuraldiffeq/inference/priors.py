"""Priors for Bayesian inference, each with the bijection NUTS samples through.

NUTS moves in an unconstrained space: a positive parameter (a rate, a noise scale) is sampled as
its logarithm, a bounded one through a logit, and the log-density gains the log-Jacobian of the
map so that the posterior of the parameter itself is unchanged. Each prior applies elementwise
(independently) to every entry of the parameter it is given to; its numbers broadcast against
the parameter's shape.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp


def _positive(value, name: str, owner: str) -> jax.Array:
    array = jnp.asarray(value, dtype=float)
    if not bool(jnp.all(jnp.isfinite(array))) or not bool(jnp.all(array > 0)):
        raise ValueError(f"{owner}: {name} must be finite and > 0, got {value!r}.")
    return array


def _finite(value, name: str, owner: str) -> jax.Array:
    array = jnp.asarray(value, dtype=float)
    if not bool(jnp.all(jnp.isfinite(array))):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}.")
    return array


class Prior(eqx.Module):
    """A prior over the entries of one parameter. Subclasses: `Normal`, `LogNormal`,
    `HalfNormal`, `Uniform`.

    `log_prob(x)` is the summed log-density of the entries of `x`; `forward(u)` maps an
    unconstrained `u` to the parameter and returns `(x, log|dx/du|)` summed; `inverse(x)` maps
    back; `sample(key, shape)` draws from the prior.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> prior = nde.priors.LogNormal(0.0, 1.0)
        >>> x, logdet = prior.forward(jnp.zeros(2))
        >>> x.tolist(), float(logdet)
        ([1.0, 1.0], 0.0)
    """

    def log_prob(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def forward(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        return u, jnp.zeros((), u.dtype)

    def inverse(self, x: jax.Array) -> jax.Array:
        return x

    def support(self, x: jax.Array) -> jax.Array:
        """Whether every entry of `x` lies in the prior's support."""
        return jnp.all(jnp.isfinite(x))

    def sample(self, key: jax.Array, shape: tuple = ()) -> jax.Array:
        raise NotImplementedError


class Normal(Prior):
    """Normal(loc, scale) on the real line.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> round(float(nde.priors.Normal(0.0, 1.0).log_prob(jnp.zeros(()))), 4)
        -0.9189
    """

    loc: jax.Array
    scale: jax.Array

    def __init__(self, loc=0.0, scale=1.0):
        self.loc = _finite(loc, "loc", "Normal")
        self.scale = _positive(scale, "scale", "Normal")

    def log_prob(self, x):
        z = (x - self.loc) / self.scale
        return jnp.sum(-0.5 * z**2 - jnp.log(self.scale) - 0.5 * math.log(2 * math.pi))

    def sample(self, key, shape=()):
        return self.loc + self.scale * jax.random.normal(key, shape)


class _Positive(Prior):
    """A prior on positive values, sampled as their log (the change of variables x = exp(u),
    whose log-Jacobian is sum(u))."""

    def forward(self, u):
        return jnp.exp(u), jnp.sum(u)

    def inverse(self, x):
        return jnp.log(x)

    def support(self, x):
        return jnp.all(x > 0) & jnp.all(jnp.isfinite(x))


class LogNormal(_Positive):
    """log(x) ~ Normal(loc, scale): a positive parameter (a rate), sampled as its logarithm.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> bool(nde.priors.LogNormal(0.0, 0.5).support(jnp.array([-1.0])))
        False
    """

    loc: jax.Array
    scale: jax.Array

    def __init__(self, loc=0.0, scale=1.0):
        self.loc = _finite(loc, "loc", "LogNormal")
        self.scale = _positive(scale, "scale", "LogNormal")

    def log_prob(self, x):
        logx = jnp.log(x)
        z = (logx - self.loc) / self.scale
        density = -0.5 * z**2 - jnp.log(self.scale) - 0.5 * math.log(2 * math.pi) - logx
        return jnp.sum(jnp.where(x > 0, density, -jnp.inf))

    def sample(self, key, shape=()):
        return jnp.exp(self.loc + self.scale * jax.random.normal(key, shape))


class HalfNormal(_Positive):
    """|Normal(0, scale)|: a positive scale (e.g. the observation noise), sampled as its log.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> float(nde.priors.HalfNormal(1.0).forward(jnp.zeros(()))[0])
        1.0
    """

    scale: jax.Array

    def __init__(self, scale=1.0):
        self.scale = _positive(scale, "scale", "HalfNormal")

    def log_prob(self, x):
        z = x / self.scale
        density = -0.5 * z**2 - jnp.log(self.scale) + 0.5 * math.log(2 / math.pi)
        return jnp.sum(jnp.where(x >= 0, density, -jnp.inf))

    def sample(self, key, shape=()):
        return self.scale * jnp.abs(jax.random.normal(key, shape))


class Uniform(Prior):
    """Uniform(low, high): a bounded parameter, sampled through a logit.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> float(nde.priors.Uniform(0.0, 2.0).forward(jnp.zeros(()))[0])
        1.0
    """

    low: jax.Array
    high: jax.Array

    def __init__(self, low=0.0, high=1.0):
        self.low = _finite(low, "low", "Uniform")
        self.high = _finite(high, "high", "Uniform")
        if not bool(jnp.all(self.high > self.low)):
            raise ValueError(f"Uniform: high must exceed low, got low={low!r}, high={high!r}.")

    def log_prob(self, x):
        inside = (x >= self.low) & (x <= self.high)
        return jnp.sum(jnp.where(inside, -jnp.log(self.high - self.low), -jnp.inf))

    def forward(self, u):
        s = jax.nn.sigmoid(u)
        width = self.high - self.low
        x = self.low + width * s
        return x, jnp.sum(jnp.log(width) + jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u))

    def inverse(self, x):
        p = (x - self.low) / (self.high - self.low)
        return jnp.log(p) - jnp.log1p(-p)

    def support(self, x):
        return jnp.all((x > self.low) & (x < self.high))

    def sample(self, key, shape=()):
        return jax.random.uniform(key, shape, minval=self.low, maxval=self.high)
