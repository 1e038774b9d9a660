"""`neuraldiffeq fit ... --discover`: the fitted network as a sparse polynomial, refitted.

After `neuraldiffeq fit` has trained a neural ODE, `--discover` explains its vector field by a
sparse combination of monomials of the states (`nde.discover`: PySINDy's STLSQ, sparsity by
cross-validation), evaluated along the fitted trajectories. Everything is in the data's original
units: the field of the normalised model is mapped back (d y/dt = std / t_scale * f((y - mean) /
std)), so the equation reads in the CSV's columns and time unit. The formula then replaces the
network and its coefficients are refitted against the (training) data by L-BFGS.

Writes `equation.txt` (the discovered and the refitted equations) and `discovery.json`
(equations, threshold, number of terms, training MSE of the refitted formula next to the
network's).
"""

from __future__ import annotations

import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class OriginalUnits(eqx.Module):
    """The field of a model fitted on normalised data, in the data's original units.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.commands.fit_discover import OriginalUnits
        >>> f = OriginalUnits(lambda t, z, a: -z, jnp.array([1.0]), jnp.array([2.0]), 0.5)
        >>> f(jnp.array([3.0])).tolist()  # z = 1, dz/dtau = -1, dy/dt = 2 / 0.5 * -1
        [-4.0]
    """

    field: Any
    mean: jax.Array
    std: jax.Array
    t_scale: float = eqx.field(static=True)

    def __call__(self, y: jax.Array) -> jax.Array:
        z = (y - self.mean) / self.std
        return self.std / self.t_scale * self.field(0.0, z, None)


class Formula(eqx.Module):
    """An autonomous vector field `dy/dt = term(y)` (the discovered formula)."""

    term: Any

    def __call__(self, t, y, args=None):
        return self.term(y)


def discover_fit(
    data: Any,
    fitted: Any,
    labels: list[str],
    *,
    degree: int,
    holdout: int,
    lbfgs_steps: int,
    out: str,
    time_name: str,
    progress: bool,
) -> dict:
    """Discover, refit and write `equation.txt` and `discovery.json`; returns the summary."""
    import optax

    from ..fitting.fit import fit
    from ..fitting.series import fitted_part, start_states
    from ..fitting.strategies import Trajectory
    from ..inference.discovery import Library, discover
    from ..io.outputs import write_bytes_atomically, write_json
    from ..models import NeuralODE

    norm, model = fitted.normaliser, fitted.model
    train = fitted_part(data, holdout)
    dtype = jnp.result_type(float)  # the working precision (float32 unless x64 is on)
    field = OriginalUnits(
        model.field, jnp.asarray(norm.mean, dtype), jnp.asarray(norm.std, dtype), norm.t_scale
    )
    # along the fitted trajectories: 200 times over the fitted span, from each series' start
    y0 = jnp.asarray(start_states(norm.forward(train)), dtype)
    ts = jnp.asarray(norm.times(np.linspace(float(train.ts[0]), float(train.ts[-1]), 200)))
    states = norm.states_back(jax.vmap(lambda y: model(ts.astype(dtype), y))(y0))
    states = states.reshape(-1, data.dim)
    if not np.all(np.isfinite(states)):
        raise ValueError("--discover: the fitted model's trajectory is not finite.")
    found = discover(
        field,
        field,
        jnp.asarray(states, dtype),
        library=Library(degree=degree),
        names=labels,
        output_names=[f"d{name}/d{time_name}" for name in labels],
    )
    starts = jnp.asarray(start_states(train), dtype)
    train_ts = jnp.asarray(train.ts, dtype)
    formula = NeuralODE(Formula(found.term), "auto", rtol=1e-6, atol=1e-8, max_steps=16384)
    formula = formula.resolve_solver(train_ts, starts[0])  # "auto": chosen once, here
    refit = formula
    if lbfgs_steps:
        refit = fit(
            formula,
            train,
            Trajectory(),
            optimizer=optax.lbfgs(),
            steps=lbfgs_steps,
            progress=progress,
        ).model
    pred = np.asarray(jax.vmap(lambda y: refit(train_ts, y))(starts))
    obs = np.asarray(train.as_batch().ys)
    seen = np.ones(obs.shape, bool) if train.mask is None else np.asarray(train.as_batch().mask)
    err = np.where(seen, (pred - obs) ** 2, 0.0)
    mse = float(err.sum() / seen.sum()) if np.all(np.isfinite(err)) else float("inf")
    refitted = refit.field.term.equation()
    summary = {
        "degree": degree,
        "equation_discovered": found.equation,
        "equation_refitted": refitted,
        "threshold": found.threshold,
        "n_terms": found.term.n_terms(),
        "refit_lbfgs_steps": lbfgs_steps,
        "train_mse_formula": mse,
        "train_mse_network": fitted.metrics["train_mse"],
    }
    text = (
        f"# discovered from the fitted network (degree <= {degree}, STLSQ, CV), original units\n"
        f"{found.equation}\n\n# refitted against the data (L-BFGS, {lbfgs_steps} steps); "
        f"training MSE {mse:.5g} (network: {fitted.metrics['train_mse']:.5g})\n{refitted}\n"
    )
    write_bytes_atomically(os.path.join(out, "equation.txt"), text.encode("utf-8"))
    write_json(os.path.join(out, "discovery.json"), summary)
    print(f"discovered (refitted): {refitted.replace(chr(10), ';  ')}")
    return summary
