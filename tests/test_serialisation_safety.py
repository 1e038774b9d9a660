"""nde.load never runs code from a file unless told to: crafted files, user parts, old files.

Also: what the CLI and the demos save loads with a plain `nde.load` in a fresh process.
"""

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import types

import cloudpickle
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.cli import main

KEY = jax.random.key(0)
TS = jnp.linspace(0.0, 1.0, 4)
Y0 = jnp.array([1.0, 0.5])


class Payload:
    """Unpickling this creates a file: the stand-in for any code a malicious file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def named_model():
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=KEY)
    return nde.NeuralODE(nde.autonomous(mlp, input_fn=nde.transforms.cube))


def lambda_model():
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=KEY)
    return nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3))


class MyField(eqx.Module):
    """A user's own field class: not in the library, so not rebuilt without trust."""

    weight: jax.Array

    def __call__(self, t, y, args):
        return -self.weight * y


def _format2(path, model_desc, pickled=b"", parts=(), arrays=()):
    import hashlib

    header = {
        "format": 2,
        "writer": "crafted",
        "model": model_desc,
        "arrays": list(arrays),
        "arrays_bytes": 0,
        "pickle_section": {"note": "", "nbytes": len(pickled), "parts": list(parts)},
        "sha256": hashlib.sha256(pickled).hexdigest(),
    }
    text = json.dumps(header).encode()
    path.write_bytes(b"NEURALDIFFEQ-MODEL-2\n" + len(text).to_bytes(8, "little") + text + pickled)


def _format1(path, skeleton_bytes, leaves=b""):
    """The previous format: magic, structure size, cloudpickled structure, equinox leaves."""
    path.write_bytes(
        b"NEURALDIFFEQ-MODEL-1\n"
        + len(skeleton_bytes).to_bytes(8, "little")
        + skeleton_bytes
        + leaves
    )


def test_pickled_payload_in_a_new_format_file_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = cloudpickle.dumps(Payload(marker))
    path = tmp_path / "evil.eqx"
    part = {"path": ".field", "what": "function x", "offset": 0, "nbytes": len(payload)}
    _format2(path, {"t": "pickled", "index": 0}, payload, [part])
    with pytest.raises(ValueError, match=r"cannot be rebuilt safely.*like=model.*trusted=True"):
        nde.load(path)
    assert not marker.exists()
    # the same payload as a user class of a module description
    desc = {"t": "module", "class": "x:Y", "class_pickle": 0, "fields": {}}
    _format2(path, desc, payload, [part])
    with pytest.raises(ValueError, match="cannot be rebuilt safely"):
        nde.load(path)
    assert not marker.exists()
    # like= reads arrays only, never the pickle section
    _format2(path, {"t": "pickled", "index": 0}, payload, [part])
    assert nde.load(path, like={}) == {}
    assert not marker.exists()
    # and trusted=True really is the opt-in that runs it (what its docstring warns about)
    nde.load(path, trusted=True)
    assert marker.exists()


def test_previous_format_file_with_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "old.eqx"
    _format1(path, pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match=r"previous model file format \(1\).*like=model.*trusted"):
        nde.load(path)
    assert not marker.exists()


def test_previous_format_file_reads_with_like_or_trusted(tmp_path):
    from neuraldiffeq.io.model_files import _ArraySpec

    model = lambda_model()  # format 1 pickled everything, lambdas included
    skeleton = jax.tree_util.tree_map(
        lambda x: _ArraySpec(x.shape, x.dtype) if eqx.is_array(x) else x, model
    )
    leaves = io.BytesIO()
    eqx.tree_serialise_leaves(leaves, model)
    path = tmp_path / "old.eqx"
    _format1(path, cloudpickle.dumps(skeleton), leaves.getvalue())
    expected = model(TS, Y0)
    np.testing.assert_array_equal(nde.load(path, like=lambda_model())(TS, Y0), expected)
    np.testing.assert_array_equal(nde.load(path, trusted=True)(TS, Y0), expected)


