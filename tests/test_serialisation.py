"""nde.save / nde.load: round trips of every public model kind, file checks, atomic saves."""

import functools
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.io import model_files as serialisation

KEY = jax.random.key(3)


def mlp(n_in, n_out, activation=jnp.tanh):
    return eqx.nn.MLP(n_in, n_out, 8, 1, activation=activation, key=KEY)


def make_model():
    return nde.NeuralODE(
        nde.autonomous(mlp(2, 2), input_fn=nde.transforms.cube),
        "dopri5",
        rtol=1e-5,
        atol=1e-7,
        sensitivity=nde.Backsolve(),
    )


TS = jnp.linspace(0.0, 1.0, 5)
Y0 = jnp.array([1.0, 0.5])
X2 = jnp.array([[0.3, -0.2], [1.0, 0.5]])


def _sde():
    diffusion = nde.autonomous(eqx.nn.Linear(2, 2, key=KEY))
    return nde.NeuralSDE(nde.autonomous(mlp(2, 2)), diffusion, dt0=0.05)


def _latent():
    return nde.LatentODE(4, 2, key=KEY)


#: every public model kind, with a function that evaluates it deterministically
MODELS = {
    "neural_ode": (make_model, lambda m: m(TS, Y0)),
    "neural_ode_kvaerno5_interpolating": (
        lambda: nde.NeuralODE(
            nde.autonomous(mlp(2, 2)), "kvaerno5", sensitivity=nde.Interpolating()
        ),
        lambda m: m(TS, Y0),
    ),
    "autonomous_softplus_square": (
        lambda: nde.NeuralODE(
            nde.autonomous(mlp(2, 2, jax.nn.softplus), input_fn=nde.transforms.square),
            sensitivity=nde.Direct(),
        ),
        lambda m: m(TS, Y0),
    ),
    "augmented": (
        lambda: nde.AugmentedNeuralODE(nde.NeuralODE(nde.autonomous(mlp(3, 3))), augment_dim=1),
        lambda m: m(TS, Y0[:1].repeat(2)),
    ),
    "odeblock": (
        lambda: nde.ODEBlock(nde.autonomous(mlp(3, 3)), t1=1.0, sensitivity=nde.Backsolve()),
        lambda m: m(jnp.ones(3)),
    ),
    "neural_sde": (_sde, lambda m: m.sample(TS, Y0, jax.random.key(1), 3)),
    "neural_dde": (lambda: nde.NeuralDDE(mlp(2, 1), lags=[0.5]), lambda m: m(TS, Y0[:1])),
    "ffjord_concat_squash": (
        lambda: nde.FFJORD(nde.ConcatSquashMLP(2, hidden=(8, 8), key=KEY), t1=0.5, trace="exact"),
        lambda m: m.log_prob(X2),
    ),
    "latent_ode": (
        _latent,
        lambda m: m.elbo(TS, jnp.ones((2, 5, 2)), None, jax.random.key(1)),
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_kind_round_trips(tmp_path, name):
    build, evaluate = MODELS[name]
    # one compilation serves all three calls: a loaded model is the same pytree, static fields
    # included, so it also hits the jit cache of the original
    evaluate = eqx.filter_jit(evaluate)
    model = build()
    path = tmp_path / "model.eqx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every part is known to the library: nothing pickled
        nde.save(path, model)
    loaded = nde.load(path)
    assert type(loaded) is type(model)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(model)
    leaves = zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(loaded), strict=True)
    for a, b in leaves:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    expected = evaluate(model)
    assert np.all(np.isfinite(np.asarray(expected)))
    np.testing.assert_array_equal(evaluate(loaded), expected)
    np.testing.assert_array_equal(evaluate(nde.load(path, like=build())), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["model.eqx"]  # no temporary files left


def test_loaded_model_keeps_its_settings_and_trains_from_new_values(tmp_path):
    model = make_model()
    path = tmp_path / "model.eqx"
    nde.save(path, model)
    loaded = nde.load(path)
    assert (loaded.rtol, loaded.atol, type(loaded.solver)) == (1e-5, 1e-7, diffrax.Dopri5)
    assert isinstance(loaded.sensitivity, nde.Backsolve)
    assert loaded.field.input_fn is nde.transforms.cube
    assert loaded.field.net.activation is jnp.tanh
    # arrays were read from the file, not taken from a default initialisation
    changed = eqx.tree_at(lambda m: m.field.net.layers[0].bias, model, jnp.arange(8.0))
    nde.save(path, changed)
    np.testing.assert_array_equal(nde.load(path).field.net.layers[0].bias, jnp.arange(8.0))


def test_plain_pytrees_and_library_objects_round_trip(tmp_path):
    tree = {
        "array": jnp.arange(6.0).reshape(2, 3),
        "ints": jnp.arange(3, dtype=jnp.int32),
        "bools": jnp.array([True, False]),
        "key": jax.random.key(7),
        "numpy": np.linspace(0, 1, 4),
        "numpy_scalar": np.float32(2.5),
        "floats": (float("inf"), -0.0, 1e-300, 0.1),
        "complex": 1 - 2j,
        "misc": [None, "text", 3, True],
        "dtypes": (jnp.float32, np.dtype("int8")),
        "partial": functools.partial(jax.nn.leaky_relu, negative_slope=0.2),
        "activation": jax.nn.softplus,
        "elementwise": jnp.sin,
        "transform": nde.transforms.identity,
        "solver_class": diffrax.Tsit5,
        "implicit_solver": diffrax.Kvaerno5(),
        "controller": diffrax.PIDController(rtol=1e-4, atol=1e-6),
        "shape": jax.ShapeDtypeStruct((2, 3), jnp.float32),
        3: "non-string key",
    }
    path = tmp_path / "tree.eqx"
    nde.save(path, tree)
    loaded = nde.load(path)
    assert sorted(map(str, loaded)) == sorted(map(str, tree))
    np.testing.assert_array_equal(loaded["array"], tree["array"])
    assert loaded["ints"].dtype == jnp.int32 and loaded["bools"].dtype == jnp.bool_
    assert isinstance(loaded["numpy"], np.ndarray) and isinstance(loaded["array"], jax.Array)
    key_data = jax.random.key_data
    np.testing.assert_array_equal(key_data(loaded["key"]), key_data(tree["key"]))
    assert type(loaded["numpy_scalar"]) is np.float32 and loaded["numpy_scalar"] == 2.5
    assert loaded["floats"] == tree["floats"] and str(loaded["floats"][1]) == "-0.0"
    assert loaded["complex"] == 1 - 2j and loaded["misc"] == [None, "text", 3, True]
    assert loaded["dtypes"] == (jnp.float32, np.dtype("int8"))
    assert loaded["partial"].func is jax.nn.leaky_relu
    assert loaded["partial"].keywords == {"negative_slope": 0.2}
    assert loaded["activation"] is jax.nn.softplus and loaded["elementwise"] is jnp.sin
    assert loaded["transform"] is nde.transforms.identity
    assert loaded["solver_class"] is diffrax.Tsit5
    assert loaded["implicit_solver"] == tree["implicit_solver"]  # incl. its root finder's sentinels
    assert loaded["controller"].rtol == 1e-4 and loaded["shape"] == tree["shape"]
    assert loaded[3] == "non-string key"


def test_float64_model_needs_64_bit_jax_to_load(tmp_path):
    path = tmp_path / "model64.eqx"
    with jax.enable_x64(True):
        to64 = lambda x: x.astype(jnp.float64) if eqx.is_array(x) else x  # noqa: E731
        model = jax.tree_util.tree_map(to64, make_model())
        nde.save(path, model)
        loaded = nde.load(path)
        assert loaded.field.net.layers[0].weight.dtype == jnp.float64
        ts, y0 = TS.astype(jnp.float64), Y0.astype(jnp.float64)
        np.testing.assert_array_equal(loaded(ts, y0), model(ts, y0))
    with pytest.raises(ValueError, match="float64.*jax_enable_x64"):
        nde.load(path)  # rather than silently halving the precision


def test_like_checks_names_shapes_and_dtypes(tmp_path):
    path = tmp_path / "model.eqx"
    nde.save(path, make_model())
    wider = nde.NeuralODE(nde.autonomous(eqx.nn.MLP(2, 2, 9, 1, key=KEY)))
    with pytest.raises(ValueError, match=r"layers\[0\]\.weight.*float32\[8, 2\].*float32\[9, 2\]"):
        nde.load(path, like=wider)
    tree = tmp_path / "tree.eqx"
    nde.save(tree, {"w": jnp.zeros(2), "v": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"no array \"\['u'\]\" that `like` has"):
        nde.load(tree, like={"w": jnp.zeros(2), "u": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"arrays that `like` lacks \(\['v'\]\)"):
        nde.load(tree, like={"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"\['w'\]\" is float32\[2\].*int32\[2\]"):
        nde.load(tree, like={"w": jnp.zeros(2, jnp.int32), "v": jnp.ones(3)})
    loaded = nde.load(tree, like={"w": np.full(2, 7.0, np.float32), "v": jnp.zeros(3)})
    assert isinstance(loaded["w"], np.ndarray) and loaded["w"].tolist() == [0.0, 0.0]
    assert loaded["v"].tolist() == [1.0, 1.0, 1.0]


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.eqx"
    nde.save(path, make_model())
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        nde.save(path, make_model())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.eqx"]


def test_save_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        nde.save(tmp_path / "a.eqx", make_model())
        os.umask(0o002)
        nde.save(tmp_path / "b.eqx", make_model())
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.eqx").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "b.eqx").st_mode & 0o777 == 0o664


KILLED_SAVE = """
import os, signal, sys
import equinox as eqx, jax
import neuraldiffeq as nde

def killed(fd):  # the machine dies after the bytes are written, before the rename
    os.kill(os.getpid(), signal.SIGKILL)

os.fsync = killed
nde.save(sys.argv[1], nde.NeuralODE(nde.autonomous(eqx.nn.MLP(2, 2, 8, 1, key=jax.random.key(0)))))
"""


def test_killed_save_leaves_the_old_file_and_its_temp_file_is_cleaned(tmp_path):
    path = tmp_path / "model.eqx"
    nde.save(path, make_model())
    before = path.read_bytes()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    temps = [p for p in tmp_path.iterdir() if p.name != "model.eqx"]
    assert len(temps) == 1 and temps[0].name.startswith(".tmp-model.eqx-")
    assert temps[0].stat().st_size > 1000  # the killed save's bytes, as in issue 10
    assert path.read_bytes() == before
    # temp files of a save still running (this process), recent ones of another host or of the
    # old format may belong to a live save: kept; old ones of unknown owner are stale: removed
    live = tmp_path / f".tmp-model.eqx-{serialisation._host()}-{os.getpid()}-abcdefgh.eqx"
    other_host = tmp_path / ".tmp-model.eqx-elsewhere-1-abcdefgh.eqx"  # a shared folder
    other_host_old = tmp_path / ".tmp-model.eqx-elsewhere-2-abcdefgh.eqx"
    for p in (live, other_host, other_host_old):
        p.write_bytes(b"x")
    legacy_recent, legacy_old = tmp_path / ".tmp-abcd1234.eqx", tmp_path / ".tmp-wxyz5678.eqx"
    legacy_recent.write_bytes(b"x")
    legacy_old.write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    os.utime(legacy_old, (hours_ago, hours_ago))
    os.utime(other_host_old, (hours_ago, hours_ago))
    nde.save(path, make_model())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.eqx", live.name, legacy_recent.name, other_host.name]
    )


def _header(path):
    blob = path.read_bytes()
    start = blob.index(b"\n") + 1
    size = int.from_bytes(blob[start : start + 8], "little")
    return blob[:start], json.loads(blob[start + 8 : start + 8 + size]), blob[start + 8 + size :]


def _write(path, first_line, header, body):
    text = json.dumps(header).encode()
    path.write_bytes(first_line + len(text).to_bytes(8, "little") + text + body)


def test_load_rejects_bad_files_clearly(tmp_path):
    with pytest.raises(ValueError, match="cannot read model file"):
        nde.load(tmp_path / "missing.eqx")
    junk = tmp_path / "junk.eqx"
    junk.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a neuraldiffeq model file"):
        nde.load(junk)
    junk.write_bytes(b"NEURALDIFFEQ-MODEL-x\n")
    with pytest.raises(ValueError, match="not a neuraldiffeq model file"):
        nde.load(junk)
    good = tmp_path / "good.eqx"
    nde.save(good, make_model())
    blob = good.read_bytes()
    bad = tmp_path / "bad.eqx"
    for cut in (25, 40, 200, len(blob) - 40, len(blob) - 1):  # truncated anywhere
        bad.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match="damaged or truncated"):
            nde.load(bad)
    flipped = bytearray(blob)
    flipped[-10] ^= 0xFF  # one corrupt byte in the arrays
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        nde.load(bad)
    first, header, body = _header(good)
    header["arrays"][0]["shape"] = [3, 2]  # sizes disagree with the bytes
    _write(bad, first, header, body)
    with pytest.raises(ValueError, match=r"bytes for shape \(3, 2\)"):
        nde.load(bad)
    first, header, body = _header(good)
    header["arrays"][0]["dtype"] = "object"
    _write(bad, first, header, body)
    with pytest.raises(ValueError, match="dtype 'object'"):
        nde.load(bad)
    first, header, body = _header(good)
    header["model"]["fields"]["field"] = {"t": "module", "class": "x:y"}
    _write(bad, first, header, body)
    with pytest.raises(ValueError, match="damaged or written by an incompatible version"):
        nde.load(bad)
    with pytest.raises(ValueError, match="folder .* does not exist"):
        nde.save(tmp_path / "nope" / "m.eqx", make_model())


def test_file_from_a_newer_version_errors_clearly(tmp_path):
    path = tmp_path / "model.eqx"
    nde.save(path, make_model())
    first, header, body = _header(path)
    header["format"] = 3
    _write(path, b"NEURALDIFFEQ-MODEL-3\n", header, body)
    with pytest.raises(ValueError, match="format 3, written by a newer neuraldiffeq.*upgrade"):
        nde.load(path)
    nde.save(path, make_model())
    first, header, body = _header(path)
    header["model"]["fields"]["field"] = {"t": "quaternion"}  # an entry type from the future
    _write(path, first, header, body)
    with pytest.raises(ValueError, match="unknown entry type 'quaternion'"):
        nde.load(path)


def test_field_renamed_between_versions_is_refused_with_like_as_the_way_out(tmp_path):
    path = tmp_path / "model.eqx"
    nde.save(path, make_model())
    first, header, body = _header(path)
    fields = header["model"]["fields"]["field"]["fields"]
    fields["transform"] = fields.pop("input_fn")
    _write(path, first, header, body)
    with pytest.raises(ValueError, match=r"fields \['net', 'transform'\].*has \['input_fn', 'net'"):
        nde.load(path)
    np.testing.assert_array_equal(nde.load(path, like=make_model())(TS, Y0), make_model()(TS, Y0))


def test_arrays_section_is_raw_bytes_and_names_are_jax_key_paths(tmp_path):
    model = make_model()
    path = tmp_path / "model.eqx"
    nde.save(path, model)
    _, header, body = _header(path)
    names = [a["name"] for a in header["arrays"]]
    expected = [
        jax.tree_util.keystr(p)
        for p, leaf in jax.tree_util.tree_flatten_with_path(model)[0]
        if isinstance(leaf, jax.Array)
    ]
    assert names == expected
    assert header["pickle_section"]["nbytes"] == 0 and header["pickle_section"]["parts"] == []
    assert header["format"] == serialisation.FORMAT == 2
    first = header["arrays"][0]
    raw = np.frombuffer(body, "<f4", count=int(np.prod(first["shape"])), offset=first["offset"])
    np.testing.assert_array_equal(raw.reshape(first["shape"]), model.field.net.layers[0].weight)


def test_equinox_layers_round_trip(tmp_path):
    layers = {
        "conv": eqx.nn.Conv2d(1, 2, 3, padding=1, key=KEY),
        "gru": eqx.nn.GRUCell(2, 3, key=KEY),
        "lstm": eqx.nn.LSTMCell(2, 3, key=KEY),
        "norm": eqx.nn.LayerNorm(3),
        "sequential": eqx.nn.Sequential([eqx.nn.Linear(2, 3, key=KEY), eqx.nn.Lambda(jax.nn.gelu)]),
        "pool": eqx.nn.MaxPool2d(2),  # holds jax.lax.max
        "batch_norm": eqx.nn.BatchNorm(3, "batch", mode="batch"),  # holds state markers
        "attention": eqx.nn.MultiheadAttention(2, 4, key=KEY),
    }
    path = tmp_path / "layers.eqx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every part known: nothing pickled
        nde.save(path, layers)
    loaded = nde.load(path)
    for name in layers:  # (batch norm's state markers are new objects: equal only to themselves)
        same = jax.tree_util.tree_structure(loaded[name]) == jax.tree_util.tree_structure(
            layers[name]
        )
        assert same == (name != "batch_norm"), name
    state = eqx.nn.State(loaded["batch_norm"])
    batch = jnp.arange(6.0).reshape(2, 3)
    out, _ = jax.vmap(loaded["batch_norm"], (0, None), (0, None), axis_name="batch")(batch, state)
    np.testing.assert_allclose(out, [[-1.0] * 3, [1.0] * 3], atol=1e-3)
    image, x = jnp.ones((1, 4, 4)), jnp.array([0.5, -1.0])
    np.testing.assert_array_equal(loaded["conv"](image), layers["conv"](image))
    np.testing.assert_array_equal(loaded["sequential"](x), layers["sequential"](x))
    np.testing.assert_array_equal(loaded["pool"](image), layers["pool"](image))
    h = jnp.ones(3)
    np.testing.assert_array_equal(loaded["gru"](x, h), layers["gru"](x, h))
    q = jnp.ones((3, 4))
    np.testing.assert_array_equal(loaded["attention"](q, q, q), layers["attention"](q, q, q))


def _refs(description) -> set[str]:
    """Every class or function path a model file's description names."""
    found = set()
    if isinstance(description, dict):
        for key in ("class", "ref"):
            if isinstance(description.get(key), str):
                found.add(description[key])
        for value in description.values():
            found |= _refs(value)
    elif isinstance(description, list):
        for value in description:
            found |= _refs(value)
    return found


def test_model_files_name_public_paths(tmp_path):
    path = tmp_path / "model.eqx"
    nde.save(path, {"ode": make_model(), "solver": diffrax.Tsit5(), "dde": nde.Quadrature()})
    refs = _refs(_header(path)[1]["model"])
    assert {"neuraldiffeq:NeuralODE", "diffrax:Tsit5", "diffrax:Dopri5", "equinox.nn:MLP"} <= refs
    assert {"neuraldiffeq:Backsolve", "neuraldiffeq:Quadrature", "neuraldiffeq:SolveConfig"} <= refs
    assert "neuraldiffeq.models.transforms:cube" in refs
    # a private module only where nothing public names the object (equinox's `_identity`)
    private = {r for r in refs if any(p.startswith("_") for p in r.split(":")[0].split("."))}
    assert private <= {"equinox.nn._mlp:_identity"}, private
    loaded = nde.load(path)
    np.testing.assert_array_equal(loaded["ode"](TS, Y0), make_model()(TS, Y0))


def test_files_written_by_0_1_still_load():
    # tests/data/models_v0.1.eqx was written by neuraldiffeq 0.1 (commit 705e617, before the
    # re-layering) with tests/data/write_models_v0.1.py: it names 0.1's module paths
    # (`neuraldiffeq.solve_config:SolveConfig`, `neuraldiffeq.sensitivity:Interpolating`,
    # `neuraldiffeq.transforms:cube`, `diffrax._solver.tsit5:Tsit5`, ...)
    path = Path(__file__).parent / "data" / "models_v0.1.eqx"
    description = _header(path)[1]["model"]
    assert "neuraldiffeq.solve_config:SolveConfig" in _refs(description)
    models = nde.load(path)
    assert isinstance(models["ode"], nde.NeuralODE)
    assert isinstance(models["ode"].sensitivity, nde.Interpolating)
    assert models["ode"].field.input_fn is nde.transforms.cube
    ts = jnp.linspace(0.0, 1.0, 5)
    y0 = jnp.array([1.0, 0.5])
    # what 0.1 computed with the same file (float32, same solver and steps)
    ode_01 = [
        [1.0, 0.5],
        [0.9722403287887573, 0.4571232795715332],
        [0.9414650797843933, 0.4168212413787842],
        [0.9074316024780273, 0.37907135486602783],
        [0.8699662089347839, 0.3438291847705841],
    ]
    sde_01 = [
        [1.0, 0.5],
        [0.975321352481842, 0.5017021894454956],
        [0.6139016151428223, 0.47298693656921387],
        [0.6863284111022949, 0.4622177481651306],
        [0.5387619137763977, 0.45761391520500183],
    ]
    np.testing.assert_allclose(models["ode"](ts, y0), ode_01, rtol=1e-5)
    sample = models["sde"].sample(ts, y0, jax.random.key(1), 1)[0]
    np.testing.assert_allclose(sample, sde_01, rtol=1e-5)
