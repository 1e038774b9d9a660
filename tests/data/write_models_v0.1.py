"""Writes tests/data/models_v0.1.eqx with neuraldiffeq 0.1 (the commit before the re-layering):

    git worktree add --detach /tmp/v01 705e617
    PYTHONPATH=/tmp/v01/src python tests/data/write_models_v0.1.py tests/data/models_v0.1.eqx

The file names 0.1's module paths; tests/test_serialisation.py checks that it still loads.
"""

import sys

import equinox as eqx
import jax
import jax.numpy as jnp

import neuraldiffeq as nde

key = jax.random.key(0)
mlp = eqx.nn.MLP(2, 2, 4, 1, activation=jnp.tanh, key=key)
ode = nde.NeuralODE(
    nde.autonomous(mlp, input_fn=nde.transforms.cube),
    "tsit5",
    rtol=1e-4,
    atol=1e-6,
    sensitivity=nde.Interpolating(),
)
sde = nde.NeuralSDE(
    nde.autonomous(eqx.nn.MLP(2, 2, 4, 1, key=key)),
    nde.autonomous(eqx.nn.MLP(2, 2, 4, 1, key=key), input_fn=nde.transforms.square),
    dt0=0.1,
)
models = {"ode": ode, "sde": sde}
nde.save(sys.argv[1], models)
