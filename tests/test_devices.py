"""`nde.fit(..., devices=...)`: data-parallel fits on 4 virtual CPU devices.

JAX fixes its device count when it is first imported, so the 4-device checks run in one
subprocess started with `XLA_FLAGS=--xla_force_host_platform_device_count=4` (one process for all
strategies: each compile costs seconds). It runs in float64: the sharded step sums the batch in
another order, and in float32 that rounding (1e-7) is amplified by the adaptive step controller's
accept/reject decisions and Adam's normalisation to ~1e-4 relative within 20 steps; in float64
the same programs agree to ~1e-12, which shows they compute the same thing.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import equinox as eqx, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import neuraldiffeq as nde

assert jax.device_count() == 4, jax.device_count()
names = set(json.loads(sys.argv[1]))  # the strategies to compare
out = {"losses": {}, "specs": {}, "errors": {}}
specs = []


def inspecting(cls, leaf):
    # the same strategy, recording the sharding its step sees for one leaf of the prepared data
    class Inspect(cls):
        def loss(self, model, prepared, key):
            size = leaf(prepared).shape[0]  # the batch this loss call sees
            jax.debug.inspect_array_sharding(
                leaf(prepared), callback=lambda s: specs.append([str(s.spec), size])
            )
            return super().loss(model, prepared, key)

    return Inspect


def compare(name, model, data, strategy, leaf, data4=None, devices=4, lr=0.01, **kw):
    if name not in names:
        return
    one = nde.fit(model, data, strategy, optimizer=optax.adam(lr), steps=20, progress=False)
    specs.clear()
    four = nde.fit(model, data if data4 is None else data4, inspecting(type(strategy), leaf)(**kw),
                   optimizer=optax.adam(lr), steps=20, progress=False, devices=devices)
    out["losses"][name] = [one.losses.tolist(), four.losses.tolist()]
    out["specs"][name] = list(specs)


key = jax.random.key(0)
spiral = nde.datasets.spiral(n_points=20, t1=2.0)
batch = nde.TimeSeries(spiral.ts, jnp.stack([spiral.ys * (1 + 0.1 * i) for i in range(8)]))
mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=key)
ode = nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3))

compare("Trajectory", ode, batch, nde.Trajectory(), lambda p: p.ys)
compare("MultipleShooting", ode, batch, nde.MultipleShooting(group_size=5),
        lambda p: p["ys"], group_size=5)

if "MomentMatching" in names:
    ts = jnp.linspace(0.0, 1.0, 8)
    sde = nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: 0.2 * y, dt0=0.1)
    paths = sde.sample(ts, jnp.array([1.0, 0.5]), jax.random.key(1), 8)
    drift = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=key)
    model_sde = nde.NeuralSDE(nde.autonomous(drift), lambda t, y, a: 0.2 * y, dt0=0.1)
    compare("MomentMatching", model_sde, nde.TimeSeries(ts, paths),
            nde.MomentMatching(n_paths=8, objective="likelihood"), lambda p: p["paths"],
            n_paths=8, objective="likelihood")

if "MaximumLikelihood" in names:
    x = nde.datasets.toy_2d("8gaussians", 64, jax.random.key(2))
    flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=key), trace="exact", rtol=1e-3, atol=1e-3)
    # the samples come already sharded by the caller (over its own mesh of the same 4 devices):
    # fit uses them as placed (the step sees the caller's "mine" axis, not fit's "batch")
    mesh = Mesh(np.array(jax.devices()), ("mine",))
    placed = jax.device_put(x, NamedSharding(mesh, PartitionSpec("mine")))
    compare("MaximumLikelihood", flow, x, nde.MaximumLikelihood(), lambda p: p, data4=placed,
            devices=mesh)

if "ELBO" in names:
    s = nde.datasets.spirals(n_spirals=8, n_points=12, key=jax.random.key(3))
    latent = nde.LatentODE(2, 2, key=key, hidden_size=8, dynamics_width=8, dynamics_depth=1,
                           decoder_width=8)
    compare("ELBO", latent, s.data, nde.ELBO(), lambda p: p[1])

if "Classification" in names:
    cde = nde.NeuralCDE(1, 4, 2, width_size=8, depth=1, key=key)
    cde_ts = jnp.linspace(0.0, 1.0, 6)
    waves = jnp.sin(cde_ts[None, :, None] * (1.0 + jnp.arange(8.0))[:, None, None])
    compare("Classification", cde, ((cde_ts, waves), [0, 1] * 4), nde.Classification(),
            lambda p: p[1], lr=0.05)

for name, call in {
    "indivisible": lambda: nde.fit(ode, nde.TimeSeries(batch.ts, batch.ys[:6]), nde.Trajectory(),
                                   steps=1, progress=False, devices=4),
    "too_many": lambda: nde.fit(ode, batch, nde.Trajectory(), steps=1, progress=False,
                                devices=5),
}.items():
    try:
        call()
        out["errors"][name] = None
    except ValueError as e:
        out["errors"][name] = str(e)
print("RESULT " + json.dumps(out))
"""


