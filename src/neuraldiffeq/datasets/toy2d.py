"""The 2-D toy densities of the FFJORD paper (Grathwohl et al. 2019, `lib/toy_data.py`).

Each generator follows the FFJORD code's definition (scales, noise levels, numbers of
components), with scikit-learn's `make_swiss_roll`, `make_circles` and `make_moons` written out,
and draws from an explicit `jax.random` key, so the same key gives the same samples.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

TOY_2D = (
    "8gaussians",
    "checkerboard",
    "pinwheel",
    "2spirals",
    "moons",
    "rings",
    "circles",
    "swissroll",
)


def toy_2d(name: str, n: int, key: jax.Array) -> jax.Array:
    """`n` samples (n, 2) of one of FFJORD's toy densities.

    Names: `"8gaussians"`, `"checkerboard"`, `"pinwheel"`, `"2spirals"`, `"moons"`, `"rings"`,
    `"circles"`, `"swissroll"`.

    Example:
        >>> import jax, neuraldiffeq as nde
        >>> x = nde.datasets.toy_2d("8gaussians", 1000, jax.random.key(0))
        >>> x.shape
        (1000, 2)
    """
    if name not in TOY_2D:
        raise ValueError(f"unknown toy density {name!r}; choose one of {', '.join(TOY_2D)}.")
    if not (isinstance(n, int | np.integer) and n > 0):
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    is_key = isinstance(key, jax.Array) and (
        (key.shape == () and jnp.issubdtype(key.dtype, jax.dtypes.prng_key))
        or (key.shape == (2,) and key.dtype == jnp.uint32)  # a legacy jax.random.PRNGKey
    )
    if not is_key:
        raise ValueError("key must be a jax.random.key(...), e.g. jax.random.key(0).")
    x = _GENERATORS[name](int(n), key)
    return x.astype(jnp.float32)


def _8gaussians(n, key):
    k1, k2 = jax.random.split(key)
    s = 1.0 / math.sqrt(2.0)
    centers = 4.0 * jnp.array(
        [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)], dtype=jnp.float32
    )
    points = 0.5 * jax.random.normal(k1, (n, 2)) + centers[jax.random.randint(k2, (n,), 0, 8)]
    return points / 1.414


def _checkerboard(n, key):
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,)) * 4 - 2
    x2_ = jax.random.uniform(k2, (n,)) - jax.random.randint(k3, (n,), 0, 2) * 2
    x2 = x2_ + jnp.floor(x1) % 2
    return jnp.stack([x1, x2], axis=1) * 2


def _pinwheel(n, key):
    k1, k2 = jax.random.split(key)
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    per_class = -(-n // num_classes)  # FFJORD uses n // 5 and returns fewer; we return exactly n
    rads = jnp.linspace(0, 2 * jnp.pi, num_classes, endpoint=False)
    features = jax.random.normal(k1, (num_classes * per_class, 2)) * jnp.array(
        [radial_std, tangential_std]
    )
    features = features.at[:, 0].add(1.0)
    labels = jnp.repeat(jnp.arange(num_classes), per_class)
    angles = rads[labels] + rate * jnp.exp(features[:, 0])
    rotations = jnp.stack([jnp.cos(angles), -jnp.sin(angles), jnp.sin(angles), jnp.cos(angles)])
    rotations = jnp.reshape(rotations.T, (-1, 2, 2))
    points = 2 * jnp.einsum("ti,tij->tj", features, rotations)
    return jax.random.permutation(k2, points)[:n]


def _2spirals(n, key):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    half = n // 2
    t = jnp.sqrt(jax.random.uniform(k1, (half, 1))) * 540 * (2 * jnp.pi) / 360
    d1x = -jnp.cos(t) * t + jax.random.uniform(k2, (half, 1)) * 0.5
    d1y = jnp.sin(t) * t + jax.random.uniform(k3, (half, 1)) * 0.5
    x = jnp.concatenate([jnp.hstack([d1x, d1y]), jnp.hstack([-d1x, -d1y])]) / 3
    if n % 2:  # FFJORD returns 2 * (n // 2) points; one more from the first arm keeps n
        x = jnp.concatenate([x, x[:1]])
    x = x + jax.random.normal(k4, x.shape) * 0.1
    return jax.random.permutation(k5, x)


def _moons(n, key):
    k1, k2 = jax.random.split(key)
    n_out = n // 2
    n_in = n - n_out
    outer = jnp.linspace(0, jnp.pi, n_out)
    inner = jnp.linspace(0, jnp.pi, n_in)
    x = jnp.concatenate(
        [
            jnp.stack([jnp.cos(outer), jnp.sin(outer)], 1),
            jnp.stack([1 - jnp.cos(inner), 1 - jnp.sin(inner) - 0.5], 1),
        ]
    )
    x = jax.random.permutation(k1, x) + 0.1 * jax.random.normal(k2, x.shape)
    return x * 2 + jnp.array([-1.0, -0.2])


def _rings(n, key):
    k1, k2 = jax.random.split(key)
    n4 = n3 = n2 = n // 4
    n1 = n - n4 - n3 - n2
    parts = []
    for count, radius in ((n4, 1.0), (n3, 0.75), (n2, 0.5), (n1, 0.25)):
        angle = jnp.linspace(0, 2 * jnp.pi, count, endpoint=False)
        parts.append(radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], 1))
    x = jnp.concatenate(parts) * 3.0
    return jax.random.permutation(k1, x) + 0.08 * jax.random.normal(k2, x.shape)


def _circles(n, key):
    k1, k2 = jax.random.split(key)
    n_out = n // 2
    n_in = n - n_out
    outer = jnp.linspace(0, 2 * jnp.pi, n_out, endpoint=False)
    inner = jnp.linspace(0, 2 * jnp.pi, n_in, endpoint=False)
    x = jnp.concatenate(
        [
            jnp.stack([jnp.cos(outer), jnp.sin(outer)], 1),
            0.5 * jnp.stack([jnp.cos(inner), jnp.sin(inner)], 1),
        ]
    )
    x = jax.random.permutation(k1, x) + 0.08 * jax.random.normal(k2, x.shape)
    return x * 3


def _swissroll(n, key):
    k1, k2 = jax.random.split(key)
    t = 1.5 * jnp.pi * (1 + 2 * jax.random.uniform(k1, (n,)))
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], 1)  # make_swiss_roll's (x, z) columns
    x = x + jax.random.normal(k2, x.shape)  # noise=1.0, as in FFJORD
    return x / 5


_GENERATORS = {
    "8gaussians": _8gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _2spirals,
    "moons": _moons,
    "rings": _rings,
    "circles": _circles,
    "swissroll": _swissroll,
}
