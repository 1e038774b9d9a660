"""Time-dependent layers for continuous normalizing flows: FFJORD's `ConcatSquash`.

A `ConcatSquashLinear` layer is a linear map of the state whose output is gated and shifted by
the time: `(W x + b) * sigmoid(g t + c) + h t`. An MLP of such layers, `ConcatSquashMLP`, is the
vector field FFJORD uses on its toy and tabular experiments (`ConcatSquashLinear` in
`lib/layers/diffeq_layers/basic.py` of the FFJORD code). `ConcatSquashConv` does the same to a
2-D convolution (one gate and shift per output channel), and `ConcatSquashConvNet` stacks them
into a field on flattened images (FFJORD's image experiments use such conv layers).

Every layer optionally takes a conditioning vector c (`context_size`): the gate and shift are then
affine in (t, c) instead of t alone, so one field serves a family of flows indexed by c (e.g. an
amortised posterior in a VAE, `nde.VAE`). The field receives c as its `args`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def _check_context_size(context_size) -> int:
    if not (isinstance(context_size, int) and context_size >= 0):
        raise ValueError(
            f"context_size must be a non-negative integer (0: no conditioning), got "
            f"{context_size!r}."
        )
    return context_size


def _time_and_context(t, context, context_size: int, dtype) -> jax.Array:
    """The gate's input: (t,) or (t, c_1..c_C); refuses a missing or misshapen context."""
    t = jnp.reshape(jnp.asarray(t, dtype=dtype), (1,))
    if context_size == 0:
        return t
    if context is None:
        raise ValueError(
            f"this layer is conditioned (context_size={context_size}): pass the context vector "
            "as args, e.g. field(t, z, c) or FFJORD.log_prob(x, key, context=c)."
        )
    context = jnp.asarray(context, dtype=dtype)
    if context.shape != (context_size,):
        raise ValueError(
            f"context must have shape ({context_size},) for one sample, got {context.shape}."
        )
    return jnp.concatenate([t, context])