@pytest.mark.parametrize(
    "desc, message",
    [
        ({"t": "module", "class": "subprocess:Popen", "fields": {}}, "outside the allowed"),
        ({"t": "dataclass", "class": "os:stat_result", "fields": {}}, "outside the allowed"),
        ({"t": "class", "ref": "builtins:eval"}, "outside the allowed"),
        ({"t": "function", "ref": "os:system"}, "outside the allowed"),
        ({"t": "function", "ref": "builtins:exec"}, "outside the allowed"),
        ({"t": "function", "ref": "neuraldiffeq.__main__:main"}, "outside the allowed"),
        ({"t": "class", "ref": "neuraldiffeq.__main__:main"}, "never imported"),
        ({"t": "class", "ref": "neuraldiffeq.cli:main"}, "never imported"),
        # allowed packages, but not an allowed kind of object
        ({"t": "function", "ref": "neuraldiffeq.io.outputs:write_json"}, "outside the allowed"),
        ({"t": "function", "ref": "neuraldiffeq.io.model_files:save"}, "outside the allowed"),
        ({"t": "function", "ref": "neuraldiffeq.models.ode:jnp"}, "not an allowed function"),
        # a function imported into an allowed module from outside the allowed ones (jax's)
        (
            {"t": "function", "ref": "neuraldiffeq.solve.continuous_adjoint:ravel_pytree"},
            "elsewhere",
        ),
        ({"t": "constant", "ref": "neuraldiffeq.demos.spiral:os"}, "not an allowed constant"),
        ({"t": "class", "ref": "neuraldiffeq.models.ode:diffrax"}, "not an allowed class"),
        ({"t": "class", "ref": "neuraldiffeq.io.model_files:Any"}, "not an allowed class"),
        ({"t": "class", "ref": "neuraldiffeq.models.ode:NoSuchClass"}, "absent from this"),
        ({"t": "module", "class": "neuraldiffeq.models.ode:NeuralODE", "fields": {}}, "fields"),
        (
            {"t": "module", "class": "neuraldiffeq.fitting.series:Normaliser", "fields": {}},
            "not an equinox module",
        ),
        ({"t": "class", "ref": "neuraldiffeq.models.ode:NeuralODE.__init__"}, "bad reference"),
    ],
)
def test_crafted_references_are_refused_without_importing_them(tmp_path, desc, message):
    path = tmp_path / "crafted.eqx"
    _format2(path, {"t": "list", "items": [desc]})
    before = set(sys.modules)
    with pytest.raises(ValueError, match=message):
        nde.load(path)
    assert not {"subprocess", "neuraldiffeq.__main__"} & (set(sys.modules) - before)


def test_user_lambda_saves_with_a_warning_and_loads_only_by_an_explicit_way(tmp_path):
    model = lambda_model()
    path = tmp_path / "model.eqx"
    with pytest.warns(UserWarning, match=r"\.field\.input_fn: function .*<lambda>"):
        nde.save(path, model)
    with pytest.raises(ValueError) as info:
        nde.load(path)
    message = str(info.value)
    assert "`.field.input_fn`" in message and "<lambda>" in message
    assert "nde.load(path, like=model)" in message and "nde.load(path, trusted=True)" in message
    expected = model(TS, Y0)
    np.testing.assert_array_equal(nde.load(path, like=lambda_model())(TS, Y0), expected)
    np.testing.assert_array_equal(nde.load(path, trusted=True)(TS, Y0), expected)


def test_user_class_keeps_its_arrays_declarative(tmp_path):
    model = nde.NeuralODE(MyField(jnp.array([0.5, 2.0])))
    path = tmp_path / "model.eqx"
    with pytest.warns(UserWarning, match="MyField"):
        nde.save(path, model)
    with pytest.raises(ValueError, match=r"`\.field` \(class .*MyField\)"):
        nde.load(path)
    expected = model(TS, Y0)
    # the class is the only pickled part: its arrays are in the arrays section, so like= works
    like = nde.NeuralODE(MyField(jnp.zeros(2)))
    np.testing.assert_array_equal(nde.load(path, like=like)(TS, Y0), expected)
    loaded = nde.load(path, trusted=True)
    assert type(loaded.field) is MyField
    np.testing.assert_array_equal(loaded(TS, Y0), expected)


def test_unpicklable_part_still_saves_and_loads_with_like(tmp_path):
    tree = {"w": jnp.arange(3.0), "lock": threading.Lock()}
    path = tmp_path / "tree.eqx"
    with pytest.warns(UserWarning, match=r"\['lock'\]"):
        nde.save(path, tree)
    with pytest.raises(ValueError, match="could not be saved.*like="):
        nde.load(path, trusted=True)
    loaded = nde.load(path, like={"w": jnp.zeros(3), "lock": None})
    assert loaded["w"].tolist() == [0.0, 1.0, 2.0]


FRESH_LOAD = """
import sys
import jax, jax.numpy as jnp
import neuraldiffeq as nde

for path in sys.argv[1:]:
    model = nde.load(path)  # plain: no like=, no trusted=
    if isinstance(model, nde.FFJORD):
        out = model.log_prob(jnp.zeros((2, 2)), jax.random.key(0))
    elif isinstance(model, nde.NeuralSDE):
        out = model.sample(jnp.linspace(0, 1, 3), jnp.ones(2), jax.random.key(0), 2)
    elif isinstance(model, nde.NeuralDDE):
        out = model(jnp.linspace(0, 1, 3), jnp.ones(1))
    else:
        y0 = jnp.ones(2)
        out = model(jnp.linspace(0, 1, 3), y0)
    assert bool(jnp.all(jnp.isfinite(out))), path
    print("loaded", type(model).__name__, type(getattr(model, "field", None)).__name__)
"""


