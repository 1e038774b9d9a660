"""Time-dependent layers for continuous normalizing flows: FFJORD's `ConcatSquash`.

A `ConcatSquashLinear` layer is a linear map of the state whose output is gated and shifted by
the time: `(W x + b) * sigmoid(g t + c) + h t`. An MLP of such layers, `ConcatSquashMLP`, is the
vector field FFJORD uses on its toy and tabular experiments (`ConcatSquashLinear` in
`lib/layers/diffeq_layers/basic.py` of the FFJORD code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp


class ConcatSquashLinear(eqx.Module):
    """`(W x + b) * sigmoid(g t + c) + h t`: a linear layer gated and shifted by the time t.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.models import ConcatSquashLinear
        >>> layer = ConcatSquashLinear(2, 8, key=jax.random.key(0))
        >>> layer(0.5, jnp.ones(2)).shape
        (8,)
    """

    linear: eqx.nn.Linear
    gate: eqx.nn.Linear
    shift: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, key: jax.Array):
        k1, k2, k3 = jax.random.split(key, 3)
        self.linear = eqx.nn.Linear(in_size, out_size, key=k1)
        self.gate = eqx.nn.Linear(1, out_size, key=k2)
        # FFJORD's hyper-bias has no bias of its own: the linear map already has one.
        self.shift = eqx.nn.Linear(1, out_size, use_bias=False, key=k3)

    def __call__(self, t, x: jax.Array) -> jax.Array:
        t = jnp.reshape(jnp.asarray(t, dtype=x.dtype), (1,))
        return self.linear(x) * jax.nn.sigmoid(self.gate(t)) + self.shift(t)


class ConcatSquashMLP(eqx.Module):
    """A time-dependent vector field `f(t, z, args)` built from `ConcatSquashLinear` layers.

    `hidden=(64, 64, 64)` and `activation=jnp.tanh` are FFJORD's toy-experiment settings. The
    output has the input's size unless `out_size` is given.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> field = nde.ConcatSquashMLP(2, hidden=(64, 64, 64), key=jax.random.key(0))
        >>> field(0.0, jnp.ones(2), None).shape
        (2,)
    """

    layers: tuple[ConcatSquashLinear, ...]
    activation: Callable = eqx.field(static=True)
    in_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        hidden: Sequence[int] = (64, 64, 64),
        activation: Callable = jnp.tanh,
        *,
        out_size: int | None = None,
        key: jax.Array,
    ):
        if not (isinstance(in_size, int) and in_size > 0):
            raise ValueError(f"in_size must be a positive integer, got {in_size!r}.")
        hidden = tuple(hidden)
        if not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError(f"hidden must be a sequence of positive integers, got {hidden!r}.")
        if not callable(activation):
            raise ValueError(f"activation must be callable (e.g. jnp.tanh), got {activation!r}.")
        sizes = (in_size, *hidden, in_size if out_size is None else out_size)
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            ConcatSquashLinear(a, b, key=k)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.activation = activation
        self.in_size = in_size

    def __call__(self, t, z: jax.Array, args=None) -> jax.Array:
        for layer in self.layers[:-1]:
            z = self.activation(layer(t, z))
        return self.layers[-1](t, z)