class ConcatSquashLinear(eqx.Module):
    """`(W x + b) * sigmoid(g t + c) + h t`: a linear layer gated and shifted by the time t.

    With `context_size=C > 0` the gate and shift are affine in (t, context) for a context vector
    of shape (C,) passed as the third argument.

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
    context_size: int = eqx.field(static=True)

    def __init__(self, in_size: int, out_size: int, *, context_size: int = 0, key: jax.Array):
        context_size = _check_context_size(context_size)
        k1, k2, k3 = jax.random.split(key, 3)
        self.linear = eqx.nn.Linear(in_size, out_size, key=k1)
        self.gate = eqx.nn.Linear(1 + context_size, out_size, key=k2)
        # FFJORD's hyper-bias has no bias of its own: the linear map already has one.
        self.shift = eqx.nn.Linear(1 + context_size, out_size, use_bias=False, key=k3)
        self.context_size = context_size

    def __call__(self, t, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        tc = _time_and_context(t, context, self.context_size, x.dtype)
        return self.linear(x) * jax.nn.sigmoid(self.gate(tc)) + self.shift(tc)


class ConcatSquashMLP(eqx.Module):
    """A time-dependent vector field `f(t, z, args)` built from `ConcatSquashLinear` layers.

    `hidden=(64, 64, 64)` and `activation=jnp.tanh` are FFJORD's toy-experiment settings. The
    output has the input's size unless `out_size` is given. With `context_size=C > 0` every
    layer's gate and shift also see a context vector of shape (C,), passed as `args` (for
    `nde.FFJORD`, `log_prob(x, key, context=c)` with c of shape (N, C)).

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> field = nde.ConcatSquashMLP(2, hidden=(64, 64, 64), key=jax.random.key(0))
        >>> field(0.0, jnp.ones(2), None).shape
        (2,)
    """

    layers: tuple[ConcatSquashLinear, ...]
    activation: Callable = eqx.field(static=True)
    in_size: int = eqx.field(static=True)
    context_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        hidden: Sequence[int] = (64, 64, 64),
        activation: Callable = jnp.tanh,
        *,
        out_size: int | None = None,
        context_size: int = 0,
        key: jax.Array,
    ):
        context_size = _check_context_size(context_size)
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
            ConcatSquashLinear(a, b, context_size=context_size, key=k)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.activation = activation
        self.in_size = in_size
        self.context_size = context_size

    def __call__(self, t, z: jax.Array, args=None) -> jax.Array:
        context = args if self.context_size else None  # unconditioned: args are not read
        for layer in self.layers[:-1]:
            z = self.activation(layer(t, z, context))
        return self.layers[-1](t, z, context)


class ConcatSquashConv(eqx.Module):
    """A 2-D convolution gated and shifted per output channel by the time (and a context).

    `conv(x) * sigmoid(g t + c) + h t` on an image x of shape (channels, height, width), the gate
    and shift broadcast over the pixels (FFJORD's `ConcatSquashConv2d`). "Same" padding keeps the
    image size. With `context_size=C > 0` the gate and shift are affine in (t, context).

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> layer = nde.ConcatSquashConv(1, 8, kernel_size=3, key=jax.random.key(0))
        >>> layer(0.5, jnp.ones((1, 8, 8))).shape
        (8, 8, 8)
    """

    conv: eqx.nn.Conv2d
    gate: eqx.nn.Linear
    shift: eqx.nn.Linear
    context_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        context_size: int = 0,
        key: jax.Array,
    ):
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("kernel_size", kernel_size),
        ):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd (so 'same' padding keeps the image size), got "
                f"{kernel_size}."
            )
        context_size = _check_context_size(context_size)
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv = eqx.nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, key=k1
        )
        self.gate = eqx.nn.Linear(1 + context_size, out_channels, key=k2)
        self.shift = eqx.nn.Linear(1 + context_size, out_channels, use_bias=False, key=k3)
        self.context_size = context_size

    def __call__(self, t, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        if x.ndim != 3 or x.shape[0] != self.conv.in_channels:
            raise ValueError(
                f"x must be an image of shape ({self.conv.in_channels}, height, width), got "
                f"shape {x.shape}."
            )
        tc = _time_and_context(t, context, self.context_size, x.dtype)
        gate = jax.nn.sigmoid(self.gate(tc))[:, None, None]
        return self.conv(x) * gate + self.shift(tc)[:, None, None]


class ConcatSquashConvNet(eqx.Module):
    """A time-dependent field on flattened images, built from `ConcatSquashConv` layers.

    The state z of shape (C * H * W,) is viewed as an image of shape `image_shape` = (C, H, W),
    passed through the conv layers (`channels` hidden channels each, "same" padding) and the
    output flattened back, so it is a field `f(t, z, args)` for `nde.FFJORD` on images whose rows
    are flattened pixels. `context_size` conditions every layer as in `ConcatSquashConv`.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> field = nde.ConcatSquashConvNet((1, 8, 8), channels=(16, 16), key=jax.random.key(0))
        >>> field(0.0, jnp.ones(64), None).shape
        (64,)
    """

    layers: tuple[ConcatSquashConv, ...]
    activation: Callable = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    in_size: int = eqx.field(static=True)
    context_size: int = eqx.field(static=True)

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int] = (32, 32),
        kernel_size: int = 3,
        activation: Callable = jax.nn.softplus,
        *,
        context_size: int = 0,
        key: jax.Array,
    ):
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or not all(isinstance(s, int) and s > 0 for s in image_shape):
            raise ValueError(
                "image_shape must be (channels, height, width) of positive integers, got "
                f"{image_shape!r}; e.g. (1, 8, 8) for the 8x8 digits."
            )
        channels = tuple(channels)
        if not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be a sequence of positive integers, got {channels!r}.")
        if not callable(activation):
            raise ValueError(f"activation must be callable (e.g. jnp.tanh), got {activation!r}.")
        context_size = _check_context_size(context_size)
        sizes = (image_shape[0], *channels, image_shape[0])
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            ConcatSquashConv(a, b, kernel_size, context_size=context_size, key=k)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.activation = activation
        self.image_shape = image_shape
        self.in_size = int(np.prod(image_shape))
        self.context_size = context_size

    def __call__(self, t, z: jax.Array, args=None) -> jax.Array:
        if z.shape != (self.in_size,):
            raise ValueError(
                f"z must be a flattened image of shape ({self.in_size},) for image_shape "
                f"{self.image_shape}, got shape {z.shape}."
            )
        context = args if self.context_size else None
        x = z.reshape(self.image_shape)
        for layer in self.layers[:-1]:
            x = self.activation(layer(t, x, context))
        return self.layers[-1](t, x, context).reshape(-1)