@pytest.mark.long
def test_cli_and_demo_models_load_plainly_in_a_fresh_process(tmp_path):
    from neuraldiffeq.demos import dde, ffjord, lynx_hare, sde

    spiral = tmp_path / "spiral"
    args = ["demo", "spiral", "--steps", "2", "--lbfgs-steps", "0", "--no-progress"]
    assert main([*args, "--out", str(spiral)]) == 0
    csv = tmp_path / "data.csv"
    ts = np.linspace(0, 5, 12)
    rows = "\n".join(f"{t},{np.cos(t)},{np.sin(t)}" for t in ts)
    csv.write_text("time,x,y\n" + rows + "\n")
    fitted = tmp_path / "fit"
    args = ["fit", str(csv), "--time", "time", "--hidden", "8", "--depth", "1"]
    args += ["--strategy", "trajectory", "--steps", "2", "--lbfgs-steps", "0", "--no-progress"]
    assert main([*args, "--out", str(fitted)]) == 0
    # the other demos' models as their builders make them (training does not change structure)
    paths = [spiral / "model.eqx", fitted / "model.eqx"]
    built = {
        "sde": sde.build_model(0),
        "dde": dde.build_models(0)[0],
        "ffjord": ffjord.build_flow(0, "hutchinson", 1e-3),
        "ude": lynx_hare.build_models(4, 0)["ude"][0],
    }
    for name, model in built.items():
        paths.append(tmp_path / f"{name}.eqx")
        nde.save(paths[-1], model)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FRESH_LOAD), *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("loaded") == len(paths)
    assert "LotkaVolterraUDE" in proc.stdout  # a demo's own class, rebuilt by its path


def test_damaged_descriptions_and_pickles_give_value_errors(tmp_path):
    path = tmp_path / "bad.eqx"
    _format2(path, {"t": "float", "v": "not a number"})
    with pytest.raises(ValueError, match="damaged or written by an incompatible version"):
        nde.load(path)
    _format2(path, {"t": "partial", "func": {"t": "function", "ref": "jax.nn:relu"}})
    with pytest.raises(ValueError, match="damaged or written by an incompatible version"):
        nde.load(path)
    _format2(path, "NESTED")  # a description nested deeper than Python's recursion limit
    deep = '{"t": "list", "items": [' * 100_000 + "]}" * 100_000
    first, rest = path.read_bytes().split(b"\n", 1)
    text = rest[8:].decode().replace('"NESTED"', deep).encode()
    path.write_bytes(first + b"\n" + len(text).to_bytes(8, "little") + text)
    with pytest.raises(ValueError, match="damaged"):
        nde.load(path)
    missing = b"cno_such_module_xyz\nThing\n."  # a pickle of a class from a module not installed
    part = {"path": ".field", "what": "x", "offset": 0, "nbytes": len(missing)}
    _format2(path, {"t": "pickled", "index": 0}, missing, [part])
    with pytest.raises(ValueError, match=r"\.field: could not be unpickled \(ModuleNotFoundError"):
        nde.load(path, trusted=True)


def test_trusted_pickles_naming_0_1_module_paths_still_load(tmp_path, monkeypatch):
    # format 1 pickled its skeleton by reference: 0.1's `neuraldiffeq.serialisation._ArraySpec`
    # and `neuraldiffeq.solve_config.SolveConfig`, modules that moved in the re-layering
    from neuraldiffeq.io import model_files
    from neuraldiffeq.solve.config import SolveConfig

    model = lambda_model()
    skeleton = jax.tree_util.tree_map(
        lambda x: model_files._ArraySpec(x.shape, x.dtype) if eqx.is_array(x) else x, model
    )
    leaves = io.BytesIO()
    eqx.tree_serialise_leaves(leaves, model)
    with monkeypatch.context() as patched:  # pickled as 0.1 named them
        for cls, old in [
            (model_files._ArraySpec, "neuraldiffeq.serialisation"),
            (SolveConfig, "neuraldiffeq.solve_config"),
        ]:
            module = types.ModuleType(old)
            setattr(module, cls.__name__, cls)
            patched.setitem(sys.modules, old, module)
            patched.setattr(cls, "__module__", old)
        pickled = cloudpickle.dumps(skeleton)
    assert b"neuraldiffeq.serialisation" in pickled and b"neuraldiffeq.solve_config" in pickled
    path = tmp_path / "old.eqx"
    _format1(path, pickled, leaves.getvalue())
    loaded = nde.load(path, trusted=True)
    assert type(loaded.config) is SolveConfig
    np.testing.assert_array_equal(loaded(TS, Y0), model(TS, Y0))
