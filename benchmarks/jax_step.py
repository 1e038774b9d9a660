"""The hand-written JAX training step the peer benchmarks time next to the PyTorch one.

Imported by the benchmark scripts (`python benchmarks/<script>.py` puts this folder on the path).
"""

from __future__ import annotations

import equinox as eqx
import jax
import optax


def training_step(strategy, prepared, static, optimizer, compiler_options=None):
    """The jitted `(params, opt_state, key) -> (params, opt_state, loss)` step of `strategy` on
    `prepared` (closed over: a constant of the program), for a model split as `static` + params.
    """

    def step(params, opt_state, key):
        def loss_of(p):
            return strategy.loss(eqx.combine(p, static), prepared, key)

        value, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, compiler_options=compiler_options)
