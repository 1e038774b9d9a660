"""Multi-host fits through `jax.distributed`: two processes on 127.0.0.1, CPU, gloo collectives.

Each process joins with an explicit coordinator address, process count and id, passes its half
of a batch of 4 series to `nde.fit(..., devices=jax.device_count())`, and checkpoints. The loss
curve must equal the one-process fit of the whole batch (up to the rounding of the cross-process
sum), only process 0's progress is shown, the checkpoint is resumable, and each process gets an
ordinary local model back.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import neuraldiffeq as nde

pytestmark = pytest.mark.slow  # two processes that each import JAX and compile

SETUP = """
import equinox as eqx, jax, jax.numpy as jnp, optax
import neuraldiffeq as nde

def setup():
    spiral = nde.datasets.spiral(n_points=10, t1=1.0)
    ys = jnp.stack([spiral.ys * (1 + 0.2 * i) for i in range(4)])  # 4 different series
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    # constant steps: the cross-process sum's rounding is not amplified by step-size control
    model = nde.NeuralODE(nde.autonomous(mlp), solver="tsit5", dt0=0.05)
    return model, spiral.ts, ys

STEPS = 6
"""
exec(SETUP)

WORKER = (
    SETUP
    + """
import json, sys
port, pid, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
model, ts, ys = setup()
assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
share = nde.TimeSeries(ts, ys[2 * pid : 2 * pid + 2])  # this process's half of the batch
result = nde.fit(model, share, nde.Trajectory(), optimizer=optax.adam(0.02), steps=STEPS,
                 devices=jax.device_count(), checkpoint_dir=folder, checkpoint_every=3)
local = all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(result.model)
            if isinstance(x, jax.Array))
errors = []
try:  # unequal shares are refused on every process
    nde.fit(model, nde.TimeSeries(ts, ys[: 2 + 2 * pid]), nde.Trajectory(), steps=1,
            devices=2, progress=False)
except ValueError as e:
    errors.append(str(e))
try:
    nde.fit(model, share, nde.Trajectory(), steps=1, progress=False)  # devices=None
except ValueError as e:
    errors.append(str(e))
print("RESULT", json.dumps({"losses": result.losses.tolist(), "local": local,
                            "errors": errors}), flush=True)
"""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# two processes, each compiling the step (test_devices checks the devices of one host)
@pytest.mark.long
def test_two_processes_fit_as_one(tmp_path):
    folder = str(tmp_path / "ckpt")
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "JAX_PLATFORMS": "cpu"}
    # one CPU device per process: drop a device count the suite may run under, keep the rest
    flags = os.environ.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, port, str(pid), folder],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for pid in (0, 1)
    ]
    # meanwhile, the same fit in one process on the whole batch
    model, ts, ys = setup()  # noqa: F821 - defined by exec(SETUP)
    import optax

    one = nde.fit(
        model,
        nde.TimeSeries(ts, ys),
        nde.Trajectory(),
        optimizer=optax.adam(0.02),
        steps=STEPS,  # noqa: F821
        progress=False,
    )
    outputs = []
    for w in workers:
        try:
            out, err = w.communicate(timeout=300)
        finally:
            w.kill()
        assert w.returncode == 0, err[-3000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        outputs.append((json.loads(line[len("RESULT ") :]), err))

    for (result, err), pid in zip(outputs, (0, 1), strict=True):
        losses = np.asarray(result["losses"])
        assert losses.shape == (STEPS,)  # noqa: F821
        # the fit is of the whole batch: the two processes hold different halves, so a fit of
        # its own half on each could not give both processes the one-process losses
        rel = float(np.max(np.abs(losses - one.losses) / np.abs(one.losses)))
        print(f"process {pid}: max relative difference to one process {rel:.2e}")
        assert rel <= 2e-6, rel
        assert result["local"]  # the fitted model is an ordinary local one on each process
        assert "equal share of the batch" in result["errors"][0]
        assert "multi-process run" in result["errors"][1]
        assert ("1/1 Trajectory" in err) == (pid == 0)  # one progress bar, process 0's
    # the checkpoints of the two-process fit were written once, and resume in one process
    steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit())
    assert steps == [3, 6]
    again = nde.fit(
        model,
        nde.TimeSeries(ts, ys),
        nde.Trajectory(),
        optimizer=optax.adam(0.02),
        steps=STEPS,  # noqa: F821
        progress=False,
        checkpoint_dir=folder,
        resume=True,
    )
    np.testing.assert_array_equal(again.losses, outputs[0][0]["losses"])
    assert jax.process_count() == 1
