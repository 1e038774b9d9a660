"""A compiled step is never reused after the user's code changed (issue #26, item 1).

Two processes share one compilation cache. The first fits five models, each calling user code
of a different kind from a helper module in `tmp_path`; the helper is then edited and the second
process fits them again. Each later fit must give the losses of a fit without any cache, bit for
bit (and differ from the first run's, or the edit would prove nothing). A model made only of
neuraldiffeq's parts is still read back from the exported-step cache in the second process.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

HELPER = """
import equinox as eqx
import jax.numpy as jnp

import helper_impl as hi  # (e) a module imported under another name

SCALE = 1.0  # (a) a module global the helper reads


def helper(y):  # (b) the helper's body
    return SCALE * jnp.tanh(y)


class Squash(eqx.Module):  # (c) a method of a user class
    def __call__(self, y):
        return self.act(y)

    def act(self, y):
        return jnp.tanh(y)


def make_scaled():  # (d) a closure cell
    scale = 1.0

    def scaled(y):
        return scale * jnp.tanh(y)

    return scaled


def via_alias(y):
    return hi.act(y)
"""

HELPER_IMPL = """
import jax.numpy as jnp


def act(y):
    return jnp.tanh(y)
"""

EDITS = {
    "a": ("helpermod.py", "SCALE = 1.0", "SCALE = 1.5"),
    "b": ("helpermod.py", "return SCALE * jnp.tanh(y)", "return SCALE * jnp.sin(y)"),
    "c": (
        "helpermod.py",
        "    def act(self, y):\n        return jnp.tanh(y)",
        "    def act(self, y):\n        return jnp.sin(y)",
    ),
    "d": ("helpermod.py", "scale = 1.0", "scale = 0.5"),
    "e": ("helper_impl.py", "return jnp.tanh(y)", "return jnp.sin(y)"),
}

FIT = textwrap.dedent(
    """
    import json, sys
    import equinox as eqx, jax, jax.numpy as jnp, optax
    import neuraldiffeq as nde
    from neuraldiffeq.compilation import cacheable

    sys.path.insert(0, sys.argv[1])
    import helpermod

    steps = []  # fit's compiled steps, to learn whether each was traced or read back
    init = cacheable.cacheable_jit.__init__
    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        steps.append(self)
    cacheable.cacheable_jit.__init__ = record

    if sys.argv[2] != "off":
        nde.enable_compilation_cache(sys.argv[2])
    data = nde.datasets.spiral(n_points=8, t1=2.0)
    mlp = eqx.nn.MLP(2, 2, 4, 1, activation=jnp.tanh, key=jax.random.key(0))
    input_fns = {
        "a": helpermod.helper, "b": helpermod.helper, "c": helpermod.Squash(),
        "d": helpermod.make_scaled(), "e": helpermod.via_alias,
        "library": nde.transforms.cube,  # neuraldiffeq's own parts only
    }
    out = {}
    for name, input_fn in input_fns.items():
        model = nde.NeuralODE(nde.autonomous(mlp, input_fn=input_fn), "euler", dt0=0.25)
        result = nde.fit(model, data, nde.Trajectory(), optimizer=optax.adam(0.05), steps=2,
                         progress=False)
        out[name] = {"losses": [float(x).hex() for x in result.losses],
                     "source": steps[-1].source}
    print("RESULT " + json.dumps(out))
    """
)


def _run(folder: Path, cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=SRC)
    done = subprocess.run(
        [sys.executable, "-c", FIT, str(folder), cache],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.long  # three processes fitting six models each: about a minute
def test_edited_user_code_is_never_served_from_the_cache(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "helpermod.py").write_text(HELPER)
    (code / "helper_impl.py").write_text(HELPER_IMPL)
    cache = str(tmp_path / "cache")

    before = _run(code, cache)
    for filename, old, new in EDITS.values():
        path = code / filename
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
    after = _run(code, cache)
    uncached = _run(code, "off")

    for case in EDITS:
        assert after[case]["source"] == "traced", case
        assert after[case]["losses"] == uncached[case]["losses"], case
        assert after[case]["losses"] != before[case]["losses"], f"{case}: the edit changed nothing"
    # a step made only of neuraldiffeq's parts is read back, and computes the same numbers
    assert before["library"]["source"] == "traced"
    assert after["library"]["source"] == "exported"
    assert (
        after["library"]["losses"] == before["library"]["losses"] == uncached["library"]["losses"]
    )
