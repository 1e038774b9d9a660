"""Named input transforms for `nde.autonomous(net, input_fn=...)`.

A model file stores functions by name, never as code (see `neuraldiffeq.io.model_files`): a field
built with `input_fn=nde.transforms.cube` loads with a plain `nde.load(path)` anywhere, whereas
`input_fn=lambda y: y**3` computes the same thing but needs `nde.load(path, like=model)` or
`trusted=True`. Activations such as `jnp.tanh` or `jax.nn.softplus` are stored by name too.
"""

from __future__ import annotations

import jax


def identity(y: jax.Array) -> jax.Array:
    """The state unchanged (the same as `input_fn=None`).

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> nde.transforms.identity(jnp.array([2.0, -1.0])).tolist()
        [2.0, -1.0]
    """
    return y


def square(y: jax.Array) -> jax.Array:
    """Elementwise square, `y**2`.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> nde.transforms.square(jnp.array([2.0, -1.0])).tolist()
        [4.0, 1.0]
    """
    return y**2


def cube(y: jax.Array) -> jax.Array:
    """Elementwise cube, `y**3`: the input of the DiffEqFlux spiral tutorial's network.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> nde.transforms.cube(jnp.array([2.0, -1.0])).tolist()
        [8.0, -1.0]
        >>> mlp = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> field = nde.autonomous(mlp, input_fn=nde.transforms.cube)  # saves by name
    """
    return y**3