@functools.cache
def _four_devices(names: tuple[str, ...]) -> dict:
    """One subprocess (4 virtual CPU devices) that fits each named strategy on one device and on
    four, and tries the two refused `devices` arguments."""
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    # 4 virtual CPU devices, also on a machine with an accelerator (which would be the default)
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(os.path.dirname(__file__), "..", "src"), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(names)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


#: compared in the default run: Trajectory, whose loss splits over devices (each device its own
#: loss and gradient, `PER_DEVICE`); the long tier compares MultipleShooting, which splits the
#: same way, and the four that XLA partitions
DEFAULT_STRATEGIES = ("Trajectory",)
LONG_STRATEGIES = (
    "MultipleShooting",
    "MomentMatching",
    "MaximumLikelihood",
    "ELBO",
    "Classification",
)
STRATEGIES = [
    *DEFAULT_STRATEGIES,
    *(pytest.param(name, marks=pytest.mark.long) for name in LONG_STRATEGIES),
]


@pytest.fixture(scope="module")
def four_devices():
    return _four_devices(DEFAULT_STRATEGIES)


def _compared(name):
    return _four_devices(DEFAULT_STRATEGIES if name in DEFAULT_STRATEGIES else LONG_STRATEGIES)


# a batch_reduction: loss and gradient device by device. Not Classification: a neural CDE solves
# its batch as one system, whose adaptive steps depend on every series.
PER_DEVICE = {"Trajectory", "MultipleShooting"}


@pytest.mark.parametrize("name", STRATEGIES)
def test_four_devices_give_the_one_device_losses(name):
    one, four = (np.asarray(x) for x in _compared(name)["losses"][name])
    assert one.shape == four.shape == (20,)
    assert np.all(np.isfinite(one))
    assert np.ptp(one) > 1e-3 * np.abs(one).max()  # it trained: the comparison is not vacuous
    np.testing.assert_allclose(four, one, rtol=1e-5)


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_batch_axis_is_sharded_inside_the_step(name):
    specs = _compared(name)["specs"][name]
    assert specs, "the step never traced"
    if name in PER_DEVICE:
        # a sum or mean over series: each device's loss sees its own quarter of the 8 series
        assert all(spec == ["P()", 2] for spec in specs), specs
        return
    # XLA partitions the step: the loss sees the whole batch, its axis (first for all of these
    # leaves) split over the mesh's axis: fit's own "batch", or for MaximumLikelihood the
    # caller's "mine" (data placed by the caller are used as placed)
    axis = "mine" if name == "MaximumLikelihood" else "batch"
    assert all(
        spec.startswith(f"P('{axis}'") and size == (64 if name == "MaximumLikelihood" else 8)
        for spec, size in specs
    ), specs


def test_a_batch_that_does_not_divide_is_refused(four_devices):
    message = four_devices["errors"]["indivisible"]
    assert message is not None
    assert "6 examples" in message and "4 devices" in message and "multiple of 4" in message


def test_more_devices_than_exist_are_refused_in_the_subprocess(four_devices):
    message = four_devices["errors"]["too_many"]
    assert message is not None
    assert "jax.device_count() = 4" in message and "xla_force_host_platform_device_count" in message


