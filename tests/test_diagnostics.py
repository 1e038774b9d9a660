"""Divergence is reported (issue 10, item 6) and stages are labelled on the plot (item 8)."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde
from neuraldiffeq.fitting.diagnostics import describe_optimizer, divergence_warning
from neuraldiffeq.io.plotting import plot_fit, stage_spans


def spiral_model():
    mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0))
    return nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3))


class Bowl(nde.AbstractStrategy):
    """loss = ||w - target||^2: no solver, so the path of a too-large step is deterministic."""

    def prepare(self, model, data):
        return jnp.asarray(data)

    def loss(self, model, target, key):
        return jnp.sum((model - target) ** 2)


def test_a_diverging_fit_warns_with_the_numbers_and_records_it():
    # gradient descent at lr 1.5 on this bowl multiplies the error by -2 each step: the loss
    # grows 4x a step, on every machine. (Adam at lr 10 on the spiral diverges too, but where it
    # ends depends on round-off in the failed solves along the way.)
    with pytest.warns(UserWarning, match="diverged: the loss went from 14 to 3.848e") as caught:
        result = nde.fit(
            jnp.zeros(3),
            jnp.array([1.0, -2.0, 3.0]),
            Bowl(),
            optimizer=optax.sgd(1.5),
            steps=20,
            progress=False,
        )
    message = str(caught[-1].message)
    assert "Lower the learning rate" in message and "started from" in message
    report = result.stages[0]
    assert report.warning == message and report.optimizer == "SGD(lr=1.5)"
    assert result.metrics()["stages"][0]["warning"] == message
    # the numbers in the message are the run's: it ended far above where it started
    assert report.final_loss > 10 * report.first_loss


def test_a_healthy_fit_does_not_warn():
    data = nde.datasets.spiral()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = nde.fit(
            spiral_model(),
            data,
            nde.Trajectory(),
            optimizer=optax.adam(0.05),
            steps=20,
            progress=False,
        )
    assert result.stages[0].warning is None and result.losses[-1] < result.losses[0]


@pytest.mark.parametrize(
    "first, final, best, stochastic, flagged",
    [
        (1.0, 11.0, 0.5, False, True),  # ends 11x above its start
        (1.0, float("nan"), 0.5, False, True),  # ends non-finite
        (1.0, 1.5, 1.0, False, True),  # best is the initial model and it went uphill
        (1.0, 1.05, 1.0, False, False),  # a converged polish wobbling near its start
        (1.0, 0.1, 0.1, False, False),  # improved
        (1.0, 5.0, 0.9, True, False),  # noisy and not far above: fine
    ],
)
def test_divergence_rule(first, final, best, stochastic, flagged):
    message = divergence_warning("1/1 S", 50, first, final, best, returns_best=not stochastic)
    assert (message is not None) == flagged


def test_optimizers_are_described_by_name():
    assert describe_optimizer(optax.adam(0.05)) == "Adam(lr=0.05)"
    assert describe_optimizer(optax.lbfgs()) == "L-BFGS"
    assert describe_optimizer(optax.adamw(1e-3)) == "AdamW(lr=0.001)"
    assert describe_optimizer(optax.sgd(0.1)) == "SGD(lr=0.1)"
    clipped = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    assert describe_optimizer(clipped) == "Adam(lr=0.001)"
    assert describe_optimizer(optax.adam(optax.exponential_decay(0.1, 10, 0.5))).startswith("Adam")


@pytest.mark.long  # two stages compiled, one of them L-BFGS
def test_spiral_stages_are_labelled_with_strategy_and_optimizer(tmp_path):
    data = nde.datasets.spiral(n_points=10)
    stages = [
        nde.Stage(nde.MultipleShooting(group_size=3), optax.adam(0.05), 3),
        nde.Stage(nde.Trajectory(), optax.lbfgs(), 2),
    ]
    result = nde.fit(spiral_model(), data, stages, progress=False)
    spans = stage_spans(len(result.losses), result.stages)
    assert spans == [
        ("stage 1/2: MultipleShooting, Adam(lr=0.05)", 0, 3),
        ("stage 2/2: Trajectory, L-BFGS", 3, 5),
    ]
    path = tmp_path / "fit.png"
    ys = np.asarray(data.ys)
    plot_fit(path, data.ts, ys, data.ts, ys, losses=result.losses, stages=result.stages)
    assert path.read_bytes()[:4] == b"\x89PNG"
