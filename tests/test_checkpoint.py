"""Resumable fits: `fit(..., checkpoint_dir=..., checkpoint_every=N, resume=True)`.

A fit in a subprocess is killed with SIGKILL in its second stage; resumed here, its loss curve
must equal (bitwise, on the CPU, same seed) that of an uninterrupted fit. Damaged and incomplete
checkpoints are skipped with a warning, never loaded; another fit's checkpoint is refused.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.cli import main

pytestmark = pytest.mark.slow  # a subprocess and four short fits

KILL_AT = 11  # global step; stage 1 has 6 steps (3 calls of 2), stage 2 has 8 steps

SETUP = """
import equinox as eqx, jax, jax.numpy as jnp, optax
import neuraldiffeq as nde

def setup(width=8, second=None):
    data = nde.datasets.spiral(n_points=10, t1=1.0)
    mlp = eqx.nn.MLP(2, 2, width, 1, activation=jnp.tanh, key=jax.random.key(0))
    model = nde.NeuralODE(nde.autonomous(mlp))
    stages = [
        nde.Stage(nde.Trajectory(), optax.adam(0.02), 6, steps_per_call=2),
        nde.Stage(second or nde.Trajectory(), optax.adam(0.01), 8),
    ]
    return model, data, stages
"""
exec(SETUP)  # the same setup here and in the killed subprocess

CHILD = (
    SETUP
    + """
import os, signal, sys, time
jax.config.update("jax_enable_x64", sys.argv[2] == "1")
model, data, stages = setup()

def kill(step, loss, model):  # SIGKILL: no cleanup, no flush, as a pre-empted job dies
    if step == int(sys.argv[3]):
        # checkpoints are written in the background: wait (on this loaded machine) until the
        # one of step 10 is complete, so that the test knows which ones exist
        for _ in range(600):
            if os.path.isdir(os.path.join(sys.argv[1], "10")):
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)

nde.fit(model, data, stages, progress=False, key=jax.random.key(3), callback=kill,
        checkpoint_dir=sys.argv[1], checkpoint_every=2)
"""
)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A checkpoint folder left by a fit killed at step KILL_AT, and the uninterrupted losses."""
    folder = str(tmp_path_factory.mktemp("killed") / "ckpt")
    x64 = "1" if jax.config.jax_enable_x64 else "0"  # the child computes as this process does
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, folder, x64, str(KILL_AT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    model, data, stages = setup()  # noqa: F821 - defined by exec(SETUP)
    whole = nde.fit(model, data, stages, progress=False, key=jax.random.key(3))
    return folder, whole.losses


def resume(folder, seen=None, **kw):
    model, data, stages = setup(**kw)  # noqa: F821
    callback = None if seen is None else (lambda step, loss, m: seen.append(step))
    return nde.fit(
        model,
        data,
        stages,
        progress=False,
        key=jax.random.key(3),
        checkpoint_dir=folder,
        checkpoint_every=2,
        resume=True,
        callback=callback,
    )


def copy(source, tmp_path):  # each test resumes (and so writes) its own copy of the folder
    folder = str(tmp_path / "ckpt")
    shutil.copytree(source, folder)
    return folder


def test_killed_fit_resumes_bitwise(killed, tmp_path):
    folder, whole = copy(killed[0], tmp_path), killed[1]
    # checkpoints every 2 steps, the newest 3 kept: 6 (the end of stage 1), 8 and 10
    assert sorted(int(d) for d in os.listdir(folder) if d.isdigit())[-3:] == [6, 8, 10]
    seen: list[int] = []
    resumed = resume(folder, seen)
    assert seen[0] == 11  # continued after step 10, did not start over
    assert resumed.losses.shape == whole.shape == (14,)
    np.testing.assert_array_equal(resumed.losses, whole)  # bitwise
    assert [r.steps for r in resumed.stages] == [6, 8]
    assert resumed.stages[0].final_loss == whole[5]


def test_damaged_and_partial_checkpoints_are_skipped(killed, tmp_path):
    source, whole = killed
    folder = copy(source, tmp_path)
    # step 10 incomplete (its arrays missing), step 8 damaged (one loss of its metadata changed:
    # valid JSON, wrong digest): both skipped with a warning, and the fit resumes from step 6
    shutil.rmtree(os.path.join(folder, "10", "state"))
    meta = os.path.join(folder, "8", "meta", "metadata")
    with open(meta) as f:
        text = json.load(f)
    text["losses"][0] *= 2
    with open(meta, "w") as f:
        json.dump(text, f)
    seen: list[int] = []
    with pytest.warns(UserWarning) as caught:
        resumed = resume(folder, seen)
    messages = [str(w.message) for w in caught]
    assert any("step 10 " in m and "incomplete or damaged" in m for m in messages), messages
    assert any("step 8 " in m and "digest" in m for m in messages), messages
    assert seen[0] == 7
    np.testing.assert_array_equal(resumed.losses, whole)


def test_another_fit_is_refused(killed, tmp_path):
    folder = copy(killed[0], tmp_path)
    with pytest.raises(ValueError, match="another model structure"):
        resume(folder, width=9)
    with pytest.raises(ValueError, match="other stages"):
        resume(folder, second=nde.MultipleShooting(group_size=3))
    model, data, stages = setup()  # noqa: F821
    with pytest.raises(ValueError, match="already holds checkpoints"):
        nde.fit(model, data, stages, progress=False, checkpoint_dir=folder)
    with pytest.raises(ValueError, match="need checkpoint_dir"):
        nde.fit(model, data, stages, progress=False, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        nde.fit(model, data, stages, progress=False, checkpoint_dir=folder, checkpoint_every=0)
    assert main(["fit", "data.csv", "--time", "t", "--resume"]) == 2  # no --checkpoint-dir


@pytest.mark.long  # the CLI's preset twice (test_killed_fit_resumes_bitwise: resuming)
def test_cli_checkpoint_and_resume(tmp_path, capsys):
    from test_cli_fit import oscillator_rows, write_csv

    csv, ckpt = tmp_path / "osc.csv", str(tmp_path / "ckpt")
    write_csv(csv, oscillator_rows())
    args = ["fit", str(csv), "--time", "time", "--hidden", "4", "--depth", "1"]
    args += ["--strategy", "trajectory", "--steps", "4", "--lbfgs-steps", "0", "--no-progress"]
    args += ["--checkpoint-dir", ckpt, "--checkpoint-every", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [2, 4]
    assert main([*args, "--out", str(tmp_path / "b")]) == 2  # not without --resume
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--resume"]) == 0  # finished: restored
    first, again = (json.load(open(tmp_path / d / "metrics.json")) for d in "ab")
    assert again["steps"] == first["steps"] == 4
    assert again["final_loss"] == first["final_loss"]