def test_bad_devices_arguments_are_refused():
    model = nde.NeuralODE(lambda t, y, args: -y)
    data = nde.datasets.spiral(n_points=10)
    n = jax.device_count()
    for devices, words in [
        (n + 1, ["jax.device_count()", "XLA_FLAGS=--xla_force_host_platform_device_count"]),
        (0, ["positive"]),
        ("two", ["jax.sharding.Mesh"]),
        ([], ["non-empty list"]),
    ]:
        with pytest.raises(ValueError) as info:
            nde.fit(
                model,
                data,
                nde.Trajectory(),
                optimizer=optax.adam(0.01),
                steps=1,
                progress=False,
                devices=devices,
            )
        for word in words:
            assert word in str(info.value), (devices, str(info.value))


def test_devices_none_and_one_device_agree():
    import equinox as eqx
    import jax.numpy as jnp

    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    model = nde.NeuralODE(nde.autonomous(mlp))
    data = nde.datasets.spiral(n_points=10, t1=1.0)
    runs = [
        nde.fit(
            model,
            data,
            nde.Trajectory(),
            optimizer=optax.adam(0.01),
            steps=3,
            progress=False,
            devices=devices,
        ).losses
        for devices in (None, 1, jax.devices()[:1])
    ]
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6)
    np.testing.assert_allclose(runs[2], runs[0], rtol=1e-6)


@pytest.mark.long  # two CLI fits
def test_cli_passes_devices_through(tmp_path, capsys):
    from neuraldiffeq.cli import main

    csv = tmp_path / "decay.csv"
    ts = np.linspace(0.0, 2.0, 8)
    csv.write_text("t,x\n" + "".join(f"{t},{np.exp(-t)}\n" for t in ts))
    common = ["fit", str(csv), "--time", "t", "--hidden", "4", "--depth", "1"]
    common += ["--strategy", "trajectory", "--steps", "2", "--lbfgs-steps", "0", "--no-progress"]
    # more devices than JAX sees: refused by fit, which proves the flag reached it
    code = main([*common, "--out", str(tmp_path / "a"), "--devices", str(jax.device_count() + 1)])
    assert code != 0
    assert "jax.device_count()" in capsys.readouterr().err
    # one device: the fit runs on a one-device mesh and writes its outputs
    assert main([*common, "--out", str(tmp_path / "b"), "--devices", "1"]) == 0
    assert (tmp_path / "b" / "model.eqx").exists()


def test_batch_reduction_says_when_the_loss_splits_over_devices():
    # fit computes a per-device loss and gradient only where the loss is a sum or a mean of
    # per-series terms; every other case must answer None (XLA then partitions the whole step)
    data = nde.datasets.spiral(n_points=12, t1=1.0)
    batch = nde.TimeSeries(data.ts, jnp.stack([data.ys, 1.1 * data.ys]))
    model = nde.NeuralODE(lambda t, y, args: -y)

    def reduction(strategy, model=model, data=batch):
        return strategy.batch_reduction(model, strategy.prepare(model, data))

    assert reduction(nde.Trajectory()) == "sum"
    assert reduction(nde.Trajectory(loss_fn=nde.losses.mse)) == "mean"
    missing = nde.TimeSeries(
        batch.ts, batch.ys, mask=jnp.ones(batch.ys.shape, bool).at[0, 3].set(False)
    )
    assert reduction(nde.Trajectory(loss_fn=nde.losses.mse), data=missing) is None  # weights
    assert reduction(nde.Trajectory(loss_fn=nde.losses.l2), data=missing) == "sum"
    assert reduction(nde.Trajectory(loss_fn=lambda p, y, m: jnp.max((p - y) ** 2))) is None
    assert reduction(nde.Trajectory(batch_size=1)) is None  # a draw from the whole batch
    assert reduction(nde.Trajectory(batch_time=4)) is None
    shooting = nde.MultipleShooting(group_size=4)
    assert reduction(shooting) == "sum"
    assert reduction(nde.MultipleShooting(group_size=4, batch_size=1)) is None
    states = shooting.with_states(model, batch)  # trainable starts: a batch-sized parameter
    assert reduction(shooting, model=states) is None

    class Own(nde.Trajectory):  # a strategy that does not say: None, the safe default
        def batch_reduction(self, model, prepared):
            return nde.AbstractStrategy.batch_reduction(self, model, prepared)

    assert reduction(Own()) is None
